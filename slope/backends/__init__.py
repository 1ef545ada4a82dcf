"""Backends are chosen by explicit name, never by flipping torch's global class flags.

* ``"dense"`` — the simulator in `slope.linear`: exact SLoPe semantics with dense torch ops, CPU and GPU.
  It is what ``compress=False`` always uses, and the numerical oracle for the others.
* ``"cusparselt"``, ``"cutlass"`` — compressed 2:4 storage on NVIDIA sparse tensor cores (``compress=True``).
  Not part of this release: asking for them raises `BackendUnavailableError` with what to use instead,
  rather than silently simulating (which would change what a benchmark measures).
* ``"auto"`` — ``"dense"`` for ``compress=False``; for ``compress=True`` the best compressed backend the GPU has.
"""
from __future__ import annotations

BACKENDS = ("auto", "dense", "cusparselt", "cutlass")
COMPRESSED_BACKENDS = ("cusparselt", "cutlass")


class BackendUnavailableError(RuntimeError):
    """The named backend cannot run here (not built, not installed, or the GPU lacks 2:4 support)."""


def resolve_backend(name: str, *, compress: bool) -> str:
    """Validate ``name`` and return the concrete backend that `prune_model` will use."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown; choose one of {BACKENDS} "
                         f"('dense' simulates SLoPe exactly on any device, 'auto' picks for you)")
    if not compress:
        # compress=False is the simulator by definition, whatever compressed backend is named for later use.
        return "dense"
    if name == "dense":
        raise ValueError("backend='dense' only simulates sparsity (weights stay dense in memory); "
                         "use compress=False with it, or a compressed backend ('cusparselt', 'cutlass') on a GPU")
    raise BackendUnavailableError(
        f"compress=True (backend={name!r}) needs the compressed 2:4 GPU path, which this version of slope does "
        "not ship yet. Use compress=False (backend 'dense'): it computes exactly what the compressed path will.")
