"""Learn where cuSPARSELt's compress puts each 2:4 group's metadata nibble, on this GPU and library version.

Why: rebuilding W_RCᵀ every optimizer step needs new metadata, and cuSPARSELt's own compress of a dense 0/1
indicator is slow (3.7 ms for a 20480×5120 weight on an H100, ~60 GB/s). If the metadata is a fixed permutation
of per-group nibbles (as on Ampere, where PyTorch and xformers reverse-engineered it), a Triton pass can write it
directly. This probe finds that permutation instead of assuming the Ampere one:

* uniform probes: every group keeps the same pair (a, b) → the nibble code of each of the 6 pairs;
* bit probes: group g keeps (2, 3) when bit j of g is set, else (0, 1) → for every metadata nibble, the group
  whose nibble it holds (read bit by bit over the probes);
* check: a random mask compressed by cuSPARSELt equals the metadata built from that permutation, byte for byte.

Writes ``cslt_layout.npz`` (slot→group maps per shape and layout) and ``cslt_layout.json`` (summary) under --out.
The layout found on an H100 (cuSPARSELt 0.8) is `slope.kernels.nm_pack.metadata_slot`; results/cslt_layout_h100.json.
    python -m performance_experiments.probe_cslt_layout --out $OUT
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch

PAIRS = list(itertools.combinations(range(4), 2))  # the 6 ways to keep 2 of 4


def indicator(pairs: torch.Tensor, rows: int, cols: int, dtype) -> torch.Tensor:
    """(rows, cols) 0/1 matrix whose group g keeps PAIRS[pairs[g]] (groups of 4 along a row, row-major)."""
    table = torch.zeros(len(PAIRS), 4, dtype=dtype, device=pairs.device)
    for i, (a, b) in enumerate(PAIRS):
        table[i, a] = table[i, b] = 1
    return table[pairs].reshape(rows, cols)


def metadata_nibbles(dense: torch.Tensor, layout: int) -> np.ndarray:
    rows, cols = dense.shape
    packed = torch.ops.slope_cslt.compress(dense.contiguous(), layout)
    meta = packed[rows * cols // 2 * dense.element_size():].cpu().numpy()
    return np.stack([meta & 0xF, meta >> 4], axis=1).reshape(-1)


def probe(rows: int, cols: int, layout: int, dtype) -> dict:
    groups = rows * cols // 4
    dev = "cuda"
    codes = []
    for i in range(len(PAIRS)):
        nib = metadata_nibbles(indicator(torch.full((groups,), i, device=dev), rows, cols, dtype), layout)
        codes.append(sorted(set(nib.tolist())))
    result = {"rows": rows, "cols": cols, "layout": layout, "dtype": str(dtype), "slots": None, "codes": codes}
    if any(len(c) != 1 for c in codes):
        result["verdict"] = "uniform pairs give mixed nibbles: not a per-group nibble layout"
        return result
    code = [c[0] for c in codes]
    g = torch.arange(groups, device=dev)
    slot_group, bits = None, max(1, math.ceil(math.log2(groups)))
    for j in range(bits):
        nib = metadata_nibbles(indicator(torch.where((g >> j) & 1 == 1, 5, 0), rows, cols, dtype), layout)
        if slot_group is None:
            slot_group = np.zeros(nib.shape, dtype=np.int64)
            result["slots"] = int(nib.size)
        odd = ~np.isin(nib, [code[0], code[5]])
        if odd.any():
            result["verdict"] = f"bit probe {j}: {int(odd.sum())} nibbles are neither pair's code"
            return result
        slot_group |= (nib == code[5]).astype(np.int64) << j
    if slot_group.size != groups or not np.array_equal(np.sort(slot_group), np.arange(groups)):
        result["verdict"] = f"slot→group is not a permutation ({slot_group.size} slots, {groups} groups)"
        return result
    # byte-exact check on a random mask: metadata built from the permutation vs cuSPARSELt's
    random_pairs = torch.randint(0, 6, (groups,), device=dev, generator=torch.Generator(dev).manual_seed(rows + cols))
    want = metadata_nibbles(indicator(random_pairs, rows, cols, dtype), layout)
    built = np.asarray(code)[random_pairs.cpu().numpy()[slot_group]]
    result["random_mask_equal"] = bool(np.array_equal(want, built))
    result["verdict"] = "per-group nibble permutation" + ("" if result["random_mask_equal"] else " (random check FAILED)")
    result["slot_group"] = slot_group.astype(np.int32)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="128x128,128x256,256x128,256x512,512x256,384x640,640x384,1024x1024,"
                                             "96x160,160x96,1024x3072")
    args = parser.parse_args(argv)
    from slope.kernels.cusparselt import load_extension

    load_extension()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from experiments.provenance import provenance

    summary, arrays = {**provenance(), "probes": []}, {}
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        for layout in (0, 1):
            for dtype in ((torch.bfloat16, torch.float16) if shape == "256x512" else (torch.bfloat16,)):
                try:
                    res = probe(rows, cols, layout, dtype)
                except Exception as error:  # noqa: BLE001 - a probe that cuSPARSELt refuses is a result too
                    res = {"rows": rows, "cols": cols, "layout": layout, "dtype": str(dtype),
                           "verdict": f"error: {type(error).__name__}: {error}"}
                slot_group = res.pop("slot_group", None)
                if slot_group is not None:
                    arrays[f"{rows}x{cols}_L{layout}_{str(dtype).split('.')[-1]}"] = slot_group
                summary["probes"].append(res)
                print(json.dumps(res), flush=True)
    np.savez_compressed(out / "cslt_layout.npz", **arrays)
    (out / "cslt_layout.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
