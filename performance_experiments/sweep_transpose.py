"""Tune the tile of the W_RCᵀ transpose kernel on the GPU, and time the optimizer's other mask passes; prints and
saves a table (one row per kernel and launch, with the HBM bandwidth it reached).

    python -m performance_experiments.sweep_transpose --output runs/sweep_transpose.csv

Kernels: ``mask+values`` (the paper's every-step rebuild: new W_RCᵀ mask and values, one pass), ``values`` (values
under the stored mask), ``metadata`` (cuSPARSELt metadata from the nibbles) and ``gather`` (BWD-1's kept entries of
a 16-bit dW), with their word-sized loads/stores on and off where they have both paths.
"""
from __future__ import annotations

import argparse
import itertools

import torch

from experiments.bench import cuda_time_ms
from experiments.results_io import write_rows

COLUMNS = ("kernel", "d_out", "d_in", "block", "groups", "num_warps", "words", "median", "iqr", "unit", "repeats",
           "gbytes_per_s")
# (row groups, column groups) per program: 256 to 2048 groups of 4x4 weights
TILES = [(rg, cg) for rg, cg in itertools.product((16, 32, 64), (8, 16, 32, 64)) if 256 <= rg * cg <= 2048]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sweep_transpose.csv")
    parser.add_argument("--d-out", type=int, default=20480)
    parser.add_argument("--d-in", type=int, default=5120)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from slope.kernels import nm_pack
    from slope.masks import row_mask

    m, k = args.d_out, args.d_in
    w = torch.randn(m, k, device="cuda")
    nib = nm_pack.pack_nibbles(row_mask(w, 2, 4))
    master = nm_pack.gather_kept(w, nib)
    wt_nib = torch.empty(k, m // 4, device="cuda", dtype=torch.uint8)
    out = torch.empty(k, m // 2, device="cuda", dtype=torch.bfloat16)
    dense_grad = w.to(torch.bfloat16)
    meta = torch.empty(k * m // 8, device="cuda", dtype=torch.uint8)
    # bytes that must move: fp32 values + nibbles in; bf16 kept values out, plus the new nibbles for mask+values
    weights = m * k
    moved = {"values": weights // 2 * 4 + weights // 4 + weights // 4 + weights // 2 * 2,
             "mask+values": weights // 2 * 4 + weights // 4 + weights // 2 * 2 + weights // 4,
             "metadata": weights // 4 + weights // 8, "gather": weights * 2 + weights // 4 + weights // 2 * 2}
    rows = []

    def measure(kernel: str, fn, block="", groups="", warps="", words=True) -> dict:
        stats = cuda_time_ms(fn, repeats=args.repeats)
        row = {"kernel": kernel, "d_out": m, "d_in": k, "block": block, "groups": groups, "num_warps": warps,
               "words": words, "median": round(stats["median_ms"], 4), "iqr": round(stats["iqr_ms"], 4),
               "unit": "ms", "repeats": stats["repeats"],
               "gbytes_per_s": round(moved[kernel] / stats["median_ms"] / 1e6, 1)}
        write_rows(args.output, [row], columns=COLUMNS)  # as we go: a timeout keeps what was measured
        rows.append(row)
        print(row, flush=True)
        return row

    # block = row groups, groups = column groups per program
    for (rg, cg), warps in itertools.product(TILES, (4, 8)):
        launch = {"row_groups": rg, "col_groups": cg, "num_warps": warps}
        measure("mask+values", lambda: nm_pack.transpose_mask_values(master, nib, wt_nib, out, launch), rg, cg, warps)
    best = sorted((r for r in rows if r["kernel"] == "mask+values"), key=lambda r: r["median"])[:3]
    for r in best:
        for words in (True, False):
            launch = {"row_groups": r["block"], "col_groups": r["groups"], "num_warps": r["num_warps"],
                      "words": words}
            if not words:
                measure("mask+values", lambda: nm_pack.transpose_mask_values(master, nib, wt_nib, out, launch),
                        r["block"], r["groups"], r["num_warps"], words)
            measure("values", lambda: nm_pack.transpose_values(master, nib, wt_nib, out, launch),
                    r["block"], r["groups"], r["num_warps"], words)
    measure("metadata", lambda: nm_pack.write_metadata(wt_nib, meta), words="")
    measure("gather", lambda: nm_pack.gather_kept(dense_grad, nib))
    # the per-element kernel, as a dtype change (bf16 in, fp16 out) takes it
    measure("gather", lambda: nm_pack.gather_kept(dense_grad, nib, out_dtype=torch.float16), words=False)
    for kernel in ("mask+values", "values"):
        print(f"{kernel}: best launch shapes:")
        for r in sorted((r for r in rows if r["kernel"] == kernel), key=lambda r: r["median"])[:5]:
            print(f"   row_groups={r['block']:3} col_groups={r['groups']:3} warps={r['num_warps']} words={r['words']}"
                  f" {r['median']} ms {r['gbytes_per_s']} GB/s")


if __name__ == "__main__":
    main()
