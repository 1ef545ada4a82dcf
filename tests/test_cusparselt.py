"""slope.kernels.cusparselt on any machine: argument checks, and the algorithm-bound table that spares known GPUs
the faulting probe (the GPU paths themselves: test_compressed.py)."""
import subprocess
import types

import pytest
import torch

from slope.kernels import cusparselt


def test_spmm_implementation_is_checked_and_the_extension_loads_or_says_why():
    with pytest.raises(ValueError, match="implementation='cublas'; choose 'auto', 'extension' or 'torch'"):
        cusparselt.SpMM(64, 64, torch.float16, implementation="cublas")
    if not torch.cuda.is_available():  # an explicit "extension" loads it at construction, so the ops exist
        with pytest.raises(RuntimeError, match="extension unavailable: .*no CUDA device"):
            cusparselt.SpMM(64, 64, torch.float16, implementation="extension")


def test_a_known_gpu_takes_its_probed_algorithm_bound_without_probing(monkeypatch, tmp_path):
    monkeypatch.setenv("SLOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cusparselt, "_alg_cache", None)
    monkeypatch.setattr(cusparselt, "load_extension", lambda: types.SimpleNamespace(version=lambda: 800))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")

    def no_probe(*args, **kwargs):
        raise AssertionError("a known GPU must not run the faulting probe")

    monkeypatch.setattr(subprocess, "run", no_probe)
    assert cusparselt.safe_alg_bound(torch.bfloat16, 0) == 21
    assert cusparselt.safe_alg_bound(torch.float16, 1) == 36
    assert '"NVIDIA H200|800|torch.float16|L1|safe_bound": 36' in (tmp_path / "cusparselt_algs.json").read_text()
