"""Triton kernels behind `slope.kernels.nm_pack` (imported lazily: `import slope` never needs triton)."""
import triton
import triton.language as tl


@triton.jit
def _two_positions(nib):
    low = tl.where((nib & 1) != 0, 0, tl.where((nib & 2) != 0, 1, tl.where((nib & 4) != 0, 2, 3)))
    rest = nib & (nib - 1)  # clear the lowest set bit
    high = tl.where((rest & 1) != 0, 0, tl.where((rest & 2) != 0, 1, tl.where((rest & 4) != 0, 2, 3)))
    return low, high


@triton.jit
def gather_kernel(dense_ptr, nib_ptr, out_ptr, groups, BLOCK: tl.constexpr):
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = g < groups
    nib = tl.load(nib_ptr + g, mask=valid, other=3).to(tl.int32)
    p0, p1 = _two_positions(nib)
    base = g.to(tl.int64) * 4
    v0 = tl.load(dense_ptr + base + p0, mask=valid)
    v1 = tl.load(dense_ptr + base + p1, mask=valid)
    out = g.to(tl.int64) * 2
    tl.store(out_ptr + out, v0.to(out_ptr.dtype.element_ty), mask=valid)
    tl.store(out_ptr + out + 1, v1.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def gather_words_kernel(words_ptr, nib_ptr, out_ptr, groups, BLOCK: tl.constexpr):
    # gather_kernel for 16-bit data, as bits: each group's 4 values arrive as one int64 and its 2 kept ones leave
    # as one int32 (one 8-byte load and one 4-byte store per lane instead of two 2-byte loads and stores)
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = g < groups
    nib = tl.load(nib_ptr + g, mask=valid, other=3).to(tl.int32)
    p0, p1 = _two_positions(nib)
    word = tl.load(words_ptr + g, mask=valid, other=0)
    low = (word >> (p0 * 16).to(tl.int64)) & 0xFFFF
    high = (word >> (p1 * 16).to(tl.int64)) & 0xFFFF
    tl.store(out_ptr + g, (low | (high << 16)).to(tl.int32), mask=valid)


@triton.jit
def scatter_kernel(values_ptr, nib_ptr, out_ptr, groups, BLOCK: tl.constexpr):
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = g < groups
    nib = tl.load(nib_ptr + g, mask=valid, other=3).to(tl.int32)
    p0, p1 = _two_positions(nib)
    v0 = tl.load(values_ptr + g.to(tl.int64) * 2, mask=valid)
    v1 = tl.load(values_ptr + g.to(tl.int64) * 2 + 1, mask=valid)
    zero = tl.zeros_like(v0)
    base = g.to(tl.int64) * 4
    for q in tl.static_range(4):
        val = tl.where(p0 == q, v0, tl.where(p1 == q, v1, zero))
        tl.store(out_ptr + base + q, val.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _column_keep(a0, a1, a2, a3):
    # 2 of 4 by magnitude with a stable tie-break (lower index first), as slope.masks.nm_mask
    k0 = ((a1 > a0).to(tl.int32) + (a2 > a0).to(tl.int32) + (a3 > a0).to(tl.int32)) < 2
    k1 = ((a0 >= a1).to(tl.int32) + (a2 > a1).to(tl.int32) + (a3 > a1).to(tl.int32)) < 2
    k2 = ((a0 >= a2).to(tl.int32) + (a1 >= a2).to(tl.int32) + (a3 > a2).to(tl.int32)) < 2
    k3 = ((a0 >= a3).to(tl.int32) + (a1 >= a3).to(tl.int32) + (a2 >= a3).to(tl.int32)) < 2
    return k0, k1, k2, k3


@triton.jit
def _row_values(values_ptr, nib_ptr, row, g, k, valid, FP32_PAIRS: tl.constexpr):
    # the 4 dense entries of group g in `row`, rebuilt from its two kept values and nibble. FP32_PAIRS:
    # ``values_ptr`` is the fp32 values seen as int64 (m, k/4), so each group's pair arrives in one 8-byte load.
    nib = tl.load(nib_ptr + row * (k // 4) + g, mask=valid, other=3).to(tl.int32)
    p0, p1 = _two_positions(nib)
    if FP32_PAIRS:
        pair = tl.load(values_ptr + row * (k // 4) + g, mask=valid, other=0)
        v0 = pair.to(tl.int32).to(tl.float32, bitcast=True)          # the low word is the first value
        v1 = (pair >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        v0 = tl.load(values_ptr + row * (k // 2) + g * 2, mask=valid, other=0.0).to(tl.float32)
        v1 = tl.load(values_ptr + row * (k // 2) + g * 2 + 1, mask=valid, other=0.0).to(tl.float32)
    zero = tl.zeros_like(v0)
    c0 = tl.where(p0 == 0, v0, zero)
    c1 = tl.where(p0 == 1, v0, tl.where(p1 == 1, v1, zero))
    c2 = tl.where(p0 == 2, v0, tl.where(p1 == 2, v1, zero))
    c3 = tl.where(p1 == 3, v1, zero)
    return c0, c1, c2, c3


@triton.jit
def _column_mask(ind_ptr, wt_nib_ptr, col, row0, r, m, x0, x1, x2, x3, valid):
    # W_RCᵀ's mask for one column group (4 rows of W_R at one column): record it and write its 0/1 indicator
    k0, k1, k2, k3 = _column_keep(tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3))
    nib = k0.to(tl.int32) + 2 * k1.to(tl.int32) + 4 * k2.to(tl.int32) + 8 * k3.to(tl.int32)
    tl.store(wt_nib_ptr + col * (m // 4) + r, nib.to(tl.uint8), mask=valid)
    ty = ind_ptr.dtype.element_ty
    base = col * m + row0
    tl.store(ind_ptr + base + 0, k0.to(ty), mask=valid)
    tl.store(ind_ptr + base + 1, k1.to(ty), mask=valid)
    tl.store(ind_ptr + base + 2, k2.to(ty), mask=valid)
    tl.store(ind_ptr + base + 3, k3.to(ty), mask=valid)


@triton.jit
def _store_column_values(out_ptr, nib, col, r, m, x0, x1, x2, x3, valid, PACKED: tl.constexpr):
    # the two kept values of one column group (positions from ``nib``), in position order, into W_RCᵀ's
    # compressed values (k, m/2). PACKED (1 = fp16, 2 = bf16): ``out_ptr`` is that buffer seen as int32 (k, m/4),
    # and the two 16-bit values leave as one 4-byte store instead of two 2-byte ones.
    q0, q1 = _two_positions(nib)
    v0 = tl.where(q0 == 0, x0, tl.where(q0 == 1, x1, x2))
    v1 = tl.where(q1 == 1, x1, tl.where(q1 == 2, x2, x3))
    if PACKED:
        ty = tl.float16 if PACKED == 1 else tl.bfloat16
        low = v0.to(ty).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        high = v1.to(ty).to(tl.int16, bitcast=True).to(tl.int32)
        tl.store(out_ptr + col * (m // 4) + r, low | (high << 16), mask=valid)
    else:
        ty = out_ptr.dtype.element_ty
        base = col * (m // 2) + r * 2
        tl.store(out_ptr + base, v0.to(ty), mask=valid)
        tl.store(out_ptr + base + 1, v1.to(ty), mask=valid)


@triton.jit
def _column_values(out_ptr, wt_nib_ptr, col, r, m, x0, x1, x2, x3, valid, PACKED: tl.constexpr):
    # values under the stored W_RCᵀ mask
    nib = tl.load(wt_nib_ptr + col * (m // 4) + r, mask=valid, other=3).to(tl.int32)
    _store_column_values(out_ptr, nib, col, r, m, x0, x1, x2, x3, valid, PACKED)


@triton.jit
def _column_mask_values(out_ptr, wt_nib_ptr, col, r, m, x0, x1, x2, x3, valid, PACKED: tl.constexpr):
    # derive W_RCᵀ's mask for one column group, record it, and write its values under it (one pass)
    k0, k1, k2, k3 = _column_keep(tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3))
    nib = k0.to(tl.int32) + 2 * k1.to(tl.int32) + 4 * k2.to(tl.int32) + 8 * k3.to(tl.int32)
    tl.store(wt_nib_ptr + col * (m // 4) + r, nib.to(tl.uint8), mask=valid)
    _store_column_values(out_ptr, nib, col, r, m, x0, x1, x2, x3, valid, PACKED)


@triton.jit
def _column(out_ptr, wt_nib_ptr, col, row0, r, m, x0, x1, x2, x3, valid, MODE: tl.constexpr, PACKED: tl.constexpr):
    if MODE == 1:
        _column_mask(out_ptr, wt_nib_ptr, col, row0, r, m, x0, x1, x2, x3, valid)
    elif MODE == 2:
        _column_mask_values(out_ptr, wt_nib_ptr, col, r, m, x0, x1, x2, x3, valid, PACKED)
    else:
        _column_values(out_ptr, wt_nib_ptr, col, r, m, x0, x1, x2, x3, valid, PACKED)


@triton.jit
def transpose_kernel(values_ptr, nib_ptr, out_ptr, wt_nib_ptr, m, k, ROW_GROUPS: tl.constexpr,
                     COL_GROUPS: tl.constexpr, MODE: tl.constexpr, PACKED: tl.constexpr,
                     FP32_PAIRS: tl.constexpr):
    # From W_R's kept values (m, k/2) + forward nibbles, without a dense W_R in memory:
    #   MODE 0: write W_RCᵀ's kept values (k, m/2) under the stored wt nibbles
    #   MODE 1: derive W_RCᵀ's 2:4 mask (along d_out, stable ties) -> wt nibbles + 0/1 indicator (k, m)
    #   MODE 2: derive the mask -> wt nibbles, and write the kept values under it (modes 1 + 0 in one pass)
    # A program owns a tile of ROW_GROUPS groups of 4 rows × COL_GROUPS groups of 4 columns of W_R, as 2-D
    # (row group, column group) tensors. Row i of each row group is rebuilt densely (4 columns per group); the
    # transpose is only in the addressing: column 4g + q of rows 4r..4r+3 is W_RCᵀ's group r of row 4g + q, an
    # elementwise combination of those tensors. Loads run along W_R's rows and stores along W_RCᵀ's, so Triton
    # gives each its own coalesced layout and moves the tile between them through shared memory. (One lane per
    # row group walking the columns, the previous form, read 8 bytes of a different row per lane: uncoalesced,
    # ~25% of HBM bandwidth.)
    r = (tl.program_id(0) * ROW_GROUPS + tl.arange(0, ROW_GROUPS)).to(tl.int64)[:, None]
    g = (tl.program_id(1) * COL_GROUPS + tl.arange(0, COL_GROUPS)).to(tl.int64)[None, :]
    valid = (r < m // 4) & (g < k // 4)
    row0 = r * 4
    a0, a1, a2, a3 = _row_values(values_ptr, nib_ptr, row0 + 0, g, k, valid, FP32_PAIRS)
    b0, b1, b2, b3 = _row_values(values_ptr, nib_ptr, row0 + 1, g, k, valid, FP32_PAIRS)
    c0, c1, c2, c3 = _row_values(values_ptr, nib_ptr, row0 + 2, g, k, valid, FP32_PAIRS)
    d0, d1, d2, d3 = _row_values(values_ptr, nib_ptr, row0 + 3, g, k, valid, FP32_PAIRS)
    col = g * 4
    _column(out_ptr, wt_nib_ptr, col + 0, row0, r, m, a0, b0, c0, d0, valid, MODE, PACKED)
    _column(out_ptr, wt_nib_ptr, col + 1, row0, r, m, a1, b1, c1, d1, valid, MODE, PACKED)
    _column(out_ptr, wt_nib_ptr, col + 2, row0, r, m, a2, b2, c2, d2, valid, MODE, PACKED)
    _column(out_ptr, wt_nib_ptr, col + 3, row0, r, m, a3, b3, c3, d3, valid, MODE, PACKED)


@triton.jit
def metadata_kernel(nib_ptr, meta_ptr, cols, Q_BLOCKS: tl.constexpr):
    # cuSPARSELt metadata of a (rows, cols) 2:4 matrix straight from its nibble masks (rows, cols/4): byte b holds
    # the 2-bit positions (p0 | p1 << 2) of groups (r, q) in its low nibble and (r + 8, q) in its high one, where
    # (r, q) comes from b as `slope.kernels.nm_pack.metadata_slot` lays it out (64-row × 8-group blocks of 256
    # bytes, row-major over blocks). A program owns Q_BLOCKS consecutive blocks of one 64-row band: the grid's two
    # axes give the band and the block, so no lane divides by a runtime value (a 64-bit division per lane made
    # the 1-D form run at ~600 GB/s).
    col_blocks = cols // 32
    i = tl.arange(0, Q_BLOCKS * 256)
    block_q = tl.program_id(1) * Q_BLOCKS + (i >> 8)
    valid = block_q < col_blocks
    inner = i & 255
    r = tl.program_id(0).to(tl.int64) * 64 + ((inner >> 3) & 7) + (((inner >> 6) & 3) << 4)
    q = block_q * 8 + ((inner & 1) << 2) + ((inner >> 1) & 3)
    col_groups = cols // 4
    low = tl.load(nib_ptr + r * col_groups + q, mask=valid, other=3).to(tl.int32)
    high = tl.load(nib_ptr + (r + 8) * col_groups + q, mask=valid, other=3).to(tl.int32)
    l0, l1 = _two_positions(low)
    h0, h1 = _two_positions(high)
    byte = l0 | (l1 << 2) | (h0 << 4) | (h1 << 6)
    b = (tl.program_id(0).to(tl.int64) * col_blocks + block_q) * 256 + inner
    tl.store(meta_ptr + b, byte.to(tl.uint8), mask=valid)


@triton.jit
def adamw_kernel(master_ptr, exp_avg_ptr, exp_avg_sq_ptr, grad_ptr, values_ptr, n, decay_factor, beta1, beta2,
                 step_size, inv_sqrt_bias2, eps, BLOCK: tl.constexpr):
    # One pass of AdamW on fp32 masters; also writes the rounded 16-bit values (into the compressed W).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    p = tl.load(master_ptr + offs, mask=valid, other=0.0)
    g = tl.load(grad_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    m = tl.load(exp_avg_ptr + offs, mask=valid, other=0.0)
    v = tl.load(exp_avg_sq_ptr + offs, mask=valid, other=0.0)
    p = p * decay_factor
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - step_size * m / (tl.sqrt(v) * inv_sqrt_bias2 + eps)
    tl.store(master_ptr + offs, p, mask=valid)
    tl.store(exp_avg_ptr + offs, m, mask=valid)
    tl.store(exp_avg_sq_ptr + offs, v, mask=valid)
    tl.store(values_ptr + offs, p.to(values_ptr.dtype.element_ty), mask=valid)
