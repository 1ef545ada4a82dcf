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

        _compiled = {"gather": k.gather_kernel, "scatter": k.scatter_kernel, "transpose": k.transpose_kernel,
                     "adamw": k.adamw_kernel}
    return _compiled


def gather_kept(dense: torch.Tensor, nibbles: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(m, k) dense -> (m, k/2) kept entries (nibbles must have exactly two bits per group)."""
    m, k = dense.shape
    out = torch.empty(m, k // 2, device=dense.device, dtype=out_dtype or dense.dtype)
    groups = m * k // 4
    grid = (triton_cdiv(groups, _BLOCK),)
    _get()["gather"][grid](dense.contiguous(), nibbles.contiguous(), out, groups, BLOCK=_BLOCK)
    return out


def scatter_kept(values: torch.Tensor, nibbles: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(m, k/2) kept entries -> (m, k) dense with zeros at pruned positions."""
    m, half = values.shape
    out = torch.empty(m, half * 2, device=values.device, dtype=out_dtype or values.dtype)
    groups = m * half // 2
    grid = (triton_cdiv(groups, _BLOCK),)
    _get()["scatter"][grid](values.contiguous(), nibbles.contiguous(), out, groups, BLOCK=_BLOCK)
    return out


# Launch shape of the transpose kernel: lanes per program (column groups of W_R), groups of 4 along k walked by
# each program, warps. On an H100 at 20480x5120 (results/sweep_transpose_h100.csv), (128, 1, 4) took 0.53 ms for
# the mask and for the values, against 0.85 / 1.0 ms with (128, 8, 4) and 5.9 / 4.9 ms for a 2-D tiled form with
# reshapes and 4-D rank tensors (results/logs/bench_optim_tiled_kernel_rejected.csv).
TRANSPOSE_LAUNCH = {"block": 128, "groups": 1, "num_warps": 4}


def _transpose_launch(values, nibbles, out, wt_nibbles, mask: bool, launch: dict | None = None) -> None:
    m, half = values.shape
    k = half * 2
    launch = launch or TRANSPOSE_LAUNCH
    groups = next(g for g in (launch["groups"], 8, 4, 2, 1) if (k // 4) % g == 0)  # the grid has no group mask
    grid = (triton_cdiv(m // 4, launch["block"]), k // 4 // groups)
    _get()["transpose"][grid](values.contiguous(), nibbles.contiguous(), out, wt_nibbles, m, k, BLOCK=launch["block"],
                              GROUPS=groups, MASK=mask, num_warps=launch["num_warps"])


def transpose_mask(values: torch.Tensor, nibbles: torch.Tensor, wt_nibbles: torch.Tensor,
                   dtype: torch.dtype, launch: dict | None = None) -> torch.Tensor:
    """Derive W_RCᵀ's mask from W_R's kept values (m, k/2): writes ``wt_nibbles`` (k, m/4), returns the 0/1
    indicator (k, m) in ``dtype`` (exactly 2 ones per group, as `slope.masks.nm_mask` picks them, ties included)."""
    m, half = values.shape
    indicator = torch.empty(half * 2, m, device=values.device, dtype=dtype)
    _transpose_launch(values, nibbles, indicator, wt_nibbles, mask=True, launch=launch)
    return indicator


def transpose_values(values: torch.Tensor, nibbles: torch.Tensor, wt_nibbles: torch.Tensor,
                     out: torch.Tensor, launch: dict | None = None) -> torch.Tensor:
    """Write W_RCᵀ's kept values (k, m/2) under ``wt_nibbles`` into ``out`` (e.g. a compressed buffer's values)."""
    _transpose_launch(values, nibbles, out, wt_nibbles, mask=False, launch=launch)
    return out


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
