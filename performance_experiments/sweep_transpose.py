"""Tune the launch shape of the W_RCᵀ transpose kernel (mask and values) on the GPU; prints and saves a table.

    python -m performance_experiments.sweep_transpose --output runs/sweep_transpose.csv
"""
from __future__ import annotations

import argparse
import itertools

import torch

from experiments.bench import cuda_time_ms
from experiments.results_io import write_rows

COLUMNS = ("kernel", "d_out", "d_in", "block", "groups", "num_warps", "median", "iqr", "unit", "repeats",
           "gbytes_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sweep_transpose.csv")
    parser.add_argument("--d-out", type=int, default=20480)
    parser.add_argument("--d-in", type=int, default=5120)
    args = parser.parse_args()
    from slope.kernels import nm_pack
    from slope.masks import row_mask

    m, k = args.d_out, args.d_in
    w = torch.randn(m, k, device="cuda")
    nib = nm_pack.pack_nibbles(row_mask(w, 2, 4))
    master = nm_pack.gather_kept(w, nib)
    wt_nib = torch.empty(k, m // 4, device="cuda", dtype=torch.uint8)
    out = torch.empty(k, m // 2, device="cuda", dtype=torch.bfloat16)
    # bytes that must move: fp32 values + nibbles in; values: bf16 kept values out; mask: indicator + nibbles out
    moved = {"values": m * k // 2 * 4 + m * k // 4 + k * m // 4 + k * m // 2 * 2,
             "mask": m * k // 2 * 4 + m * k // 4 + k * m * 2 + k * m // 4}
    rows = []
    # Each launch shape compiles two kernels (~3 s each), so the grid is kept small.
    for block, groups, warps in itertools.product((128, 256), (1, 4, 16), (4, 8)):
        launch = {"block": block, "groups": groups, "num_warps": warps}
        block_rows = []
        for kernel, fn in (("mask", lambda: nm_pack.transpose_mask(master, nib, wt_nib, torch.bfloat16, launch)),
                           ("values", lambda: nm_pack.transpose_values(master, nib, wt_nib, out, launch))):
            stats = cuda_time_ms(fn, repeats=20)
            block_rows.append({"kernel": kernel, "d_out": m, "d_in": k, "block": block, "groups": groups, "num_warps": warps,
                         "median": round(stats["median_ms"], 4), "iqr": round(stats["iqr_ms"], 4), "unit": "ms",
                         "repeats": stats["repeats"],
                         "gbytes_per_s": round(moved[kernel] / stats["median_ms"] / 1e6, 1)})
        write_rows(args.output, block_rows, columns=COLUMNS)  # as we go: a timeout keeps what was measured
        rows += block_rows
        print(block_rows, flush=True)
    for kernel in ("mask", "values"):
        best = sorted((r for r in rows if r["kernel"] == kernel), key=lambda r: r["median"])[:5]
        print(f"{kernel}: best of {len(rows) // 2} launch shapes:")
        for r in best:
            print(f"   block={r['block']:4} groups={r['groups']:3} warps={r['num_warps']} {r['median']} ms "
                  f"{r['gbytes_per_s']} GB/s")


if __name__ == "__main__":
    main()
