"""Compressed SLoPe inference layers vs dense ``F.linear``: tiling, merged adapters, fused kernels, crossover.

Benchmarks (rows of one long-form CSV, same columns as `bench_linear`, provenance on every row):

* ``fused``      the merged path's small ops alone: Triton vs torch addmm (Y₀ + Z·R/r on strided column blocks
                 of one buffer) and bias add, at each shape's adapter ranks — decides `slope.kernels.fused.DEFAULT_IMPL`
* ``infer_layer`` `SLoPeInferenceLinear` forward (untiled / tiled; adapter rank 0, 1.56%, 6.25% of the hidden
                 size, merged; rank 0 with the measured dense fallback) vs a dense ``nn.Linear`` with bias at the
                 same token count, calls issued back to back (host cost included); ideal 2x
* ``infer_graph`` the same at 16–256 tokens with each call captured in a CUDA graph and replayed: the GPU time
                 without the host's per-call cost (eager calls at these sizes are host-bound for both sides)
* ``decode``     a few tokens (one decode step, batch = tokens) on every MLP shape: dense ``F.linear`` vs the
                 SLoPe layer through cuSPARSELt and through the few-token kernel (`slope.kernels.sparse_gemv`;
                 at rank 0 also each of its forms forced: fma, dot),
                 eager and CUDA-graph replay, adapter ranks 0 and 1.56% (merged); the note gives the weight bytes
                 read per µs (GB/s). Ideal 1.6x: 1.25 bytes per weight instead of 2 (memory-bound). Every weight
                 here is ≥ 73 MB compressed, larger than the H100's 50 MB L2, so replays cannot hit in cache.
* ``decode_host`` host time to issue one 1-token call (1024² and 5120², where the few-token kernel splits K and
                 launches twice; `experiments.bench.host_time_us` queues a GPU sleep first, so the wall time is the
                 host's): dense nn.Linear vs the SLoPe layer through cuSPARSELt and the few-token kernel. In an
                 eager decode step every layer pays this, and at small batch the step is host-bound. The
                 few-token kernel also gets a ``(Triton launcher)`` row (direct launches through the compiled
                 kernel's own launcher instead of PyTorch's static one) and a ``(JIT dispatch)`` row (every launch
                 through Triton's JIT instead of `slope.kernels.sparse_gemv.GemvPlan`'s direct launch), in the same
                 process.
* ``decode_merge`` where the few-token path adds merged adapters (`SLoPeInferenceLinear.set_few_token_merge`), same
                 layer, same process: in the W_R launch's epilogue (the default) vs both row blocks into one buffer
                 then torch addmm (the path before it), at ranks 1.56% and 6.25%, beside rank 0 and dense; eager,
                 CUDA-graph replay and (1 token) host µs per call. The adapter's cost is the gap to rank 0.
* ``crossover``  per shape: the largest token count at which dense beat the sparse layer (the value
                 ``dense_fallback_tokens="auto"`` picks), measured by the layer itself

    python -m performance_experiments.bench_inference --preset h100 --output results/bench_inference_h100.csv
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.bench import Rotating, capture_graph, cuda_time_ms, host_time_us
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
    sections: tuple[str, ...] = ("fused", "layers", "decode_host", "decode")
    decode_shapes: tuple[str, ...] = tuple(MLP_SHAPES)
    decode_tokens: tuple[str, ...] = ("1", "8", "16", "32", "64")
    decode_ranks: tuple[str, ...] = ("r0", "r1.56%")
    merge_ranks: tuple[str, ...] = ("r1.56%", "r6.25%")
    merge_layouts: tuple[str, ...] = ("default",)  # `MERGE_LAYOUTS`: epilogue layouts decode_merge compares
    repeats: int = 30
    output: str = "runs/bench_inference.csv"


PRESETS = {"h100": InferenceBenchConfig(),
           "quick": InferenceBenchConfig(shapes=("opt-13b.fc1",), tokens=("16", "8192"), ranks=("r0", "r1.56%"),
                                         fused_tokens=("16", "8192"), crossover=False, repeats=10,
                                         decode_shapes=("opt-13b.fc1",), decode_tokens=("1", "16")),
           "decode": InferenceBenchConfig(sections=("decode_host", "decode", "decode_merge"),
                                          dtypes=("bfloat16", "float16"))}
SECTIONS = ("fused", "layers", "decode_host", "decode", "decode_merge")
# The merged-adapter epilogue layouts decode_merge can time (`slope.kernels.sparse_gemv.adapter_epilogue` settings;
# "default": the library's `ADAPTER_EPILOGUE` as it is). "first-piece" is 7219cbf's layout: the first k piece adds
# every adapter column, 16 at a time, a loop beyond 128, summed over the columns per chunk.
MERGE_LAYOUTS = {"default": {},
                 "first-piece": dict(spread=False, rank_block=16, rank_unroll=128, reduce_once=False),
                 "spread": dict(spread=True, rank_block=16, rank_unroll=128, reduce_once=False),
                 "spread-unrolled": dict(spread=True, rank_block=16, rank_unroll=512, reduce_once=False),
                 "spread-wide": dict(spread=True, rank_block=64, rank_unroll=512, reduce_once=False),
                 "spread-once": dict(spread=True, rank_block=16, rank_unroll=512, reduce_once=True),
                 "spread-wide-once": dict(spread=True, rank_block=64, rank_unroll=512, reduce_once=True)}


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
    with torch.no_grad():
        graph, _ = capture_graph(lambda: fn(x))
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


def _weight_bytes(layer, dense: bool, d_in: int, d_out: int, dtype: torch.dtype) -> int:
    """Bytes a few-token call must read for the weight: dense 2 per weight; the sparse layer its kept values and
    its masks — one byte per group of 4 from a mask copy, or half a byte from cuSPARSELt's metadata — adapter rows
    (always with a copy) included."""
    size = torch.finfo(dtype).bits // 8
    if dense:
        return d_in * d_out * size
    mask_bytes = d_in // 8 if layer.mask_in_metadata else d_in // 4
    adapters = layer.adapter_rows * (d_in // 2 * size + d_in // 4) if layer.lora_left is not None else 0
    return d_out * (d_in // 2 * size + mask_bytes) + adapters


@contextlib.contextmanager
def _metadata_words(enabled: bool):
    """`sparse_gemv.METADATA_WORDS` set within the block (the kernel reads cuSPARSELt metadata in words or bytes)."""
    from slope.kernels import sparse_gemv

    previous, sparse_gemv.METADATA_WORDS = sparse_gemv.METADATA_WORDS, enabled
    try:
        yield
    finally:
        sparse_gemv.METADATA_WORDS = previous


def bench_decode(rows: list[dict], shape: str, dtype: torch.dtype, cfg: InferenceBenchConfig) -> None:
    from slope.inference import SLoPeInferenceLinear

    d_in, d_out = MLP_SHAPES[shape]
    dense = torch.nn.Linear(d_in, d_out, device="cuda", dtype=dtype)
    layers = {label: SLoPeInferenceLinear.from_layer(_simulated_layer(d_in, d_out, _rank(shape, label), dtype))
              for label in cfg.decode_ranks}
    metadata_labels = {}  # label -> whether the kernel reads the metadata in words (`sparse_gemv.METADATA_WORDS`)
    if "r0" in layers:
        # the same weight without the mask copy (``separate_mask="auto"``): the kernel reads cuSPARSELt's
        # metadata, 1/8 of a dense weight's bytes less; in 8-byte words (the default) and a byte per group (the
        # first version), each on its own layer, since a layer keeps the launch it compiled first
        for label, in_words in (("r0 mask in metadata", True), ("r0 mask in metadata, bytes", False)):
            lean = SLoPeInferenceLinear.from_layer(_simulated_layer(d_in, d_out, 0, dtype), separate_mask="auto")
            if lean.mask_in_metadata:
                layers[label], metadata_labels[label] = lean, in_words
    dense_bytes = _weight_bytes(None, True, d_in, d_out, dtype)
    for tokens in map(int, cfg.decode_tokens):
        xs = Rotating(lambda: torch.randn(tokens, d_in, device="cuda", dtype=dtype))
        x = xs()
        reference = _dense_decode_times(dense, xs, x, cfg.repeats)
        for mode, td in reference.items():
            rows.append(_row("decode", shape, d_in, d_out, tokens, dtype, f"dense {mode}", td,
                             note=f"{dense_bytes / td['median_ms'] / 1e6:.0f} GB/s"))
        for label, layer in layers.items():
            sparse_bytes = _weight_bytes(layer, False, d_in, d_out, dtype)
            kernels = [("cusparselt", 0, "auto"), ("sparse_gemv", tokens, "auto")]
            if label in metadata_labels:  # where the mask is read changes the few-token kernel only
                kernels = [("sparse_gemv", tokens, "auto")]
            elif layer.lora_left is None:  # the kernel's two forms, each forced (auto picks by token count)
                kernels += [("sparse_gemv fma", tokens, "fma"), ("sparse_gemv dot", tokens, "dot")]
            for kernel, threshold, form in kernels:
                layer.set_few_token_kernel(threshold)
                layer.few_token_form = form
                with torch.no_grad(), _metadata_words(metadata_labels.get(label, True)):
                    layer(x)  # algorithm choice / autotuning for this shape happens here, outside the timing
                    times = {"eager": cuda_time_ms(lambda: layer(xs()), repeats=cfg.repeats),
                             "graph": _graph_time(layer, x, cfg.repeats)}
                for mode, ts in times.items():
                    rows.append(_row("decode", shape, d_in, d_out, tokens, dtype, f"slope {label} {kernel} {mode}",
                                     ts, speedup=reference[mode]["median_ms"] / ts["median_ms"],
                                     ideal=round(dense_bytes / sparse_bytes, 4),
                                     note=f"tiles={layer.rows}; {sparse_bytes / ts['median_ms'] / 1e6:.0f} GB/s; "
                                          f"vs dense {mode} without adapters" + _metadata_read(layer, label,
                                                                                              metadata_labels)))


def bench_decode_merge(rows: list[dict], shape: str, dtype: torch.dtype, cfg: InferenceBenchConfig) -> None:
    from slope.inference import SLoPeInferenceLinear
    from slope.kernels.sparse_gemv import ADAPTER_EPILOGUE, adapter_epilogue

    d_in, d_out = MLP_SHAPES[shape]
    dense = torch.nn.Linear(d_in, d_out, device="cuda", dtype=dtype)
    labels = ("r0",) + tuple(label for label in cfg.merge_ranks if label != "r0")
    layers = {label: SLoPeInferenceLinear.from_layer(_simulated_layer(d_in, d_out, _rank(shape, label), dtype))
              for label in labels}
    unknown = set(cfg.merge_layouts) - set(MERGE_LAYOUTS)
    if unknown:
        raise ValueError(f"bench_inference: merge_layouts {sorted(unknown)} unknown; known: {sorted(MERGE_LAYOUTS)}")
    # (rank label, where the term is added, epilogue layout); a layout is compiled when a layer's plans are rebuilt
    variants = [("r0", "epilogue", "default")] + [
        (label, merge, layout) for label in labels[1:]
        for merge, layout in [("epilogue", layout) for layout in cfg.merge_layouts] + [("addmm", "default")]]
    for tokens in map(int, cfg.decode_tokens):
        xs = Rotating(lambda: torch.randn(tokens, d_in, device="cuda", dtype=dtype))
        x = xs()
        reference = _dense_decode_times(dense, xs, x, cfg.repeats, host=tokens == 1)
        for mode, td in reference.items():
            rows.append(_row("decode_merge", shape, d_in, d_out, tokens, dtype, f"dense {mode}", td,
                             unit="us_per_call" if mode == "host" else "ms"))
        for label, merge, layout in variants:
            layer = layers[label]
            layer.set_few_token_kernel(tokens)
            layer.set_few_token_merge(merge)  # drops the layer's plans: the next call compiles this layout's
            with torch.no_grad(), adapter_epilogue(**MERGE_LAYOUTS[layout]):
                settings = dict(ADAPTER_EPILOGUE)
                layer(x)  # autotuning and compiling outside the timing
                times = {"eager": cuda_time_ms(lambda: layer(xs()), repeats=cfg.repeats),
                         "graph": _graph_time(layer, x, cfg.repeats)}
                if tokens == 1:
                    times["host"] = _host_stats(lambda: layer(x))
            name = f"slope {label}" + (f" merge {merge}" if label != "r0" else "")
            name += f" {layout}" if merge == "epilogue" and label != "r0" and layout != "default" else ""
            for mode, ts in times.items():
                rows.append(_row("decode_merge", shape, d_in, d_out, tokens, dtype, f"{name} {mode}", ts,
                                 unit="us_per_call" if mode == "host" else "ms",
                                 speedup=reference[mode]["median_ms"] / ts["median_ms"],
                                 note=f"rank {layer.lora_rank}; few-token kernel; launchers "
                                      f"{sorted(layer.few_token_launchers()) or ['JIT']}"
                                      + (f"; epilogue {settings}" if merge == "epilogue" and label != "r0" else "")))


@torch.no_grad()
def _dense_decode_times(dense: torch.nn.Linear, xs, x: torch.Tensor, repeats: int, host: bool = False) -> dict:
    """The dense reference of the decode rows: eager calls on rotating inputs, one call replayed in a CUDA graph,
    and (``host``) the host µs per call."""
    w, bias = dense.weight.detach(), dense.bias.detach()
    times = {"eager": cuda_time_ms(lambda: dense(xs()), repeats=repeats),
             "graph": _graph_time(lambda x: F.linear(x, w, bias), x, repeats)}
    if host:
        times["host"] = _host_stats(lambda: dense(x))
    return times


def _host_stats(fn) -> dict:
    """`host_time_us` five times, as the ``decode_host`` rows take it (µs per call, under the "_ms" keys)."""
    us = sorted(host_time_us(fn) for _ in range(5))
    return {"median_ms": us[2], "iqr_ms": us[3] - us[1], "min_ms": us[0], "max_ms": us[4], "repeats": 5}


def _metadata_read(layer, label: str, metadata_labels: dict) -> str:
    """For a layer that reads cuSPARSELt's metadata: how the kernel read it (words need a 16-byte aligned buffer
    and tile stride, else it reads bytes), so that a row never claims the words path it did not run."""
    from slope.kernels import sparse_gemv

    if label not in metadata_labels:
        return ""
    with _metadata_words(metadata_labels[label]):
        mode = sparse_gemv.metadata_mode("cusparselt", layer.packed, layer.values, layer._values_geometry[2])
    return "; metadata read in " + ("8-byte words" if mode == 2 else "bytes")


def decode_host_layers(d_out: int, d_in: int, dtype: torch.dtype, ranks) -> dict:
    """The layers whose one-token host cost is compared (``decode_host`` rows, `profile_host`): dense nn.Linear, and
    SLoPe at each rank label through cuSPARSELt and through the few-token kernel."""
    from slope.inference import SLoPeInferenceLinear

    calls = {"dense nn.Linear": torch.nn.Linear(d_in, d_out, device="cuda", dtype=dtype)}
    for label in ranks:
        rank = max(1, round(RANK_FRACTIONS[label] * d_in)) if RANK_FRACTIONS[label] else 0
        for kernel, threshold in (("cusparselt", 0), ("sparse_gemv", 1)):
            calls[f"slope {label} {kernel}"] = SLoPeInferenceLinear.from_layer(
                _simulated_layer(d_in, d_out, rank, dtype), few_token_kernel_tokens=threshold)
    return calls


def bench_decode_host(rows: list[dict], shape: str, dtype: torch.dtype, cfg: InferenceBenchConfig) -> None:
    from slope.kernels import sparse_gemv

    d = int(shape.split("x")[0])  # square
    x = torch.randn(1, d, device="cuda", dtype=dtype)
    calls = decode_host_layers(d, d, dtype, cfg.decode_ranks)
    # the few-token kernel three times: launched directly (the default: PyTorch's static launcher where it fits),
    # directly through the compiled kernel's own launcher, and every launch through Triton's JIT dispatch (what it
    # cost before `sparse_gemv.GemvPlan`); same layers, same process
    default = sparse_gemv.DIRECT_LAUNCH  # SLOPE_GEMV_DIRECT_LAUNCH=0 turns it off for the whole run
    kernel_calls = [name for name in calls if name.endswith("sparse_gemv") and default]
    dispatch = ([(name, name, default, None) for name in calls]
                + [(f"{name} (Triton launcher)", name, True, False) for name in kernel_calls]
                + [(f"{name} (JIT dispatch)", name, False, None) for name in kernel_calls])
    with torch.no_grad():
        for name, layer, direct, static in dispatch:
            fn = calls[layer]
            with sparse_gemv.direct_launch(direct, static=static):
                stats = _host_stats(lambda: fn(x))
            rows.append(_row("decode_host", f"{d}x{d}", d, d, 1, dtype, name, stats, unit="us_per_call",
                             note="host wall time per call: 100 calls queued behind a GPU sleep, no sync, 5 runs"))


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv)
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"bench_inference: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_inference needs a CUDA GPU")
    rows: list[dict] = []
    shapes = {"decode": cfg.decode_shapes, "decode_merge": cfg.decode_shapes, "decode_host": ("1024x1024", "5120x5120")}
    blocks = [(section, shape, dtype) for section in cfg.sections for dtype in cfg.dtypes
              for shape in shapes.get(section, cfg.shapes)]
    benches = {"fused": bench_fused, "layers": bench_layers, "decode_host": bench_decode_host, "decode": bench_decode,
               "decode_merge": bench_decode_merge}
    for section, shape, dtype in tqdm(blocks, desc="bench_inference", file=sys.stderr, disable=None):
        block: list[dict] = []
        benches[section](block, shape, getattr(torch, dtype), cfg)
        write_rows(cfg.output, block, columns=COLUMNS, config=cfg)  # each block lands at once: a timeout loses little
        rows += block
    for row in rows:
        print(f"{row['benchmark']:>11} {row['shape']:>16} {row['dtype']:>9} {str(row['tokens']):>5} "
              f"{row['variant']:<40} {row['median']:>9} {row['unit']:<6} x{row['speedup_vs_dense']} {row['note'][:50]}")
    torch.cuda.synchronize()
    return rows


if __name__ == "__main__":
    main()
