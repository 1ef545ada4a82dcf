"""2:4 mask bookkeeping for the compressed path: nibble masks and the Triton kernels that use them.

The forward mask of a compressed weight is stored as one uint8 per group of 4 along d_in (bit i set = element
i kept): a quarter byte per weight instead of a byte. Triton kernels move between layouts:

* `gather_kept(dense, nibbles)`   (m, k) -> (m, k/2): the kept entries in order (BWD-1: dW into compressed layout)
* `scatter_kept(values, nibbles)` (m, k/2) -> (m, k): dense W_R with zeros elsewhere
* `transpose_mask(values, nibbles)`: W_RCᵀ's mask — 2:4 along d_out of W_R, with the stable tie-break of
  `slope.masks.nm_mask` (larger |w| first, then the lower index) — as nibbles plus a 0/1 indicator (k, m)
  that cuSPARSELt compresses to get the metadata
* `transpose_values(values, nibbles, wt_nibbles, out)`: W_RCᵀ's kept values written straight into the
  compressed W_RCᵀ, so the optimizer never materialises a dense W_R
* `transpose_mask_values(values, nibbles, wt_nibbles, out)`: both in one pass (new mask, values under it)
* `write_metadata(nibbles, out)`: cuSPARSELt's metadata bytes written from nibble masks, without its compress
  (the layout, `metadata_slot`, was measured on an H100 with cuSPARSELt 0.8; `SpMM.writes_metadata` checks it
  against the library's own compress before a layer relies on it); `nibbles_from_metadata` reads them back

Values inside a group are ordered by position, which is the order of cuSPARSELt's compressed values.
Triton is imported lazily: `import slope` never needs it. Under ``TRITON_INTERPRET=1`` the kernels run on CPU.
"""
from __future__ import annotations

import torch

_BITS = torch.tensor([1, 2, 4, 8], dtype=torch.uint8)


def pack_nibbles(mask: torch.Tensor) -> torch.Tensor:
    """bool (m, k) -> uint8 (m, k/4); bit i of a byte = element i of that group of 4 is kept."""
    m, k = mask.shape
    groups = mask.reshape(m, k // 4, 4).to(torch.uint8) * _BITS.to(mask.device)
    return groups.sum(-1, dtype=torch.uint8)


def unpack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 (m, k/4) -> bool (m, k)."""
    m, g = nibbles.shape
    return ((nibbles.unsqueeze(-1) & _BITS.to(nibbles.device)) != 0).reshape(m, g * 4)


_compiled = None
_BLOCK = 1024


def _get():
    global _compiled
    if _compiled is None:
        from . import nm_pack_triton as k

        _compiled = {"gather": k.gather_kernel, "gather_words": k.gather_words_kernel, "scatter": k.scatter_kernel,
                     "transpose": k.transpose_kernel, "adamw": k.adamw_kernel, "metadata": k.metadata_kernel}
    return _compiled


def _as_words(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` (contiguous) seen as wider words ``dtype`` (e.g. 4 fp16 as one int64), or None where no such view
    exists (not contiguous, last dim not a multiple of the words' width, or a misaligned start)."""
    width = torch.empty((), dtype=dtype).element_size()
    ratio = width // t.element_size()
    if ratio < 1 or not t.is_contiguous() or t.shape[-1] % ratio or t.data_ptr() % width:
        return None
    return t.view(dtype)


def gather_kept(dense: torch.Tensor, nibbles: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(m, k) dense -> (m, k/2) kept entries (nibbles must have exactly two bits per group)."""
    m, k = dense.shape
    out = torch.empty(m, k // 2, device=dense.device, dtype=out_dtype or dense.dtype)
    groups = m * k // 4
    grid = (triton_cdiv(groups, _BLOCK),)
    dense = dense.contiguous()
    words = _as_words(dense, torch.int64) if dense.dtype == out.dtype and dense.element_size() == 2 else None
    if words is not None:  # BWD-1's case (16-bit dW in, same dtype out): move bits, a group per 8-byte load
        _get()["gather_words"][grid](words, nibbles.contiguous(), out.view(torch.int32), groups, BLOCK=_BLOCK)
    else:
        _get()["gather"][grid](dense, nibbles.contiguous(), out, groups, BLOCK=_BLOCK)
    return out


def scatter_kept(values: torch.Tensor, nibbles: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(m, k/2) kept entries -> (m, k) dense with zeros at pruned positions."""
    m, half = values.shape
    out = torch.empty(m, half * 2, device=values.device, dtype=out_dtype or values.dtype)
    groups = m * half // 2
    grid = (triton_cdiv(groups, _BLOCK),)
    _get()["scatter"][grid](values.contiguous(), nibbles.contiguous(), out, groups, BLOCK=_BLOCK)
    return out


# Tile of the transpose kernel: groups of 4 rows × groups of 4 columns of W_R per program, and warps. Measured on
# an H100 at 20480x5120 (results/sweep_transpose_h100.csv): mask + values in one pass 0.145 ms (2.5 TB/s), values
# alone 0.165 ms at 454cbba; the previous kernel (one lane per row group walking the columns, uncoalesced loads)
# took 0.50-0.53 ms (8428118). Tiles of 16-32 x 16-32 groups are within 3% of each other; 64-wide ones spill.
# AdamW fused into this pass (masters read once) was tried and dropped: 0.649 ms against 0.496 + 0.144 ms for the
# two kernels at 20480x5120 (the fused one moves 11% fewer bytes, at 2.5 TB/s instead of 3.0; 56bd531).
TRANSPOSE_LAUNCH = {"row_groups": 16, "col_groups": 32, "num_warps": 4}


def _transpose_launch(values, nibbles, out, wt_nibbles, mode: int, launch: dict | None = None) -> None:
    m, half = values.shape
    k = half * 2
    launch = {**TRANSPOSE_LAUNCH, **(launch or {})}
    values = values.contiguous()
    # Pairs of values move as one word where the dtypes allow: fp32 masters in (8 bytes per group), 16-bit
    # W_RCᵀ values out (4 bytes per group). The kernel has a 2-load / 2-store path for everything else.
    pairs = _as_words(values, torch.int64) if values.dtype == torch.float32 and launch.get("words", True) else None
    packed_out = None
    if mode != 1 and out.dtype in (torch.float16, torch.bfloat16) and launch.get("words", True):
        packed_out = _as_words(out, torch.int32)
    grid = (triton_cdiv(m // 4, launch["row_groups"]), triton_cdiv(k // 4, launch["col_groups"]))
    _get()["transpose"][grid](
        values if pairs is None else pairs, nibbles.contiguous(), out if packed_out is None else packed_out,
        wt_nibbles, m, k, ROW_GROUPS=launch["row_groups"], COL_GROUPS=launch["col_groups"], MODE=mode,
        PACKED=0 if packed_out is None else (1 if out.dtype == torch.float16 else 2), FP32_PAIRS=pairs is not None,
        num_warps=launch["num_warps"])


def transpose_mask(values: torch.Tensor, nibbles: torch.Tensor, wt_nibbles: torch.Tensor,
                   dtype: torch.dtype, launch: dict | None = None) -> torch.Tensor:
    """Derive W_RCᵀ's mask from W_R's kept values (m, k/2): writes ``wt_nibbles`` (k, m/4), returns the 0/1
    indicator (k, m) in ``dtype`` (exactly 2 ones per group, as `slope.masks.nm_mask` picks them, ties included)."""
    m, half = values.shape
    indicator = torch.empty(half * 2, m, device=values.device, dtype=dtype)
    _transpose_launch(values, nibbles, indicator, wt_nibbles, mode=1, launch=launch)
    return indicator


def transpose_values(values: torch.Tensor, nibbles: torch.Tensor, wt_nibbles: torch.Tensor,
                     out: torch.Tensor, launch: dict | None = None) -> torch.Tensor:
    """Write W_RCᵀ's kept values (k, m/2) under ``wt_nibbles`` into ``out`` (e.g. a compressed buffer's values)."""
    _transpose_launch(values, nibbles, out, wt_nibbles, mode=0, launch=launch)
    return out


def transpose_mask_values(values: torch.Tensor, nibbles: torch.Tensor, wt_nibbles: torch.Tensor,
                          out: torch.Tensor, launch: dict | None = None) -> torch.Tensor:
    """`transpose_mask` and `transpose_values` in one pass: writes ``wt_nibbles`` (k, m/4) and W_RCᵀ's kept
    values (k, m/2) into ``out``; no indicator (with `write_metadata`, cuSPARSELt's compress is not needed)."""
    _transpose_launch(values, nibbles, out, wt_nibbles, mode=2, launch=launch)
    return out


# ----- cuSPARSELt metadata without cuSPARSELt's compress ----------------------------------------------------------
# Measured (performance_experiments/probe_cslt_layout.py; H100, cuSPARSELt 0.8, both call layouts, fp16 and bf16,
# 20 shapes from 128x128 to 1024x3072): the metadata after the values is one nibble per group of 4, p0 | p1 << 2
# (the kept positions, p0 < p1), nibble s = byte s // 2 (low nibble first), at a fixed place per group: blocks of
# 64 rows × 8 groups (512 nibbles), row-major over blocks; inside a block the nibble index's bits are, from bit 0:
# row bit 3, group bit 2, group bits 0-1, row bits 0-2, row bits 4-5. Shapes that are not multiples of 128 are
# padded by the library and are not written this way.

def metadata_slot(r: torch.Tensor, q: torch.Tensor, cols: int) -> torch.Tensor:
    """Nibble index in the metadata of a (rows, cols) compressed matrix that holds group q of row r."""
    inner = ((r >> 3) & 1) | (((q >> 2) & 1) << 1) | ((q & 3) << 2) | ((r & 7) << 4) | (((r >> 4) & 3) << 7)
    return ((r // 64) * (cols // 32) + q // 8) * 512 + inner


def direct_metadata_shape(rows: int, cols: int) -> bool:
    """Whether `write_metadata` covers this shape (the measured layout has no padding at multiples of 128)."""
    return rows % 128 == 0 and cols % 128 == 0


def metadata_reference(nibbles: torch.Tensor) -> torch.Tensor:
    """The metadata bytes (rows·cols/8,) of nibble masks (rows, cols/4), in torch: the reference for the kernel."""
    rows, col_groups = nibbles.shape
    if not direct_metadata_shape(rows, col_groups * 4):
        raise ValueError(f"metadata layout known for multiples of 128 only, got ({rows}, {col_groups * 4})")
    bits = unpack_nibbles(nibbles).view(rows, col_groups, 4).to(torch.int64)
    index = torch.arange(4, device=nibbles.device)
    first = torch.where(bits.bool(), index, 4).min(-1).values        # p0: the lower kept position
    second = torch.where(bits.bool(), index, -1).max(-1).values      # p1: the higher one
    code = (first | (second << 2)).to(torch.uint8)
    r = torch.arange(rows, device=nibbles.device).view(-1, 1).expand(rows, col_groups)
    q = torch.arange(col_groups, device=nibbles.device).view(1, -1).expand(rows, col_groups)
    slots = torch.empty(rows * col_groups, dtype=torch.uint8, device=nibbles.device)
    slots[metadata_slot(r, q, col_groups * 4).reshape(-1)] = code.reshape(-1)
    return slots[0::2] | (slots[1::2] << 4)


def nibbles_from_metadata(metadata: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The nibble masks (rows, cols/4) of cuSPARSELt metadata bytes (rows·cols/8,): `metadata_reference` inverted.

    The layout's bits are a fixed permutation, so this is a reshape and a permute, not a gather: a 64-row × 8-group
    block is 256 bytes whose index bits are, from the top, row bits 5, 4, 2, 1, 0 and group bits 1, 0, 2, and the
    nibble inside a byte (low first) is row bit 3. Used where a layer keeps no mask of its own (`slope.inference`).
    """
    if not direct_metadata_shape(rows, cols):
        raise ValueError(f"nibbles_from_metadata: layout known for multiples of 128 only, got ({rows}, {cols})")
    if metadata.dtype != torch.uint8 or metadata.numel() != rows * cols // 8:
        raise ValueError(f"nibbles_from_metadata: metadata must be {rows * cols // 8} uint8 bytes, got "
                         f"{metadata.numel()} {metadata.dtype}")
    halves = torch.stack([metadata & 15, metadata >> 4], dim=-1)  # the last axis is row bit 3
    # (band, block, r5, r4, r2, r1, r0, q1, q0, q2, r3) -> (band, r5, r4, r3, r2, r1, r0, block, q2, q1, q0)
    codes = halves.reshape(rows // 64, cols // 32, *(2,) * 9).permute(0, 2, 3, 10, 4, 5, 6, 1, 9, 7, 8)
    codes = codes.reshape(rows, cols // 4).to(torch.int32)
    one = torch.ones((), dtype=torch.int32, device=metadata.device)
    return ((one << (codes & 3)) | (one << (codes >> 2))).to(torch.uint8)  # code p0 | p1 << 2 -> bits p0 and p1


def write_metadata(nibbles: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt metadata of nibble masks (rows, cols/4) with two bits each, into ``out`` (uint8, rows·cols/8)."""
    rows, col_groups = nibbles.shape
    if not direct_metadata_shape(rows, col_groups * 4):
        raise ValueError(f"write_metadata: layout known for multiples of 128 only, got ({rows}, {col_groups * 4})")
    n_bytes = rows * col_groups // 2
    if out.dtype != torch.uint8 or out.numel() != n_bytes:
        raise ValueError(f"write_metadata: out must be {n_bytes} uint8 bytes, got {out.numel()} {out.dtype}")
    col_blocks = col_groups // 8  # 256-byte blocks per 64-row band
    grid = (rows // 64, triton_cdiv(col_blocks, _METADATA_BLOCKS))
    _get()["metadata"][grid](nibbles.contiguous(), out, col_groups * 4, Q_BLOCKS=_METADATA_BLOCKS)
    return out


# 256-byte metadata blocks per program (1024 lanes)
_METADATA_BLOCKS = 4


def adamw_step_(master: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
                values: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                step: int) -> None:
    """Fused AdamW (decoupled decay) on fp32 ``master``/moments in place; writes ``values`` = master rounded."""
    n = master.numel()
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    _get()["adamw"][(triton_cdiv(n, _BLOCK),)](master, exp_avg, exp_avg_sq, grad.contiguous(), values, n,
                                         1 - lr * weight_decay, beta1, beta2, lr / bias1, 1 / bias2**0.5, eps,
                                         BLOCK=_BLOCK)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
