"""Triton kernel behind `slope.kernels.sparse_gemv` (imported lazily: `import slope` never needs triton).

`sparse_gemv_kernel`: out[t, n] = Σ_k x[t, k] · W[n, k] (+ bias[n]) for a few tokens t, W 2:4 sparse along k and
stored as its kept values (n, k/2) plus one mask byte per group of 4 (bit i = position i kept), the layout of
`slope.kernels.nm_pack`. Each program owns BLOCK_N rows of W and streams them once over k: per group it reads
2 values and 1 byte instead of 4 dense values (1.25 bytes per weight instead of 2 at 16 bits), rebuilds the dense
block in registers and multiplies it on the tensor cores against the token block (padded to ≥ 16 rows, which
costs nothing here: at a few tokens the kernel is bound by reading W).

Split K (``SPLIT``): a weight with few rows and a long k (OPT-13B fc2: 5120 × 20480; an adapter's 32–96 rows)
gives too few programs to keep enough loads in flight, so the k range is cut into ``k_chunk`` pieces along the
grid's third axis; each writes an fp32 partial sum and `sparse_gemv_finish_kernel` adds them, the bias, and
casts (one more launch, paid only where the split is used).

Merged adapters (``MERGE``): out[t, n] += scale · Σ_j Z[t, j] · R[j, n] for j < rank, the merged-adapter term of
`slope.inference.SLoPeInferenceLinear` (Z = X·L_p, computed beforehand by this kernel on the adapter rows as fp32
split-K partials, summed here; R (rank, N)), added in the epilogue, `_store` (under split K into the first piece's
partial, which the finish kernel adds up with the others, or with ``SPAN`` < rank each piece adds its share of the
columns; the layout constexprs SPAN, RANK_BLOCK, RANK_UNROLL, REDUCE_ONCE come from
`slope.kernels.sparse_gemv.ADAPTER_EPILOGUE`). Z is rounded to R's dtype first, as the unfused path
stores it (a column block of the layer's output), and the products are summed in fp32 — the numbers of
torch.addmm on those operands. One launch less and no (tokens, N + r) buffer or torch.addmm at decode: at one token
that merge cost more host time than the SpMV.

Word loads (``WORDS``, the dot form's default): a group's two kept values are read as one 32-bit word and split
into halves, which hands the (rows, groups) layout straight to the rebuild instead of reshaping and splitting a
(rows, 2·groups) block of values (about +1-11% at 2-32 tokens, H100 bf16).

Masks (``META``): by default one byte per group of 4 (bit i = position i kept, `slope.kernels.nm_pack`'s
nibbles, (N, K/4) row-major). With ``META`` the kernel reads cuSPARSELt's own metadata instead, the bytes after
each tile's values in the compressed buffer (``nibbles_ptr`` is then that uint8 buffer): one nibble per group,
p0 | p1 << 2 (the two kept positions), at `slope.kernels.nm_pack.metadata_slot`. A layer then keeps no mask copy
of its own (1.125 bytes per weight in memory and per read instead of 1.25). The two nibbles of a byte are rows
r and r + 8 of one 64-row band, so a program's row block reads whole 64-byte runs of each 256-byte block. META 1
gathers a byte per (row, group); META 2 (the wrapper's default where the buffer allows) loads one 8-byte word per
(row, 32 columns), adjacent rows' words side by side, and takes it apart in registers (`_kept_bits`; 1.7-3.2x
META 1's speed on the H200, still below the mask copy's, `slope.kernels.sparse_gemv`'s docstring has the numbers).

Rebuilding a group from its nibble: with exactly two bits set, position 0 (if kept) is always the first kept
value and position 3 always the second; position 1 is the second iff bit 0 is set; position 2 iff bit 0 or 1 is.
That rule as tl.where per position is most of the dot form's k loop; with ``REBUILD`` (16-bit values read as
words, on a GPU: `slope.kernels.sparse_gemv.REBUILD`) `_rebuild_prmt` instead builds each half group with two
PTX byte permutes (940 -> 544 SASS instructions per k-loop iteration at 32 x 256, 4 warps). The FMA form by default
rebuilds nothing: the mask picks x at the two kept positions instead (`sparse_gemv_fma_kernel`).
"""
import os

import triton
import triton.language as tl

# The CPU interpreter runs every autotune candidate: one small config keeps the CPU tests quick.
if os.environ.get("TRITON_INTERPRET") == "1":
    _CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4)]
else:
    # Few programs per SM and long k loops: deep pipelines and several row-block widths, so that enough loads
    # are in flight to saturate HBM for both square (5120²) and tall/wide (4·5120 × 5120) weights. Row blocks of
    # 16 rows per warp or more: with fewer, tl.dot lays the warps out along the tokens too, and each of them
    # rebuilds the same rows of W (sm_90 SASS of the k loop, instructions per thread per group of 4 weights, "select"
    # / "prmt" rebuild: (16, 256, 4 warps) 118 / 67, (32, 512, 8) 93 / 64, (64, 256, 4) 35 / 21, (32, 256, 2) 38 /
    # 20, (128, 256, 8) 33 / 21). Those three replaced (16, 256, 4), (16, 512, 4) and (32, 512, 8) (the list
    # since 57861b2).
    _CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                for bn, bk, w, s in ((64, 256, 4, 3), (32, 256, 2, 4), (32, 256, 4, 4), (128, 256, 8, 2),
                                     (64, 128, 4, 4), (64, 256, 8, 3), (16, 128, 2, 5), (32, 128, 4, 5))]
# The FMA form keeps four fp32 (rows, groups) blocks live: wider row blocks, shorter k blocks.
_FMA_CONFIGS = _CONFIGS if os.environ.get("TRITON_INTERPRET") == "1" else [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bk, w, s in ((32, 256, 4, 3), (64, 128, 4, 3), (64, 256, 8, 3), (128, 128, 8, 3), (32, 512, 8, 2),
                         (16, 512, 4, 3), (128, 64, 4, 4), (64, 512, 8, 2))]

# What the autotuner chooses a config for. The adapter constexprs are in it since the epilogue's share of a
# program depends on them (before, a rank-320 layer reused the config tuned for rank 80 on the same weight shape).
_TUNING_KEY = ["N", "K", "BLOCK_T", "WORDS", "META", "REBUILD", "MERGE", "RANK", "Z_SPLITS", "SPAN", "RANK_BLOCK",
               "RANK_UNROLL", "REDUCE_ONCE"]


@triton.jit
def _mask_addresses(rows, K, tile_rows, tile_stride, GROUPS: tl.constexpr, META: tl.constexpr, ESIZE: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Where a program's masks are, computed once before its k loop: (base, offsets, shift); the masks of the k
    block at k0 are at base + `_mask_k_term` + offsets (`_group_masks` reads them).

    Nibble bytes (META 0): row n's group q is byte n·K/4 + q; base (BLOCK_N,), offsets (1, GROUPS).
    Metadata: rows of one 64-row band and groups of one 8-group block share a 256-byte block, band-major, so for a
    k block starting at a multiple of 32 columns (every k0 here: chunks are multiples of 512, blocks of 64-512) the
    position inside the block depends on (row, group index in the k block) only — the slot arithmetic is paid
    once, not per k block (per k block it cost ~3x the kernel's time on an H200). Tile t's metadata follows its
    tile_rows·K/2 values, t·tile_stride elements in.
    * META 1, a byte per (row, group): base (BLOCK_N,) int64, offsets (BLOCK_N, GROUPS), shift (BLOCK_N, 1).
    * META 2, 8-byte words: inside a block, row r's 8 groups are the 8 bytes at (r bits 4-5)·64 + (r bits 0-2)·8,
      the low nibbles rows with bit 3 clear, the high ones rows with it set; so one word per (row, 32 columns),
      and the words of rows r..r+7 are adjacent (16-byte vector loads). base is a scalar (a program's rows lie in
      one tile: BLOCK_N divides 128, tiles are multiples of 128 rows), offsets (BLOCK_N, GROUPS/8) in words,
      shift (BLOCK_N, 1, 8): the bit where group g's nibble of its row starts in the word."""
    g = tl.arange(0, GROUPS)[None, :]
    if META == 2:
        first = (tl.program_id(0) * BLOCK_N).to(tl.int64)
        local0 = first % tile_rows
        base = ((first // tile_rows) * tile_stride * ESIZE + (first * 0 + tile_rows) * (K // 2) * ESIZE
                + (local0 // 64) * (K // 32) * 256) // 8  # int64: a tile's values can pass 2**31 bytes
        i = tl.arange(0, BLOCK_N)
        band_row = (local0 % 64) + i  # 0..127: BLOCK_N = 128 spans two bands
        row_words = (band_row // 64) * (K // 32) * 32 + ((band_row % 64) // 16) * 8 + band_row % 8
        offsets = row_words[:, None] + tl.arange(0, GROUPS // 8)[None, :] * 32
        # runs of 8 adjacent words along the rows, each starting 16-byte aligned (the wrapper checks the buffer and
        # tile stride): the hints let Triton vectorize the gather, which its analysis cannot see through local0
        offsets = tl.max_contiguous(tl.multiple_of(offsets, [2, 1]), [8, 1])
        q = tl.arange(0, 8)[None, None, :]
        r3 = ((i >> 3) & 1)[:, None, None]  # local0 is a multiple of 16: row bit 3 is i's
        # group q's nibble is nibble ((q & 3)·2 + (q >> 2))·2 + r3 of the word: bit 4·nibble, in the high 32 bits
        # iff nibble >= 8 (q & 3 >= 2)
        shift = (((q & 3) * 2 + (q >> 2)) * 2 + r3) * 4
    elif META == 1:
        local = rows % tile_rows  # int64 throughout: a tile's values can pass 2**31 bytes
        base = ((rows // tile_rows) * tile_stride * ESIZE + (rows * 0 + tile_rows) * (K // 2) * ESIZE
                + (local // 64) * (K // 32) * 256)
        r = (local % 64).to(tl.int32)[:, None]
        inner = (((r >> 3) & 1) | (((g >> 2) & 1) << 1) | ((g & 3) << 2) | ((r & 7) << 4)
                 | (((r >> 4) & 3) << 7))
        offsets = (g // 8) * 256 + inner // 2
        shift = ((r >> 3) & 1) * 4
    else:
        base = rows * (K // 4)
        offsets = g
        shift = tl.zeros((1, 1), dtype=tl.int32)
    return base, offsets, shift


@triton.jit
def _mask_k_term(k0, META: tl.constexpr):
    """The k block's part of its mask addresses (see `_mask_addresses`), in the unit its offsets count."""
    if META == 2:
        term = (k0 // 32) * 32  # words: 256 bytes per 32 columns
    elif META == 1:
        term = (k0 // 32) * 256
    else:
        term = k0 // 4
    return term


@triton.jit
def _kept_bits(words):
    """cuSPARSELt's nibbles p0 | p1 << 2 (kept positions p0 < p1) turned into kept-bit nibbles (1 << p0) | (1 << p1),
    all 16 of an int64 word at once (a few word-wide ops instead of several per group)."""
    m = 0x1111111111111111  # each nibble's bit 0
    a0, a1, b0, b1 = words & m, (words >> 1) & m, (words >> 2) & m, (words >> 3) & m  # p0's bits, p1's bits
    na0, na1, nb0, nb1 = a0 ^ m, a1 ^ m, b0 ^ m, b1 ^ m
    kept0 = na0 & na1  # p0 == 0 (p1 > p0 is never 0)
    kept1 = (a0 & na1) | (b0 & nb1)  # p0 == 1 or p1 == 1
    kept2 = (na0 & a1) | (nb0 & b1)  # p0 == 2 or p1 == 2
    kept3 = b0 & b1  # p1 == 3 (p0 < p1 is never 3)
    return kept0 | (kept1 << 1) | (kept2 << 2) | (kept3 << 3)


@triton.jit
def _group_masks(nibbles_ptr, mask_base, mask_offsets, mask_shift, k0, k_end, row_ok, group_ok,
                 BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, META: tl.constexpr):
    """The (BLOCK_N, groups) masks of the k block at k0, bit i = position i kept: a nibble byte each, or
    (``META``) cuSPARSELt's nibble p0 | p1 << 2 turned into bits p0 and p1."""
    if META == 2:
        blocks = (k0 // 32 + tl.arange(0, GROUPS // 8)) < k_end // 32
        words = tl.load(nibbles_ptr.to(tl.pointer_type(tl.int64), bitcast=True) + mask_base
                        + _mask_k_term(k0, META) + mask_offsets, mask=row_ok[:, None] & blocks[None, :], other=0)
        bits = _kept_bits(words)
        low, high = bits.to(tl.int32)[:, :, None], (bits >> 32).to(tl.int32)[:, :, None]
        # 32-bit work per (row, group): pick the half, shift, mask. (a6cf4ce shifted the 64-bit word per group and
        # turned each code into bits there: 0.60-0.97x dense against the copy's 0.82-1.40x, H200 bf16, 1-32 tokens;
        # results/logs/bench_decode_metadata_words_v1_h200.csv.) Groups past k_end or N come out as whatever the
        # zero word decodes to: their values and x are loaded as zeros, so their weights are zero anyway.
        nib = (tl.where(mask_shift >= 32, high, low) >> (mask_shift & 31)) & 15  # loop-invariant parts hoisted
        nib = tl.reshape(nib, (BLOCK_N, GROUPS))
    else:
        at = nibbles_ptr + mask_base[:, None] + _mask_k_term(k0, META) + mask_offsets
        nib = tl.load(at, mask=group_ok, other=0).to(tl.int32)
        if META == 1:
            code = (nib >> mask_shift) & 15
            nib = tl.where(group_ok, (1 << (code & 3)) | (1 << (code >> 2)), 0)
    return nib


@triton.jit
def _group_kept(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok, k0, k_end,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr = 0, META: tl.constexpr = 0):
    """Each group's two kept values and its mask (bit i = position i kept) for the (BLOCK_N, BLOCK_K) block at k0:
    three (BLOCK_N, BLOCK_K/4) tensors, the values in their dtype, all zero from k_end on or past N.

    ``WORDS`` (32 for 16-bit values, 64 for fp32; 0: off) reads each group's two kept values as one integer word
    and takes its halves apart (little endian: the first value is the low half), which gives the (rows, groups)
    layout straight from the load instead of a reshape and split of a (rows, 2·groups) block. It needs the
    values 2-element aligned (the wrapper checks)."""
    GROUPS: tl.constexpr = BLOCK_K // 4
    rg = tl.arange(0, GROUPS)
    g_ok = (k0 // 4 + rg) < k_end // 4
    group_ok = row_ok[:, None] & g_ok[None, :]
    nib = _group_masks(nibbles_ptr, mask_base, mask_offsets, mask_shift, k0, k_end, row_ok, group_ok, BLOCK_N, GROUPS,
                      META)
    if WORDS == 32:
        words = tl.load(values_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + value_rows[:, None] // 2
                        + (k0 // 4 + rg)[None, :], mask=group_ok, other=0)
        first = words.to(tl.int16).to(values_ptr.dtype.element_ty, bitcast=True)
        second = (words >> 16).to(tl.int16).to(values_ptr.dtype.element_ty, bitcast=True)
    elif WORDS == 64:
        words = tl.load(values_ptr.to(tl.pointer_type(tl.int64), bitcast=True) + value_rows[:, None] // 2
                        + (k0 // 4 + rg)[None, :], mask=group_ok, other=0)
        first = words.to(tl.int32).to(values_ptr.dtype.element_ty, bitcast=True)
        second = (words >> 32).to(tl.int32).to(values_ptr.dtype.element_ty, bitcast=True)
    else:
        rv = tl.arange(0, BLOCK_K // 2)
        v_ok = (k0 // 2 + rv) < k_end // 2
        values = tl.load(values_ptr + value_rows[:, None] + (k0 // 2 + rv)[None, :],
                         mask=row_ok[:, None] & v_ok[None, :], other=0.0)
        first, second = tl.split(tl.reshape(values, (BLOCK_N, GROUPS, 2)))
    return first, second, nib


@triton.jit
def _group_weights(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok, k0, k_end,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr = 0, META: tl.constexpr = 0):
    """W at positions 0..3 of each group of the (BLOCK_N, BLOCK_K) block starting at k0: four (BLOCK_N, BLOCK_K/4)
    tensors in the values' dtype, zero where the mask drops the weight (and from k_end on, or past N)."""
    first, second, nib = _group_kept(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok,
                                     k0, k_end, BLOCK_N, BLOCK_K, WORDS, META)
    zero = tl.zeros_like(first)
    w0 = tl.where((nib & 1) != 0, first, zero)
    w1 = tl.where((nib & 2) != 0, tl.where((nib & 1) != 0, second, first), zero)
    w2 = tl.where((nib & 4) != 0, tl.where((nib & 3) != 0, second, first), zero)
    w3 = tl.where((nib & 8) != 0, second, zero)
    return w0, w1, w2, w3


@triton.jit
def _dense_block(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok, k0, k_end,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr, META: tl.constexpr,
                 REBUILD: tl.constexpr):
    """The dot form's (BLOCK_N, BLOCK_K) block of W at k0, rebuilt in registers: with ``REBUILD`` (16-bit words)
    by `_rebuild_prmt`, else from `_group_weights`' four positions."""
    if REBUILD == 1:
        GROUPS: tl.constexpr = BLOCK_K // 4
        rg = tl.arange(0, GROUPS)
        group_ok = row_ok[:, None] & ((k0 // 4 + rg) < k_end // 4)[None, :]
        nib = _group_masks(nibbles_ptr, mask_base, mask_offsets, mask_shift, k0, k_end, row_ok, group_ok, BLOCK_N,
                           GROUPS, META)
        words = tl.load(values_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + value_rows[:, None] // 2
                        + (k0 // 4 + rg)[None, :], mask=group_ok, other=0)
        pair01, pair23 = _rebuild_prmt(words, nib, values_ptr)
        # (rows, groups, position in the half, half) -> (rows, groups, half, position): position 4g + 2h + j
        dense = tl.reshape(tl.permute(tl.join(pair01, pair23), (0, 1, 3, 2)), (BLOCK_N, BLOCK_K))
    else:
        w0, w1, w2, w3 = _group_weights(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift,
                                        row_ok, k0, k_end, BLOCK_N, BLOCK_K, WORDS, META)
        # join stacks along a new last axis: join(join(w0, w2), join(w1, w3))[..., i, j] = w_{2i+j}, so the
        # row-major reshape puts position 4g+2i+j in place
        dense = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK_N, BLOCK_K))
    return dense


# `_rebuild_prmt`'s tables. A prmt selector's four nibbles pick, for the four bytes of its result, one of eight
# source bytes: 0-3 the group's word (the first kept value in bytes 0-1, F; the second in 2-3, S), 4-7 a zero
# register (Z). Positions 0/1 of a group take (F,S) when both are kept, (F,Z) when only 0 is, (Z,F) when only 1 is,
# (Z,Z) when neither: with e = the half's two mask bits, the 16-bit selectors 0x5454, 0x5410, 0x1054, 0x3210 for e
# = 0..3; positions 2/3 take (Z,Z), (S,Z), (Z,S), (F,S): 0x5454, 0x5432, 0x3254, 0x3210. A table holds the low
# bytes of its four selectors (byte e = entry e) and another the high bytes, so that one prmt with index
# 0x40 + 0x11·e (result byte 0 = low table byte e, byte 1 = high table byte e) looks entry e up.
_PAIR01_TABLES = (0x10541054, 0x32105454)  # (low bytes, high bytes) of entries 0..3
_PAIR23_TABLES = (0x10543254, 0x32325454)
_REBUILD_PRMT_ASM = tl.constexpr(f"""{{
        .reg .b32 e, s, lo, hi;
        mov.b32 lo, {_PAIR01_TABLES[0]};
        mov.b32 hi, {_PAIR01_TABLES[1]};
        and.b32 e, $4, 3;
        mad.lo.u32 e, e, 17, 64;
        prmt.b32 s, lo, hi, e;
        prmt.b32 $0, $2, 0, s;
        mov.b32 lo, {_PAIR23_TABLES[0]};
        mov.b32 hi, {_PAIR23_TABLES[1]};
        shr.u32 e, $4, 2;
        and.b32 e, e, 3;
        mad.lo.u32 e, e, 17, 64;
        prmt.b32 s, lo, hi, e;
        prmt.b32 $1, $2, 0, s;
        }}""")


@triton.jit
def _rebuild_prmt(words, nib, values_ptr):
    """`_group_weights`' four positions from a group's word and its mask (exactly two bits, or a zero word) with
    byte permutes (PTX prmt): per half of the group one prmt looks its selector up from the half's two mask bits,
    and one builds that half's two 16-bit weights from the word and zero, already packed as the tensor cores take
    them (``pack=2``: one 32-bit register holds positions (0, 1), another (2, 3)). Not run by Triton's CPU
    interpreter (no PTX there), which takes the tl.where form (`slope.kernels.sparse_gemv.REBUILD`)."""
    pair01, pair23 = tl.inline_asm_elementwise(
        asm=_REBUILD_PRMT_ASM, constraints="=r,=r,r,r,r,r", args=[tl.join(words, words), tl.join(nib, nib)],
        dtype=(values_ptr.dtype.element_ty, values_ptr.dtype.element_ty), is_pure=True,
        pack=2)
    return pair01, pair23


@triton.jit
def _program_block(T, N, K, tile_stride, tile_rows, k_chunk, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows (rn) and tokens (rt) with their bounds, where each of its rows starts in the values, its
    rows as int64, and its k range [k_start, k_end) (one chunk under split K; a chunk may end inside a k block, so
    the loads are masked at k_end)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rt = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = rn.to(tl.int64)
    # row n of W lives in tile n // tile_rows (tiles tile_stride elements apart), each tile row-major (k/2 per row)
    value_rows = (rows // tile_rows) * tile_stride + (rows % tile_rows) * (K // 2)
    k_start = tl.program_id(2) * k_chunk
    return rn, rt, rn < N, rt < T, value_rows, rows, k_start, tl.minimum(K, k_start + k_chunk)


@triton.jit
def _adapter_operands(z_ptr, right_ptr, r0, rn, rt, row_ok, token_ok, stride_z_split, stride_z, stride_right,
                      RANK: tl.constexpr, Z_SPLITS: tl.constexpr, RB: tl.constexpr, BLOCK_T: tl.constexpr):
    """Adapter columns r0 … r0 + RB of `_adapter_term`: R's (RB, BLOCK_N) block and Z's (RB, BLOCK_T), both in R's
    dtype (Z summed over its pieces in fp32 first)."""
    rr = r0 + tl.arange(0, RB)
    r_ok = rr < RANK
    z = tl.zeros((RB, BLOCK_T), dtype=tl.float32)
    for s in tl.static_range(Z_SPLITS):  # unrolled: the pieces' loads are independent, all in flight at once
        z += tl.load(z_ptr + s * stride_z_split + rt[None, :].to(tl.int64) * stride_z + rr[:, None],
                     mask=r_ok[:, None] & token_ok[None, :], other=0.0).to(tl.float32)
    right = tl.load(right_ptr + rr[:, None].to(tl.int64) * stride_right + rn[None, :],
                    mask=r_ok[:, None] & row_ok[None, :], other=0.0)  # (RB, BLOCK_N)
    return right, z.to(right.dtype)


@triton.jit
def _adapter_chunk(z_ptr, right_ptr, r0, rn, rt, row_ok, token_ok, stride_z_split, stride_z, stride_right,
                   RANK: tl.constexpr, Z_SPLITS: tl.constexpr, RB: tl.constexpr, BLOCK_T: tl.constexpr,
                   REDUCE_ONCE: tl.constexpr):
    """Adapter columns r0 … r0 + RB of `_adapter_term`: through the tensor cores (BLOCK_T ≥ 16), (BLOCK_N, BLOCK_T)
    fp32; else the products (RB, BLOCK_N, BLOCK_T) fp32, summed over the columns here or (REDUCE_ONCE) by the
    caller, once for all chunks."""
    right, z = _adapter_operands(z_ptr, right_ptr, r0, rn, rt, row_ok, token_ok, stride_z_split, stride_z,
                                 stride_right, RANK, Z_SPLITS, RB, BLOCK_T)
    if BLOCK_T >= 16:
        chunk = tl.dot(tl.trans(right), z)
    else:
        chunk = right.to(tl.float32)[:, :, None] * z.to(tl.float32)[:, None, :]
        if not REDUCE_ONCE:
            chunk = tl.sum(chunk, axis=0)
    return chunk


@triton.jit
def _adapter_term(z_ptr, right_ptr, r_first, rn, rt, row_ok, token_ok, stride_z_split, stride_z, stride_right,
                  RANK: tl.constexpr, Z_SPLITS: tl.constexpr, SPAN: tl.constexpr, RANK_BLOCK: tl.constexpr,
                  RANK_UNROLL: tl.constexpr, REDUCE_ONCE: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_T: tl.constexpr):
    """(BLOCK_N, BLOCK_T) fp32: Σ_j R[j, n] · Z[t, j] over adapter columns r_first ≤ j < r_first + SPAN (and < RANK),
    Z = Σ_s z[s] rounded to R's dtype (see MERGE in the module docstring); RANK_BLOCK columns at a time, through the
    tensor cores where the token block allows. Up to RANK_UNROLL columns the loop is unrolled too (SPAN is
    constexpr), so that all its loads can be in flight together at the end of the program; a longer one stays a
    loop (unrolled, its loads' registers would spill). Without tensor cores (the FMA form's one token) and with
    REDUCE_ONCE the products are added up elementwise over the chunks and summed over the columns once at the end:
    a sum over the columns is a reduction across the program's threads, one per chunk otherwise."""
    once: tl.constexpr = REDUCE_ONCE and BLOCK_T < 16
    if once:
        term = tl.zeros((RANK_BLOCK, BLOCK_N, BLOCK_T), dtype=tl.float32)
    else:
        term = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    if SPAN <= RANK_UNROLL:
        for r0 in tl.static_range(0, SPAN, RANK_BLOCK):
            term += _adapter_chunk(z_ptr, right_ptr, r_first + r0, rn, rt, row_ok, token_ok, stride_z_split,
                                   stride_z, stride_right, RANK, Z_SPLITS, RANK_BLOCK, BLOCK_T, once)
    else:
        for r0 in range(0, SPAN, RANK_BLOCK):
            term += _adapter_chunk(z_ptr, right_ptr, r_first + r0, rn, rt, row_ok, token_ok, stride_z_split,
                                   stride_z, stride_right, RANK, Z_SPLITS, RANK_BLOCK, BLOCK_T, once)
    if once:  # one return: Triton types every return of a function, a constexpr-dead one too
        term = tl.sum(term, axis=0)
    return term


@triton.jit
def _store(acc, bias_ptr, out_ptr, z_ptr, right_ptr, rn, rt, row_ok, token_ok, N, stride_out, stride_split,
           stride_z_split, stride_z, stride_right, merge_scale, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
           MERGE: tl.constexpr, RANK: tl.constexpr, Z_SPLITS: tl.constexpr, SPAN: tl.constexpr,
           RANK_BLOCK: tl.constexpr, RANK_UNROLL: tl.constexpr, REDUCE_ONCE: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """acc (BLOCK_N, BLOCK_T) fp32 -> out[t, n] (+ bias, + the adapter term); under SPLIT an fp32 partial in
    (splits, T, N) for the finish kernel, which adds those and the bias.

    The adapter term is added by the main grid, which has the programs to spread its R reads over (the finish
    kernel has N/256 per token: on OPT-13B fc2 at one token its 20 programs read all of R, 2.7x slower than the
    addmm path at rank 320, H200, 4d9c7d4). SPAN adapter columns per k piece: piece s adds columns s·SPAN …
    (s+1)·SPAN, so that under split K every piece ends with the same share of it; SPAN >= RANK: the first piece
    adds all of it."""
    inside = row_ok[:, None] & token_ok[None, :]
    if MERGE:
        if SPAN >= RANK:
            if tl.program_id(2) == 0:
                acc += merge_scale * _adapter_term(z_ptr, right_ptr, 0, rn, rt, row_ok, token_ok, stride_z_split,
                                                   stride_z, stride_right, RANK, Z_SPLITS, SPAN, RANK_BLOCK,
                                                   RANK_UNROLL, REDUCE_ONCE, BLOCK_N, BLOCK_T)
        else:
            acc += merge_scale * _adapter_term(z_ptr, right_ptr, tl.program_id(2) * SPAN, rn, rt, row_ok, token_ok,
                                               stride_z_split, stride_z, stride_right, RANK, Z_SPLITS, SPAN,
                                               RANK_BLOCK, RANK_UNROLL, REDUCE_ONCE, BLOCK_N, BLOCK_T)
    if SPLIT:
        tl.store(out_ptr + tl.program_id(2) * stride_split + rt[None, :].to(tl.int64) * N + rn[:, None], acc,
                 mask=inside)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rt[None, :].to(tl.int64) * stride_out + rn[:, None], acc.to(out_ptr.dtype.element_ty),
                 mask=inside)


@triton.autotune(configs=_CONFIGS, key=_TUNING_KEY)
@triton.jit
def sparse_gemv_kernel(x_ptr, values_ptr, nibbles_ptr, bias_ptr, out_ptr, z_ptr, right_ptr, T, N, K, stride_x,
                       tile_stride, tile_rows, stride_out, k_chunk, stride_split, stride_z_split, stride_z,
                       stride_right, merge_scale, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                       MERGE: tl.constexpr, RANK: tl.constexpr, Z_SPLITS: tl.constexpr, SPAN: tl.constexpr,
                       RANK_BLOCK: tl.constexpr, RANK_UNROLL: tl.constexpr, REDUCE_ONCE: tl.constexpr,
                       BLOCK_T: tl.constexpr, WORDS: tl.constexpr, META: tl.constexpr, ESIZE: tl.constexpr,
                       REBUILD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tensor-core form (BLOCK_T ≥ 16): the dense block rebuilt in registers, times the token block."""
    rn, rt, row_ok, token_ok, value_rows, rows, k_start, k_end = _program_block(
        T, N, K, tile_stride, tile_rows, k_chunk, BLOCK_T, BLOCK_N)
    mask_base, mask_offsets, mask_shift = _mask_addresses(rows, K, tile_rows, tile_stride, BLOCK_K // 4, META, ESIZE,
                                                             BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        dense = _dense_block(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok, k0,
                             k_end, BLOCK_N, BLOCK_K, WORDS, META, REBUILD)
        k_ok = (k0 + rk) < k_end
        x = tl.load(x_ptr + rt[:, None].to(tl.int64) * stride_x + (k0 + rk)[None, :],
                    mask=token_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(dense, tl.trans(x.to(dense.dtype)))
    _store(acc, bias_ptr, out_ptr, z_ptr, right_ptr, rn, rt, row_ok, token_ok, N, stride_out, stride_split,
           stride_z_split, stride_z, stride_right, merge_scale, HAS_BIAS, SPLIT, MERGE, RANK, Z_SPLITS, SPAN,
           RANK_BLOCK, RANK_UNROLL, REDUCE_ONCE, BLOCK_N, BLOCK_T)


@triton.jit
def _kept_fp32(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift, row_ok, k0, k_end,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr, META: tl.constexpr):
    """`_group_kept` with the values in fp32. bf16 read as words: a bf16 is the high half of its fp32, so each
    half of the word becomes one by a shift or a mask (no unpacking of the pair first)."""
    if WORDS == 32 and values_ptr.dtype.element_ty == tl.bfloat16:
        GROUPS: tl.constexpr = BLOCK_K // 4
        rg = tl.arange(0, GROUPS)
        group_ok = row_ok[:, None] & ((k0 // 4 + rg) < k_end // 4)[None, :]
        nib = _group_masks(nibbles_ptr, mask_base, mask_offsets, mask_shift, k0, k_end, row_ok, group_ok, BLOCK_N,
                           GROUPS, META)
        words = tl.load(values_ptr.to(tl.pointer_type(tl.uint32), bitcast=True) + value_rows[:, None] // 2
                        + (k0 // 4 + rg)[None, :], mask=group_ok, other=0)
        first = (words << 16).to(tl.float32, bitcast=True)
        second = (words & 0xFFFF0000).to(tl.float32, bitcast=True)
    else:
        first, second, nib = _group_kept(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets, mask_shift,
                                         row_ok, k0, k_end, BLOCK_N, BLOCK_K, WORDS, META)
        first, second = first.to(tl.float32), second.to(tl.float32)
    return first, second, nib


@triton.jit
def _token_x(x_ptr, stride_x, T, k0, rg, g_ok, t, BLOCK_T: tl.constexpr):
    """Token t of this program's token block: x at positions 0..3 of the k block's groups, fp32 (BLOCK_K/4,) each,
    zero past k_end or T."""
    token = tl.program_id(1) * BLOCK_T + t
    x_at = x_ptr + token.to(tl.int64) * stride_x + k0 + 4 * rg
    ok = g_ok & ((token + 0 * rg) < T)  # a vector compare: the interpreter refuses a scalar-bool mask
    x0 = tl.load(x_at, mask=ok, other=0.0).to(tl.float32)
    x1 = tl.load(x_at + 1, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + 2, mask=ok, other=0.0).to(tl.float32)
    x3 = tl.load(x_at + 3, mask=ok, other=0.0).to(tl.float32)
    return x0, x1, x2, x3


@triton.autotune(configs=_FMA_CONFIGS, key=_TUNING_KEY)
@triton.jit
def sparse_gemv_fma_kernel(x_ptr, values_ptr, nibbles_ptr, bias_ptr, out_ptr, z_ptr, right_ptr, T, N, K, stride_x,
                           tile_stride, tile_rows, stride_out, k_chunk, stride_split, stride_z_split, stride_z,
                           stride_right, merge_scale, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                           MERGE: tl.constexpr, RANK: tl.constexpr, Z_SPLITS: tl.constexpr, SPAN: tl.constexpr,
                           RANK_BLOCK: tl.constexpr, RANK_UNROLL: tl.constexpr, REDUCE_ONCE: tl.constexpr,
                           BLOCK_T: tl.constexpr, WORDS: tl.constexpr, META: tl.constexpr, ESIZE: tl.constexpr,
                           REBUILD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """FMA form (BLOCK_T ≤ 8 tokens): no rebuilt dense block, no tensor cores.

    ``REBUILD`` 1 (the default, `slope.kernels.sparse_gemv.FMA_PRODUCTS` "kept"): each group's two kept values
    multiply x at their two positions, picked from the four (a stride-4 load of the small, cached x) by the mask:
    two FMAs and four selects per group. At one token the products are summed per (row, group) over the whole k
    loop and across the groups once at the end (no cross-thread reduction per k block). ``REBUILD`` 0
    ("positions", the first version): W's four positions rebuilt (`_group_weights`) multiply x's four, summed
    across the groups every k block."""
    GROUPS: tl.constexpr = BLOCK_K // 4
    rn, rt, row_ok, token_ok, value_rows, rows, k_start, k_end = _program_block(
        T, N, K, tile_stride, tile_rows, k_chunk, BLOCK_T, BLOCK_N)
    mask_base, mask_offsets, mask_shift = _mask_addresses(rows, K, tile_rows, tile_stride, GROUPS, META, ESIZE,
                                                             BLOCK_N)
    rg = tl.arange(0, GROUPS)
    cols = tl.arange(0, BLOCK_T)
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    acc_groups = tl.zeros((BLOCK_N, GROUPS), dtype=tl.float32)  # one token, kept products: summed at the end
    for k0 in range(k_start, k_end, BLOCK_K):
        g_ok = (k0 // 4 + rg) < k_end // 4
        if REBUILD == 1:
            first, second, nib = _kept_fp32(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets,
                                            mask_shift, row_ok, k0, k_end, BLOCK_N, BLOCK_K, WORDS, META)
            # the first kept position is 0, 1 or 2, the second 1, 2 or 3 (exactly two bits set; a zero mask past
            # k_end or N picks positions whose values are loaded as zeros)
            bit0, bit1, bit2, bit3 = (nib & 1) != 0, (nib & 2) != 0, (nib & 4) != 0, (nib & 8) != 0
            for t in tl.static_range(BLOCK_T):
                x0, x1, x2, x3 = _token_x(x_ptr, stride_x, T, k0, rg, g_ok, t, BLOCK_T)
                x_first = tl.where(bit0, x0[None, :], tl.where(bit1, x1[None, :], x2[None, :]))
                x_second = tl.where(bit3, x3[None, :], tl.where(bit2, x2[None, :], x1[None, :]))
                if BLOCK_T == 1:  # two FMAs into the running sums
                    acc_groups += first * x_first
                    acc_groups += second * x_second
                else:
                    products = first * x_first + second * x_second
                    acc += tl.where(cols[None, :] == t, tl.sum(products, axis=1)[:, None], 0.0)
        else:
            w0, w1, w2, w3 = _group_weights(values_ptr, nibbles_ptr, value_rows, mask_base, mask_offsets,
                                            mask_shift, row_ok, k0, k_end, BLOCK_N, BLOCK_K, WORDS, META)
            w0, w1, w2, w3 = w0.to(tl.float32), w1.to(tl.float32), w2.to(tl.float32), w3.to(tl.float32)
            for t in tl.static_range(BLOCK_T):
                x0, x1, x2, x3 = _token_x(x_ptr, stride_x, T, k0, rg, g_ok, t, BLOCK_T)
                part = tl.sum(w0 * x0[None, :] + w1 * x1[None, :] + w2 * x2[None, :] + w3 * x3[None, :], axis=1)
                acc += tl.where(cols[None, :] == t, part[:, None], 0.0)
    if REBUILD == 1 and BLOCK_T == 1:
        acc += tl.sum(acc_groups, axis=1)[:, None]
    _store(acc, bias_ptr, out_ptr, z_ptr, right_ptr, rn, rt, row_ok, token_ok, N, stride_out, stride_split,
           stride_z_split, stride_z, stride_right, merge_scale, HAS_BIAS, SPLIT, MERGE, RANK, Z_SPLITS, SPAN,
           RANK_BLOCK, RANK_UNROLL, REDUCE_ONCE, BLOCK_N, BLOCK_T)


@triton.jit
def sparse_gemv_finish_kernel(partial_ptr, bias_ptr, out_ptr, T, N, splits, stride_out, HAS_BIAS: tl.constexpr,
                              BLOCK: tl.constexpr):
    # one program per BLOCK outputs of one token: out[t, n] = Σ_s partial[s, t, n] (+ bias[n]), cast to out's dtype
    t = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rn < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(partial_ptr + (s * T + t).to(tl.int64) * N + rn, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * stride_out + rn, acc.to(out_ptr.dtype.element_ty), mask=ok)
