"""`ADAMWSparse`: AdamW for compressed SLoPe layers, with fp32 master values and fp32 moments at compressed size.

Each compressed layer exposes its kept weights as one 16-bit Parameter, ``values`` (d_out, d_in/2), a view into
the cuSPARSELt buffer; BWD-1 puts their gradient in ``values.grad`` (so DDP, clipping and GradScaler see it like
any gradient). A step:

1. AdamW on fp32 master values and moments, decoupled weight decay, in one fused Triton pass that also writes
   the new values, rounded to 16 bits, into the compressed W in place (metadata unchanged: the forward mask
   is fixed);
2. W_RCᵀ is rebuilt from the fp32 master values, re-deriving its 2:4 mask every ``mask_change_freq`` steps
   (1 = the paper's accuracy semantics; one Triton pass for mask and values, one for the metadata — see
   `CompressedSLoPeLinear.rebuild_transpose`) and keeping the last mask in between (one pass for the values).

Dense parameters (embeddings, norms, dense layers, adapters) go to an ordinary optimizer:
``torch.optim.AdamW(slope.optim.dense_parameters(model), ...)``. Unlike the public reference code, the stored
masks are the ones used (no stale transpose mask) and no 16-bit weight is updated without an fp32 master.
"""
from __future__ import annotations

import torch
from torch import nn

from .compressed import CompressedSLoPeLinear
from .kernels import nm_pack


def compressed_layers(model: nn.Module) -> list[CompressedSLoPeLinear]:
    return [m for m in model.modules() if isinstance(m, CompressedSLoPeLinear)]


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except compressed layers' ``values`` (which `ADAMWSparse` owns)."""
    sparse = {id(layer.values) for layer in compressed_layers(model)}
    return [p for p in model.parameters() if id(p) not in sparse]


class DynamicLossScaler:
    """fp16 dynamic loss scaling over several optimizers (dense and sparse): all step, or none do.

    torch's GradScaler decides per optimizer (an overflow in the dense gradients alone would still update the
    sparse weights) and refuses to unscale fp16 gradients, which compressed fp16 layers have. This scaler
    unscales every gradient in place, optionally clips by one global norm, and skips every optimizer if any
    gradient is inf/NaN, backing the scale off; after ``growth_interval`` good steps the scale grows.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("DynamicLossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                             "growth_interval >= 1")
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def step(self, optimizers, max_grad_norm: float | None = None) -> bool:
        """Unscale, check, maybe clip, step all optimizers or none; returns whether they stepped."""
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)
        finite = not grads or bool(torch.stack([n.float() for n in torch._foreach_norm(grads)]).isfinite().all())
        if finite:
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            for optimizer in optimizers:
                optimizer.step()
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale_value *= self.growth_factor
        else:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
        return finite

    def state_dict(self) -> dict:
        return {"scale": self.scale_value, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value, self.good_steps = float(state["scale"]), int(state["good_steps"])


def grad_dict(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Compressed gradients by layer name (the reference API's ``grad_dict``; here they live in ``values.grad``)."""
    return {name: m.values.grad for name, m in model.named_modules() if isinstance(m, CompressedSLoPeLinear)}


class ADAMWSparse(torch.optim.Optimizer):
    """AdamW over the compressed layers of ``model``. ``grad_dict`` is accepted for the reference signature."""

    def __init__(self, model: nn.Module, grad_dict=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, mask_change_freq: int = 1):
        layers = compressed_layers(model)
        if not layers:
            raise ValueError("ADAMWSparse found no compressed layers: call slope.prune_model(model, compress=True) "
                             "first (simulated layers train with any torch optimizer)")
        if not isinstance(mask_change_freq, int) or mask_change_freq < 1:
            raise ValueError(f"mask_change_freq must be an int >= 1, got {mask_change_freq!r}")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW hyper-parameters: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__([layer.values for layer in layers],
                         dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.mask_change_freq = mask_change_freq
        self._layer_of = {id(layer.values): layer for layer in layers}

    # settable like the reference optimizer (e.g. from an LR scheduler driving the dense optimizer)
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.param_groups:
            group["lr"] = value

    @property
    def weight_decay(self) -> float:
        return self.param_groups[0]["weight_decay"]

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        for group in self.param_groups:
            group["weight_decay"] = value

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["master"] = p.detach().float().clone()
            state["exp_avg"] = torch.zeros_like(state["master"])
            state["exp_avg_sq"] = torch.zeros_like(state["master"])
        return state

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the sparse gradients alone (prefer torch's clip over all parameters: values are parameters)."""
        return torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], max_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in params:
                state = self._state(p)
                state["step"] += 1
                # one fused pass: fp32 master/moments updated, 16-bit values written into the compressed W
                nm_pack.adamw_step_(state["master"], state["exp_avg"], state["exp_avg_sq"], p.grad, p, lr=lr,
                                    beta1=beta1, beta2=beta2, eps=eps, weight_decay=decay, step=state["step"])
                recompute = state["step"] % self.mask_change_freq == 0 or not state.get("wt_mask_ready", False)
                self._layer_of[id(p)].rebuild_transpose(state["master"], recompute_mask=recompute)
                state["wt_mask_ready"] = True
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to the parameter's dtype (16-bit here): keep the fp32 masters and moments.
        saved = {idx: {k: v for k, v in s.items() if torch.is_tensor(v) and v.is_floating_point()}
                 for idx, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, tensors in saved.items():
            p = params[int(idx)]
            for key, value in tensors.items():
                self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)
