"""The two small fused ops of the merged-adapter inference path, each in Triton and in torch.

    addmm(c, a, b, alpha)   out = c + alpha · a @ b   (merged adapters: Y = X·W_Rᵀ + (X·L)·R / r)
    bias_add(y, bias)       out = y + bias            (where the SpMM cannot fuse the bias: layout 1)

Both keep the input dtype (fp32 accumulation inside). ``impl`` picks the implementation: ``"triton"``,
``"torch"`` or ``"auto"``. ``auto`` follows the H100 benchmark (`performance_experiments/bench_inference.py`,
``fused`` rows of results/bench_inference_h100.csv): the Triton kernels are the default only where they won —
from `TRITON_MIN_ROWS` rows (tokens) up. At 8192 tokens Triton's addmm was 2.0–3.0x and its bias add 2.0x
faster than torch (torch.addmm copies the strided input first; the broadcast add_ reaches ~1.4 TB/s); at
16–2048 tokens torch won in 17 of 20 cases (launch and autotune-dispatch overhead). CPU tensors always use torch (the Triton kernels run on
CPU only under ``TRITON_INTERPRET=1``, which the tests use with ``impl="triton"``).
"""
from __future__ import annotations

import torch

# Rows from which ``auto`` takes Triton (see the module docstring for the measurements behind them).
TRITON_MIN_ROWS = {"addmm": 4096, "bias_add": 4096}
_IMPLS = ("auto", "triton", "torch")


def _resolve(op: str, impl: str, tensor: torch.Tensor) -> str:
    if impl not in _IMPLS:
        raise ValueError(f"{op}: impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if tensor.is_cuda and tensor.shape[0] >= TRITON_MIN_ROWS[op] else "torch"
    return impl


def _check_rows(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name} must be a 2-D matrix with unit column stride (a row-strided view is fine), "
                         f"got shape {tuple(t.shape)} strides {t.stride()}; call .contiguous() first")


def addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, *, out: torch.Tensor | None = None,
          impl: str = "auto") -> torch.Tensor:
    """out = c + alpha · a @ b, in c's dtype. c (M, N), a (M, K), b (K, N); ``out=c`` updates c in place."""
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or c.shape != (m, n):
        raise ValueError(f"addmm: shapes c {tuple(c.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)} do not chain "
                         "as (M, N) + (M, K)·(K, N)")
    if _resolve("addmm", impl, c) == "torch":
        # casts only where needed: at decode sizes each call is host time (`SLoPeInferenceLinear`'s merge)
        a, b = (t if t.dtype == c.dtype else t.to(c.dtype) for t in (a, b))
        result = torch.addmm(c, a, b, alpha=alpha)
        return result if out is None else out.copy_(result)
    from . import addmm_triton

    for name, t in (("c", c), ("a", a)):
        _check_rows(f"addmm: {name}", t)
    b = b.contiguous()
    out = torch.empty(m, n, device=c.device, dtype=c.dtype) if out is None else out
    _check_rows("addmm: out", out)
    grid = lambda meta: (triton_cdiv(m, meta["BLOCK_M"]) * triton_cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    addmm_triton.addmm_kernel[grid](c, a, b, out, m, n, k, c.stride(0), a.stride(0), b.stride(0), out.stride(0),
                                    float(alpha))
    return out


def bias_add(y: torch.Tensor, bias: torch.Tensor, *, out: torch.Tensor | None = None,
             impl: str = "auto") -> torch.Tensor:
    """out = y + bias (bias broadcast over rows), in y's dtype; ``out=y`` adds in place."""
    if bias.dim() != 1 or y.dim() != 2 or bias.shape[0] != y.shape[1]:
        raise ValueError(f"bias_add: bias {tuple(bias.shape)} must be a vector of y's {y.shape[-1]} columns")
    if _resolve("bias_add", impl, y) == "torch":
        if out is y:
            return y.add_(bias.to(y.dtype))
        result = y + bias.to(y.dtype)
        return result if out is None else out.copy_(result)
    from . import addmm_triton

    _check_rows("bias_add: y", y)
    out = torch.empty(y.shape, device=y.device, dtype=y.dtype) if out is None else out
    _check_rows("bias_add: out", out)
    m, n = y.shape
    block_m, block_n = 32, 128
    grid = (triton_cdiv(m, block_m), triton_cdiv(n, block_n))
    addmm_triton.bias_add_kernel[grid](y, bias.contiguous(), out, m, n, y.stride(0), out.stride(0),
                                       BLOCK_M=block_m, BLOCK_N=block_n)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
