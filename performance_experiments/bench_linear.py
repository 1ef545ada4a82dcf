"""Compressed SLoPe linear vs dense ``nn.Linear`` on the GPU, in one process, reported as ratios.

Benchmarks (rows of one long-form CSV, provenance on every row):

* ``host``      host time to issue one SpMM call: cached extension vs torch's private op vs dense F.linear
* ``train``     linear forward+backward at 8192 tokens, and per phase (FWD, BWD-2, BWD-1 incl. the gather)
* ``infer``     forward only over token counts (crossover where sparse stops losing), both cuSPARSELt layouts
* ``optim``     ADAMWSparse step (incl. the W_RCᵀ rebuild) vs torch's fused AdamW on the dense fp32 weight
* ``mask``      the simulated layers' per-step W_RC mask (`slope.masks.nm_mask` along d_out of the fp32 W_R):
                pairwise-comparison ranking vs the stable sort it replaced (``speedup_vs_dense`` = sort / comparison)

Ideal figures beside the measurement: 1.5x for forward+backward (two of three GEMMs at 2x), 2x for inference,
and the cuSPARSELt-bound ceiling computed from the measured per-phase kernel times.

    python -m performance_experiments.bench_linear --output results/bench_linear_h100.csv
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tqdm import tqdm

from experiments.bench import Rotating, cuda_time_ms, host_time_us
from experiments.cli import parse_config
from experiments.results_io import write_rows
from performance_experiments.shapes import MLP_SHAPES

COLUMNS = ("benchmark", "shape", "d_in", "d_out", "tokens", "dtype", "variant", "median", "iqr", "min", "max",
           "unit", "repeats", "speedup_vs_dense", "ideal", "note")


@dataclass(frozen=True)
class BenchConfig:
    shapes: tuple[str, ...] = tuple(MLP_SHAPES)
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    train_tokens: int = 8192
    infer_tokens: tuple[str, ...] = ("16", "32", "64", "128", "256", "1024", "8192")
    repeats: int = 30
    output: str = "runs/bench_linear.csv"


PRESETS = {"h100": BenchConfig(), "quick": BenchConfig(shapes=("opt-13b.fc1",), dtypes=("bfloat16",), repeats=10,
                                                        infer_tokens=("16", "8192")),
           "optim": BenchConfig(shapes=("opt-13b.fc1", "llama-3-8b.up"), dtypes=())}


def _row(benchmark, shape, d_in, d_out, tokens, dtype, variant, stats, unit="ms", speedup="", ideal="", note=""):
    return {"benchmark": benchmark, "shape": shape, "d_in": d_in, "d_out": d_out, "tokens": tokens,
            "dtype": str(dtype).replace("torch.", ""), "variant": variant,
            "median": round(stats["median_ms"], 5), "iqr": round(stats["iqr_ms"], 5),
            "min": round(stats["min_ms"], 5), "max": round(stats["max_ms"], 5), "unit": unit,
            "repeats": stats["repeats"], "speedup_vs_dense": speedup if speedup == "" else round(speedup, 4),
            "ideal": ideal, "note": note}


def bench_host(rows: list[dict]) -> None:
    from slope.kernels.cusparselt import SpMM

    d, tokens, dtype = 1024, 16, torch.float16
    w = torch.randn(d, d, device="cuda", dtype=dtype)
    x = torch.randn(tokens, d, device="cuda", dtype=dtype)
    bias = torch.randn(d, device="cuda", dtype=dtype)
    calls = {"dense F.linear": lambda: F.linear(x, w, bias)}
    for implementation in ("extension", "torch"):
        op = SpMM(d, d, dtype, implementation=implementation)
        packed = op.compress(w * _mask(w))
        calls[f"spmm {implementation}"] = (lambda op=op, packed=packed: op(packed, x, bias))
    ext = SpMM(d, d, dtype, implementation="extension")
    packed = ext.compress(w * _mask(w))
    ext(packed, x, bias)  # chooses (and caches) the algorithm
    alg = ext._algs[(tokens, ext.layout == 0)]
    calls["raw op slope_cslt.spmm"] = lambda: torch.ops.slope_cslt.spmm(packed, d, d, x, bias, alg, ext.layout)
    for name, fn in calls.items():
        us = [host_time_us(fn) for _ in range(5)]
        us.sort()
        stats = {"median_ms": us[2], "iqr_ms": us[3] - us[1], "min_ms": us[0], "max_ms": us[-1], "repeats": 5}
        rows.append(_row("host", "1024x1024", d, d, tokens, dtype, name, stats, unit="us_per_call",
                         note="host wall time per call: 100 calls queued behind a GPU sleep, no sync, 5 runs"))


def _mask(w):
    from slope.masks import row_mask

    return row_mask(w, 2, 4)


def bench_train(rows: list[dict], shape: str, dtype: torch.dtype, cfg: BenchConfig) -> None:
    from slope.compressed import CompressedSLoPeLinear
    from slope.kernels import nm_pack

    d_in, d_out = MLP_SHAPES[shape]
    n = cfg.train_tokens
    dense = torch.nn.Linear(d_in, d_out, device="cuda", dtype=dtype)
    sparse = CompressedSLoPeLinear.from_dense(dense)
    xs = Rotating(lambda: torch.randn(n, d_in, device="cuda", dtype=dtype, requires_grad=True))
    gs = Rotating(lambda: torch.randn(n, d_out, device="cuda", dtype=dtype))

    def step(layer, params):
        def run():
            for p in params:
                p.grad = None
            layer(xs()).backward(gs())
        return run

    t_dense = cuda_time_ms(step(dense, [dense.weight, dense.bias]), repeats=cfg.repeats)
    t_sparse = cuda_time_ms(step(sparse, [sparse.values, sparse.bias]), repeats=cfg.repeats)
    x, g = xs(), gs()
    w = dense.weight.detach()
    phases = {
        "FWD": (lambda: F.linear(x, w, dense.bias), lambda: sparse.forward_op(sparse.w_packed, x, sparse.bias)),
        "BWD-2": (lambda: g @ w, lambda: sparse.backward_op(sparse.wt_packed, g)),
        "BWD-1": (lambda: g.t() @ x, lambda: nm_pack.gather_kept(g.t() @ x, sparse.mask_nibbles)),
    }
    phase_times = {}
    for phase, (dense_fn, sparse_fn) in phases.items():
        td, ts = cuda_time_ms(dense_fn, repeats=cfg.repeats), cuda_time_ms(sparse_fn, repeats=cfg.repeats)
        phase_times[phase] = (td["median_ms"], ts["median_ms"])
        rows.append(_row("train_phase", shape, d_in, d_out, n, dtype, f"{phase} dense", td))
        rows.append(_row("train_phase", shape, d_in, d_out, n, dtype, f"{phase} slope", ts,
                         speedup=td["median_ms"] / ts["median_ms"], ideal=1.0 if phase == "BWD-1" else 2.0))
    dense_gemms = sum(d for d, _ in phase_times.values())
    kernel_bound = dense_gemms / (phase_times["FWD"][1] + phase_times["BWD-2"][1] + phase_times["BWD-1"][0])
    rows.append(_row("train", shape, d_in, d_out, n, dtype, "dense nn.Linear fwd+bwd", t_dense))
    rows.append(_row("train", shape, d_in, d_out, n, dtype, "slope compressed fwd+bwd", t_sparse,
                     speedup=t_dense["median_ms"] / t_sparse["median_ms"], ideal=1.5,
                     note=f"cuSPARSELt-bound ceiling from measured phases: {kernel_bound:.3f}x; "
                          f"implementation={sparse.forward_op.implementation}, layout={sparse.forward_op.layout}"))


def bench_infer(rows: list[dict], shape: str, dtype: torch.dtype, cfg: BenchConfig) -> None:
    from slope.kernels.cusparselt import SpMM

    d_in, d_out = MLP_SHAPES[shape]
    w = torch.randn(d_out, d_in, device="cuda", dtype=dtype)
    w = w * _mask(w)
    bias = torch.randn(d_out, device="cuda", dtype=dtype)
    ops = {f"layout{layout}": SpMM(d_out, d_in, dtype, layout=layout, implementation="extension") for layout in (0, 1)}
    packed = {name: op.compress(w) for name, op in ops.items()}
    for tokens in map(int, cfg.infer_tokens):
        xs = Rotating(lambda: torch.randn(tokens, d_in, device="cuda", dtype=dtype))
        td = cuda_time_ms(lambda: F.linear(xs(), w, bias), repeats=cfg.repeats)
        rows.append(_row("infer", shape, d_in, d_out, tokens, dtype, "dense F.linear", td))
        for name, op in ops.items():
            ts = cuda_time_ms(lambda: op(packed[name], xs(), bias), repeats=cfg.repeats)
            rows.append(_row("infer", shape, d_in, d_out, tokens, dtype, f"slope spmm {name}", ts,
                             speedup=td["median_ms"] / ts["median_ms"], ideal=2.0,
                             note=f"alg={op._algs.get((tokens, bias is not None and op.layout == 0))}"))


def bench_optim(rows: list[dict], shape: str, cfg: BenchConfig) -> None:
    from slope.compressed import CompressedSLoPeLinear
    from slope.kernels import nm_pack
    from slope.kernels.cusparselt import metadata_view, values_view
    from slope.optim import ADAMWSparse

    d_in, d_out = MLP_SHAPES[shape]
    dense = torch.nn.Linear(d_in, d_out, bias=False, device="cuda")  # fp32 master, as AMP training keeps it
    dense.weight.grad = torch.randn_like(dense.weight)
    dense_opt = torch.optim.AdamW([dense.weight], lr=1e-4, weight_decay=0.1, fused=True)
    sparse = CompressedSLoPeLinear.from_dense(dense, dtype=torch.bfloat16)
    sparse.values.grad = torch.randn_like(sparse.values)
    # the W_RCᵀ metadata of a new mask: written from the nibbles (default where checked) or by cuSPARSELt's compress
    direct, previous = sparse.backward_op.writes_metadata(), os.environ.get("SLOPE_CSLT_DIRECT_METADATA")
    variants = [(1, "mask every step", "1"), (1, "mask every step, cuSPARSELt compress", "0"),
                (100, "mask every 100 steps", "1")]
    for freq, label, direct_env in variants:
        os.environ["SLOPE_CSLT_DIRECT_METADATA"] = direct_env
        opt = ADAMWSparse(torch.nn.Sequential(sparse), lr=1e-4, weight_decay=0.1, mask_change_freq=freq)
        td = cuda_time_ms(dense_opt.step, repeats=cfg.repeats)
        ts = cuda_time_ms(opt.step, repeats=cfg.repeats)
        writer = "metadata from nibbles" if direct and direct_env == "1" else "cuSPARSELt compress"
        rows.append(_row("optim", shape, d_in, d_out, "", "float32", "torch fused AdamW (dense fp32)", td))
        rows.append(_row("optim", shape, d_in, d_out, "", "bfloat16", f"ADAMWSparse ({label})", ts,
                         speedup=td["median_ms"] / ts["median_ms"], ideal="",
                         note=f"same weight count; includes the W_RCᵀ rebuild ({writer})"))
    if previous is None:
        os.environ.pop("SLOPE_CSLT_DIRECT_METADATA")
    else:
        os.environ["SLOPE_CSLT_DIRECT_METADATA"] = previous
    # where the sparse step's time goes
    state = opt.state[sparse.values]
    parts = {
        "part: fused AdamW kernel": lambda: nm_pack.adamw_step_(
            state["master"], state["exp_avg"], state["exp_avg_sq"], sparse.values.grad, sparse.values.data, lr=1e-4,
            beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=10),
        "part: W_RC^T mask + indicator kernel": lambda: nm_pack.transpose_mask(
            state["master"], sparse.mask_nibbles, sparse.wt_nibbles, torch.bfloat16),
        "part: W_RC^T values kernel (in place)": lambda: nm_pack.transpose_values(
            state["master"], sparse.mask_nibbles, sparse.wt_nibbles,
            values_view(sparse.wt_packed, d_in, d_out, torch.bfloat16)),
    }
    indicator = parts["part: W_RC^T mask + indicator kernel"]()
    parts["part: cuSPARSELt compress W_RC^T"] = lambda: sparse.backward_op.compress(indicator)
    parts["part: W_RC^T mask + values kernel (one pass)"] = lambda: nm_pack.transpose_mask_values(
        state["master"], sparse.mask_nibbles, sparse.wt_nibbles,
        values_view(sparse.wt_packed, d_in, d_out, torch.bfloat16))
    parts["part: W_RC^T metadata from nibbles (Triton)"] = lambda: nm_pack.write_metadata(
        sparse.wt_nibbles, metadata_view(sparse.wt_packed, d_in, d_out, torch.bfloat16))
    for label, fn in parts.items():
        rows.append(_row("optim_part", shape, d_in, d_out, "", "bfloat16", label, cuda_time_ms(fn, repeats=cfg.repeats)))


def bench_mask(rows: list[dict], shape: str, cfg: BenchConfig) -> None:
    from slope import masks

    d_in, d_out = MLP_SHAPES[shape]
    weight = torch.randn(d_out, d_in, device="cuda")
    w_r = weight * masks.row_mask(weight, 2, 4)
    by_sort = cuda_time_ms(lambda: masks._nm_mask_by_sort(w_r, 2, 4, 0), repeats=cfg.repeats)
    by_comparison = cuda_time_ms(lambda: masks.nm_mask(w_r, 2, 4, dim=0), repeats=cfg.repeats)
    same = torch.equal(masks.nm_mask(w_r, 2, 4, dim=0), masks._nm_mask_by_sort(w_r, 2, 4, 0))
    rows.append(_row("mask", shape, d_in, d_out, "", "float32", "W_RC mask: stable sort", by_sort))
    rows.append(_row("mask", shape, d_in, d_out, "", "float32", "W_RC mask: pairwise comparison", by_comparison,
                     speedup=by_sort["median_ms"] / by_comparison["median_ms"],
                     note="same mask as the sort" if same else "MASKS DIFFER"))


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_linear needs a CUDA GPU")
    from slope.kernels.cusparselt import load_extension

    load_extension()
    rows: list[dict] = []
    blocks = [("host", None, None)] + [(kind, shape, dtype) for shape in cfg.shapes
                                       for kind, dtypes in (("train+infer", cfg.dtypes), ("optim", ("float32",)))
                                       for dtype in dtypes]
    for kind, shape, dtype in tqdm(blocks, desc="bench_linear", file=sys.stderr, disable=None):
        block: list[dict] = []
        if kind == "host":
            bench_host(block)
        elif kind == "optim":
            bench_optim(block, shape, cfg)
            bench_mask(block, shape, cfg)
        else:
            bench_train(block, shape, getattr(torch, dtype), cfg)
            bench_infer(block, shape, getattr(torch, dtype), cfg)
        write_rows(cfg.output, block, columns=COLUMNS, config=cfg)  # each block lands at once: a timeout loses little
        rows += block
    for row in rows:
        if row["speedup_vs_dense"] != "" or row["benchmark"] in ("host", "optim_part", "mask"):
            print(f"{row['benchmark']:>11} {row['shape']:>16} {row['dtype']:>9} {str(row['tokens']):>5} "
                  f"{row['variant']:<34} {row['median']:>9} {row['unit']:<11} x{row['speedup_vs_dense']} "
                  f"{row['note'][:60]}")
    return rows


if __name__ == "__main__":
    main()
