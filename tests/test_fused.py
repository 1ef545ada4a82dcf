"""Triton addmm / bias add against an fp64 reference, under TRITON_INTERPRET=1 on CPU and natively on the GPU."""
import pytest
import torch

from tests.conftest import DEVICES  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)

pytest.importorskip("triton")

from slope.kernels import fused  # noqa: E402

_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# bf16 only on the GPU: Triton's CPU interpreter returns garbage for bf16 (DESIGN §5).
CASES = [pytest.param("cpu", torch.float32, id="cpu-fp32"), pytest.param("cpu", torch.float16, id="cpu-fp16")]
CASES += [pytest.param("cuda", d, id=f"cuda-{n}", marks=_CUDA) for d, n in ((torch.float16, "fp16"),
                                                                            (torch.bfloat16, "bf16"))]


def _error(result, reference):
    return (result.double() - reference).abs().max().item()


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_addmm_on_strided_views_keeps_dtype_and_matches_fp64(device, dtype, impl):
    # the merged path's shapes: c = Y[:, :d_out] and a = Y[:, d_out:] of one (tokens, d_out + r_pad) buffer
    tokens, d_out, r = 40, 96, 24
    y = torch.randn(tokens, d_out + 32, device=device).to(dtype)
    c, a = y[:, :d_out], y[:, d_out:d_out + r]
    b = torch.randn(r, d_out, device=device).to(dtype)
    reference = c.double() + 0.25 * (a.double() @ b.double())
    result = fused.addmm(c, a, b, 0.25, impl=impl)
    assert result.dtype == dtype and result.shape == (tokens, d_out) and result.is_contiguous()
    # torch's own error at this dtype (fp32 accumulation, one rounding) bounds ours, with 2x slack
    torch_error = _error((c.float() + 0.25 * (a.float() @ b.float())).to(dtype), reference)
    assert _error(result, reference) <= 2 * torch_error + 1e-6
    before = y[:, d_out:].clone()
    fused.addmm(c, a, b, 0.25, out=c, impl=impl)  # in place into the strided view
    assert _error(y[:, :d_out], reference) <= 2 * torch_error + 1e-6
    assert torch.equal(y[:, d_out:], before)  # the columns beside the view are untouched


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_bias_add_matches_fp64_out_of_place_and_in_place(device, dtype, impl):
    y = torch.randn(50, 200, device=device).to(dtype)
    bias = torch.randn(200, device=device).to(dtype)
    reference = y.double() + bias.double()
    bound = 2 * _error((y.float() + bias.float()).to(dtype), reference) + 1e-6
    result = fused.bias_add(y, bias, impl=impl)
    assert result.dtype == dtype and _error(result, reference) <= bound
    assert fused.bias_add(y, bias, out=y, impl=impl).data_ptr() == y.data_ptr()
    assert _error(y, reference) <= bound


def test_bad_shapes_and_impl_name_the_argument():
    with pytest.raises(ValueError, match="do not chain"):
        fused.addmm(torch.zeros(4, 8), torch.zeros(4, 3), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="impl must be one of"):
        fused.addmm(torch.zeros(4, 8), torch.zeros(4, 2), torch.zeros(2, 8), impl="cutlass")
    with pytest.raises(ValueError, match="vector of y's 8 columns"):
        fused.bias_add(torch.zeros(4, 8), torch.zeros(7))
    with pytest.raises(ValueError, match="unit column stride"):
        fused.addmm(torch.zeros(8, 4).t(), torch.zeros(4, 2), torch.zeros(2, 8), impl="triton")
