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


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose data starts 2 bytes into its buffer: no wider-word view of it exists."""
    flat = torch.empty(t.numel() * t.element_size() + 2, dtype=torch.uint8, device=t.device)
    out = flat[2:].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("device,dtype", [p for p in DEVICE_DTYPES if "fp32" not in p.id])
def test_gather_kept_moves_16_bit_words_and_bytes_alike(device, dtype):
    # 16-bit data in and out go through the word kernel; a misaligned input takes the per-element one
    w = torch.randn(64, 96, device=device).to(dtype)
    nib = nm_pack.pack_nibbles(masks.row_mask(w, 2, 4))
    want = w[nm_pack.unpack_nibbles(nib)].view(64, 48)
    assert nm_pack._as_words(w, torch.int64) is not None and nm_pack._as_words(_misaligned(w), torch.int64) is None
    assert torch.equal(nm_pack.gather_kept(w, nib), want)
    assert torch.equal(nm_pack.gather_kept(_misaligned(w), nib), want)


# the default tile, and the kernel's per-element path (no 8-byte value pairs in, no 4-byte value pairs out)
TRANSPOSE_LAUNCHES = [pytest.param(None, id="default"), pytest.param({"words": False}, id="per-element")]
# (1040, 72) leaves partial default tiles on both axes; the small tile gives (32, 48) a 2 x 2 grid, the second
# column of programs partial (the interpreter is too slow for many programs)
TRANSPOSE_CASES = [pytest.param((m, k), launch.values[0], id=f"{m}x{k}-{launch.id}")
                   for m, k in ((32, 48), (1040, 72)) for launch in TRANSPOSE_LAUNCHES]
TRANSPOSE_CASES.append(pytest.param((32, 48), {"row_groups": 4, "col_groups": 8, "num_warps": 1},
                                    id="32x48-small-tiles"))


@pytest.mark.parametrize("shape,launch", TRANSPOSE_CASES)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_transpose_mask_and_values_match_scatter_then_column_prune(device, dtype, shape, launch):
    m, k = shape
    w = torch.randn(m, k, device=device)
    w[:4, :4] = 0.5  # ties
    w[8:12, 4] = torch.tensor([0.0, 0.3, 0.0, 0.0])  # a column group of W_R with fewer than 2 non-zeros
    mask = masks.row_mask(w, 2, 4)
    nib = nm_pack.pack_nibbles(mask)
    values = nm_pack.gather_kept(w, nib, out_dtype=torch.float32)
    wt_nib = torch.zeros(k, m // 4, dtype=torch.uint8, device=device)
    indicator = nm_pack.transpose_mask(values, nib, wt_nib, dtype, launch)
    w_r = w * mask
    col_mask = masks.nm_mask(w_r, 2, 4, dim=0)  # always 2 positions per group, zeros included
    assert torch.equal(indicator, col_mask.t().to(dtype))
    assert torch.equal(nm_pack.unpack_nibbles(wt_nib), col_mask.t())
    out = torch.empty(k, m // 2, device=device, dtype=dtype)
    nm_pack.transpose_values(values, nib, wt_nib, out, launch)
    assert torch.equal(out, (w_r.t())[col_mask.t()].view(k, m // 2).to(dtype))
    # keep the stored mask: new values land in the same slots
    nm_pack.transpose_values(values * -3.0, nib, wt_nib, out, launch)
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


# ----- cuSPARSELt metadata written from nibbles (the layout measured on an H100, tests/data/cslt_layout_h100.npz) --

def _random_nibbles(rows: int, cols: int, device: str, seed: int = 0) -> torch.Tensor:
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)).to(device)
    return nm_pack.pack_nibbles(masks.row_mask(scores, 2, 4))


def test_metadata_slot_reproduces_the_measured_h100_layout():
    import numpy as np
    from pathlib import Path

    measured = np.load(Path(__file__).parent / "data" / "cslt_layout_h100.npz")  # nibble slot -> group (r·cols/4 + q)
    assert len(measured.files) >= 2
    for key in measured.files:
        rows, cols = map(int, key.split("_")[0].split("x"))
        groups = torch.arange(rows * cols // 4)
        slots = nm_pack.metadata_slot(groups // (cols // 4), groups % (cols // 4), cols)
        predicted = torch.empty_like(groups)
        predicted[slots] = groups
        assert torch.equal(predicted, torch.from_numpy(measured[key].astype(np.int64))), key


def test_nibbles_read_back_from_metadata_by_the_measured_layout():
    # independent of metadata_slot: place each group's code where the measured map says, then read masks back
    import numpy as np
    from pathlib import Path

    measured = np.load(Path(__file__).parent / "data" / "cslt_layout_h100.npz")
    for key in measured.files:
        rows, cols = map(int, key.split("_")[0].split("x"))
        nib = _random_nibbles(rows, cols, "cpu", seed=rows + cols)
        kept = nm_pack.unpack_nibbles(nib).view(-1, 4)
        codes = torch.tensor([(p[0] | (p[1] << 2)) for p in (torch.nonzero(g).flatten().tolist() for g in kept)],
                             dtype=torch.uint8)
        slots = codes[torch.from_numpy(measured[key].astype(np.int64))]  # slot s holds its group's code
        metadata = slots[0::2] | (slots[1::2] << 4)
        assert torch.equal(nm_pack.nibbles_from_metadata(metadata, rows, cols), nib), key
    with pytest.raises(ValueError, match="multiples of 128"):
        nm_pack.nibbles_from_metadata(torch.zeros(64 * 128 // 8, dtype=torch.uint8), 64, 128)
    with pytest.raises(ValueError, match="2048 uint8 bytes"):
        nm_pack.nibbles_from_metadata(torch.zeros(100, dtype=torch.uint8), 128, 128)


def test_metadata_reference_packs_codes_by_the_measured_layout():
    # independent of metadata_slot: read each group's code back through the measured slot -> group map
    import numpy as np
    from pathlib import Path

    measured = np.load(Path(__file__).parent / "data" / "cslt_layout_h100.npz")
    key = measured.files[0]
    rows, cols = map(int, key.split("_")[0].split("x"))
    nib = _random_nibbles(rows, cols, "cpu")
    meta = nm_pack.metadata_reference(nib)
    nibbles_in_order = torch.stack([meta & 0xF, meta >> 4], dim=1).reshape(-1)
    group_of_slot = torch.from_numpy(measured[key].astype(np.int64))
    kept = nm_pack.unpack_nibbles(nib).view(-1, 4)[group_of_slot]  # (slots, 4) keep flags of each slot's group
    positions = [torch.nonzero(row).flatten().tolist() for row in kept]
    assert torch.equal(nibbles_in_order, torch.tensor([p0 | (p1 << 2) for p0, p1 in positions], dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(128, 256), (384, 640)])
@pytest.mark.parametrize("device", DEVICES)
def test_write_metadata_kernel_matches_reference(device, shape):
    nib = _random_nibbles(*shape, device, seed=shape[0])
    out = torch.full((shape[0] * shape[1] // 8,), 0xAB, dtype=torch.uint8, device=device)
    assert nm_pack.write_metadata(nib, out) is out
    assert torch.equal(out, nm_pack.metadata_reference(nib))


def test_write_metadata_refuses_shapes_the_layout_does_not_cover():
    with pytest.raises(ValueError, match="multiples of 128"):
        nm_pack.write_metadata(_random_nibbles(96, 128, "cpu"), torch.empty(96 * 128 // 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4096 uint8 bytes"):
        nm_pack.write_metadata(_random_nibbles(128, 256, "cpu"), torch.empty(10, dtype=torch.uint8))


@pytest.mark.parametrize("launch", TRANSPOSE_LAUNCHES)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_transpose_mask_values_equals_mask_then_values(device, dtype, launch):
    m, k = 1040, 72  # partial tiles
    w = torch.randn(m, k, device=device)
    w[8:12, 4] = torch.tensor([0.0, 0.3, 0.0, 0.0])  # fewer than 2 non-zeros in a column group
    nib = nm_pack.pack_nibbles(masks.row_mask(w, 2, 4))
    values = nm_pack.gather_kept(w, nib, out_dtype=torch.float32)
    wt_two, wt_one = (torch.zeros(k, m // 4, dtype=torch.uint8, device=device) for _ in range(2))
    nm_pack.transpose_mask(values, nib, wt_two, dtype, launch)
    two_passes = nm_pack.transpose_values(values, nib, wt_two, torch.empty(k, m // 2, device=device, dtype=dtype),
                                          launch)
    one_pass = nm_pack.transpose_mask_values(values, nib, wt_one, torch.empty(k, m // 2, device=device, dtype=dtype),
                                             launch)
    assert torch.equal(wt_one, wt_two) and torch.equal(one_pass, two_passes)
