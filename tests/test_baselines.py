import pytest
import torch
from torch import nn

import slope
from slope import FSTLinear, SRSTELinear
from tests.reference import ref_double_pruned, ref_nm_mask_rows


def _inputs(layer, device):
    x = torch.randn(6, layer.in_features, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(6, layer.out_features, dtype=torch.float64, device=device)
    return x, g


def test_srste_matches_reference_and_recomputes_mask_every_forward(device):
    layer = SRSTELinear(16, 32, sparsity="2:4", decay=1e-2).double().to(device)
    for step in range(2):
        w = layer.weight.detach()
        mask = ref_nm_mask_rows(w, 2, 4)
        x, g = _inputs(layer, device)
        y = layer(x)
        y.backward(g)
        torch.testing.assert_close(y, x @ (w * mask).t() + layer.bias)
        torch.testing.assert_close(x.grad, g @ ref_double_pruned(w, mask, 2, 4))
        # straight-through dense gradient plus the sparse-refined decay on pruned weights
        torch.testing.assert_close(layer.weight.grad, g.t() @ x.detach() + 1e-2 * (~mask) * w)
        layer.weight.grad = None
        with torch.no_grad():  # change magnitudes: the next forward must use a new mask
            layer.weight.copy_(torch.randn_like(layer.weight))


def test_srste_to_slope_is_fully_sparse_with_same_function():
    layer = SRSTELinear(16, 16).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    frozen = layer.to_slope()
    torch.testing.assert_close(frozen(x), layer(x))
    assert slope.is_nm_sparse(frozen.weight, 2, 4, dim=1)


def test_fst_uses_one_transposable_mask_for_forward_and_backward(device):
    layer = FSTLinear(16, 16, sparsity="2:4", decay=0.0).double().to(device)
    x, g = _inputs(layer, device)
    y = layer(x)
    y.backward(g)
    w = layer.weight.detach()
    mask = layer.current_mask()
    assert slope.is_nm_sparse(w * mask, 2, 4, dim=0) and slope.is_nm_sparse(w * mask, 2, 4, dim=1)
    torch.testing.assert_close(y, x @ (w * mask).t() + layer.bias)
    torch.testing.assert_close(x.grad, g @ (w * mask))
    torch.testing.assert_close(layer.weight.grad, g.t() @ x.detach())


def test_fst_rejects_m_above_4():
    with pytest.raises(ValueError, match="M <= 4"):
        FSTLinear(16, 16, sparsity="2:8")(torch.randn(2, 16))


def test_wanda_scores_weight_times_input_norm():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 8, bias=False))
    scale = torch.tensor([10.0, 1, 1, 1, 0.01, 1, 1, 1])  # feature 0 loud, feature 4 nearly silent
    batches = [torch.randn(16, 8) * scale for _ in range(3)]
    w = model[0].weight.detach().clone()
    norms = torch.sqrt(sum((b.double() ** 2).sum(0) for b in batches))
    expected = ref_nm_mask_rows(w.double().abs() * norms, 2, 4)
    slope.wanda_prune(model, batches, filter_fn=lambda module, name: True)
    layer = model[0]
    assert isinstance(layer, slope.SLoPeLinear) and not layer.double_prune
    assert torch.equal(layer.mask, expected)
    assert not expected[:, 4].any()  # the silent feature is pruned everywhere
    assert not torch.equal(expected, ref_nm_mask_rows(w.abs(), 2, 4))  # and it is not plain magnitude pruning
    torch.testing.assert_close(layer.weight, w * expected)  # kept values untouched by the magnitude pruner


def test_prune_model_with_baseline_methods_and_densify():
    for method, cls in [("srste", SRSTELinear), ("fst", FSTLinear)]:
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).double()
        slope.prune_model(model, method=method, filter_fn=lambda module, name: True, add_lora=True, lora_rank=2,
                          hidden_size=16)
        assert isinstance(model[0], cls) and model[0].lora_rank == 2
        nn.init.normal_(model[0].lora_right)
        x = torch.randn(4, 16, dtype=torch.float64)
        y = model(x)
        slope.densify_model(model)
        assert type(model[0]) is nn.Linear
        torch.testing.assert_close(model(x), y)
