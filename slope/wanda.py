"""Wanda one-shot N:M pruning (Sun et al., 2023), the baseline of the paper's mixed-sparsity table.

Score of weight W_ij = |W_ij| · ‖X_j‖₂, with ‖X_j‖₂ the L2 norm of input feature j over every token of the
calibration batches; each output row keeps the N best of every M consecutive inputs. The pruned layers become
`SLoPeLinear` with that mask fixed (``double_prune=False`` by default: Wanda's fine-tuning is plain masked
training), so the sparsity is kept through fine-tuning.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .linear import SLoPeLinear
from .masks import nm_mask
from .prune import FilterFn, SparsitySchedule, _select_targets, _set_submodule


def _default_forward(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def wanda_prune(model: nn.Module, calibration_batches: Iterable, *, sparsity: str | SparsitySchedule = "2:4",
                filter_fn: FilterFn | None = None, double_prune: bool = False,
                forward_fn: Callable[[nn.Module, object], None] = _default_forward) -> nn.Module:
    """Prune ``model`` in place with Wanda scores from ``calibration_batches``; return it."""
    targets = _select_targets(model, filter_fn, sparsity)
    sq_norms: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sq_norms[name] = sq_norms.get(name, 0) + (x * x).sum(0)
        return hook

    handles = [t.module.register_forward_pre_hook(recorder(t.name)) for t in targets]
    try:
        was_training = model.training
        model.eval()
        for batch in calibration_batches:
            forward_fn(model, batch)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    missing = [t.name for t in targets if t.name not in sq_norms]
    if missing:
        raise ValueError(f"wanda_prune: no calibration input reached {missing[:3]}...: give at least one batch "
                         "that runs through every layer (or a forward_fn that does)")
    for t in targets:
        weight = t.module.weight.detach()
        weight = weight.t() if type(t.module).__name__ == "Conv1D" else weight  # (d_out, d_in)
        scores = weight.abs().double() * sq_norms[t.name].sqrt().to(weight.device)
        mask = nm_mask(scores, t.n, t.m, dim=1, name=t.name)
        layer = SLoPeLinear.from_dense(t.module, sparsity=(t.n, t.m), layer_name=t.name, mask=mask,
                                       double_prune=double_prune)
        _set_submodule(model, t.name, layer)
    return model
