"""Mixed-precision stepping across several optimizers (CPU; the compressed optimizer itself is tested on the GPU)."""
import torch
from torch import nn

import slope
from slope.optim import DynamicLossScaler


def _two_optimizers():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    slope.prune_model(model, filter_fn=lambda module, name: name == "0")
    sparse = torch.optim.AdamW(model[0].parameters(), lr=0.1)
    dense = torch.optim.AdamW(model[2].parameters(), lr=0.1)
    return model, sparse, dense


def test_an_overflow_anywhere_skips_every_optimizer_and_lowers_the_scale():
    model, sparse, dense = _two_optimizers()
    scaler = DynamicLossScaler(init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(torch.randn(4, 16)).pow(2).mean()).backward()
    model[2].weight.grad[0, 0] = float("inf")  # only the dense optimizer's gradient overflows
    assert scaler.step([sparse, dense]) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # sparse weights untouched too
    assert scaler.scale_value == 512.0


def test_a_finite_step_updates_both_and_keeps_pruned_weights_zero():
    model, sparse, dense = _two_optimizers()
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 16)
    unscaled = [g.clone() for g in torch.autograd.grad(model(x).pow(2).mean(), list(model.parameters()))]
    scaler.scale(model(x).pow(2).mean()).backward()
    with torch.no_grad():  # what the optimizers will see: the unscaled gradients
        for p, g in zip(model.parameters(), unscaled):
            torch.testing.assert_close(p.grad / 1024.0, g)
    assert scaler.step([sparse, dense], max_grad_norm=1.0) is True
    assert scaler.scale_value == 2048.0
    assert not torch.equal(before[0], model[0].weight) and not torch.equal(before[2], model[2].weight)
    assert torch.all(model[0].weight[~model[0].mask] == 0)
