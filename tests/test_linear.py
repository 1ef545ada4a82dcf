import io

import pytest
import torch

from slope import SLoPeLinear, is_nm_sparse
from tests.reference import ref_double_pruned, ref_nm_mask_rows, ref_slope_linear


def _layer_and_inputs(d_in, d_out, bias, sparsity, device, dtype=torch.float64, lead=(3, 5)):
    n, m = map(int, sparsity.split(":"))
    layer = SLoPeLinear(d_in, d_out, bias=bias, sparsity=sparsity).to(device=device, dtype=dtype)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(*lead, d_in, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(*lead, d_out, device=device, dtype=dtype)
    return layer, x, grad_out, n, m


@pytest.mark.parametrize("sparsity", ["2:4", "1:4", "2:8"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("double_prune", [True, False])
def test_outputs_and_all_gradients_match_fp64_reference(device, sparsity, bias, double_prune):
    layer, x, grad_out, n, m = _layer_and_inputs(32, 48, bias, sparsity, device)
    layer.double_prune = double_prune
    dense_w = torch.randn(48, 32, dtype=torch.float64, device=device)
    ref_mask = ref_nm_mask_rows(dense_w, n, m)
    layer.weight.data.copy_(dense_w)
    layer.set_mask(ref_mask)  # the layer's own mask is checked against the reference below
    y = layer(x)
    y.backward(grad_out)
    ref_y, ref_dx, ref_dw, ref_db = ref_slope_linear(x.detach().reshape(-1, 32), dense_w, layer.bias, ref_mask,
                                                     n, m, grad_out.reshape(-1, 48), double_prune)
    torch.testing.assert_close(y.reshape(-1, 48), ref_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad.reshape(-1, 32), ref_dx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, ref_dw, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad, ref_db, rtol=1e-12, atol=1e-12)


def test_mask_from_weights_keeps_largest_and_grads_land_on_kept_positions(device):
    """Fails if kept and pruned positions are swapped anywhere (mask, output or gradient)."""
    dense_w = torch.randn(16, 16, dtype=torch.float64)
    layer = SLoPeLinear(16, 16, sparsity="2:4").double()
    layer.weight.data.copy_(dense_w)
    layer._init_masks()
    layer.to(device)
    ref_mask = ref_nm_mask_rows(dense_w, 2, 4).to(device)
    assert torch.equal(layer.mask, ref_mask)
    assert torch.equal(layer.weight != 0, ref_mask)  # pruned entries are exactly zero, kept ones are not
    x = torch.randn(8, 16, dtype=torch.float64, device=device)
    layer(x).sum().backward()
    assert torch.all(layer.weight.grad[~ref_mask] == 0)
    assert torch.all(layer.weight.grad[ref_mask] != 0)
    torch.testing.assert_close(layer(x), x @ (dense_w.to(device) * ref_mask).t() + layer.bias)


def test_input_gradient_uses_double_pruned_transpose_of_current_weights(device):
    layer, x, grad_out, n, m = _layer_and_inputs(16, 16, True, "2:4", device, lead=(4,))
    with torch.no_grad():  # an optimizer changed the kept values: W_RC must follow, the forward mask must not
        layer.weight.mul_(torch.randn_like(layer.weight) * 3)
    mask_before = layer.mask.clone()
    layer(x).backward(grad_out)
    w_rc = ref_double_pruned(layer.weight.detach().cpu(), mask_before.cpu(), n, m).to(device)
    torch.testing.assert_close(x.grad, grad_out @ w_rc)
    assert torch.equal(layer.mask, mask_before)
    assert is_nm_sparse(layer.backward_weight(), 2, 4, dim=0) and is_nm_sparse(layer.backward_weight(), 2, 4, dim=1)


def test_zeros_stay_zero_through_adamw_with_weight_decay(device):
    layer = SLoPeLinear(32, 32, sparsity="2:4").to(device)
    mask = layer.mask.clone()
    start = layer.weight.detach().clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(20):
        opt.zero_grad()
        layer(torch.randn(8, 32, device=device)).pow(2).mean().backward()
        opt.step()
    assert torch.all(layer.weight[~mask] == 0)
    assert torch.equal(layer.mask, mask)
    assert torch.all(layer.weight[mask] != start[mask])  # the kept weights did train
    assert is_nm_sparse(layer.weight, 2, 4, dim=1)


def test_state_dict_round_trip_gives_identical_outputs_and_mask(device):
    layer = SLoPeLinear(16, 32, sparsity="2:4").to(device)
    layer.add_adapter(4)
    torch.nn.init.normal_(layer.lora_right)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    assert "mask" in layer.state_dict()
    fresh = SLoPeLinear(16, 32, sparsity="2:4").to(device)  # different random weights and mask
    fresh.add_adapter(4)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 16, device=device)
    assert torch.equal(fresh.mask, layer.mask)
    assert torch.equal(fresh(x), layer(x))


def test_bf16_autocast_error_within_twice_torch_error_and_fp32_master_grads():
    layer, x, grad_out, n, m = _layer_and_inputs(64, 64, True, "2:4", "cpu", dtype=torch.float32, lead=(32,))
    ref_y, ref_dx, ref_dw, _ = ref_slope_linear(x.detach(), layer.weight.detach(), layer.bias.detach(), layer.mask,
                                                n, m, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.backward(grad_out.bfloat16())
    assert layer.weight.grad.dtype == torch.float32
    # torch's own bf16 error on the same masked-dense products is the yardstick
    bf = lambda t: t.detach().bfloat16()
    w_rc = ref_double_pruned(layer.weight.detach(), layer.mask, n, m)
    torch_y = torch.nn.functional.linear(bf(x), bf(layer.weight * layer.mask), bf(layer.bias))
    torch_dx = bf(grad_out) @ bf(w_rc)
    torch_dw = (bf(grad_out).t() @ bf(x)) * layer.mask
    for ours, theirs, ref in [(y, torch_y, ref_y), (x.grad, torch_dx, ref_dx), (layer.weight.grad, torch_dw, ref_dw)]:
        torch_err = (theirs.double() - ref).abs().max().item()
        assert (ours.double() - ref).abs().max().item() <= 2 * torch_err + 1e-6
    assert torch.all(layer.weight.grad[~layer.mask] == 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_features=30, out_features=16), r"d_in \(dim 1\) = 30 is not divisible by M=4"),
    (dict(in_features=16, out_features=18), r"d_out \(dim 0\) = 18 is not divisible by M=4"),
    (dict(in_features=16, out_features=16, sparsity="4:4"), "0 < N < M"),
])
def test_bad_layer_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SLoPeLinear(layer_name="blk.fc", **kwargs)


def test_wrong_input_width_is_named():
    with pytest.raises(ValueError, match="blk.fc: input has 8 features, the layer expects 16"):
        SLoPeLinear(16, 16, layer_name="blk.fc")(torch.randn(2, 8))
