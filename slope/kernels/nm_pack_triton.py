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
def prune_t_kernel(w_ptr, out_ptr, nib_ptr, m, k, BLOCK: tl.constexpr):
    # one program: rows 4r..4r+3 (a column group of W_R) x BLOCK columns; writes W_RCᵀ (k, m) and nibbles (k, m/4)
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < k
    row0 = (r * 4).to(tl.int64)
    x0 = tl.load(w_ptr + (row0 + 0) * k + cols, mask=valid, other=0.0).to(tl.float32)
    x1 = tl.load(w_ptr + (row0 + 1) * k + cols, mask=valid, other=0.0).to(tl.float32)
    x2 = tl.load(w_ptr + (row0 + 2) * k + cols, mask=valid, other=0.0).to(tl.float32)
    x3 = tl.load(w_ptr + (row0 + 3) * k + cols, mask=valid, other=0.0).to(tl.float32)
    a0, a1, a2, a3 = tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3)
    # rank = number of elements ordered before this one (stable descending sort)
    r0 = (a1 > a0).to(tl.int32) + (a2 > a0).to(tl.int32) + (a3 > a0).to(tl.int32)
    r1 = (a0 >= a1).to(tl.int32) + (a2 > a1).to(tl.int32) + (a3 > a1).to(tl.int32)
    r2 = (a0 >= a2).to(tl.int32) + (a1 >= a2).to(tl.int32) + (a3 > a2).to(tl.int32)
    r3 = (a0 >= a3).to(tl.int32) + (a1 >= a3).to(tl.int32) + (a2 >= a3).to(tl.int32)
    k0, k1, k2, k3 = r0 < 2, r1 < 2, r2 < 2, r3 < 2
    zero = tl.zeros_like(x0)
    dst = cols.to(tl.int64) * m + row0
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + dst + 0, tl.where(k0, x0, zero).to(ty), mask=valid)
    tl.store(out_ptr + dst + 1, tl.where(k1, x1, zero).to(ty), mask=valid)
    tl.store(out_ptr + dst + 2, tl.where(k2, x2, zero).to(ty), mask=valid)
    tl.store(out_ptr + dst + 3, tl.where(k3, x3, zero).to(ty), mask=valid)
    nib = k0.to(tl.int32) + 2 * k1.to(tl.int32) + 4 * k2.to(tl.int32) + 8 * k3.to(tl.int32)
    tl.store(nib_ptr + cols.to(tl.int64) * (m // 4) + r, nib.to(tl.uint8), mask=valid)
