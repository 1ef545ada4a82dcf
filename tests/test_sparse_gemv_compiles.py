"""The few-token kernels compile for the GPU (sm_90) on a machine without one: the CPU tests run them under
Triton's interpreter, which never meets the compiler's rules (`tests.compile_sm90` says why this matters)."""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


def test_few_token_kernels_compile_for_sm90_in_every_adapter_layout():
    from triton.backends import backends

    from tests import compile_sm90

    # the pinned Triton wheels carry the NVIDIA backend and its ptxas: without them this check cannot run, which is
    # a broken install, not a reason to pass
    assert "nvidia" in backends, f"this Triton ({triton.__version__}) has no NVIDIA backend; reinstall it (make venv)"
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-m", "tests.compile_sm90"], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, "\n".join(line for line in lines if line.startswith("FAILED")) or result.stderr
    # both forms without an adapter in their first version and their default (prmt rebuild, kept products) on both
    # mask layouts, and the default with an adapter in each layout at two (rank, span) pairs: 22 variants
    assert len([line for line in lines if line.startswith("ok")]) == 2 * (3 + 2 * len(compile_sm90.LAYOUTS)) == 22
