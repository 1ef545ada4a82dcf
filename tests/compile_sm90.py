"""Compile the few-token kernels for an sm_90 target without a GPU (Triton's own compiler and ptxas), for
`test_sparse_gemv_compiles`.

Why: the CPU tests run the kernels under Triton's interpreter, which runs the Python and never meets the compiler's
rules (its typing of every return, of both sides of a constexpr branch, of block shapes); a kernel can pass every
CPU test and fail to compile on the GPU machine (c7eb91a did). Run in a process of its own: the interpreter
(TRITON_INTERPRET=1, set by the tests' conftest) replaces `triton.jit` for the whole process.

    TRITON_INTERPRET=0 python -m tests.compile_sm90   # prints one line per variant, exit 1 if any fails
"""
from __future__ import annotations

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from slope.kernels import sparse_gemv_triton as kernels

POINTERS = {"x_ptr": "*bf16", "values_ptr": "*bf16", "nibbles_ptr": "*u8", "bias_ptr": "*bf16", "out_ptr": "*fp32",
            "z_ptr": "*fp32", "right_ptr": "*bf16"}
# adapter layouts (`slope.kernels.sparse_gemv.ADAPTER_EPILOGUE`): chunk width, unroll limit, one reduction
LAYOUTS = [(16, 128, False), (64, 512, True), (64, 64, True), (32, 512, False)]


def _signature(fn) -> dict:
    signature = {}
    for param in fn.params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
        else:
            signature[param.name] = POINTERS.get(param.name, "fp32" if param.name == "merge_scale" else "i32")
    return signature


def compile_variant(fn, block_t: int, merge: bool, rank: int, span: int, layout: tuple, block_n=32, block_k=256,
                    rebuild: int = 0, meta: int = 0, words: int | None = None):
    rank_block, unroll, once = layout
    words = (32 if block_t >= 16 else 0) if words is None else words  # the wrapper's default per form
    constants = dict(HAS_BIAS=True, SPLIT=True, MERGE=merge, RANK=rank if merge else 0, Z_SPLITS=4 if merge else 0,
                     SPAN=span if merge else 0, RANK_BLOCK=rank_block, RANK_UNROLL=unroll, REDUCE_ONCE=once,
                     BLOCK_T=block_t, WORDS=words, META=meta, ESIZE=2, REBUILD=rebuild,
                     BLOCK_N=block_n, BLOCK_K=block_k)
    source = ASTSource(fn, _signature(fn), constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))


def variants():
    """(name, kernel, BLOCK_T, MERGE, RANK, SPAN, layout, REBUILD, META, WORDS): both forms without an adapter in
    their first version (REBUILD 0) and their default (the dot form's prmt rebuild, whose inline PTX goes through
    ptxas here; the FMA form's kept products), that also with cuSPARSELt's metadata in words (the FMA form then
    reading bf16 words, `_kept_fp32`'s shift-and-mask path); and the default with an adapter under each layout,
    the term whole (SPAN ≥ RANK) and spread over k pieces, unrolled and in a loop."""
    forms = [("fma", kernels.sparse_gemv_fma_kernel.fn, 1, "kept products", 32),
             ("dot", kernels.sparse_gemv_kernel.fn, 16, "prmt rebuild", None)]
    for (form, fn, block_t, default, words) in forms:
        yield f"{form} no adapter", fn, block_t, False, 0, 0, LAYOUTS[0], 0, 0, None
        yield f"{form} no adapter, {default}", fn, block_t, False, 0, 0, LAYOUTS[0], 1, 0, None
        yield f"{form} no adapter, {default}, metadata words", fn, block_t, False, 0, 0, LAYOUTS[0], 1, 2, words
        for layout, (rank, span) in itertools.product(LAYOUTS, [(80, 80), (320, 192)]):
            yield (f"{form} rank {rank} span {span} layout {layout}, {default}", fn, block_t, True, rank, span,
                   layout, 1, 0, None)


def main() -> int:
    failed = 0
    for name, fn, block_t, merge, rank, span, layout, rebuild, meta, words in variants():
        try:
            compile_variant(fn, block_t, merge, rank, span, layout, rebuild=rebuild, meta=meta, words=words)
            print(f"ok      {name}")
        except Exception as error:  # noqa: BLE001 - report every variant's failure, then fail
            failed += 1
            print(f"FAILED  {name}: {type(error).__name__}: {str(error)[-2000:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
