"""Backends are chosen by explicit name, never by flipping torch's global class flags.

* ``"dense"`` — the simulator in `slope.linear`: exact SLoPe semantics with dense torch ops, CPU and GPU.
  It is what ``compress=False`` always uses, and the numerical oracle for the others.
* ``"cusparselt"`` — compressed 2:4 storage on NVIDIA sparse tensor cores (``compress=True``, sm_80+), through
  the cached extension in `slope.kernels.cusparselt` (or torch's private ops where it cannot be built).
* ``"cutlass"`` — PyTorch's CUTLASS 2:4 kernels: refused on sm_90 (they run on sm_8x only) and not in this
  release elsewhere; asking for it raises `BackendUnavailableError` rather than silently using another kernel.
* ``"auto"`` — ``"dense"`` for ``compress=False``; ``"cusparselt"`` for ``compress=True``.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "dense", "cusparselt", "cutlass")
COMPRESSED_BACKENDS = ("cusparselt", "cutlass")


class BackendUnavailableError(RuntimeError):
    """The named backend cannot run here (not built, not installed, or the GPU lacks 2:4 support)."""


def require_sparse_tensor_cores(device: torch.device | None, name: str = "compress=True") -> tuple[int, int]:
    """The compute capability of ``device``, or a clear error if it is no CUDA GPU with 2:4 tensor cores."""
    if device is None or device.type != "cuda":
        raise ValueError(f"{name}: needs the model on a CUDA GPU (it is on {device}); move it with model.cuda() "
                         "first, or use compress=False (the exact simulator, any device)")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise BackendUnavailableError(f"{name}: this GPU (sm_{major}{minor}) has no 2:4 sparse tensor cores "
                                      "(sm_80+ needed); use compress=False")
    return major, minor


def resolve_backend(name: str, *, compress: bool, device: torch.device | None = None) -> str:
    """Validate ``name`` and return the concrete backend that `prune_model` will use on ``device``."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown; choose one of {BACKENDS} "
                         f"('dense' simulates SLoPe exactly on any device, 'auto' picks for you)")
    if not compress:
        # compress=False is the simulator by definition, whatever compressed backend is named for later use.
        return "dense"
    if name == "dense":
        raise ValueError("backend='dense' only simulates sparsity (weights stay dense in memory); "
                         "use compress=False with it, or a compressed backend ('cusparselt', 'auto') on a GPU")
    major, minor = require_sparse_tensor_cores(device)
    if name == "cutlass":
        if major >= 9:
            raise BackendUnavailableError(
                f"backend='cutlass': PyTorch's CUTLASS 2:4 kernels run only on sm_8x and this GPU is sm_{major}{minor}; "
                "use backend='cusparselt' (or 'auto')")
        raise BackendUnavailableError("backend='cutlass' is not in this release; use backend='cusparselt' (or 'auto')")
    return "cusparselt"
