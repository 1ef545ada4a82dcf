"""The SLoPe linear layer: double-pruned N:M sparse training plus lazy low-rank adapters.

A linear layer ``y = x Wᵀ + b`` with W of shape (d_out, d_in) runs three GEMMs in training. SLoPe treats them so:

    FWD    Y  = X · W_Rᵀ            W_R = W ⊙ M, M = N:M along d_in, fixed from |W| at prune time (`mask` buffer)
    BWD-2  dX = dY · W_RC           W_RC = W_R pruned N:M along d_out, re-derived from the current |W_R| every step
    BWD-1  dW = (dYᵀ · X) ⊙ M       dense GEMM, only kept entries used: pruned entries of W stay exactly zero

plus, once `add_adapter` has been called (the last ~1% of pretraining), ``y += (x·L)·R / r`` with
L (d_in, r) random and R (r, d_out) zero, so the function does not change at the step the adapters appear.

This file is the *simulator* (backend ``"dense"``): W is a dense ``nn.Parameter`` whose pruned entries are zero,
every GEMM is a dense torch op on masked operands, and dW lands in ``weight.grad`` so any torch optimizer works
(AdamW with weight decay keeps zeros at zero: their gradient, moments and decayed value are all exactly 0). It
is the numerical oracle for the compressed GPU backends and runs on CPU and GPU alike.

Mixed precision: under ``torch.autocast`` the operands are cast to the autocast dtype before the custom
autograd Function (which then runs with autocast off), so fp32 master weights receive fp32 gradients.

`merge_lora=True` (inference) simulates the paper's merged path: the down-adapter L is N:M pruned along d_in so
it could be concatenated under W in one compressed matrix; the output keeps the training-time 1/r scale.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .masks import check_divisible, nm_mask, parse_sparsity, row_mask


def autocast_operands(x: torch.Tensor, *tensors: torch.Tensor | None):
    """Cast ``x`` and the parameters to the active autocast dtype (custom Functions are not autocast-aware)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return (x.to(dtype), *(None if t is None else t.to(dtype) for t in tensors))
    return (x, *tensors)


class SLoPeMatmul(torch.autograd.Function):
    """y = x · (W⊙M)ᵀ + b with SLoPe's backward. x: (tokens, d_in); masks: bool (d_out, d_in), True = kept.

    ``backward_mask`` is W_RC's mask (or the forward mask without double pruning), derived by the caller from
    the master weights, so low-precision rounding under autocast cannot reorder magnitudes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mask, backward_mask):
        ctx.save_for_backward(x, weight, mask, backward_mask)
        ctx.has_bias = bias is not None
        return F.linear(x, weight * mask, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask, backward_mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ (weight * backward_mask)  # BWD-2: dX = dY · W_RC
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out.t() @ x) * mask  # BWD-1: dense GEMM, only the kept entries survive
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None


class SparseLinearBase(nn.Module):
    """What every sparse linear of the family shares: weight (d_out, d_in), bias, N:M, lazy adapters.

    Subclasses implement `_sparse_linear(x2d)` (the main product on 2-D input) and `effective_weight()`
    (the dense matrix the forward multiplies by), which `densify_model` and the tests use.
    """

    has_dense_weight = True  # False for compressed layers, which hold no (d_out, d_in) weight

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, sparsity="2:4",
                 layer_name: str = "", device=None, dtype=None):
        super().__init__()
        self.layer_name = layer_name or type(self).__name__
        self.n, self.m = parse_sparsity(sparsity, where=f"{self.layer_name}: sparsity")
        check_divisible((out_features, in_features), self.m, (0, 1), name=self.layer_name)
        self.in_features, self.out_features = in_features, out_features
        if self.has_dense_weight:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.lora_left: nn.Parameter | None = None  # L: (d_in, r)
        self.lora_right: nn.Parameter | None = None  # R: (r, d_out)
        self.lora_merged = False
        # Which module class this layer replaced, so `densify_model` can restore it ("linear" or "conv1d").
        self.origin = "linear"

    @property
    def sparsity(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def lora_rank(self) -> int:
        return 0 if self.lora_left is None else self.lora_left.shape[1]

    # ----- lazy low-rank adapters -------------------------------------------------------------------------
    def add_adapter(self, rank: int) -> None:
        """Add y += (x·L)·R / r. L ~ Kaiming-uniform (as LoRA's A), R = 0: the layer's function is unchanged."""
        limit = min(self.in_features, self.out_features)
        if not isinstance(rank, int) or not 0 <= rank < limit:
            raise ValueError(f"{self.layer_name}: adapter rank must be an int with 0 <= rank < min(d_in, d_out) = "
                             f"{limit}; got {rank!r}. Use a smaller rank or keep this layer out of the adapters.")
        if self.lora_left is not None:
            raise ValueError(f"{self.layer_name}: adapters were already added (rank {self.lora_rank}).")
        if rank == 0:
            return
        w = self.bias if self.bias is not None else next(self.parameters())  # device and dtype of the layer
        left = torch.empty(self.in_features, rank, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(left.t(), a=math.sqrt(5))  # initialise as an (r, d_in) weight would be
        self.lora_left = nn.Parameter(left)
        self.lora_right = nn.Parameter(torch.zeros(rank, self.out_features, device=w.device, dtype=w.dtype))

    def merge_adapter(self) -> None:
        """Inference layout: prune L N:M along d_in so it can share W's compressed matrix (scale stays 1/r)."""
        if self.lora_left is None:
            raise ValueError(f"{self.layer_name}: merge_lora needs adapters; add them first (add_lora=True, lora_rank>0).")
        self.lora_merged = True

    def _merged_left(self) -> torch.Tensor:
        left = self.lora_left
        # L is pruned from its current values on every call, so a state_dict loaded after merging is honoured.
        return left * nm_mask(left, self.n, self.m, dim=0, name=f"{self.layer_name}.lora_left")

    def adapter_weight(self) -> torch.Tensor | None:
        """(d_out, d_in) dense equivalent of the adapter term, Rᵀ·Lᵀ / r (None without adapters)."""
        if self.lora_left is None:
            return None
        left = self._merged_left() if self.lora_merged else self.lora_left
        return (left @ self.lora_right).t() / self.lora_rank

    def _adapter_output(self, x2d: torch.Tensor) -> torch.Tensor:
        left = self._merged_left() if self.lora_merged else self.lora_left
        x2d, left, right = autocast_operands(x2d, left, self.lora_right)
        # Every row (token of every sample) gets its own (x·L)·R: no broadcasting of one sample's output.
        return (x2d @ left) @ right / self.lora_rank

    # ----- forward ----------------------------------------------------------------------------------------
    def _sparse_linear(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.layer_name}: input has {x.shape[-1]} features, the layer expects {self.in_features}")
        x2d = x.reshape(-1, self.in_features)
        y = self._sparse_linear(x2d)
        if self.lora_left is not None:
            y = y + self._adapter_output(x2d)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"sparsity={self.sparsity}"
        if self.lora_left is not None:
            text += f", lora_rank={self.lora_rank}" + (", merged" if self.lora_merged else "")
        return text

    # ----- conversion -------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, module: nn.Module, *, sparsity="2:4", layer_name: str = "", mask: torch.Tensor | None = None,
                   **kwargs):
        """Build from an ``nn.Linear`` or a transformers GPT-2 ``Conv1D`` (weight stored (d_in, d_out)).

        ``mask`` (bool, (d_out, d_in), True = kept) fixes the mask instead of deriving it from |W| (e.g. Wanda).
        """
        is_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
        weight = module.weight.detach().t() if is_conv1d else module.weight.detach()
        d_out, d_in = weight.shape
        layer = cls(d_in, d_out, module.bias is not None, sparsity=sparsity, layer_name=layer_name,
                    device=weight.device, dtype=weight.dtype, **kwargs)
        layer.origin = "conv1d" if is_conv1d else "linear"
        with torch.no_grad():
            if is_conv1d:
                layer.weight.copy_(weight)
            else:
                layer.weight = module.weight  # keep the Parameter object: optimizers holding it stay valid
            if module.bias is not None:
                layer.bias = module.bias
        layer.weight.requires_grad_(module.weight.requires_grad)
        layer._init_masks(mask)
        return layer

    def _init_masks(self, mask: torch.Tensor | None = None) -> None:
        """Hook for subclasses that fix a mask at conversion time; the others derive it on every forward."""
        if mask is not None:
            raise ValueError(f"{self.layer_name}: {type(self).__name__} recomputes its mask from |W| on every "
                             "forward and takes no fixed mask; use SLoPeLinear for a fixed mask")


class SLoPeLinear(SparseLinearBase):
    """SLoPe's sparse linear (simulated on any device). See the module docstring for the three GEMMs.

    ``double_prune=False`` gives plain masked sparse training (backward uses W_R), as used for fine-tuning
    one-shot pruned baselines.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, sparsity="2:4",
                 double_prune: bool = True, layer_name: str = "", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, sparsity=sparsity, layer_name=layer_name,
                         device=device, dtype=dtype)
        self.double_prune = double_prune
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        # True = kept. A registered buffer, so it travels with state_dict, .to() and DDP broadcasts.
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=self.weight.device))
        self._init_masks()

    def _init_masks(self, mask: torch.Tensor | None = None) -> None:
        self.set_mask(row_mask(self.weight, self.n, self.m, name=self.layer_name) if mask is None else mask)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Fix the forward mask (True = kept; N:M along d_in) and zero the pruned weights."""
        if mask.shape != self.weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"{self.layer_name}: mask must be bool of shape {tuple(self.weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        self.mask.copy_(mask)
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Re-zero pruned weights (only needed after writing to ``weight`` by hand)."""
        self.weight.mul_(self.mask)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def backward_mask(self) -> torch.Tensor:
        """Mask of the matrix BWD-2 multiplies by: W_RC's (N:M along d_out of the current W_R), or W_R's."""
        if not self.double_prune:
            return self.mask
        # BWD-2 reduces over d_out, so the transpose is pruned along d_out, from the current |W_R|, every step.
        return self.mask & nm_mask(self.weight.detach() * self.mask, self.n, self.m, dim=0, name=self.layer_name)

    def backward_weight(self) -> torch.Tensor:
        """W_RC (or W_R without double pruning), for inspection and tests."""
        return self.weight * self.backward_mask()

    def _sparse_linear(self, x2d: torch.Tensor) -> torch.Tensor:
        # W_RC's mask is needed only if a backward will run; derive it now, from the fp32 master weights.
        needs_backward = torch.is_grad_enabled() and (x2d.requires_grad or self.weight.requires_grad)
        backward_mask = self.backward_mask() if needs_backward else self.mask
        x2d, weight, bias = autocast_operands(x2d, self.weight, self.bias)
        with torch.autocast(x2d.device.type, enabled=False):
            return SLoPeMatmul.apply(x2d, weight, bias, self.mask, backward_mask)
