"""Triton mask kernels against torch, under TRITON_INTERPRET=1 on CPU (fp32/fp16) and natively on the GPU."""
import pytest
import torch

from tests.conftest import DEVICES

pytest.importorskip("triton")  # conftest sets TRITON_INTERPRET=1 on machines without a GPU

from slope import masks  # noqa: E402
from slope.kernels import nm_pack  # noqa: E402

_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# Triton's CPU interpreter returns garbage for bf16 (DESIGN §5), so bf16 runs on the GPU only.
DEVICE_DTYPES = [pytest.param("cpu", torch.float32, id="cpu-fp32"), pytest.param("cpu", torch.float16, id="cpu-fp16")]
DEVICE_DTYPES += [pytest.param("cuda", dtype, id=f"cuda-{name}", marks=_CUDA)
                  for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16"))]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_nibbles_round_trip_and_gather_scatter_match_torch(device, dtype):
    w = torch.randn(64, 96, device=device).to(dtype)
    mask = masks.row_mask(w, 2, 4)
    nib = nm_pack.pack_nibbles(mask)
    assert nib.shape == (64, 24) and nib.dtype == torch.uint8
    assert torch.equal(nm_pack.unpack_nibbles(nib), mask)
    values = nm_pack.gather_kept(w, nib)
    assert torch.equal(values, w[mask].view(64, 48))  # kept entries, row-major, by position within a group
    assert torch.equal(nm_pack.scatter_kept(values, nib), w * mask)
    as_fp32 = nm_pack.gather_kept(w, nib, out_dtype=torch.float32)
    assert as_fp32.dtype == torch.float32 and torch.equal(as_fp32, values.float())


@pytest.mark.parametrize("shape", [(32, 48), (1040, 72)])  # the second leaves a partial block of lanes
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_transpose_mask_and_values_match_scatter_then_column_prune(device, dtype, shape):
    m, k = shape
    w = torch.randn(m, k, device=device)
    w[:4, :4] = 0.5  # ties
    w[8:12, 4] = torch.tensor([0.0, 0.3, 0.0, 0.0])  # a column group of W_R with fewer than 2 non-zeros
    mask = masks.row_mask(w, 2, 4)
    nib = nm_pack.pack_nibbles(mask)
    values = nm_pack.gather_kept(w, nib, out_dtype=torch.float32)
    wt_nib = torch.zeros(k, m // 4, dtype=torch.uint8, device=device)
    indicator = nm_pack.transpose_mask(values, nib, wt_nib, dtype)
    w_r = w * mask
    col_mask = masks.nm_mask(w_r, 2, 4, dim=0)  # always 2 positions per group, zeros included
    assert torch.equal(indicator, col_mask.t().to(dtype))
    assert torch.equal(nm_pack.unpack_nibbles(wt_nib), col_mask.t())
    out = torch.empty(k, m // 2, device=device, dtype=dtype)
    nm_pack.transpose_values(values, nib, wt_nib, out)
    assert torch.equal(out, (w_r.t())[col_mask.t()].view(k, m // 2).to(dtype))
    # keep the stored mask: new values land in the same slots
    nm_pack.transpose_values(values * -3.0, nib, wt_nib, out)
    assert torch.equal(out, (-3.0 * w_r.t())[col_mask.t()].view(k, m // 2).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_matches_torch_adamw(device):
    master = torch.randn(64, 32, device=device)
    reference = master.clone().requires_grad_()
    torch_opt = torch.optim.AdamW([reference], lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    exp_avg, exp_avg_sq = torch.zeros_like(master), torch.zeros_like(master)
    values = torch.empty(64, 32, device=device, dtype=torch.float16)
    for step in range(1, 4):
        grad = torch.randn(64, 32, device=device).half()  # 16-bit gradients, as the compressed layers produce
        reference.grad = grad.float()
        torch_opt.step()
        nm_pack.adamw_step_(master, exp_avg, exp_avg_sq, grad, values, lr=1e-2, beta1=0.9, beta2=0.95,
                            eps=1e-6, weight_decay=0.1, step=step)
    torch.testing.assert_close(master, reference.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(values, master.half())
