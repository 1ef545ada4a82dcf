"""Baseline sparse linears used by the paper's accuracy and speed tables, in the same module family as SLoPe.

* `SRSTELinear` — Extended SR-STE: dense weights; the N:M mask (along d_in) is recomputed from |W| on every
  forward; the gradient is straight-through (dense dYᵀX) plus the sparse-refined decay λ·(1−M)⊙W that pulls
  pruned weights towards zero (λ = 6e-6 by default, the paper's value); "extended" = the backward uses the
  double-pruned W_RC like SLoPe. `densify_model` (or `to_slope`) makes it fully sparse at the end.
* `FSTLinear` — FST-style: dense weights, a *transposable* N:M mask (N:M along rows and columns at once)
  recomputed from |W| on every forward, so one mask serves FWD and BWD-2; straight-through gradient plus the
  same masked decay. The paper uses it as the speed and memory baseline; it ends with dense fine-tuning.

Wanda (one-shot pruning of a trained dense model) lives in `slope.wanda`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import SLoPeLinear, SparseLinearBase, autocast_operands
from .masks import nm_mask, row_mask, transposable_nm_mask

DEFAULT_SRSTE_DECAY = 6e-6


class StraightThroughMatmul(torch.autograd.Function):
    """y = x·(W⊙M)ᵀ + b; dX = dY·W_bwd; dW = dYᵀX + λ·(1−M)⊙W (straight-through with masked decay)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, backward_weight, decay):
        ctx.save_for_backward(x, weight, mask, backward_weight)
        ctx.decay = decay
        ctx.has_bias = bias is not None
        return F.linear(x, weight * mask, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask, backward_weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ backward_weight
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.t() @ x
            if ctx.decay:
                grad_w = grad_w + ctx.decay * (~mask) * weight
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class _DynamicMaskLinear(SparseLinearBase):
    """Dense weights with a mask recomputed from |W| on every forward (subclasses choose the masks)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, sparsity="2:4",
                 decay: float = DEFAULT_SRSTE_DECAY, layer_name: str = "", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, sparsity=sparsity, layer_name=layer_name,
                         device=device, dtype=dtype)
        if decay < 0:
            raise ValueError(f"{self.layer_name}: decay must be >= 0, got {decay}")
        self.decay = decay
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def masks(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward mask, backward matrix) for the current weights."""
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        mask, _ = self.masks(self.weight.detach())
        return self.weight * mask

    def current_mask(self) -> torch.Tensor:
        return self.masks(self.weight.detach())[0]

    def _sparse_linear(self, x2d: torch.Tensor) -> torch.Tensor:
        x2d, weight, bias = autocast_operands(x2d, self.weight, self.bias)
        mask, backward_weight = self.masks(weight.detach())
        with torch.autocast(x2d.device.type, enabled=False):
            return StraightThroughMatmul.apply(x2d, weight, bias, mask, backward_weight, self.decay)

    def to_slope(self) -> SLoPeLinear:
        """Freeze the current mask into a `SLoPeLinear` (fully sparse from here on)."""
        layer = SLoPeLinear(self.in_features, self.out_features, self.bias is not None, sparsity=self.sparsity,
                            layer_name=self.layer_name, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.set_mask(self.current_mask())
        layer.origin = self.origin
        return layer


class SRSTELinear(_DynamicMaskLinear):
    """Extended SR-STE: N:M along d_in from |W| each forward; backward through the double-pruned W_RC."""

    def masks(self, weight):
        mask = row_mask(weight, self.n, self.m, name=self.layer_name)
        w_r = weight * mask
        return mask, w_r * nm_mask(w_r, self.n, self.m, dim=0)


class FSTLinear(_DynamicMaskLinear):
    """FST-style: a transposable N:M mask from |W| each forward serves both FWD and BWD-2."""

    def masks(self, weight):
        mask = transposable_nm_mask(weight, self.n, self.m, name=self.layer_name)
        return mask, weight * mask
