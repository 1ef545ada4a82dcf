"""2:4 sparse matrix × a few tokens (decode), read straight from the compressed values and the nibble mask.

    out = x · Wᵀ (+ bias)      x (T, K), W (N, K) 2:4 along K, T small (one decode step: T = batch)

Why beside cuSPARSELt: at a few tokens a linear layer is bound by reading its weight, and a 2:4 weight needs only
1.25 bytes per element (two of four 16-bit values + a mask byte per group) against dense's 2, so up to 1.6x.
cuSPARSELt gets that on some shapes and not on others: on the H100, under CUDA-graph replay, it ran the OPT-13B /
LLaMA-3-8B MLP shapes at 0.50-0.91x of dense F.linear in bf16 at 1-32 tokens (this kernel 0.98-1.48x), and in fp16
at 0.67-1.66x (from 8 tokens it beats this kernel on every fp16 shape but LLaMA up; ``decode`` rows of results/bench_inference_h100.csv,
a9ca3cd). So `SLoPeInferenceLinear` uses the kernel at 1 token by default and picks per shape beyond that with
``few_token_kernel_tokens="auto"``.

Two forms. At one token the **FMA** form multiplies each kept value by x at its position (no tensor cores, nothing
rebuilt) and reads ~2.4-2.5 TB/s of weight bytes, close to dense cuBLAS's ~2.6 TB/s: 1.26-1.50x dense on the four
MLP shapes, 1.22x on 5120² (a9ca3cd). From 2 tokens the **dot** form rebuilds each dense block in registers and
runs it through the tensor cores: 0.99-1.17x dense at 8-32 tokens on the MLP shapes, 0.98-1.05x on 5120² (bf16;
results/sparse_gemv_variants_h100.csv). It got there from 0.77-1.19x by reading the kept pairs as words and by
splitting k on narrow weights (`TARGET_PROGRAMS`); two other forms measured slower and were dropped (a7fdc9c,
c6cb64f: four products per block without the interleave, 0.41-0.91x; a register double buffer of the next block,
from 17% slower to 8% faster). Both forms stream exactly these bytes:
`values` (N, K/2), the kept entries in position order (the first N·K/2 elements of every cuSPARSELt tile, so a
`SLoPeInferenceLinear` reads its own buffers, no copy), and `nibbles` (N, K/4), one byte per group (bit i = kept).
A mask of two groups per byte (half the mask bytes, 1.125 bytes per weight) was tried and dropped: the dot form
fell to 0.22-0.93x dense (f6d4663, results/sparse_gemv_variants_h100.md). Reading cuSPARSELt's own metadata
instead of a mask copy (``mask_layout="cusparselt"``: no mask bytes beside the compressed weight, 1.125 bytes per
weight) is kept as an option for memory, not speed. Read as 8-byte words (a row's 8 groups of 32 columns, adjacent
rows' words side by side) and decoded in registers, it ran 0.68-1.06x dense against the copy's 0.81-1.39x, and a
byte gathered per group 0.25-0.43x (bf16, CUDA-graph replay, 1-32 tokens, OPT-13B fc1/fc2 and LLaMA-3-8B up, same
process, H200, bd12323; results/logs/bench_decode_metadata_words_h200.csv; earlier versions: ``_v1`` of that file,
a 64-bit shift per group, 0.60-0.97x; ``_3d_rejected``, the group axis kept split as the words split it, slower
still on OPT-13B fc1; bench_decode_metadata_h200.csv and ``_v1``, the byte reads).

**Merged adapters** (``adapter=(z, R, scale)``; a `GemvPlan` built with ``adapter_right`` R, fed the adapter rows'
`GemvPlan.partials`): out = x·Wᵀ + b + scale · Z·R, Z the sum of z's split-K pieces, added in the store of the
kernel (under split K into the first piece's partial, or each piece its share: `ADAPTER_EPILOGUE`). It replaces, for
`SLoPeInferenceLinear`'s few-token path, a launch into a (tokens, N + r) buffer and a torch addmm. Same process,
H200, bf16, OPT-13B fc1 / fc2 at ranks 80 / 320 against that addmm path (results/logs/bench_decode_merge_h200.csv):
host time per 1-token call 25–46 µs against 69–95 µs (dense nn.Linear 17–22 µs, 7219cbf); CUDA-graph replay at 8
tokens 0.76–0.87x dense against 0.72–0.77x; at 1 token 0.89–1.11x against 1.04–1.11x (e44904f, 23cd4d6). There each
program ends with the z reduction (Z_SPLITS pieces: 5 on fc1, 20 on fc2) and its R block (RANK x BLOCK_N), latency
no other work hides at one token, so the layer takes the addmm path for a captured 1-token call
(`slope.inference.GRAPH_ADDMM_MAX_TOKENS`). Four other epilogue layouts were timed beside the default (its rows are
named ``first-piece``, the names are `performance_experiments.bench_inference.MERGE_LAYOUTS`; the 23cd4d6 rows named
``default`` ran that commit's, 64-column chunks spread and reduced once): 64-column chunks unrolled up to rank 512
gained on fc1 at 1 token (rank 320: 1.00x against 0.90x) and lost on fc2 (0.66x against 0.94x); spreading the
columns over the k pieces did not make that up; one reduction at the end instead of one per chunk lost at rank 320
(fc1 0.67x). Before the autotuner keyed on the adapter's constexprs, a rank-320 layer reused the config tuned for
rank 80 on the same weight: fc2 at rank 320 and 1 token ran 0.62x at 7219cbf and 0.94x at 23cd4d6 in the same
layout, tuned for itself (two sessions apart, not one process). The first version, with the term in the finish
kernel under split K (N/256 programs for all of R), ran fc2 at rank 320 2.7x slower than the addmm path (4d9c7d4).

``values`` may also be a (tiles, rows per tile, K/2) strided view (a tiled layer's W_R inside its packed buffer);
``out`` may be a column block of a wider buffer (unit column stride). A caller that runs one weight many times
holds a `GemvPlan`, which launches the compiled kernels past Triton's per-call dispatch, through PyTorch's C++
launcher where it fits (host time per 1-token rank-0 layer call on the H200 machine: 22-26 µs, against 25-36 µs
with Triton's own launcher, 58-74 µs through the JIT and 19-28 µs for dense nn.Linear, same process, 4598767,
results/logs/bench_decode_host_launchers_h200.csv; on the H100 machine Triton's launcher took 39-69 µs against the
JIT's 88-150 µs, results/bench_inference_h100.csv ``decode_host`` rows, ae4c28e). Triton is imported lazily; on
CPU it runs only under ``TRITON_INTERPRET=1`` (the tests).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings

import torch

MAX_BLOCK_T = 64  # tokens per program; more tokens take more programs along the grid's second axis
# Up to this many tokens the FMA form runs (no tensor cores, no rebuilt dense block), above it the tl.dot form.
# H100, bf16, CUDA-graph replay (``decode`` rows of results/bench_inference_h100.csv, a9ca3cd): at 1 token the FMA
# form ran 1.26-1.48x dense F.linear on the four MLP shapes (~2.5 TB/s of weight reads) and the dot form 1.09-1.17x;
# at 8 tokens FMA fell to 0.22-0.29x (its per-token loop is compute-bound) and dot ran 1.09-1.17x. At 2 tokens
# (results/sparse_gemv_variants_h100.md) two FMA token blocks ran 0.74-1.00x, the dot form 1.03-1.20x.
FMA_MAX_TOKENS = 1
# Part of the cache key of measured kernel-vs-cuSPARSELt choices: bump it when the kernel's speed changes.
KERNEL_VERSION = 7
FORMS = ("auto", "fma", "dot")
# Where the masks come from: "nibbles", one byte per group (N, K/4); "cusparselt", the metadata inside the
# compressed buffer the values live in (`sparse_gemv_triton`'s META: no mask copy beside cuSPARSELt's buffer).
MASK_LAYOUTS = ("nibbles", "cusparselt")
# The metadata layout reads a row's 8 groups of 32 columns as one 8-byte word (`sparse_gemv_triton`'s META 2)
# where the compressed buffer and its tile stride are 16-byte aligned; else (or with this off: a benchmark
# compares both in one process) a byte per group (META 1, the first version). Read when a launch is compiled: a
# `GemvPlan` keeps the kernels it launched first.
METADATA_WORDS = True
# Split K when fewer than MIN_PROGRAMS (row block x token block) programs would run (about two per SM of an H100),
# into enough pieces for TARGET_PROGRAMS[form]. Rows per program are autotuned (16-128); the split is decided for
# 32 rows. H100 bf16, CUDA-graph replay, 2-32 tokens (results/sparse_gemv_variants_h100.md): the dot form on
# narrow weights gained from ~528 programs (OPT-13B fc2 0.91-0.98x -> 1.13-1.18x dense, 5120² 0.80-0.85x ->
# 0.98-1.05x, LLaMA down 1.01-1.08x -> 1.08-1.14x), while splitting weights that already had >= 264 programs lost
# 8-13% (LLaMA up: the extra finish kernel and fp32 partials); the FMA form was tuned at 264 (9854dec).
MIN_PROGRAMS = 264
TARGET_PROGRAMS = {"fma": 264, "dot": 528}
_SPLIT_ROWS, MIN_K_CHUNK = 32, 1024
# Split-K chunk lengths are rounded up to this, a multiple of every BLOCK_K. The kernels mask each chunk at its
# end, so any multiple of 4 works; even chunks measured slower (H100 bf16, 8/32 tokens, dot form at 528 programs:
# rounding to 64 instead of 512 took LLaMA down 1.13/1.09x -> 1.04/1.00x dense, 5120² 1.03/0.98x -> 0.95/0.92x;
# results/sparse_gemv_variants_h100.csv), so chunks stay whole blocks, the last one shorter.
K_CHUNK_ALIGN = 512
# The dot form reads each group's two kept values as one integer word (`sparse_gemv_triton._group_weights`'
# WORDS) wherever the values are aligned for it: about +1-11% over reading them as values at 2-32 tokens (same file);
# the FMA form reads values: words measured no faster at 1 token, and with its kept products (`FMA_PRODUCTS`)
# +1.0-1.5% on OPT-13B's shapes in bf16 (about the replays' spread; results/logs/sweep_sparse_gemv_fma_h200.csv).
WORD_LOAD_FORMS = ("dot",)
# How the dot form rebuilds a group's four weights from its two kept values and its mask (`sparse_gemv_triton.
# _dense_block`): "prmt", two PTX byte permutes per half group (a table lookup of the selector from the half's two
# mask bits, then the pair itself, packed as the tensor cores take it; needs the values read as 16-bit words), or
# "select", tl.where per position. sm_90 SASS of the k loop (BLOCK_N 32, BLOCK_K 256, 4 warps): 940 instructions
# per thread with "select", 544 with "prmt"; the rebuild was most of the loop, and the kernel issue-bound
# (~2.1 TB/s of weight reads on the H200, where dense F.linear reads ~3.6). H200 bf16, CUDA-graph replay, 528
# programs, values read as words, each rebuild with its autotuned config (913f26f; results/logs/
# sweep_sparse_gemv_rebuild_h200.csv): OPT-13B fc1 at 8/32 tokens 1.05/0.95x dense with "prmt" against 0.89/0.89x
# with "select", q/k/v/out_proj (5120²) 0.84/0.81x against 0.81/0.79x. The CPU interpreter runs no PTX: there
# "select" always. Read when a launch is compiled (a benchmark compares both in one process).
REBUILDS = ("prmt", "select")
REBUILD = os.environ.get("SLOPE_GEMV_REBUILD", "prmt")
# How the FMA form (one token) forms its products (`sparse_gemv_triton.sparse_gemv_fma_kernel`'s REBUILD): "kept",
# each group's two kept values times x at their positions (picked by the mask: two FMAs and four selects per
# group), summed per (row, group) over the k loop and across the groups once at the end; or "positions", the first
# version: W's four positions rebuilt and multiplied by x's four, summed across the groups every k block (warp
# shuffles per block). sm_90 SASS of the k loop (Triton 3.9, 16 groups per thread, bf16, the wrapper's 16-divisible
# arguments): 508-557 instructions per iteration with "positions", 294-325 with "kept" (276-297 with the values
# read as words, where a bf16 half becomes an fp32 by one shift or mask), over the five row-block shapes of the
# autotune list. H200 bf16, CUDA-graph replay, one token (78d16f3; results/logs/sweep_sparse_gemv_fma_h200.csv):
# OPT-13B q/k/v/out_proj, fc1, fc2 at 1.20/1.47/1.50x dense F.linear with "kept", 1.05/1.28/1.30x with
# "positions"; the 8-block OPT-13B decode step in a CUDA graph went to 1.19x dense at batch 1. Plain Triton: the
# CPU interpreter runs both. Read when a launch is compiled.
FMA_PRODUCTS_CHOICES = ("kept", "positions")
FMA_PRODUCTS = os.environ.get("SLOPE_GEMV_FMA_PRODUCTS", "kept")
# How the merged-adapter epilogue is laid out (`sparse_gemv_triton._store`): adapter columns per chunk
# ("rank_block"), the most columns a program's chunk loop is unrolled over ("rank_unroll"; a longer share stays a
# loop), whether under split K every k piece adds its share of the columns ("spread"; else the first piece adds
# them all while the others wait on it), and whether the one-token (FMA) form sums the products over the columns
# once at the end rather than per chunk ("reduce_once": one reduction across the program's threads instead of one
# per chunk). Read when a launch is compiled; `adapter_epilogue` sets them for a block.
# The default is the first version's layout (7219cbf): on OPT-13B fc1/fc2 at ranks 80 and 320 it measured best or
# within 5% of the best (H200 bf16, CUDA-graph replay, 8 tokens: 0.76-0.87x dense), and each other layout lost
# somewhere. Unrolled 64-column chunks gained on fc1 (1 token, rank 320: 1.00x against 0.90x) but lost on fc2,
# whose adapter Z comes in 20 pieces (rank 320: 0.66x against 0.94x); reduce_once lost at rank 320 (fc1 0.67x);
# spread did not make up for the unrolling on fc2 (23cd4d6, e44904f; results/logs/bench_decode_merge_h200.csv).
ADAPTER_EPILOGUE = {"rank_block": 16, "rank_unroll": 128, "spread": False, "reduce_once": False}
# `GemvPlan` launches the compiled kernels itself after a first launch through Triton's JIT (off: every launch
# through the JIT). A module attribute, so that a benchmark can measure both in one process.
DIRECT_LAUNCH = os.environ.get("SLOPE_GEMV_DIRECT_LAUNCH", "1") != "0"
# Direct launches go through PyTorch's C++ launcher for Triton cubins where this torch and the kernel allow
# (`_static_launch`), else through the compiled kernel's own launcher. Off: always the latter (a benchmark
# compares both in one process: `direct_launch(True, static=False)`).
STATIC_LAUNCH = os.environ.get("SLOPE_GEMV_STATIC_LAUNCH", "1") != "0"


def split_k(n: int, k: int, token_blocks: int = 1, form: str = "fma") -> int:
    """How many pieces to cut k into: enough programs for the GPU, each piece ≥ MIN_K_CHUNK long."""
    programs = -(-n // _SPLIT_ROWS) * token_blocks
    if programs >= MIN_PROGRAMS:
        return 1
    return max(1, min(-(-TARGET_PROGRAMS[form] // programs), k // MIN_K_CHUNK))


def geometry(values: torch.Tensor, k: int) -> tuple[int, int, int]:
    """(rows N, rows per tile, elements between tiles) of a ``values`` operand; raises if it is not one."""
    if values.dim() == 2:
        n, tile_rows, tile_stride = values.shape[0], max(values.shape[0], 1), 0
        row_major = values.stride() == (k // 2, 1)
    elif values.dim() == 3:
        n, tile_rows, tile_stride = values.shape[0] * values.shape[1], values.shape[1], values.stride(0)
        row_major = values.stride()[1:] == (k // 2, 1)
    else:
        row_major = False
    if not row_major or values.shape[-1] != k // 2:
        raise ValueError(f"sparse_gemv: values must be (N, K/2 = {k // 2}) row-major, or a (tiles, rows, K/2) view "
                         f"of row-major tiles; got shape {tuple(values.shape)} strides {values.stride()}")
    return n, tile_rows, tile_stride


def sparse_gemv(x: torch.Tensor, values: torch.Tensor, nibbles: torch.Tensor, bias: torch.Tensor | None = None, *,
                out: torch.Tensor | None = None, form: str = "auto", words: bool | None = None,
                mask_layout: str = "nibbles", adapter: tuple | None = None) -> torch.Tensor:
    """out (T, N) = x (T, K) · Wᵀ (+ bias) (+ scale · Z·R), W given as kept ``values`` and mask ``nibbles`` (see the
    module doc).

    ``form``: ``"fma"`` or ``"dot"`` (tensor cores) kernel; ``"auto"`` takes fma up to `FMA_MAX_TOKENS` tokens.
    ``words``: read the kept values in pairs, as integer words (needs ``values`` aligned to two elements);
    None: the forms in `WORD_LOAD_FORMS` do where the values allow.
    ``mask_layout="cusparselt"``: ``nibbles`` is the compressed uint8 buffer that ``values`` is a view of (one
    cuSPARSELt tile, or equal tiles back to back), and the masks are read from its metadata (`check_metadata_operand`).
    ``adapter``: (z, right, scale), a merged adapter's term added in the kernel's epilogue: Z = z (T, ≥ rank), or
    the sum over the first axis of z (pieces, T, ≥ rank) (a `GemvPlan.partials` result), rounded to R's dtype;
    right R (rank, N). Unit column strides; the first rank columns of Z are read.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"sparse_gemv: x must be a (tokens, K) matrix with unit column stride, got shape "
                         f"{tuple(x.shape)} strides {x.stride()}")
    tokens, k = x.shape
    if k % 4:
        raise ValueError(f"sparse_gemv: K = {k} must be a multiple of 4 (2:4 groups)")
    if form not in FORMS:
        raise ValueError(f"sparse_gemv: form must be one of {FORMS}, got {form!r}")
    n, tile_rows, tile_stride = geometry(values, k)
    if mask_layout not in MASK_LAYOUTS:
        raise ValueError(f"sparse_gemv: mask_layout must be one of {MASK_LAYOUTS}, got {mask_layout!r}")
    if mask_layout == "cusparselt":
        check_metadata_operand(values, nibbles, n, k, tile_rows, tile_stride)
    elif nibbles.shape != (n, k // 4) or nibbles.dtype != torch.uint8 or not nibbles.is_contiguous():
        raise ValueError(f"sparse_gemv: nibbles must be contiguous uint8 ({n}, {k // 4}), got "
                         f"{nibbles.dtype} {tuple(nibbles.shape)}")
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"sparse_gemv: bias must be a contiguous vector of {n} outputs, got {tuple(bias.shape)}")
    if out is None:
        out = torch.empty(tokens, n, device=x.device, dtype=values.dtype)
    elif out.shape != (tokens, n) or out.stride(1) != 1:
        raise ValueError(f"sparse_gemv: out must be ({tokens}, {n}) with unit column stride, got shape "
                         f"{tuple(out.shape)} strides {out.stride()}")
    if words and not word_aligned(values, tile_stride):
        raise ValueError(f"sparse_gemv: words=True reads values in pairs, so they must start on a "
                         f"{2 * values.element_size()}-byte boundary with an even tile stride; got data_ptr % "
                         f"{2 * values.element_size()} = {values.data_ptr() % (2 * values.element_size())}, tile "
                         f"stride {tile_stride} (pass words=False)")
    if adapter is not None:
        check_adapter(adapter, tokens, n)
    if tokens and n:
        launch(x, values, nibbles, bias, out, n, k, tile_rows, tile_stride, form, words, mask_layout, adapter)
    return out


def check_adapter(adapter: tuple, tokens: int, n: int) -> None:
    """Raise unless ``adapter`` is (z, right, scale) as `sparse_gemv` takes it."""
    if not isinstance(adapter, tuple) or len(adapter) != 3:
        raise ValueError("sparse_gemv: adapter must be a tuple (z, right, scale)")
    z, right, scale = adapter
    if right.dim() != 2 or right.shape[1] != n or right.stride(1) != 1:
        raise ValueError(f"sparse_gemv: adapter right must be (rank, N = {n}) with unit column stride, got shape "
                         f"{tuple(right.shape)} strides {right.stride()}")
    if z.dim() not in (2, 3) or z.shape[-2] != tokens or z.shape[-1] < right.shape[0] or z.stride(-1) != 1:
        raise ValueError(f"sparse_gemv: adapter z must be (tokens = {tokens}, >= rank = {right.shape[0]}) or "
                         f"(pieces, tokens, >= rank) with unit column stride, got shape {tuple(z.shape)} strides "
                         f"{z.stride()}")
    if not z.is_floating_point() or z.device != right.device or not isinstance(scale, (int, float)):
        raise ValueError(f"sparse_gemv: adapter z must be floating point on R's device and scale a number, got "
                         f"z {z.dtype} on {z.device}, R on {right.device}, scale {scale!r}")


def check_metadata_operand(values: torch.Tensor, packed: torch.Tensor, n: int, k: int, tile_rows: int,
                           tile_stride: int) -> None:
    """Raise unless ``packed`` is the compressed buffer ``values`` views, laid out as the metadata mask layout
    needs: each tile's tile_rows·K/2 values, then its tile_rows·K/16 metadata elements, tiles ``tile_stride``
    elements apart, and tile_rows and K multiples of 128 (`slope.kernels.nm_pack.direct_metadata_shape`)."""
    from .nm_pack import direct_metadata_shape

    size = values.element_size()
    if size != 2:
        raise ValueError(f"sparse_gemv: mask_layout='cusparselt' is the layout of 16-bit compressed weights, got "
                         f"{values.dtype} values")
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.data_ptr() != values.data_ptr():
        raise ValueError("sparse_gemv: with mask_layout='cusparselt', nibbles must be the flat uint8 compressed "
                         "buffer whose first bytes are the values (values a view of it)")
    if not direct_metadata_shape(tile_rows, k):
        raise ValueError(f"sparse_gemv: mask_layout='cusparselt' reads the metadata layout measured for tiles of "
                         f"multiples of 128 rows and columns; got tiles of ({tile_rows}, {k}) (use nibbles)")
    tiles = n // tile_rows
    tile_bytes = tile_rows * k * 9 // 16 * size
    if tiles > 1 and tile_stride * size < tile_bytes:
        raise ValueError(f"sparse_gemv: tiles {tile_stride * size} bytes apart overlap their {tile_bytes}-byte "
                         "compressed buffers")
    need = (tiles - 1) * tile_stride * size + tile_bytes
    if packed.numel() < need:
        raise ValueError(f"sparse_gemv: the compressed buffer has {packed.numel()} bytes, {need} needed for "
                         f"{tiles} tile(s) of ({tile_rows}, {k})")


def word_aligned(values: torch.Tensor, tile_stride: int) -> bool:
    """Whether ``values`` can be read as pairs (`sparse_gemv`'s ``words``)."""
    return values.data_ptr() % (2 * values.element_size()) == 0 and tile_stride % 2 == 0


def launch(x, values, nibbles, bias, out, n: int, k: int, tile_rows: int, tile_stride: int, form: str = "auto",
           words: bool | None = None, mask_layout: str = "nibbles", adapter: tuple | None = None):
    """The kernel launch behind `sparse_gemv`, without its checks: for callers that checked their operands once.
    A caller that launches one weight many times (a layer) should hold a `GemvPlan`, which also skips Triton's
    per-call dispatch."""
    _launch(x, values, nibbles, bias, out, n, k, tile_rows, tile_stride, form, words, mask_layout, keep=False,
            adapter=adapter)
    return out


def _launch(x, values, nibbles, bias, out, n: int, k: int, tile_rows: int, tile_stride: int, form: str,
            words: bool | None, mask_layout: str = "nibbles", keep: bool = True, static: bool = True,
            adapter: tuple | None = None, partials: bool = False):
    """Launch through Triton's JIT. With ``keep`` (a `GemvPlan`), returns a ``direct(x, out)`` (``direct(x, out, z)``
    with an ``adapter``) that repeats this launch for other tensors of the same geometry past the JIT (its
    ``launcher`` attribute says which one: `_direct_runner`; ``static=False`` leaves PyTorch's launcher out), or
    None where the compiled kernels are not at hand; a one-off call (``keep=False``) builds no such runner.

    ``adapter``: (z, right, scale), the merged-adapter term added to out (`_adapter_arguments`). ``partials``: out
    is an fp32 `partial_shape` buffer that gets the split-K partial sums as they are, for a later launch to add
    (the adapter rows' Z); no bias, no finish kernel."""
    from . import sparse_gemv_triton

    tokens = x.shape[0]
    resolved, block_t, token_blocks, splits, k_chunk = _geometry(tokens, n, k, form, mask_layout)
    kernel = sparse_gemv_triton.sparse_gemv_fma_kernel if resolved == "fma" else sparse_gemv_triton.sparse_gemv_kernel
    if words is None:
        words = resolved in WORD_LOAD_FORMS and word_aligned(values, tile_stride)
    grid = lambda meta: (-(-n // meta["BLOCK_N"]), token_blocks, splits)  # noqa: E731
    bias_arg = bias if bias is not None else values  # never read without HAS_BIAS
    if partials:
        target = out
    else:
        target = out if splits == 1 else torch.empty(splits, tokens, n, device=x.device, dtype=torch.float32)
    merge_pointers, merge_numbers, merge_meta = _adapter_arguments(adapter, values, splits)
    meta = dict(HAS_BIAS=bias is not None, SPLIT=splits > 1 or partials, MERGE=adapter is not None, **merge_meta,
                BLOCK_T=block_t, WORDS=16 * values.element_size() if words else 0,
                META=metadata_mode(mask_layout, nibbles, values, tile_stride), ESIZE=values.element_size(),
                REBUILD=rebuild_mode(resolved, words, values))
    args = (x, values, nibbles, bias_arg, target, *merge_pointers, tokens, n, k, x.stride(0), tile_stride, tile_rows,
            out.stride(-2), k_chunk, tokens * n, *merge_numbers)
    compiled, config = _launch_tuned(kernel, grid, (kernel, n, k, x.dtype, values.dtype, target.dtype,
                                                    *meta.values()), args, meta)
    main_changing = ("x_ptr", "out_ptr", "z_ptr") if adapter is not None else ("x_ptr", "out_ptr")
    main = None if compiled is None or not keep else _direct_runner(
        kernel.fn, compiled, grid(config.kwargs), args, {**meta, **config.kwargs}, main_changing, static)
    if splits == 1 or partials:
        return main  # direct(x, out[, z]), or None
    block = 256
    finish_kernel, finish_grid = sparse_gemv_triton.sparse_gemv_finish_kernel, (-(-n // block), tokens)
    finish_args = (target, bias_arg, out, tokens, n, splits, out.stride(0))
    finish_meta = dict(HAS_BIAS=bias is not None, BLOCK=block)
    finished = finish_kernel[finish_grid](*finish_args, **finish_meta)
    if main is None:
        return None
    finish = _direct_runner(finish_kernel, finished, finish_grid, finish_args, finish_meta, ("partial_ptr", "out_ptr"),
                            static)
    if finish is None:
        return None
    shape = (splits, tokens, n)

    def direct_split(x, out, *z):
        target = torch.empty(shape, device=out.device, dtype=torch.float32)
        main(x, target, *z)
        finish(target, out)
    direct_split.launcher = main.launcher if main.launcher == finish.launcher else "mixed"
    return direct_split


def _geometry(tokens: int, n: int, k: int, form: str, mask_layout: str) -> tuple[str, int, int, int, int]:
    """(form resolved, tokens per program, token blocks, split-K pieces, k per piece) of a launch."""
    fma = form == "fma" or (form == "auto" and tokens <= FMA_MAX_TOKENS)
    if fma:
        block_t = min(FMA_MAX_TOKENS, 1 << (tokens - 1).bit_length())
    else:  # ≥ 16: tl.dot's minimum; the padded token rows are masked out of the loads and the store
        block_t = min(MAX_BLOCK_T, max(16, 1 << (tokens - 1).bit_length()))
    resolved = "fma" if fma else "dot"
    token_blocks = -(-tokens // block_t)
    splits = split_k(n, k, token_blocks, resolved)
    # the metadata layout's mask addresses assume every k block starts at a multiple of 32 columns
    align = math.lcm(K_CHUNK_ALIGN, 32) if mask_layout == "cusparselt" else K_CHUNK_ALIGN
    k_chunk = -(-(-(-k // splits)) // align) * align  # ⌈k / splits⌉ rounded up
    return resolved, block_t, token_blocks, -(-k // k_chunk), k_chunk


def partial_shape(tokens: int, n: int, k: int, form: str = "auto", mask_layout: str = "nibbles") -> tuple:
    """Shape of the fp32 buffer a ``partials`` launch writes: (split-K pieces, tokens, n)."""
    return (_geometry(tokens, n, k, form, mask_layout)[3], tokens, n)


def _adapter_arguments(adapter: tuple | None, values: torch.Tensor, k_pieces: int) -> tuple[tuple, tuple, dict]:
    """The kernels' merge arguments for ``adapter`` = (z, right, scale), z (T, ≥ rank) or (pieces, T, ≥ rank) partial
    sums of Z, right (rank, N), in a launch of ``k_pieces`` split-K pieces: ((z_ptr, right_ptr), (stride_z_split,
    stride_z, stride_right, merge_scale), constexprs RANK, Z_SPLITS and `ADAPTER_EPILOGUE`'s SPAN, RANK_BLOCK,
    RANK_UNROLL, REDUCE_ONCE); placeholders (never read) without one."""
    layout = dict(RANK_BLOCK=ADAPTER_EPILOGUE["rank_block"], RANK_UNROLL=ADAPTER_EPILOGUE["rank_unroll"],
                  REDUCE_ONCE=ADAPTER_EPILOGUE["reduce_once"])
    block = layout["RANK_BLOCK"]
    if adapter is None:
        return (values, values), (0, 0, 0, 0.0), dict(RANK=0, Z_SPLITS=0, SPAN=0, **layout)
    z, right, scale = adapter
    splits, stride_split = (z.shape[0], z.stride(0)) if z.dim() == 3 else (1, 0)
    rank = right.shape[0]
    sharing = k_pieces if ADAPTER_EPILOGUE["spread"] else 1
    span = -(-rank // (sharing * block)) * block  # columns per k piece, whole chunks
    return ((z, right), (stride_split, z.stride(-2), right.stride(0), float(scale)),
            dict(RANK=rank, Z_SPLITS=splits, SPAN=span, **layout))


@contextlib.contextmanager
def adapter_epilogue(**settings):
    """Within the block, launches compiled from now on lay the merged-adapter epilogue out with these
    `ADAPTER_EPILOGUE` settings (a `GemvPlan` keeps what it compiled: build new plans inside); the settings before
    it come back after. For benchmarks that compare layouts in one process."""
    unknown = set(settings) - set(ADAPTER_EPILOGUE)
    if unknown:
        raise ValueError(f"adapter_epilogue: unknown settings {sorted(unknown)}; known: {sorted(ADAPTER_EPILOGUE)}")
    if settings.get("rank_block", 16) not in (16, 32, 64, 128):
        raise ValueError(f"adapter_epilogue: rank_block must be 16, 32, 64 or 128 (tl.dot's and tl.arange's "
                         f"sizes), got {settings['rank_block']}")
    previous = dict(ADAPTER_EPILOGUE)
    ADAPTER_EPILOGUE.update(settings)
    try:
        yield
    finally:
        ADAPTER_EPILOGUE.clear()
        ADAPTER_EPILOGUE.update(previous)


def rebuild_mode(form: str, words: bool, values: torch.Tensor) -> int:
    """The kernel's REBUILD. The dot form (see `REBUILD`): 1 where it reads 16-bit values as words on a GPU and
    `REBUILD` is "prmt", else 0 (tl.where). The FMA form (see `FMA_PRODUCTS`): 1 for "kept", 0 for "positions"."""
    if form == "fma":
        if FMA_PRODUCTS not in FMA_PRODUCTS_CHOICES:
            raise ValueError(f"sparse_gemv: FMA_PRODUCTS (SLOPE_GEMV_FMA_PRODUCTS) must be one of "
                             f"{FMA_PRODUCTS_CHOICES}, got {FMA_PRODUCTS!r}")
        return int(FMA_PRODUCTS == "kept")
    if REBUILD not in REBUILDS:
        raise ValueError(f"sparse_gemv: REBUILD (SLOPE_GEMV_REBUILD) must be one of {REBUILDS}, got {REBUILD!r}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return int(REBUILD == "prmt" and form == "dot" and bool(words) and values.element_size() == 2 and not interpreted)


def metadata_mode(mask_layout: str, packed: torch.Tensor, values: torch.Tensor, tile_stride: int) -> int:
    """The kernel's META: 0 nibble bytes, 1 metadata a byte per group, 2 metadata in words (see `METADATA_WORDS`)."""
    if mask_layout != "cusparselt":
        return 0
    aligned = packed.data_ptr() % 16 == 0 and tile_stride * values.element_size() % 16 == 0
    return 2 if METADATA_WORDS and aligned else 1


def _runner(jit_fn, compiled, grid: tuple, args: tuple, kwargs: dict):
    """(``compiled[grid]``, the launch's arguments in the kernel's parameter order, constexprs included, as
    Triton's JIT binds them) — or None when ``compiled`` is not a `CompiledKernel` (the CPU interpreter, the call
    that autotuned) or direct launching is off."""
    from triton.compiler import CompiledKernel

    if not DIRECT_LAUNCH or not isinstance(compiled, CompiledKernel):
        return None
    named = dict(zip(jit_fn.arg_names, args), **kwargs)
    if set(named) != set(jit_fn.arg_names):
        return None
    grid = tuple(grid) + (1,) * (3 - len(grid))  # the compiled runner reads all three axes; the JIT pads them
    return compiled[grid], [named[name] for name in jit_fn.arg_names]


def _direct_runner(jit_fn, compiled, grid: tuple, args: tuple, kwargs: dict, changing: tuple[str, ...],
                   static: bool = True):
    """``launch(*tensors)``: this launch again with the ``changing`` parameters (by name, in signature order) set
    to those tensors and every other argument as now, past the JIT; None where `_runner` gives none.
    ``launch.launcher``: "static" (PyTorch's launcher, `_static_launch`, where ``static``, `STATIC_LAUNCH` and this
    torch allow) or "triton" (the compiled kernel's own, ``compiled[grid]``)."""
    bound = _runner(jit_fn, compiled, grid, args, kwargs)
    if bound is None:
        return None
    run, values = bound
    at = [jit_fn.arg_names.index(name) for name in changing]
    launch = _static_launch(compiled, grid, jit_fn.arg_names, values, at) if static and STATIC_LAUNCH else None
    if launch is not None:
        return launch
    launch = _inserting(run, values, at)
    launch.launcher = "triton"
    return launch


def _segments(fixed: list, at: list[int]) -> list[tuple]:
    """``fixed`` cut around the positions ``at`` (2 or 3, increasing): the runs of arguments between the changing
    ones, for launch closures that are spelled out rather than looped (they run per launch: host time at decode)."""
    if sorted(at) != at or len(at) not in (2, 3):
        raise ValueError(f"sparse_gemv: changing arguments must be 2 or 3 in signature order, got positions {at}")
    bounds = [-1, *at, len(fixed)]
    return [tuple(fixed[bounds[i] + 1:bounds[i + 1]]) for i in range(len(bounds) - 1)]


def _inserting(run, fixed: list, at: list[int]):
    """``launch(*changing)`` = run(*fixed with the changing tensors at the positions ``at``)."""
    segments = _segments(fixed, at)
    if len(at) == 2:
        head, middle, tail = segments

        def launch(a, b):
            run(*head, a, *middle, b, *tail)
    else:
        head, first, second, tail = segments

        def launch(a, b, c):
            run(*head, a, *first, b, *second, c, *tail)
    return launch


class _KernelView:
    """A `CompiledKernel` as PyTorch's static launcher reads one, without a cubin file of its own: the kernel is
    already loaded (the JIT launched it), so its function handle is reused and no module is loaded or unloaded."""

    def __init__(self, compiled):
        self._compiled, self._cubin_path = compiled, None

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def _static_kernel_class():
    try:  # torch >= 2.12 (the launcher also serves XPU there)
        from torch._inductor.runtime.static_triton_launcher import StaticallyLaunchedCudaKernel
    except ImportError:
        from torch._inductor.runtime.static_cuda_launcher import StaticallyLaunchedCudaKernel
    return StaticallyLaunchedCudaKernel


def _static_launch(compiled, grid: tuple, arg_names: list[str], values: list, changing: list[int]):
    """``launch(*tensors)``, the tensors at the ``changing`` positions (2 or 3), through PyTorch's C++ launcher for
    Triton cubins (``torch._C._StaticCudaLauncher``, what torch.compile launches its Triton kernels with), or None
    where it cannot take this kernel (no such launcher in this torch, launch hooks set, a scratch buffer needed, an
    argument type it has no code for).

    Why: Triton's own launch path runs ~6 Python frames per launch (the runner, launch metadata, hooks, scratch
    allocation, the current device and stream) before its C launcher; at one decode token that was about half of
    a SLoPe layer's host time (`performance_experiments.profile_host`). This one is a single C call. It takes only
    the arguments the cubin has: Triton drops constexprs and the integers it specialised (== 1), so the positions
    kept are read from the compiled kernel's signature; `GemvPlan` checks its first launch against the JIT's."""
    try:
        static = _static_kernel_class()(_KernelView(compiled))
        function, signature = compiled.function, compiled.src.signature

        def index(key):  # Triton keys parameters by name, by index, or (3.3+) by a path tuple (index,)
            key = key[0] if isinstance(key, tuple) else key
            return arg_names.index(key) if isinstance(key, str) else key

        constants = {index(key) for key in getattr(compiled.src, "constants", {})}
        by_index = {index(key): kind for key, kind in signature.items()}
        kept = [i for i in sorted(by_index) if by_index[i] != "constexpr" and i not in constants]
        scratch = (None,) * (static.has_global_scratch + static.has_profile_scratch)
        arg_tys = static.arg_tys + "O" * len(scratch)
        c_launch, warps, shared = static.C_impl._launch_kernel, static.num_warps, static.shared
        device, raw_stream = torch.cuda.current_device(), torch._C._cuda_getCurrentRawStream
    except Exception:  # noqa: BLE001 - any torch/Triton this launcher does not fit: Triton's launcher stays
        return None
    if function is None or not set(changing) <= set(kept) or len(kept) + len(scratch) != len(arg_tys):
        return None
    # tensors as their addresses: the launcher takes an int as is, but asks the driver about every other pointer
    # object (a driver call per argument per launch); the plan holds the operands, so the addresses stay valid
    fixed = [values[i].data_ptr() if isinstance(values[i], torch.Tensor) else values[i] for i in kept] + list(scratch)
    grid_x, grid_y, grid_z = tuple(grid) + (1,) * (3 - len(grid))
    segments = _segments(fixed, [kept.index(i) for i in changing])
    if len(changing) == 2:
        head, middle, tail = segments

        def static_launch(a, b):
            c_launch(function, grid_x, grid_y, grid_z, warps, shared, arg_tys,
                     (*head, a.data_ptr(), *middle, b.data_ptr(), *tail), raw_stream(device))
    else:
        head, first, second, tail = segments

        def static_launch(a, b, c):
            c_launch(function, grid_x, grid_y, grid_z, warps, shared, arg_tys,
                     (*head, a.data_ptr(), *first, b.data_ptr(), *second, c.data_ptr(), *tail), raw_stream(device))
    static_launch.launcher = "static"
    return static_launch


_TUNED: dict[tuple, object] = {}  # launch key -> the triton.Config the autotuner chose for it


def _launch_tuned(kernel, grid, key: tuple, args: tuple, meta: dict):
    """``kernel[grid](*args, **meta)``, past the autotuner once it has chosen a config for ``key``; returns
    (the compiled kernel Triton's JIT launched, or None on the autotuning call; the config).

    The autotuner re-derives its cache key and looks the config up on every call; at one decode token that Python
    was the largest single share of the layer's host time (H100 host, cProfile of 2000 one-token calls: 17% own
    time, 62% with the JIT dispatch under it). ``key`` holds everything the autotuner keys on (N, K, BLOCK_T, WORDS,
    the operand dtypes) plus the other constexprs, so the config reused is the one the autotuner would return."""
    config = _TUNED.get(key)
    if config is None:
        kernel[grid](*args, **meta)
        _TUNED[key] = kernel.best_config
        return None, None
    return kernel.fn[grid](*args, **meta, **config.all_kwargs()), config


class GemvPlan:
    """`launch` for one weight (``values``, ``nibbles``, ``bias`` and their geometry fixed): ``plan(x, out, form)``.

    Why: in an eager decode step every layer's host cost is paid in full (the GPU waits on it at small batch), and
    Triton's JIT dispatch — binding and specialising ~20 arguments, its cache key, the autotuner's lookup, the grid
    callback, for the split-K finish kernel a second time — was most of a SLoPe layer's. So a call with a new key
    (tokens, x's and out's row strides, 16-byte alignment and dtypes, form) goes through the JIT (autotuning and
    compiling as needed) and, once the autotuner has chosen, keeps what it launched; later calls with that key
    launch the same compiled kernels directly: through PyTorch's C++ launcher for Triton cubins where it fits
    (`_static_launch`; checked bit for bit against the JIT's result on the key's first launch) or else the
    compiled kernel's own (`triton.compiler.CompiledKernel[grid]`, the arguments in the order the JIT binds them);
    `launchers` says which ran. The key holds every argument value Triton specialises on that can change between
    calls, so a direct launch runs exactly the kernel the JIT would pick. ``SLOPE_GEMV_DIRECT_LAUNCH=0`` (or
    `DIRECT_LAUNCH` = False) turns direct launches off, ``SLOPE_GEMV_STATIC_LAUNCH=0`` PyTorch's launcher.

    The plan keeps references to the operands: build a new one when they are reallocated.
    """

    def __init__(self, values: torch.Tensor, nibbles: torch.Tensor, bias: torch.Tensor | None, n: int, k: int,
                 tile_rows: int, tile_stride: int, mask_layout: str = "nibbles", *,
                 adapter_right: torch.Tensor | None = None, adapter_scale: float = 1.0):
        if adapter_right is not None and (adapter_right.dim() != 2 or adapter_right.shape[1] != n
                                          or adapter_right.stride(1) != 1):
            raise ValueError(f"GemvPlan: adapter_right must be (rank, N = {n}) with unit column stride, got shape "
                             f"{tuple(adapter_right.shape)} strides {adapter_right.stride()}")
        self._operands = (values, nibbles, bias, n, k, tile_rows, tile_stride)
        self.mask_layout = mask_layout
        self._right, self._scale = adapter_right, adapter_scale
        self._direct: dict[tuple, object] = {}
        self._partial_shapes: dict[tuple, tuple] = {}
        # calls that went through Triton's JIT (a key's first, every call with direct launches off): a benchmark's
        # note says how many, since each costs ~40 µs more host time than a direct launch
        self.jit_launches = 0

    def launchers(self) -> set[str]:
        """Which launchers this plan's direct launches use ("static", "triton"; "mixed": a split-K launch whose
        two kernels use different ones); empty while every launch went through the JIT."""
        return {direct.launcher for direct in self._direct.values()}

    def __call__(self, x: torch.Tensor, out: torch.Tensor, form: str = "auto",
                 z: torch.Tensor | None = None) -> torch.Tensor:
        """out = x·Wᵀ (+ bias) (+ scale · Z·R with Z = Σ z over its split axis: a plan built with
        ``adapter_right`` R needs ``z``, the adapter rows' `partials`, and no other plan takes one)."""
        if (z is None) != (self._right is None):
            raise ValueError("GemvPlan: z (the adapter rows' partial sums) goes with a plan built with adapter_right, "
                             f"and only with one; this plan has {'an' if self._right is not None else 'no'} adapter")
        tokens = x.shape[0]
        if not tokens:
            return out
        key = (tokens, x.stride(0), out.stride(0), x.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0, x.dtype,
               out.dtype, form, STATIC_LAUNCH) + (() if z is None else (z.shape, z.stride(), z.data_ptr() % 16 == 0,
                                                                         z.dtype))
        return self._run(key, x, out, form, () if z is None else (z,), partials=False)

    def partials(self, x: torch.Tensor, form: str = "auto") -> torch.Tensor:
        """The fp32 split-K partial sums of x·Wᵀ, (pieces, tokens, N), not yet added up (no bias): the adapter
        rows' Z for a plan with ``adapter_right``, which adds them in its epilogue."""
        if self._operands[2] is not None or self._right is not None:
            raise ValueError("GemvPlan.partials: a plan with a bias or an adapter of its own gives whole results, "
                             "not partial sums")
        key = ("partials", x.shape[0], x.stride(0), x.data_ptr() % 16 == 0, x.dtype, form, STATIC_LAUNCH)
        shape = self._partial_shapes.get(key)
        if shape is None:
            n, k = self._operands[3:5]
            shape = self._partial_shapes[key] = partial_shape(x.shape[0], n, k, form, self.mask_layout)
        out = torch.empty(shape, device=x.device, dtype=torch.float32)
        return self._run(key, x, out, form, (), partials=True) if x.shape[0] else out

    def _run(self, key: tuple, x: torch.Tensor, out: torch.Tensor, form: str, extra: tuple, partials: bool):
        direct = self._direct.get(key)
        if direct is not None and DIRECT_LAUNCH:
            try:
                direct(x, out, *extra)
                return out
            except TypeError as error:  # a Triton whose launcher takes other arguments: the JIT path stays correct
                _turn_off_direct_launch(error)
        self.jit_launches += 1
        # under CUDA graph capture the static launch cannot be checked (that reads the result back): Triton's
        # launcher then, as the JIT would launch
        static = not torch.cuda.is_available() or not torch.cuda.is_current_stream_capturing()
        direct = self._launch(x, out, form, static, extra, partials)
        if direct is not None and direct.launcher != "triton" and not self._same_as_jit(direct, x, out, extra):
            direct = self._launch(x, out, form, False, extra, partials)
        if direct is not None:
            self._direct[key] = direct
        return out

    def _launch(self, x, out, form, static: bool, extra: tuple, partials: bool):
        adapter = (extra[0], self._right, self._scale) if extra else None
        return _launch(x, *self._operands[:3], out, *self._operands[3:], form, None, self.mask_layout, static=static,
                       adapter=adapter, partials=partials)

    @staticmethod
    def _same_as_jit(direct, x: torch.Tensor, out: torch.Tensor, extra: tuple = ()) -> bool:
        """Whether ``direct`` (through PyTorch's launcher) gives bit for bit what the JIT just wrote to ``out``: the
        same compiled kernel, so anything else means it was handed other arguments than the JIT would pass. Once
        per plan key; a mismatch or an error warns and the plan keeps Triton's launcher for that key."""
        check = torch.empty_strided(out.shape, out.stride(), device=out.device, dtype=out.dtype)
        try:
            direct(x, check, *extra)
            same = torch.equal(check, out)
        except Exception as error:  # noqa: BLE001 - the launcher refused these arguments: Triton's launches
            same, why = False, f"it failed ({error})"
        else:
            why = "its result differs from the JIT's"
        if not same:
            warnings.warn(f"sparse_gemv: PyTorch's static launcher does not fit this Triton kernel: {why}; this "
                          "shape launches through Triton's own launcher (correct, more host time per call)",
                          stacklevel=4)
        return same


@contextlib.contextmanager
def direct_launch(enabled: bool, *, static: bool | None = None):
    """Within the block, `GemvPlan` launches directly (True) or every launch goes through Triton's JIT (False);
    ``static`` (None: as it is) turns PyTorch's launcher for the direct launches on or off. The settings before it
    come back after. For benchmarks that time the paths in one process."""
    global DIRECT_LAUNCH, STATIC_LAUNCH
    previous = DIRECT_LAUNCH, STATIC_LAUNCH
    DIRECT_LAUNCH, STATIC_LAUNCH = enabled, STATIC_LAUNCH if static is None else static
    try:
        yield
    finally:
        DIRECT_LAUNCH, STATIC_LAUNCH = previous


def _turn_off_direct_launch(error: Exception) -> None:
    global DIRECT_LAUNCH
    DIRECT_LAUNCH = False
    warnings.warn(f"sparse_gemv: launching the compiled kernel directly failed on this Triton ({error}); every "
                  "launch goes through Triton's JIT dispatch from now on (correct, more host time per call)",
                  stacklevel=3)
