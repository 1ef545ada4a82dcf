"""Triton kernels behind `slope.kernels.fused` (imported lazily: `import slope` never needs triton).

* `addmm_kernel`: out = c + alpha · a @ b with fp32 accumulation, stored in ``out``'s dtype (the reference code
  always stored fp16, also for bf16 inputs). ``c`` and ``a`` may be row-strided views (e.g. the two column
  blocks of the merged SpMM's output), ``out`` may be ``c`` itself (in place).
* `bias_add_kernel`: out = y + bias, per output column, stored in ``out``'s dtype.
"""
import os

import triton
import triton.language as tl

# The CPU interpreter runs every autotune candidate: one small config keeps the CPU tests quick.
if os.environ.get("TRITON_INTERPRET") == "1":
    _ADDMM_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4)]
else:
    _ADDMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                      for bm, bn, bk, w, s in ((128, 128, 32, 8, 3), (128, 256, 32, 8, 3), (64, 128, 32, 4, 4),
                                               (128, 64, 64, 4, 3), (64, 64, 32, 4, 4), (32, 128, 64, 4, 3),
                                               (16, 128, 64, 4, 3))]


@triton.autotune(configs=_ADDMM_CONFIGS, key=["M", "N", "K"])
@triton.jit
def addmm_kernel(c_ptr, a_ptr, b_ptr, out_ptr, M, N, K, stride_cm, stride_am, stride_bk, stride_om, alpha,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # N-major program order: consecutive programs share a row block of `a` (small: K is an adapter rank).
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = pid // blocks_n, pid % blocks_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None].to(tl.int64) * stride_am + kk[None, :],
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None].to(tl.int64) * stride_bk + rn[None, :],
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    c = tl.load(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], mask=inside, other=0.0)
    result = c.to(tl.float32) + alpha * acc
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], result.to(out_ptr.dtype.element_ty),
             mask=inside)


@triton.jit
def bias_add_kernel(y_ptr, bias_ptr, out_ptr, M, N, stride_ym, stride_om, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    y = tl.load(y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], mask=inside, other=0.0)
    bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0)
    result = y.to(tl.float32) + bias.to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], result.to(out_ptr.dtype.element_ty),
             mask=inside)
