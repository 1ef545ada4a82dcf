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


@triton.jit
def transpose_tile_kernel(values_ptr, nib_ptr, out_ptr, wt_nib_ptr, m, k, BR: tl.constexpr, BG: tl.constexpr,
                          MASK: tl.constexpr):
    # Same contract as `transpose_kernel`, on 2-D tiles: BR column groups of W_R (4·BR rows) x BG groups of 4
    # along k (4·BG columns). Rows of the tile load contiguously; the transposed stores write whole sectors.
    R: tl.constexpr = 4 * BR
    C: tl.constexpr = 4 * BG
    rows = tl.program_id(0) * R + tl.arange(0, R)
    cols = tl.program_id(1) * C + tl.arange(0, C)
    rgs = tl.program_id(0) * BR + tl.arange(0, BR)
    valid = (rows < m)[:, None] & (cols < k)[None, :]
    grp = (cols // 4)[None, :]
    quarter = (cols % 4)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    nib = tl.load(nib_ptr + r64 * (k // 4) + grp, mask=valid, other=3).to(tl.int32)
    p0, p1 = _two_positions(nib)
    v0 = tl.load(values_ptr + r64 * (k // 2) + 2 * grp, mask=valid, other=0.0).to(tl.float32)
    v1 = tl.load(values_ptr + r64 * (k // 2) + 2 * grp + 1, mask=valid, other=0.0).to(tl.float32)
    dense = tl.where(p0 == quarter, v0, tl.where(p1 == quarter, v1, 0.0))  # (R, C) tile of W_R
    d3 = tl.reshape(dense, (BR, 4, C))  # [column group, row in group, column]
    idx = tl.arange(0, 4)
    j_before_i = (idx[None, :] < idx[:, None])[None, :, :, None]  # [., i, j, .]: j precedes i on ties
    out_cols = cols.to(tl.int64)[:, None]
    rg_valid = (cols < k)[:, None] & (rgs < m // 4)[None, :]
    if MASK:
        a = tl.abs(d3)
        ai = tl.expand_dims(a, 2)  # (BR, 4, 1, C)
        aj = tl.expand_dims(a, 1)  # (BR, 1, 4, C)
        before = (aj > ai) | ((aj == ai) & j_before_i)
        keep = tl.sum(before.to(tl.int32), axis=2) < 2  # (BR, 4, C): 2 of 4 along d_out, stable ties
        bits = tl.sum(keep.to(tl.int32) * (1 << idx)[None, :, None], axis=1)  # (BR, C)
        tl.store(wt_nib_ptr + out_cols * (m // 4) + rgs[None, :], tl.trans(bits).to(tl.uint8), mask=rg_valid)
        indicator = tl.trans(tl.reshape(keep, (R, C)).to(out_ptr.dtype.element_ty))  # (C, R)
        out_valid = (cols < k)[:, None] & (rows < m)[None, :]
        tl.store(out_ptr + out_cols * m + rows[None, :], indicator, mask=out_valid)
    else:
        bits = tl.trans(tl.load(wt_nib_ptr + out_cols * (m // 4) + rgs[None, :], mask=rg_valid, other=3).to(tl.int32))
        kept = ((tl.expand_dims(bits, 1) >> idx[None, :, None]) & 1) != 0  # (BR, 4, C)
        kept_before = tl.sum((tl.expand_dims(kept, 1) & j_before_i).to(tl.int32), axis=2)  # kept rows before i
        first = tl.sum(tl.where(kept & (kept_before == 0), d3, 0.0), axis=1)  # (BR, C)
        second = tl.sum(tl.where(kept & (kept_before == 1), d3, 0.0), axis=1)
        pairs = tl.reshape(tl.join(tl.trans(first), tl.trans(second)), (C, 2 * BR))  # per column: rg0 s0, rg0 s1...
        slots = tl.program_id(0) * 2 * BR + tl.arange(0, 2 * BR)
        pair_valid = (cols < k)[:, None] & (slots < m // 2)[None, :]
        tl.store(out_ptr + out_cols * (m // 2) + slots[None, :], pairs.to(out_ptr.dtype.element_ty), mask=pair_valid)
