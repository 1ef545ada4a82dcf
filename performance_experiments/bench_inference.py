"""Compressed SLoPe inference layers vs dense ``F.linear``: tiling, merged adapters, fused kernels, crossover.

Benchmarks (rows of one long-form CSV, same columns as `bench_linear`, provenance on every row):

* ``fused``      the merged path's small ops alone: Triton vs torch addmm (Y₀ + Z·R/r on strided column blocks
                 of one buffer) and bias add, at each shape's adapter ranks — decides `slope.kernels.fused.DEFAULT_IMPL`
* ``infer_layer`` `SLoPeInferenceLinear` forward (untiled / tiled; adapter rank 0, 1.56%, 6.25% of the hidden
                 size, merged; rank 0 with the measured dense fallback) vs a dense ``nn.Linear`` with bias at the
                 same token count, calls issued back to back (host cost included); ideal 2x
* ``infer_graph`` the same at 16–256 tokens with each call captured in a CUDA graph and replayed: the GPU time
                 without the host's per-call cost (eager calls at these sizes are host-bound for both sides)
* ``crossover``  per shape: the largest token count at which dense beat the sparse layer (the value
                 ``dense_fallback_tokens="auto"`` picks), measured by the layer itself

    python -m performance_experiments.bench_inference --preset h100 --output results/bench_inference_h100.csv
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.bench import Rotating, cuda_time_ms
from experiments.cli import parse_config
from experiments.results_io import write_rows
from performance_experiments.bench_linear import COLUMNS, _row
from performance_experiments.shapes import MLP_SHAPES

# adapter ranks as fractions of the hidden size (the paper's inference table: 0, 1.56%, 6.25%)
RANK_FRACTIONS = {"r0": 0.0, "r1.56%": 0.0156, "r6.25%": 0.0625}


@dataclass(frozen=True)
class InferenceBenchConfig:
    shapes: tuple[str, ...] = ("opt-13b.fc1", "llama-3-8b.up")  # the tall ones: where tiling applies
    dtypes: tuple[str, ...] = ("bfloat16",)
    tokens: tuple[str, ...] = ("16", "256", "8192")
    fused_tokens: tuple[str, ...] = ("16", "256", "1024", "2048", "8192")
    ranks: tuple[str, ...] = tuple(RANK_FRACTIONS)
    crossover: bool = True
    repeats: int = 30
    output: str = "runs/bench_inference.csv"


PRESETS = {"h100": InferenceBenchConfig(),
           "quick": InferenceBenchConfig(shapes=("opt-13b.fc1",), tokens=("16", "8192"), ranks=("r0", "r1.56%"),
                                         fused_tokens=("16", "8192"), crossover=False, repeats=10)}


def _rank(shape: str, label: str) -> int:
    hidden = min(MLP_SHAPES[shape])
    return max(1, round(RANK_FRACTIONS[label] * hidden)) if RANK_FRACTIONS[label] else 0


def _simulated_layer(d_in: int, d_out: int, rank: int, dtype: torch.dtype):
    import slope

    layer = slope.SLoPeLinear(d_in, d_out, bias=True, device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.weight.normal_(0, d_in ** -0.5)
        layer.set_mask(slope.row_mask(layer.weight, 2, 4))
        layer.bias.normal_()
    if rank:
        layer.add_adapter(rank)
        with torch.no_grad():
            layer.lora_right.normal_(0, 0.02)
    return layer


def bench_fused(rows: list[dict], shape: str, dtype: torch.dtype, cfg: InferenceBenchConfig) -> None:
    from slope.kernels import fused

    d_in, d_out = MLP_SHAPES[shape]
    for tokens in map(int, cfg.fused_tokens):
        y = torch.randn(tokens, d_out, device="cuda", dtype=dtype)
        bias = torch.randn(d_out, device="cuda", dtype=dtype)
        times = {impl: cuda_time_ms(lambda impl=impl: fused.bias_add(y, bias, out=y, impl=impl), repeats=cfg.repeats)
                 for impl in ("torch", "triton")}
        for impl, stats in times.items():
            rows.append(_row("fused", shape, d_in, d_out, tokens, dtype, f"bias_add {impl}", stats,
                             speedup=times["torch"]["median_ms"] / stats["median_ms"], note="speedup vs torch"))
        for label in cfg.ranks:
            rank = _rank(shape, label)
            if not rank:
                continue
            buffer = torch.randn(tokens, d_out + rank, device="cuda", dtype=dtype)
            right = torch.randn(rank, d_out, device="cuda", dtype=dtype)
            c, a = buffer[:, :d_out], buffer[:, d_out:]
            times = {impl: cuda_time_ms(lambda impl=impl: fused.addmm(c, a, right, 1 / rank, impl=impl),
                                        repeats=cfg.repeats) for impl in ("torch", "triton")}
            for impl, stats in times.items():
                rows.append(_row("fused", shape, d_in, d_out, tokens, dtype, f"addmm {impl} {label}", stats,
                                 speedup=times["torch"]["median_ms"] / stats["median_ms"],
                                 note=f"rank {rank}; speedup vs torch"))


def bench_layers(rows: list[dict], shape: str, dtype: torch.dtype, cfg: InferenceBenchConfig) -> None:
    from slope.inference import SLoPeInferenceLinear

    d_in, d_out = MLP_SHAPES[shape]
    layers = {}
    for label in cfg.ranks:
        simulated = _simulated_layer(d_in, d_out, _rank(shape, label), dtype)
        for tiling in (False, True):
            layer = SLoPeInferenceLinear.from_layer(simulated, tiling=tiling)
            if tiling and len(layer.rows) == 1:
                continue  # nothing to tile
            layers[f"slope {label} {'tiled' if tiling else 'untiled'}"] = layer
        del simulated
    if cfg.crossover:
        # the value dense_fallback_tokens="auto" picks, then that layer with its dense fallback switched on
        name, layer = next(iter(layers.items()))
        crossover = layer._time_crossover()
        rows.append(_row("crossover", shape, d_in, d_out, crossover, dtype, f"{name} dense_fallback",
                         {"median_ms": 0.0, "iqr_ms": 0.0, "min_ms": 0.0, "max_ms": 0.0, "repeats": 20},
                         unit="tokens", note="largest token count (8..4096, doubling) where dense F.linear was faster; "
                                             "0 = sparse never slower"))
        with_fallback = SLoPeInferenceLinear.from_layer(_simulated_layer(d_in, d_out, 0, dtype), tiling=False,
                                                        dense_fallback_tokens=crossover)
        layers[f"{name} +dense_fallback<={crossover}"] = with_fallback
    # the dense side is a module call too (a dense model calls nn.Linear), so both pay a module's host cost
    dense = torch.nn.Linear(d_in, d_out, device="cuda", dtype=dtype)
    w, bias = dense.weight.detach(), dense.bias.detach()
    for tokens in map(int, cfg.tokens):
        xs = Rotating(lambda: torch.randn(tokens, d_in, device="cuda", dtype=dtype))
        with torch.no_grad():
            td = cuda_time_ms(lambda: dense(xs()), repeats=cfg.repeats)
            rows.append(_row("infer_layer", shape, d_in, d_out, tokens, dtype, "dense nn.Linear", td))
            for name, layer in layers.items():
                for impl in ("torch", "triton", "auto") if layer.lora_left is not None else ("auto",):
                    layer.addmm_impl = impl
                    layer(xs())  # algorithm choice for new tile shapes happens here, outside the timing
                    ts = cuda_time_ms(lambda: layer(xs()), repeats=cfg.repeats)
                    rows.append(_row("infer_layer", shape, d_in, d_out, tokens, dtype,
                                     name + (f" addmm={impl}" if layer.lora_left is not None else ""), ts,
                                     speedup=td["median_ms"] / ts["median_ms"], ideal=2.0,
                                     note=f"tiles={layer.rows}; vs dense without adapters"))
        if tokens <= 256:
            _graph_rows(rows, shape, d_in, d_out, tokens, dtype, layers, w, bias, cfg)


def _graph_time(fn, x, repeats):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        fn(x), fn(x)  # warm-up (and algorithm choice) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        fn(x)
    return cuda_time_ms(graph.replay, repeats=repeats)


def _graph_rows(rows, shape, d_in, d_out, tokens, dtype, layers, w, bias, cfg) -> None:
    x = torch.randn(tokens, d_in, device="cuda", dtype=dtype)
    td = _graph_time(lambda x: F.linear(x, w, bias), x, cfg.repeats)
    rows.append(_row("infer_graph", shape, d_in, d_out, tokens, dtype, "dense F.linear", td))
    for name, layer in layers.items():
        if "dense_fallback" in name:
            continue
        layer.addmm_impl = "auto"
        ts = _graph_time(layer, x, cfg.repeats)
        rows.append(_row("infer_graph", shape, d_in, d_out, tokens, dtype, name, ts,
                         speedup=td["median_ms"] / ts["median_ms"], ideal=2.0,
                         note=f"tiles={layer.rows}; CUDA-graph replay; vs dense without adapters"))


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_inference needs a CUDA GPU")
    rows: list[dict] = []
    blocks = [(shape, dtype) for shape in cfg.shapes for dtype in cfg.dtypes]
    for shape, dtype in tqdm(blocks, desc="bench_inference", file=sys.stderr, disable=None):
        block: list[dict] = []
        bench_fused(block, shape, getattr(torch, dtype), cfg)
        write_rows(cfg.output, block, columns=COLUMNS, config=cfg)
        rows += block
        block = []
        bench_layers(block, shape, getattr(torch, dtype), cfg)
        write_rows(cfg.output, block, columns=COLUMNS, config=cfg)  # each block lands at once: a timeout loses little
        rows += block
    for row in rows:
        print(f"{row['benchmark']:>11} {row['shape']:>16} {row['dtype']:>9} {str(row['tokens']):>5} "
              f"{row['variant']:<40} {row['median']:>9} {row['unit']:<6} x{row['speedup_vs_dense']} {row['note'][:50]}")
    torch.cuda.synchronize()
    return rows


if __name__ == "__main__":
    main()
