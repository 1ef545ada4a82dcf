"""Shared fixtures. Devices: the CPU always; CUDA where present, marked `gpu` (run on the GPU machine)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in its CPU interpreter here; this must be set before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
