"""End-to-end speed and memory: dense vs SLoPe vs the FST-style baseline on real LLM architectures.

For each model (`performance_experiments.models`, truncated to the blocks that fit) and dtype, in one process:

* ``train``   full step (forward + LM loss, backward, optimizers) for dense, SLoPe (compressed + ADAMWSparse) and
              FST (simulated). Phases per step: forward / backward / optimizer (CUDA events in the step), and an
              instrumented pass with module hooks for the sparse-able linears' in-situ FWD and BWD (BWD-1 + BWD-2
              together: splitting them needs a hook inside the layer's autograd Function; on a GPU the GPU time
              of the kernels they launch) — "other" = the rest (attention, norms, embeddings, LM head, loss).
              BWD-1 and BWD-2 are split by isolated GEMMs on each layer shape at the step's token count, scaled by
              the layer count. Memory: static state (params, grads, optimizer state, buffers) and the measured peak.
* ``prefill`` one prompt batch (8 x 2048) forward, last-position logits only; adapter ranks 0, 1.56%, 6.25% of the
              hidden size with the merged path (``merge_lora=True``; rows say 'unsupported' where the library
              refuses it) and the unmerged adapters (two skinny GEMMs per layer) beside it.
* ``decode``  one-token forward against a KV cache (batch 1, 8, 32), same variants.

Ratios (``ratio_vs_dense``): speedup (dense time / variant time) for time and throughput rows, memory fraction
(variant / dense) for memory rows — the paper's conventions. ``ideal`` on every row, with ``ideal_basis``:
training = Amdahl on the measured share f of the dense step spent in sparse-able linears, with 1.5x on them
(FWD and BWD-2 at 2x, BWD-1 dense); prefill = 2x (compute-bound) on the sparse-able linears' share; decode =
1/0.5625 (memory-bound: 2:4 fp16 reads 9/16 of the bytes) on that share; memory = the analytic static-state
accounting (`e2e.analytic_static_bytes`). ``paper`` = the paper's number for the row (results/paper_reference.csv).

Code: this module holds the configuration, the run loop and the CSV schema; `speedup_train` the training section,
`speedup_infer` the inference sections; `e2e` builds the variants; `timing` measures.

On the CPU (``--preset cpu-toy``) everything runs at toy size with the simulator (``compress=False``): rows say
``mode=cpu-toy (simulated...)`` and are pipeline checks, not speed results.

    python -m performance_experiments.speedup --models opt-13b --dtypes bfloat16 --output-dir $OUT
    python -m performance_experiments.speedup --preset cpu-toy --output runs/speedup_cpu.csv
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import slope
from experiments.cli import parse_config
from experiments.results_io import write_rows

from . import e2e
from .models import MODELS, build_model, choose_blocks, get_spec
from .reference import load_paper
from .speedup_infer import inference_section
from .speedup_train import train_section
from .timing import TIMED_AFTER_PROFILER, profiler_sessions

COLUMNS = ("experiment", "model", "num_blocks", "full_blocks", "dtype", "precision", "attention", "batch", "seq",
           "tokens", "variant", "adapter_rank", "phase", "metric", "median", "iqr", "min", "max", "unit", "repeats",
           "ratio_vs_dense", "ideal", "ideal_basis", "paper", "status", "mode", "note")
SECTIONS = ("train", "prefill", "decode")


@dataclass(frozen=True)
class SpeedupConfig:
    models: tuple[str, ...] = tuple(MODELS)
    dtypes: tuple[str, ...] = ("bfloat16", "float16")
    seq: int = 2048
    batch: int = 4                       # training sequences per step (4 x 2048 = 8192 tokens)
    prefill_batch: int = 8
    decode_batches: tuple[str, ...] = ("1", "8", "32")
    decode_context: int = 512            # KV-cache length each decode token attends to
    # also the GPU busy time of a decode step, split by kernel family (profiler; GPU only). Off by default: every
    # timing after the first profiler session is flagged (`timing.TIMED_AFTER_PROFILER`), for CUPTI stays attached
    decode_kernel_time: bool = False
    decode_graph: bool = True            # also the decode step captured in a CUDA graph, replayed (GPU only)
    # SLoPe inference layers run `slope.kernels.sparse_gemv` instead of cuSPARSELt at <= this many tokens: an int
    # (0: off), "default" (the library's), or "auto" (each layer shape times both at 1-64 tokens, cached on disk)
    few_token_kernel_tokens: str = "auto"
    decode_cusparselt_too: bool = True   # SLoPe r=0 decode again with that kernel off (cuSPARSELt), same process
    # SLoPe r=0 eager decode again with every few-token launch through Triton's JIT (no `GemvPlan` direct launch),
    # same process: the launch path's end-to-end effect, free of the host drift between processes
    decode_jit_dispatch_too: bool = False
    adapter_ranks: tuple[str, ...] = ("0", "1.56%", "6.25%")
    adapter_modes: tuple[str, ...] = ("merged", "unmerged")
    variants: tuple[str, ...] = ("dense", "slope", "fst")
    sections: tuple[str, ...] = SECTIONS
    attention: str = "sdpa"              # "eager" = math attention (ablation)
    tiling: bool = True                  # square tiles in the compressed inference layers
    # the inference layers' mask: "true" a copy beside cuSPARSELt's buffer (the library's default, fast decode),
    # "auto" cuSPARSELt's metadata only where its layout is known (9/16 of dense, slower few-token kernel)
    separate_mask: str = "true"
    # Also decode with the inference layers' dense path at <= this many tokens ("0": off; "auto": the library
    # measures the crossover per shape, which times 10 token counts per shape and takes minutes per dtype).
    decode_fallback: str = "64"
    precision: str = "half"              # "half": parameters in `dtype`; "amp": fp32 parameters + autocast
    mask_change_freq: int = 1            # ADAMWSparse: re-derive W_RCᵀ's mask every N steps (1 = the paper's)
    device: str = "cuda"
    simulate: bool = False               # SLoPe through the simulator (compress=False); forced on the CPU
    blocks: int = 0                      # 0: the most that fit memory_fraction of the GPU (models.choose_blocks)
    max_blocks: int = 0                  # 0: no cap
    memory_fraction: float = 0.7
    warmup: int = 3
    repeats: int = 10
    isolated_phases: bool = True         # BWD-1 / BWD-2 split from isolated GEMMs per layer shape
    time_budget_s: float = 0.0           # 0: none; otherwise later sections are skipped (rows say so)
    # 0: every cuSPARSELt algorithm id is timed for a new shape (fp16: ~75 s a shape on an H100); T > 0: a new
    # shape's search stops after T s with the fastest id so far (SLOPE_CSLT_SEARCH_BUDGET_S; SLoPe rows say so)
    cslt_search_budget_s: float = 0.0
    output: str = ""                     # default: <output_dir>/speedup_<gpu>.csv
    output_dir: str = ""                 # default: $SLOPE_RESULTS_DIR or results/


PRESETS = {
    "h100": SpeedupConfig(),
    "quick": SpeedupConfig(models=("opt-13b",), dtypes=("bfloat16",), decode_batches=("1", "32"),
                           adapter_ranks=("0", "6.25%"), repeats=5),
    # Test-only: two toy architectures on the CPU through the simulator; seconds.
    "cpu-toy": SpeedupConfig(models=("opt-toy", "llama-toy"), dtypes=("float32",), seq=32, batch=2, prefill_batch=2,
                             decode_batches=("1", "2"), decode_context=8, device="cpu", simulate=True, blocks=2,
                             warmup=1, repeats=2, output="runs/speedup_cpu.csv"),
}


def gpu_slug(device) -> str:
    if torch.device(device).type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name()
    match = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name)
    return (match.group(1) if match else re.sub(r"\W+", "_", name)).lower()


def output_path(cfg: SpeedupConfig, stem: str = "speedup") -> Path:
    if cfg.output:
        return Path(cfg.output)
    folder = cfg.output_dir or os.environ.get("SLOPE_RESULTS_DIR", "results")
    return Path(folder) / f"{stem}_{gpu_slug(cfg.device)}.csv"


class Run:
    """One (model, dtype): shared fields, the dense reference numbers, and the rows written so far."""

    def __init__(self, cfg: SpeedupConfig, model_name: str, dtype_name: str, out: Path, paper: dict, started: float):
        self.cfg, self.out, self.paper, self.started = cfg, out, paper, started
        self.spec = get_spec(model_name)
        self.dtype = getattr(torch, dtype_name)
        self.device = torch.device(cfg.device)
        self.tokens = cfg.batch * cfg.seq
        if cfg.blocks:
            self.blocks = min(cfg.blocks, self.spec.layers)
        else:
            total = torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else 64e9
            self.blocks = choose_blocks(self.spec, cfg.memory_fraction * total, self.tokens, cfg.precision,
                                        cfg.max_blocks or None)
        self.param_dtype = self.dtype if cfg.precision == "half" else torch.float32
        self.mode = "gpu" if self.device.type == "cuda" and not cfg.simulate else \
            "cpu-toy (simulated sparsity: compress=False; not a speed result)" if self.device.type == "cpu" else \
            "gpu (simulated sparsity: compress=False)"
        self.base = {"model": self.spec.name, "num_blocks": self.blocks, "full_blocks": self.spec.layers,
                     "dtype": dtype_name, "precision": cfg.precision, "attention": cfg.attention, "seq": cfg.seq,
                     "mode": self.mode}
        self.dense: dict = {}
        generator = torch.Generator().manual_seed(0)
        self.train_ids = torch.randint(0, self.spec.vocab, (cfg.batch, cfg.seq), generator=generator).to(self.device)
        # drawn after the training batch (same ids as ever) and only when a prefill section will read them
        self.prefill_ids = torch.randint(0, self.spec.vocab, (cfg.prefill_batch, cfg.seq), generator=generator
                                         ).to(self.device) if "prefill" in cfg.sections else None

    def make_model(self):
        return build_model(self.spec, self.blocks, dtype=self.param_dtype, device=self.device,
                           attention=self.cfg.attention, seed=0)

    def row(self, *parts: dict, **fields) -> dict:
        """A full row: the run's shared fields, then ``parts`` and ``fields`` in order (later ones win)."""
        row = dict.fromkeys(COLUMNS, "")
        row.update(self.base)
        row["status"] = "ok"
        for part in parts:
            row.update(part)
        row.update(fields)
        if (row["status"] == "ok" and row["metric"] in ("time", "throughput") and "GPU busy time" not in row["phase"]
                and profiler_sessions()):
            row["status"] = TIMED_AFTER_PROFILER  # CUPTI stayed attached (`timing.kernel_families_fn`)
        if self.cfg.cslt_search_budget_s and "slope" in str(row["variant"]).lower():
            capped = f"cuSPARSELt algorithm searches capped at {self.cfg.cslt_search_budget_s:g} s per new shape"
            row["note"] = "; ".join(filter(None, [row["note"], capped]))
        return row

    def write(self, rows: list[dict]) -> None:
        if rows:
            write_rows(self.out, rows, columns=COLUMNS, config=self.cfg)

    def over_budget(self) -> bool:
        return bool(self.cfg.time_budget_s) and time.monotonic() - self.started > self.cfg.time_budget_s


def _failure_rows(run: Run, error: Exception, *, variant: str, rank: str, experiments: tuple[str, ...]) -> list[dict]:
    unsupported = isinstance(error, (slope.BackendUnavailableError, NotImplementedError))
    status = "unsupported" if unsupported else "error: out of memory" if isinstance(error, torch.OutOfMemoryError) \
        else "error"
    message = e2e.describe(error)
    return [run.row(experiment=exp, variant=variant, adapter_rank=rank, status=status, note=message)
            for exp in experiments]


def run_model(run: Run) -> list[dict]:
    """Every section for one (model, dtype); rows are written as each section ends (a timeout loses little)."""
    cfg, written = run.cfg, []
    inference = tuple(s for s in ("prefill", "decode") if s in cfg.sections)

    def emit(rows):
        run.write(rows)
        written.extend(rows)

    def skipped(variant, rank, experiments):
        emit([run.row(experiment=e, variant=variant, adapter_rank=rank, status="skipped (time budget)")
              for e in experiments])

    for kind in sorted(cfg.variants, key=e2e.VARIANTS.index):
        variant = None
        try:
            if "train" in cfg.sections:
                if run.over_budget():
                    skipped(kind, "0", ("train",))
                else:
                    rows, variant = train_section(run, kind)
                    emit(rows)
            if kind != "fst" and inference:
                if run.over_budget():
                    skipped(kind, "0", inference)
                else:
                    if variant is None:
                        variant = e2e.build_variant(kind, run.make_model, device=run.device, dtype=run.dtype,
                                                    precision=cfg.precision, simulate=cfg.simulate, train=False)
                    emit(inference_section(run, variant))
        except Exception as error:  # noqa: BLE001 - one failed variant must not lose the others' rows
            emit(_failure_rows(run, error, variant=kind, rank="0", experiments=("train",) + inference))
        del variant
        e2e.free_memory()
    if "slope" in cfg.variants and inference:
        for rank in (r for r in cfg.adapter_ranks if r not in ("", "0")):
            for mode in cfg.adapter_modes:
                label = f"slope {mode} adapters"
                if run.over_budget():
                    skipped(label, rank, inference)
                    continue
                variant = None
                try:
                    variant = e2e.build_variant("slope", run.make_model, device=run.device, dtype=run.dtype,
                                                precision=cfg.precision, simulate=cfg.simulate, adapter_rank=rank,
                                                adapter_mode=mode, train=False, tiling=cfg.tiling)
                    emit(inference_section(run, variant, rank))
                except Exception as error:  # noqa: BLE001 - e.g. the merged compressed path not in this release
                    emit(_failure_rows(run, error, variant=label, rank=rank, experiments=inference))
                del variant
                e2e.free_memory()
    return written


def _summary(rows: list[dict]) -> None:
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['model']:>11} {r['dtype']:>9} {r['experiment']:>8} {r['variant']:<28} r={r['adapter_rank']:<6} "
                  f"{r['status']}: {r['note'][:90]}")
        elif r["phase"] in ("step", "forward (last-position logits)", "one token with KV cache", "train static: total",
                            "inference static (params + buffers)"):
            print(f"{r['model']:>11} {r['dtype']:>9} {r['experiment']:>8} {r['variant']:<28} r={r['adapter_rank']:<6} "
                  f"b={str(r['batch']):<3} {r['phase'][:22]:<22} {r['median']:>14} {r['unit']:<6} "
                  f"x{r['ratio_vs_dense']} (ideal {r['ideal']}, paper {r['paper'] or '-'})")


def apply_search_budget(cfg: SpeedupConfig) -> None:
    """Hand ``--cslt-search-budget-s`` to the kernels (they read it from the environment, per search)."""
    if cfg.cslt_search_budget_s:
        os.environ["SLOPE_CSLT_SEARCH_BUDGET_S"] = f"{cfg.cslt_search_budget_s:g}"


def checked_config(cfg: SpeedupConfig) -> SpeedupConfig:
    """Refuse what cannot run, with the fix; on the CPU, SLoPe is simulated (compress=True needs a GPU)."""
    unknown = [s for s in cfg.sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: {unknown} unknown; choose from {SECTIONS}")
    if cfg.cslt_search_budget_s < 0:
        raise SystemExit(f"--cslt-search-budget-s {cfg.cslt_search_budget_s}: give seconds >= 0 (0 = no cap)")
    if cfg.precision not in ("half", "amp"):
        raise SystemExit(f"--precision {cfg.precision!r}: choose 'half' (parameters in the dtype) or 'amp'")
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("speedup: no CUDA GPU here; run on the GPU machine, or use --preset cpu-toy "
                         "(simulated sparsity at toy size)")
    if torch.device(cfg.device).type == "cpu" and not cfg.simulate:
        cfg = dataclasses.replace(cfg, simulate=True)  # compress=True needs a GPU
    for name in cfg.models:
        get_spec(name)  # fail on a typo before any GPU work
    return cfg


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = checked_config(parse_config(PRESETS, __doc__.splitlines()[0], argv))
    apply_search_budget(cfg)
    out = output_path(cfg)
    print(f"speedup: writing {out}", file=sys.stderr)
    paper, started, rows = load_paper(), time.monotonic(), []
    threads = torch.get_num_threads()
    if torch.device(cfg.device).type == "cpu":
        # Toy CPU runs are tiny: with several OpenMP threads on a shared small machine, spin-waiting makes a
        # 5 ms forward take 500 ms. One thread keeps them fast and steady.
        torch.set_num_threads(1)
    try:
        for model_name in cfg.models:
            for dtype_name in cfg.dtypes:
                run = Run(cfg, model_name, dtype_name, out, paper, started)
                print(f"speedup: {model_name} {dtype_name}: {run.blocks}/{run.spec.layers} blocks", file=sys.stderr)
                rows += run_model(run)
                del run
                e2e.free_memory()
    finally:
        torch.set_num_threads(threads)
    _summary(rows)
    return rows


if __name__ == "__main__":
    main()
