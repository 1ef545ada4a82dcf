"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), the optimizer of BERT's pretraining.

torch has no LAMB, so here is a small one, written as NVIDIA's BERT recipe uses it. Per parameter tensor w:

    m = β1·m + (1−β1)·g            v = β2·v + (1−β2)·g²             (Adam moments)
    u = m̂ / (√v̂ + ε) + λ·w        m̂ = m / (1−β1ᵗ), v̂ = v / (1−β2ᵗ)  (bias-corrected; decoupled decay λ)
    w ← w − lr · ‖w‖/‖u‖ · u       (trust ratio = 1 when ‖w‖ or ‖u‖ is 0)

The layer-wise trust ratio is what lets LAMB take BERT's 64k-sequence batches. With N:M-sparse SLoPe weights
the pruned entries stay exactly zero: their gradient, both moments and λ·w are all 0, so u is 0 there too.
"""
from __future__ import annotations

import torch


class LAMB(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LAMB: need lr >= 0, eps >= 0, weight_decay >= 0 and betas in [0, 1); got lr={lr}, "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients (torch.sparse); use dense embeddings")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
                else:
                    m_hat, v_hat = m, v
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (group["lr"] * trust))
        return loss
