"""Model-level ablations of the SLoPe GPU path, each on vs off in one process, as ratios (one long-form CSV).

Ablations (``--ablations``, each builds a truncated model from `performance_experiments.models`):

* ``tiling``          compressed inference layers with square tiles vs untiled (``prune_model(..., tiling=)``), at
                      adapter rank 0 and the merged 6.25% rank: prefill and decode.
* ``implementation``  the cached cuSPARSELt extension vs torch's private ``torch._cslt_sparse_mm`` (the
                      ``implementation=`` switch of the compressed layers; `slope.kernels.cusparselt.SpMM`):
                      training step, prefill and decode. Confirms or refutes the seed's note that PyTorch's
                      semi-structured path has a large overhead against a custom integration.
* ``cutlass``         ``backend="cutlass"``: on sm_90 the library refuses it (PyTorch's CUTLASS 2:4 kernels run on
                      sm_8x only); the row records the refusal, or the timing where a GPU supports it.
* ``cuda_graph``      one decode-shaped forward (batch x 1 token, no KV cache: the linear stack plus trivial
                      attention) eager vs captured in a CUDA graph and replayed, dense and SLoPe; and the training
                      forward+backward through ``torch.cuda.make_graphed_callables`` (the optimizers stay eager:
                      ADAMWSparse keeps its step count on the host).
* ``addmm``           merged adapters (6.25%) prefill and decode with `slope.kernels.fused.addmm` forced to
                      ``triton`` vs ``torch`` vs ``auto`` (the layers' ``addmm_impl``); the kernel-level comparison
                      (and the bias add) is in `bench_inference` (``fused`` rows).
* ``dense_fallback``  decode with the inference layers' dense path below the measured crossover
                      (``dense_fallback_tokens="auto"``) vs always sparse.
* ``attention``       training step, dense and SLoPe, with SDPA (FlashAttention) vs eager math attention: the paper's
                      headline is relative to dense *with* FlashAttention.

``ratio_vs_baseline`` = baseline time / this time (> 1: this setting is faster), ``baseline_setting`` names the
baseline; ``ratio_vs_dense`` = dense time / this time where a dense row of the same shape exists.

    python -m performance_experiments.ablations --ablations tiling,implementation --output-dir $OUT
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import slope
from experiments.bench import graph_replay
from experiments.cli import parse_config
from experiments.results_io import write_rows

from . import e2e
from .models import build_model, get_spec
from .speedup import gpu_slug
from .timing import PhaseTimer, time_fn

COLUMNS = ("ablation", "model", "num_blocks", "dtype", "experiment", "batch", "tokens", "variant", "setting",
           "median", "iqr", "min", "max", "unit", "repeats", "ratio_vs_baseline", "baseline_setting", "ratio_vs_dense",
           "ideal", "ideal_basis", "status", "mode", "note")
ABLATIONS = ("tiling", "implementation", "cutlass", "cuda_graph", "addmm", "dense_fallback", "attention")


@dataclass(frozen=True)
class AblationConfig:
    ablations: tuple[str, ...] = ABLATIONS
    model: str = "opt-13b"
    dtype: str = "bfloat16"
    blocks: int = 2                      # a few blocks: the ratios concern the sparse layers, not depth
    seq: int = 2048
    batch: int = 4
    prefill_batch: int = 8
    decode_batches: tuple[str, ...] = ("1", "8", "32")
    decode_context: int = 512
    adapter_rank: str = "6.25%"
    device: str = "cuda"
    simulate: bool = False
    warmup: int = 3
    repeats: int = 10
    time_budget_s: float = 0.0
    output: str = ""
    output_dir: str = ""


PRESETS = {
    "h100": AblationConfig(),
    "cpu-toy": AblationConfig(model="opt-toy", dtype="float32", blocks=2, seq=32, batch=2, prefill_batch=2,
                              decode_batches=("1", "2"), decode_context=8, device="cpu", simulate=True, warmup=1,
                              repeats=2, output="runs/ablations_cpu.csv"),
}


class Ablations:
    def __init__(self, cfg: AblationConfig, out: Path):
        self.cfg, self.out, self.started = cfg, out, time.monotonic()
        self.spec = get_spec(cfg.model)
        self.dtype = getattr(torch, cfg.dtype)
        self.device = torch.device(cfg.device)
        self.blocks = min(cfg.blocks, self.spec.layers)
        self.compressed = self.device.type == "cuda" and not cfg.simulate
        self.mode = "gpu" if self.compressed else "cpu-toy (simulated sparsity: not a speed result)" \
            if self.device.type == "cpu" else "gpu (simulated sparsity)"
        generator = torch.Generator().manual_seed(0)
        self.train_ids = torch.randint(0, self.spec.vocab, (cfg.batch, cfg.seq), generator=generator).to(self.device)
        self.prefill_ids = torch.randint(0, self.spec.vocab, (cfg.prefill_batch, cfg.seq),
                                         generator=generator).to(self.device)
        self.rows: list[dict] = []

    # ----- helpers ---------------------------------------------------------------------------------------------
    def make_model(self, attention: str = "sdpa"):
        return build_model(self.spec, self.blocks, dtype=self.dtype, device=self.device, attention=attention, seed=0)

    def variant(self, kind: str, *, train: bool = False, attention: str = "sdpa", **kwargs) -> e2e.Variant:
        return e2e.build_variant(kind, lambda: self.make_model(attention), device=self.device, dtype=self.dtype,
                                 simulate=not self.compressed, train=train, **kwargs)

    def row(self, ablation: str, experiment: str, variant: str, setting: str, stats: dict | None = None, **fields):
        row = dict.fromkeys(COLUMNS, "")
        row.update(ablation=ablation, model=self.spec.name, num_blocks=self.blocks, dtype=self.cfg.dtype,
                   experiment=experiment, variant=variant, setting=setting, status="ok", mode=self.mode)
        if stats:
            row.update(median=round(stats["median_ms"], 5), iqr=round(stats["iqr_ms"], 5),
                       min=round(stats["min_ms"], 5), max=round(stats["max_ms"], 5), unit="ms",
                       repeats=stats["repeats"])
        row.update(fields)
        for key in ("ratio_vs_baseline", "ratio_vs_dense", "ideal"):
            if isinstance(row[key], float):
                row[key] = round(row[key], 4)
        return row

    def time(self, fn) -> dict:
        return time_fn(fn, self.device, warmup=self.cfg.warmup, repeats=self.cfg.repeats)

    def inference_times(self, model) -> dict[tuple[str, int], dict]:
        """{("prefill", tokens) | ("decode", batch): stats} for the inference model."""
        cfg, out = self.cfg, {}
        out[("prefill", cfg.prefill_batch * cfg.seq)] = self.time(e2e.prefill_fn(model, self.prefill_ids))
        for batch in map(int, cfg.decode_batches):
            fn, cache = e2e.decode_fn(model, batch, cfg.decode_context, self.spec.vocab, self.device)
            out[("decode", batch)] = self.time(fn)
            del cache, fn
        return out

    def compare(self, ablation: str, variant: str, timings: dict[str, dict], baseline: str,
                dense: dict | None = None, note: str = "") -> None:
        """Rows for {setting: {(experiment, size): stats}} against ``timings[baseline]`` (and dense, if given)."""
        for setting, times in timings.items():
            for (experiment, size), stats in times.items():
                base = timings[baseline].get((experiment, size))
                ref = (dense or {}).get((experiment, size))
                self.rows.append(self.row(
                    ablation, experiment, variant, setting, stats, batch=size if experiment == "decode" else "",
                    tokens=size, baseline_setting=baseline,
                    ratio_vs_baseline=base["median_ms"] / stats["median_ms"] if base else "",
                    ratio_vs_dense=ref["median_ms"] / stats["median_ms"] if ref else "", note=note))

    def failed(self, ablation: str, error: Exception, variant: str = "", setting: str = "") -> None:
        unsupported = isinstance(error, (slope.BackendUnavailableError, NotImplementedError))
        status = "unsupported" if unsupported else "error"
        self.rows.append(self.row(ablation, "", variant, setting, status=status, note=e2e.describe(error)))

    def dense_inference(self) -> dict:
        if not hasattr(self, "_dense_inference"):
            model = self.make_model().eval()
            self._dense_inference = self.inference_times(model)
            del model
            e2e.free_memory()
        return self._dense_inference

    def train_step_time(self, variant: e2e.Variant) -> dict:
        timer = PhaseTimer(self.device)
        for _ in range(self.cfg.warmup + self.cfg.repeats):
            e2e.train_step(variant, self.train_ids, self.device, timer)
            timer.end_repeat()
        return timer.stats(skip=self.cfg.warmup)["step"]

    # ----- the ablations ---------------------------------------------------------------------------------------
    def tiling(self) -> None:
        dense = self.dense_inference()
        for rank in ("0", self.cfg.adapter_rank):
            timings, notes = {}, []
            for tiling in (True, False):
                variant = self.variant("slope", adapter_rank=rank, adapter_mode="merged", tiling=tiling)
                notes.append(e2e.to_inference(variant, self.dtype, tiling=tiling))
                timings["tiled" if tiling else "untiled"] = self.inference_times(variant.model)
                del variant
                e2e.free_memory()
            self.compare("tiling", f"slope r={rank}", timings, "untiled", dense, note=" | ".join(notes))

    def implementation(self) -> None:
        if not self.compressed:
            raise NotImplementedError("the extension-vs-torch comparison needs compressed layers on a CUDA GPU")
        train_key = ("train step", self.cfg.batch * self.cfg.seq)
        dense_model = self.variant("dense", train=True)
        dense = {train_key: self.train_step_time(dense_model)}
        del dense_model
        e2e.free_memory()
        dense.update(self.dense_inference())
        timings = {}
        for impl in ("extension", "torch"):
            times = timings[impl] = {}
            variant = None
            try:  # training layers and inference layers separately: one failing must not hide the other
                variant = self.variant("slope", train=True, implementation=impl)
                times[train_key] = self.train_step_time(variant)
            except Exception as error:  # noqa: BLE001
                self.failed("implementation", error, variant="slope", setting=f"{impl} training layers")
            variant = None
            e2e.free_memory()
            try:  # inference layers get their own SpMMs: built from extension-backed training layers
                variant = self.variant("slope")
                e2e.to_inference(variant, self.dtype, implementation=impl)
                times.update(self.inference_times(variant.model))
            except Exception as error:  # noqa: BLE001
                self.failed("implementation", error, variant="slope", setting=f"{impl} inference layers")
            variant = None
            e2e.free_memory()
        self.compare("implementation", "slope", timings, "torch", dense,
                     note="cached cuSPARSELt extension vs torch._cslt_sparse_mm (plan set-up on every call)")

    def cutlass(self) -> None:
        model = self.make_model()
        try:
            slope.prune_model(model, compress=True, backend="cutlass")
        except (slope.BackendUnavailableError, ValueError) as error:
            self.failed("cutlass", slope.BackendUnavailableError(str(error)), variant="slope", setting="cutlass")
            return
        e2e_variant = e2e.Variant("slope", model)
        e2e.to_inference(e2e_variant, self.dtype)
        self.compare("cutlass", "slope", {"cutlass": self.inference_times(model)}, "cutlass", self.dense_inference())

    def cuda_graph(self) -> None:
        if self.device.type != "cuda":
            raise NotImplementedError("CUDA graphs need a CUDA GPU")
        for kind in ("dense", "slope"):
            variant = self.variant(kind)
            note = e2e.to_inference(variant, self.dtype)
            timings = {"eager": {}, "graph": {}}
            for batch in map(int, self.cfg.decode_batches):
                tokens = torch.randint(0, self.spec.vocab, (batch, 1), device=self.device)

                def forward(tokens=tokens, model=variant.model):
                    with torch.no_grad():
                        return model(input_ids=tokens, use_cache=False, logits_to_keep=1).logits

                timings["eager"][("decode (no cache)", batch)] = self.time(forward)
                try:
                    timings["graph"][("decode (no cache)", batch)] = self.time(graph_replay(forward))
                except Exception as error:  # noqa: BLE001 - capture can fail on host syncs inside the model
                    self.failed("cuda_graph", error, variant=kind, setting=f"graph decode b={batch}")
            self.compare("cuda_graph", kind, timings, "eager", note=note)
            del variant
            e2e.free_memory()
        for kind in ("dense", "slope"):
            try:
                self._graph_train(kind)
            except Exception as error:  # noqa: BLE001
                self.failed("cuda_graph", error, variant=kind, setting="graph train forward+backward")
            e2e.free_memory()

    def _graph_train(self, kind: str) -> None:
        variant = self.variant(kind, train=True)
        model, ids, optimizers = variant.model, self.train_ids, variant.optimizers

        class Loss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids):
                return self.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss

        eager = Loss()

        def step(module):
            def run():
                module(ids).backward()
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=False)  # graphs need the gradient buffers to stay put
            return run

        for _ in range(2):  # optimizer state, algorithm choices, and the gradients' buffers exist before capture
            step(eager)()
        timings = {"eager": {("train forward+backward", ids.numel()): self.time(step(eager))}}
        graphed = torch.cuda.make_graphed_callables(eager, (ids,))
        timings["graph"] = {("train forward+backward", ids.numel()): self.time(step(graphed))}
        self.compare("cuda_graph", kind, timings, "eager", note="optimizer steps not included (eager in both)")

    def addmm(self) -> None:
        variant = self.variant("slope", adapter_rank=self.cfg.adapter_rank, adapter_mode="merged")
        note = e2e.to_inference(variant, self.dtype)
        layers = [layer for layer in slope.sparse_layers(variant.model).values() if hasattr(layer, "addmm_impl")]
        if not layers:
            raise NotImplementedError("these inference layers have no addmm_impl switch (merged compressed path "
                                      "absent); see bench_inference's fused rows for the kernel comparison")
        timings = {}
        for impl in ("torch", "triton", "auto"):
            for layer in layers:
                layer.addmm_impl = impl
            timings[impl] = self.inference_times(variant.model)
        self.compare("addmm", f"slope merged r={self.cfg.adapter_rank}", timings, "torch", self.dense_inference(),
                     note=note)

    def dense_fallback(self) -> None:
        timings, notes = {}, []
        for fallback in (0, "auto"):
            variant = self.variant("slope")
            notes.append(e2e.to_inference(variant, self.dtype, dense_fallback_tokens=fallback))
            times = self.inference_times(variant.model)
            timings["sparse always" if fallback == 0 else "dense below crossover"] = {
                k: v for k, v in times.items() if k[0] == "decode"}
            del variant
            e2e.free_memory()
        self.compare("dense_fallback", "slope", timings, "sparse always", self.dense_inference(),
                     note=" | ".join(notes))

    def attention(self) -> None:
        tokens = self.cfg.batch * self.cfg.seq
        for attention in ("sdpa", "eager"):
            timings = {}
            for kind in ("dense", "slope"):
                variant = self.variant(kind, train=True, attention=attention)
                timings[kind] = {("train step", tokens): self.train_step_time(variant)}
                del variant
                e2e.free_memory()
            self.compare("attention", f"attention={attention}", timings, "dense",
                         note="ratio_vs_baseline of the slope row = SLoPe's training speedup with this attention")

    def run(self) -> list[dict]:
        for name in self.cfg.ablations:
            if self.cfg.time_budget_s and time.monotonic() - self.started > self.cfg.time_budget_s:
                self.rows.append(self.row(name, "", "", "", status="skipped (time budget)"))
            else:
                try:
                    getattr(self, name)()
                except Exception as error:  # noqa: BLE001 - one ablation failing must not lose the others
                    self.failed(name, error)
                e2e.free_memory()
            write_rows(self.out, self.rows, columns=COLUMNS, config=self.cfg)
            for row in self.rows:
                print(f"{row['ablation']:>14} {row['variant']:<22} {row['setting']:<24} {row['experiment']:<22} "
                      f"{str(row['tokens']):>6} {row['median']:>10} x{row['ratio_vs_baseline']} "
                      f"(vs dense x{row['ratio_vs_dense']}) {row['status']} {row['note'][:60]}")
            self.rows = []
        return []


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv)
    unknown = [a for a in cfg.ablations if a not in ABLATIONS]
    if unknown:
        raise SystemExit(f"--ablations: {unknown} unknown; choose from {ABLATIONS}")
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ablations: no CUDA GPU here; run on the GPU machine, or use --preset cpu-toy")
    if torch.device(cfg.device).type == "cpu":
        cfg = dataclasses.replace(cfg, simulate=True)
    out = Path(cfg.output) if cfg.output else \
        Path(cfg.output_dir or os.environ.get("SLOPE_RESULTS_DIR", "results")) / f"ablations_{gpu_slug(cfg.device)}.csv"
    print(f"ablations: writing {out}", file=sys.stderr)
    threads = torch.get_num_threads()
    if torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(1)  # see speedup.main: toy CPU runs are spin-wait bound with several threads
    try:
        Ablations(cfg, out).run()
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    main()
