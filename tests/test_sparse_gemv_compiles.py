"""The few-token kernels compile for the GPU (sm_90) on a machine without one: the CPU tests run them under
Triton's interpreter, which never meets the compiler's rules (`tests.compile_sm90` says why this matters)."""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


def test_few_token_kernels_compile_for_sm90_in_every_adapter_layout():
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend to compile with")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-m", "tests.compile_sm90"], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, "\n".join(line for line in lines if line.startswith("FAILED")) or result.stderr
    assert len([line for line in lines if line.startswith("ok")]) == 18
