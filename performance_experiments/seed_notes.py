"""The seed's performance notes that no other benchmark measures, each checked on this GPU (one long-form CSV).

The original project's README lists notes from its authors' machines (A100, RTX). `bench_linear`,
`bench_inference` and `ablations` cover bf16 vs fp16, tiling, the torch-op overhead, Triton addmm / bias add and
CUDA graphs; this module covers the rest (rows of ``seed_notes_<gpu>.csv``, same columns as `bench_linear`):

* ``out_probe``   "``torch.matmul`` does not update the output matrix when ``out`` is given in SpMM": torch's own
                  2:4 tensor (`torch.sparse.to_sparse_semi_structured`, cuSPARSELt on sm_90) multiplied with
                  ``out=`` into a NaN-poisoned buffer. ``median`` = the fraction of ``out`` holding the product
                  (1: written; 0: not); the note says how much is still the poison, whether the returned tensor
                  is ``out`` and holds the product (or the error torch raised).
* ``out_write``   "... so we assign the result; fixing this can give a slightly higher speedup (less memory
                  traffic)": a tiled layer (square tiles, one SpMM each, `slope.inference.tile_rows`) whose tiles
                  write their column blocks of one output in place (``slope_cslt::spmm_out``, what this library
                  does) vs the reference code's way, each tile's SpMM into its own tensor and then assigned into
                  the output. ``speedup_vs_dense`` here is assignment time / in-place time (> 1: in place wins);
                  the untiled layer and dense ``F.linear`` get rows too (their ``speedup_vs_dense`` is dense's).
* ``tile_streams`` "multiplying the tiles on different CUDA streams did not give a speedup": the same tiled layer
                  with each tile on its own stream (forked from and joined to the caller's) vs one stream, eager
                  and replayed in a CUDA graph (where the streams become parallel branches). ``speedup_vs_dense`` =
                  one-stream time / streams time.
* ``hf_fp16``     "Hugging Face does not support fully fp16 training (weights stay fp32)": a tiny GPT-2 with fp16
                  weights through `transformers.Trainer` with ``fp16=True``, then the same model through this
                  library's route (`slope.optim.DynamicLossScaler`, which unscales fp16 gradients). ``median`` =
                  optimizer steps that ran (of ``hf_steps``); the note says how each ended.

Every timing is CUDA events around back-to-back calls (`experiments.bench.cuda_time_ms`: host cost included, as
a model's forward would pay it), median over ``repeats``; the weights are larger than L2.

    python -m performance_experiments.seed_notes --output-dir $OUT
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.bench import cuda_time_ms, graph_replay
from experiments.cli import parse_config
from experiments.results_io import write_rows
from performance_experiments.bench_linear import COLUMNS, _mask, _row
from performance_experiments.shapes import MLP_SHAPES
from performance_experiments.speedup import gpu_slug

SECTIONS = ("out_probe", "out_write", "tile_streams", "hf_fp16")


@dataclass(frozen=True)
class SeedNotesConfig:
    sections: tuple[str, ...] = SECTIONS
    shapes: tuple[str, ...] = ("opt-13b.fc1", "llama-3-8b.up")  # the tall ones: where tiling applies
    dtypes: tuple[str, ...] = ("bfloat16", "float16")
    tokens: tuple[str, ...] = ("256", "2048", "8192")
    repeats: int = 30
    hf_steps: int = 3
    output: str = ""
    output_dir: str = ""


PRESETS = {"h100": SeedNotesConfig(),
           "quick": SeedNotesConfig(shapes=("llama-3-8b.up",), dtypes=("bfloat16",), tokens=("256",), repeats=5,
                                    hf_steps=2)}


# ----- out= ---------------------------------------------------------------------------------------------------
def out_probe(rows: list[dict], dtype: torch.dtype) -> None:
    """Does torch's 2:4 tensor honour ``out=``? Poison the buffer, multiply, count the elements that hold the
    product (the note states the outcome in words)."""
    from torch.sparse import to_sparse_semi_structured

    m, k, n = 1024, 1024, 256
    w = torch.randn(m, k, device="cuda", dtype=dtype)
    w = w * _mask(w)
    x = torch.randn(n, k, device="cuda", dtype=dtype)
    w_sparse = to_sparse_semi_structured(w)
    calls = {"torch.mm(W_sparse, Xᵀ, out=)": lambda out: torch.mm(w_sparse, x.t(), out=out),
             "torch.matmul(W_sparse, Xᵀ, out=)": lambda out: torch.matmul(w_sparse, x.t(), out=out)}
    want = (w.float() @ x.float().t())
    for name, call in calls.items():
        out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
        try:
            returned = call(out)
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 - the outcome is what we record
            note, written = f"raised {type(error).__name__}: {str(error).splitlines()[0][:160]}", 0.0
        else:
            close = torch.isclose(out.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
            written, poisoned = close.float().mean().item(), out.isnan().float().mean().item()
            same = isinstance(returned, torch.Tensor) and returned.data_ptr() == out.data_ptr()
            holds = isinstance(returned, torch.Tensor) and returned.shape == want.shape and bool(torch.isclose(
                returned.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item()).all())
            note = (f"{written:.0%} of out holds the product, {poisoned:.0%} is still the NaN poison; the returned "
                    f"tensor {'is' if same else 'is not'} out and {'holds' if holds else 'does not hold'} the "
                    f"product; backend {type(w_sparse).__name__}")
        stats = {"median_ms": written, "iqr_ms": 0.0, "min_ms": written, "max_ms": written, "repeats": 1}
        rows.append(_row("out_probe", f"{m}x{k}", k, m, n, dtype, name, stats, unit="fraction_written", note=note))


class TiledLayer:
    """One compressed 2:4 weight split into near-square tiles (`slope.inference.tile_rows`), a bias, and the
    three ways to run the tiles into one (tokens, d_out) output."""

    def __init__(self, d_in: int, d_out: int, dtype: torch.dtype):
        from slope.inference import tile_rows
        from slope.kernels.cusparselt import SpMM

        w = torch.randn(d_out, d_in, device="cuda", dtype=dtype)
        w = w * _mask(w)
        self.dense_weight, self.bias = w, torch.randn(d_out, device="cuda", dtype=dtype)
        self.rows = tile_rows(d_out, d_in, 0, tiling=True)
        self.starts = [sum(self.rows[:i]) for i in range(len(self.rows))]
        self.ops = [SpMM(r, d_in, dtype) for r in self.rows]
        self.packed = [op.compress(w[s:s + r]) for op, s, r in zip(self.ops, self.starts, self.rows)]
        self.biases = [self.bias[s:s + r] for s, r in zip(self.starts, self.rows)]
        self.untiled = SpMM(d_out, d_in, dtype)
        self.untiled_packed = self.untiled.compress(w)
        self.streams = [torch.cuda.Stream() for _ in self.rows]

    def in_place(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        for op, packed, bias, start in zip(self.ops, self.packed, self.biases, self.starts):
            op.into(packed, x, bias, out, start)
        return out

    def assigned(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        for op, packed, bias, start, rows in zip(self.ops, self.packed, self.biases, self.starts, self.rows):
            out[:, start:start + rows] = op(packed, x, bias)
        return out

    def on_streams(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream()
        for stream, op, packed, bias, start in zip(self.streams, self.ops, self.packed, self.biases, self.starts):
            stream.wait_stream(caller)  # x and out are ready
            with torch.cuda.stream(stream):
                op.into(packed, x, bias, out, start)
        for stream in self.streams:
            caller.wait_stream(stream)  # the output is whole before the caller goes on
        return out


def tiled_variants(rows: list[dict], shape: str, dtype: torch.dtype, tokens: int, cfg: SeedNotesConfig,
                   sections: set[str]) -> None:
    d_in, d_out = MLP_SHAPES[shape]
    layer = TiledLayer(d_in, d_out, dtype)
    x = torch.randn(tokens, d_in, device="cuda", dtype=dtype)
    out = torch.empty(tokens, d_out, device="cuda", dtype=dtype)  # static: every variant writes the same buffer
    want = F.linear(x.float(), layer.dense_weight.float(), layer.bias.float())
    tol = 2e-2 * want.abs().max().item()
    for name in ("in_place", "assigned", "on_streams"):  # each variant computes the layer (and sets up its algs)
        out.fill_(float("nan"))
        got = getattr(layer, name)(x, out).float()
        if not torch.allclose(got, want, rtol=2e-2, atol=tol):
            raise AssertionError(f"{shape} {tokens} tokens: tiled variant {name} differs from the dense reference")
    fns = {"dense F.linear": lambda: F.linear(x, layer.dense_weight, layer.bias),
           "untiled (one SpMM)": lambda: layer.untiled(layer.untiled_packed, x, layer.bias),
           "tiled, in place (spmm_out)": lambda: layer.in_place(x, out),
           "tiled, assigned (reference code)": lambda: layer.assigned(x, out),
           "tiled, one stream per tile": lambda: layer.on_streams(x, out)}
    times = {k: cuda_time_ms(f, repeats=cfg.repeats) for k, f in fns.items()}
    dense_ms = times["dense F.linear"]["median_ms"]
    tiles = f"{len(layer.rows)} tiles of {layer.rows[0]}x{d_in}"
    for name in ("dense F.linear", "untiled (one SpMM)"):
        rows.append(_row("out_write", shape, d_in, d_out, tokens, dtype, name, times[name],
                         speedup=dense_ms / times[name]["median_ms"], ideal=2.0 if "SpMM" in name else "",
                         note="eager, back to back (host included)"))
    place = times["tiled, in place (spmm_out)"]["median_ms"]
    if "out_write" in sections:
        for name in ("tiled, in place (spmm_out)", "tiled, assigned (reference code)"):
            rows.append(_row("out_write", shape, d_in, d_out, tokens, dtype, name, times[name],
                             speedup=times["tiled, assigned (reference code)"]["median_ms"] / times[name]["median_ms"],
                             note=f"{tiles}; speedup = assigned time / this time; dense / this: "
                                  f"{dense_ms / times[name]['median_ms']:.4f}"))
    if "tile_streams" in sections:
        graph = {"tiled, one stream (graph replay)": graph_replay(lambda: layer.in_place(x, out)),
                 "tiled, one stream per tile (graph replay)": graph_replay(lambda: layer.on_streams(x, out))}
        times.update({k: cuda_time_ms(f, repeats=cfg.repeats) for k, f in graph.items()})
        for name, base in (("tiled, in place (spmm_out)", place), ("tiled, one stream per tile", place),
                           ("tiled, one stream (graph replay)", times["tiled, one stream (graph replay)"]["median_ms"]),
                           ("tiled, one stream per tile (graph replay)",
                            times["tiled, one stream (graph replay)"]["median_ms"])):
            rows.append(_row("tile_streams", shape, d_in, d_out, tokens, dtype, name, times[name],
                             speedup=base / times[name]["median_ms"],
                             note=f"{tiles}; speedup = one-stream time / this time (same launch mode)"))


# ----- Hugging Face Trainer in fp16 -----------------------------------------------------------------------------
def hf_fp16(rows: list[dict], cfg: SeedNotesConfig) -> None:
    import slope
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    def model_fp16():
        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=64)
        return GPT2LMHeadModel(config).cuda().half()

    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    outcomes = {}
    model = model_fp16()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, fp16=True, max_steps=cfg.hf_steps, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="no", logging_strategy="no")
        try:
            trainer = Trainer(model=model, args=args, train_dataset=data)
            trainer.train()
            outcomes["transformers.Trainer(fp16=True), fp16 weights"] = (
                trainer.state.global_step, f"trained {trainer.state.global_step} steps; weights finite: "
                f"{all(torch.isfinite(p).all() for p in model.parameters())}")
        except Exception as error:  # noqa: BLE001 - the outcome is what we record
            outcomes["transformers.Trainer(fp16=True), fp16 weights"] = (
                0, f"raised {type(error).__name__}: {str(error).splitlines()[0][:160]}")
    model = model_fp16()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-4)
    scaler, stepped = slope.optim.DynamicLossScaler(init_scale=2.0**10), 0
    for step in range(cfg.hf_steps):
        batch = ids[4 * (step % 2): 4 * (step % 2) + 4].cuda()
        scaler.scale(model(input_ids=batch, labels=batch).loss).backward()
        stepped += scaler.step([optimizer], max_grad_norm=1.0)
        optimizer.zero_grad()
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    outcomes["slope.optim.DynamicLossScaler, fp16 weights"] = (
        stepped, f"{stepped} of {cfg.hf_steps} steps applied (others skipped on overflow); weights finite: {finite}; "
        f"dtype {next(model.parameters()).dtype}")
    for name, (steps, note) in outcomes.items():
        stats = {"median_ms": float(steps), "iqr_ms": 0.0, "min_ms": float(steps), "max_ms": float(steps),
                 "repeats": 1}
        rows.append(_row("hf_fp16", "gpt2 2x128", 128, 128, 64 * 4, torch.float16, name, stats, unit="steps",
                         note=note))


def output_path(cfg: SeedNotesConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    folder = Path(cfg.output_dir or os.environ.get("SLOPE_RESULTS_DIR", "results"))
    return folder / f"seed_notes_{gpu_slug('cuda')}.csv"


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv)
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: {sorted(unknown)} unknown; choose from {SECTIONS}")
    if not torch.cuda.is_available():
        raise SystemExit("seed_notes needs a CUDA GPU (cuSPARSELt); run it on the GPU machine")
    from slope.kernels.cusparselt import load_extension

    load_extension()
    out, sections = output_path(cfg), set(cfg.sections)
    blocks = [("out_probe", d, "", 0) for d in cfg.dtypes if "out_probe" in sections]
    if sections & {"out_write", "tile_streams"}:
        blocks += [("tiled", d, s, int(t)) for d in cfg.dtypes for s in cfg.shapes for t in cfg.tokens]
    blocks += [("hf_fp16", "float16", "", 0)] if "hf_fp16" in sections else []
    print(f"seed_notes: writing {out}", file=sys.stderr)
    for kind, dtype, shape, tokens in tqdm(blocks, desc="seed_notes", file=sys.stderr, disable=None):
        block: list[dict] = []
        if kind == "out_probe":
            out_probe(block, getattr(torch, dtype))
        elif kind == "tiled":
            tiled_variants(block, shape, getattr(torch, dtype), tokens, cfg, sections)
        else:
            hf_fp16(block, cfg)
        write_rows(out, block, columns=COLUMNS, config=cfg)  # each block lands at once: a timeout loses little
        for row in block:
            print(f"{row['benchmark']:>12} {row['shape']:>14} {row['dtype']:>9} {str(row['tokens']):>5} "
                  f"{row['variant']:<44} {row['median']:>9} {row['unit']:<9} x{row['speedup_vs_dense']} "
                  f"{row['note'][:70]}")
    return out


if __name__ == "__main__":
    main()
