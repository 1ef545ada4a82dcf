import pytest
import torch
from torch import nn

import slope
from slope import SLoPeLinear


def _two_layer_model():
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    return slope.prune_model(model, filter_fn=lambda module, name: True)


def test_adding_adapters_leaves_the_loss_unchanged():
    model = _two_layer_model()
    x, target = torch.randn(6, 32), torch.randn(6, 32)
    before = nn.functional.mse_loss(model(x), target)
    params = slope.add_lora(model, 8, hidden_size=32)
    after = nn.functional.mse_loss(model(x), target)
    assert torch.equal(before, after)
    assert len(params) == 4 and params == slope.lora_parameters(model)
    after.backward()  # at that step only R gets gradient (dL/dL ∝ R = 0), and it does
    assert all(layer.lora_right.grad.abs().sum() > 0 for layer in slope.sparse_layers(model).values())


def test_every_sample_gets_its_own_adapter_output_and_gradient(device):
    layer = SLoPeLinear(16, 16, sparsity="2:4").double().to(device)
    layer.add_adapter(4)
    nn.init.normal_(layer.lora_right)
    x = torch.randn(3, 5, 16, dtype=torch.float64, device=device)  # (batch, tokens, d_in)
    # independent reference: each sample alone, explicit formula y = x (W⊙M)ᵀ + b + (x L) R / r
    L, R = layer.lora_left.detach(), layer.lora_right.detach()
    for i in range(3):
        ref = x[i] @ (layer.weight * layer.mask).t() + layer.bias + (x[i] @ L) @ R / 4
        torch.testing.assert_close(layer(x)[i], ref)
    # a loss on sample 2 only: its gradient reaches L and R and equals the single-sample reference
    g = torch.randn(5, 16, dtype=torch.float64, device=device)
    (layer(x)[2] * g).sum().backward()
    torch.testing.assert_close(layer.lora_right.grad, (x[2] @ L).t() @ g / 4)
    torch.testing.assert_close(layer.lora_left.grad, x[2].t() @ (g @ R.t()) / 4)


@pytest.mark.parametrize("rank,hidden,expected", [("1.56%", 1024, 16), ("0.39%", 1024, 4), ("6.25%", 1024, 64),
                                                  ("2.1%", 768, 16), (0.0625, 1024, 64), (12, None, 12),
                                                  ("0.05%", 768, 1), (0, None, 0)])
def test_rank_from_int_or_ratio_of_hidden_size(rank, hidden, expected):
    assert slope.resolve_rank(rank, hidden) == expected


@pytest.mark.parametrize("rank,match", [(-1, ">= 0"), ("abc", "percentage"), ("150%", r"\[0, 1\)"),
                                        ("1%", "hidden_size=")])
def test_bad_ranks_are_rejected(rank, match):
    with pytest.raises(ValueError, match=match):
        slope.resolve_rank(rank, None)


def test_rank_at_least_min_dim_names_the_layer():
    model = _two_layer_model()
    with pytest.raises(ValueError, match=r"^0: adapter rank 32 .* min\(d_in, d_out\) = 32"):
        slope.add_lora(model, 32)
    assert slope.lora_parameters(model) == []  # nothing was half-added


def test_merged_adapter_prunes_left_adapter_and_keeps_scale():
    layer = SLoPeLinear(16, 32, sparsity="2:4").double()
    layer.add_adapter(8)
    nn.init.normal_(layer.lora_right)
    layer.merge_adapter()
    x = torch.randn(4, 16, dtype=torch.float64)
    L = layer.lora_left.detach()
    keep = torch.zeros_like(L, dtype=torch.bool)  # 2:4 along d_in for each adapter column, largest |L| kept
    for j in range(8):
        for g in range(0, 16, 4):
            top = sorted(range(g, g + 4), key=lambda i: (-abs(L[i, j].item()), i))[:2]
            keep[top, j] = True
    ref = x @ (layer.weight * layer.mask).t() + layer.bias + (x @ (L * keep)) @ layer.lora_right / 8
    torch.testing.assert_close(layer(x), ref)
