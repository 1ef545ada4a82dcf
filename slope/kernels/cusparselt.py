"""cuSPARSELt 2:4 SpMM for SLoPe: the cached C++ extension, its custom ops, algorithm choice, and the fallback.

* `load_extension()` compiles ``cusparselt_ext.cpp`` on first use (torch.utils.cpp_extension, against the header
  and library that the ``nvidia-cusparselt`` wheel ships) and registers ``torch.ops.slope_cslt.{compress,spmm}``,
  with fake implementations so torch.compile and CUDA graphs can trace them.
* Where it cannot be built, `SpMM` falls back to torch's private ``torch._cslt_compress`` / ``_cslt_sparse_mm``
  (correct, but ~1 ms of host time per call on an H100) and says so once: ``SpMM.implementation`` records which
  one runs, and benchmarks write it into every row.
* A new W_RCᵀ mask needs new metadata. cuSPARSELt's compress of a dense 0/1 indicator makes it at ~60 GB/s
  (3.7 ms for 20480×5120 on an H100); `SpMM.writes_metadata` says when `nm_pack.write_metadata` (a Triton pass
  over the nibble masks, layout measured by ``performance_experiments/probe_cslt_layout.py``) can write it
  instead: the shape is covered and, once per shape, dtype and GPU, its bytes equal the library's own.
* The algorithm id matters as much as host overhead: `best_alg_id` times every id once per (GPU, cuSPARSELt
  version, shape, token count, dtype, layout) and caches the winner on disk (``$SLOPE_CACHE_DIR`` or
  ``~/.cache/slope``), written atomically. A search builds one plan per id, which costs up to ~0.4 s each with
  a column-major result, so the first step of a new shape can take tens of seconds (fp16: ~75 s a shape on an
  H100); ``SLOPE_CSLT_SEARCH=0`` skips it (algorithm 0). ``SLOPE_CSLT_SEARCH_BUDGET_S=T`` stops a shape's search
  after T seconds and keeps the fastest id timed so far; such a choice is cached with the count of ids it tried,
  and a later search without a budget redoes it in full.

Shapes follow a linear layer: W (m = d_out, k = d_in) is 2:4 along k; x (n, k); the product is y = x·Wᵀ (n, m).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ..masks import row_mask
from . import nm_pack
from .fused import bias_add

_HERE = Path(__file__).resolve().parent
_ext = None
_build_error: str | None = None
_alg_cache: dict[str, int] | None = None
_metadata_checks: dict[tuple, bool] = {}  # (GPU, m, k, dtype, layout, implementation) -> direct metadata matches

# Layout of the cuSPARSELt call (see the .cpp header): 0 = W as operand A with a column-major result (bias can
# be fused); 1 = W as operand B, everything row-major. Chosen per backend by benchmark.
DEFAULT_LAYOUT = int(os.environ.get("SLOPE_CSLT_LAYOUT", "0"))


def _cusparselt_dirs() -> tuple[Path, Path]:
    """(include, lib) folders of the nvidia-cusparselt wheel next to torch."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) / "cusparselt" for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if (root / "include" / "cusparseLt.h").exists():
            return root / "include", root / "lib"
    raise FileNotFoundError("cusparseLt.h not found: install the nvidia-cusparselt wheel that matches your torch")


def load_extension(verbose: bool = False):
    """Build (first call only) and load the extension; raise with the reason if that is impossible."""
    global _ext, _build_error
    if _ext is not None:
        return _ext
    if _build_error is not None:
        raise RuntimeError(_build_error)
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        from torch.utils.cpp_extension import load

        include, lib = _cusparselt_dirs()
        libname = next(p.name for p in sorted(lib.glob("libcusparseLt.so*")))
        _ext = load(name="slope_cusparselt", sources=[str(_HERE / "cusparselt_ext.cpp")],
                    extra_include_paths=[str(include)],
                    extra_ldflags=[f"-L{lib}", f"-l:{libname}", f"-Wl,-rpath,{lib}"],
                    with_cuda=True, verbose=verbose)
        _register_fakes()
    except Exception as error:  # noqa: BLE001 - any build failure means: use the fallback, and say why
        _build_error = f"slope cuSPARSELt extension unavailable: {type(error).__name__}: {error}"
        raise RuntimeError(_build_error) from error
    return _ext


def extension_available() -> bool:
    try:
        load_extension()
        return True
    except RuntimeError:
        return False


def compressed_nbytes(m: int, k: int, element_size: int = 2) -> int:
    """Bytes of a compressed 16-bit 2:4 (m, k) weight: m·k/2 values + m·k/16 elements of metadata (as torch)."""
    return m * k * 9 // 16 * element_size


def _register_fakes() -> None:
    @torch.library.register_fake("slope_cslt::compress")
    def _(dense, layout):
        return dense.new_empty(compressed_nbytes(*dense.shape, dense.element_size()), dtype=torch.uint8)

    @torch.library.register_fake("slope_cslt::spmm")
    def _(packed, m, k, x, bias, alg_id, layout):
        return x.new_empty(x.shape[0], m)

    @torch.library.register_fake("slope_cslt::spmm_out")
    def _(packed, m, k, x, bias, alg_id, layout, out, offset):
        return None


def values_view(packed: torch.Tensor, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The (m, k/2) kept values at the start of a compressed buffer (a view: writes update the weight)."""
    count = m * k // 2
    return packed[: count * torch.finfo(dtype).bits // 8].view(dtype).view(m, k // 2)


def metadata_view(packed: torch.Tensor, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The metadata bytes (m·k/8,) after the values of a compressed (m, k) buffer (a view)."""
    start = m * k // 2 * torch.finfo(dtype).bits // 8
    return packed[start:start + m * k // 8]


# ----- algorithm choice ---------------------------------------------------------------------------------------

def _cache_path() -> Path:
    return Path(os.environ.get("SLOPE_CACHE_DIR", Path.home() / ".cache" / "slope")) / "cusparselt_algs.json"


def _load_alg_cache() -> dict[str, int]:
    global _alg_cache
    if _alg_cache is None:
        try:
            _alg_cache = json.loads(_cache_path().read_text())
        except (OSError, ValueError):
            _alg_cache = {}
    return _alg_cache


def _save_alg_cache() -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(_alg_cache, f, indent=0, sort_keys=True)
    os.replace(tmp, path)


def _time_ms(fn, repeats: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


_PROBE = r"""
import sys, torch
from slope.kernels import cusparselt as c
from slope.masks import row_mask
ext = c.load_extension()
dtype, layout = getattr(torch, sys.argv[1]), int(sys.argv[2])
m, k, n = 1024, 512, 64
w = torch.randn(m, k, device="cuda", dtype=dtype)
w = w * row_mask(w, 2, 4)
x = torch.randn(n, k, device="cuda", dtype=dtype)
b = torch.randn(m, device="cuda", dtype=dtype) if layout == 0 else None
packed = torch.ops.slope_cslt.compress(w, layout)
ref = x.float() @ w.float().t() + (0 if b is None else b.float())
for alg in range(ext.max_alg_id(m, k, n, dtype, layout, torch.cuda.current_device())):
    y = torch.ops.slope_cslt.spmm(packed, m, k, x, b, alg, layout)
    torch.cuda.synchronize()
    if not ((y.float() - ref).norm() / ref.norm()).item() < 1e-2:
        break
    print(alg, flush=True)
"""


# Bounds already probed (`safe_alg_bound`), by (GPU name, cuSPARSELt version, dtype): the same for both layouts.
# H100: 2026-11-23; H200: 2026-12-03 (results/logs/GPU_TESTS_H200.md). Known bounds skip the probe, whose
# deliberate fault can also disturb other processes on the same GPU.
KNOWN_SAFE_BOUNDS = {(gpu, 800, dtype): bound for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
                     for dtype, bound in (("torch.bfloat16", 21), ("torch.float16", 36))}


def safe_alg_bound(dtype: torch.dtype, layout: int) -> int:
    """Algorithm ids [0, bound) that run correctly here: from `KNOWN_SAFE_BOUNDS`, else probed once in a separate
    process, and cached.

    cuSPARSELt 0.8 on an H100 reports MAX_ID = 52, yet id 36 faults with an illegal instruction, which poisons
    the CUDA context for good: so ids are tried in a child process and the first failure ends the range.
    """
    import subprocess
    import sys

    ext = load_extension()
    name = torch.cuda.get_device_name()
    key = f"{name}|{ext.version()}|{dtype}|L{layout}|safe_bound"
    cache = _load_alg_cache()
    known = KNOWN_SAFE_BOUNDS.get((name, ext.version(), str(dtype)))
    if key not in cache and known:
        cache[key] = known
        _save_alg_cache()
    if key not in cache:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run([sys.executable, "-c", _PROBE, str(dtype).replace("torch.", ""), str(layout)],
                                capture_output=True, text=True, env=env, timeout=600)
        ok = [int(line) for line in result.stdout.split() if line.isdigit()]
        cache[key] = len(ok) if ok == list(range(len(ok))) else 1
        _save_alg_cache()
    return max(1, cache[key])


def cached_choice(key: str, compute):
    """A per-GPU choice (e.g. a measured crossover) stored beside the algorithm ids: computed once, then read."""
    cache = _load_alg_cache()
    if key not in cache:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{key} is not measured yet: run one step before CUDA graph capture")
        cache[key] = compute()
        _save_alg_cache()
    return cache[key]


def best_alg_id(m: int, k: int, n: int, dtype: torch.dtype, layout: int = DEFAULT_LAYOUT, *, bias: bool = False) -> int:
    """Fastest cuSPARSELt algorithm id for this product on this GPU, timed once and cached on disk."""
    if os.environ.get("SLOPE_CSLT_SEARCH", "1") == "0":
        return 0  # the library's default configuration, no timing (e.g. for quick tests)
    ext = load_extension()
    device = torch.cuda.current_device()
    key = f"{torch.cuda.get_device_name(device)}|{ext.version()}|{m}x{k}x{n}|{dtype}|L{layout}|b{int(bias)}"
    partial = f"{key}|ids_tried"  # present when the cached choice came from a search cut short by the budget
    budget = search_budget_s()
    cache = _load_alg_cache()
    if key in cache and (budget or partial not in cache):
        return cache[key]
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"cuSPARSELt algorithm for {key} is not chosen yet: run one step before CUDA graph capture")
    weight = torch.randn(m, k, device="cuda", dtype=dtype)
    weight = weight * row_mask(weight, 2, 4)
    packed = torch.ops.slope_cslt.compress(weight, layout)
    x = torch.randn(n, k, device="cuda", dtype=dtype)
    b = torch.randn(m, device="cuda", dtype=dtype) if bias else None
    timings, ids, started = {}, range(min(safe_alg_bound(dtype, layout), ext.max_alg_id(m, k, n, dtype, layout,
                                                                                        device))), time.monotonic()
    for tried, alg in enumerate(ids):
        if budget and timings and time.monotonic() - started > budget:
            cache[partial] = tried
            break
        call = lambda: torch.ops.slope_cslt.spmm(packed, m, k, x, b, alg, layout)  # noqa: E731
        try:
            call(), call()
            timings[alg] = _time_ms(call)
        except RuntimeError:
            continue  # an id the library lists but cannot run for this shape
    else:
        cache.pop(partial, None)
    cache[key] = min(timings, key=timings.get)
    _save_alg_cache()
    return cache[key]


def search_budget_s() -> float:
    """``SLOPE_CSLT_SEARCH_BUDGET_S``: seconds a new shape's algorithm search may take (0 or unset: no limit)."""
    value = os.environ.get("SLOPE_CSLT_SEARCH_BUDGET_S", "0")
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not budget >= 0:
        raise ValueError(f"SLOPE_CSLT_SEARCH_BUDGET_S={value!r}: give seconds >= 0 (0 = search every id)")
    return budget


# ----- the op a layer calls -----------------------------------------------------------------------------------

class SpMM:
    """y = x·Wᵀ (+ bias) for one compressed 2:4 weight (m, k), through the extension or torch's fallback."""

    def __init__(self, m: int, k: int, dtype: torch.dtype, *, layout: int = DEFAULT_LAYOUT,
                 implementation: str = "auto"):
        self.m, self.k, self.dtype, self.layout = m, k, dtype, layout
        if implementation == "auto":
            implementation = "extension" if extension_available() else "torch"
            if implementation == "torch":
                warnings.warn(f"{_build_error}; using torch._cslt_sparse_mm (about 1 ms of host time per call)",
                              stacklevel=3)
        if implementation == "extension":
            load_extension()  # registers torch.ops.slope_cslt (raises with the build error if it cannot)
        elif implementation == "torch":
            self.layout = 0  # torch's ops only take the weight as operand A
        else:
            raise ValueError(f"SpMM: implementation={implementation!r}; choose 'auto', 'extension' or 'torch'")
        self.implementation = implementation
        self._algs: dict[tuple[int, bool], int] = {}

    def compress(self, dense: torch.Tensor) -> torch.Tensor:
        """Compressed uint8 buffer of a 2:4 (m, k) matrix (each group of 4 along k holds at most 2 non-zeros)."""
        dense = dense.contiguous()
        if self.implementation == "extension":
            return torch.ops.slope_cslt.compress(dense, self.layout)
        # torch may return a 2-D buffer (torch 2.11 does); the layers keep every compressed buffer flat (their
        # `values` are views of its first bytes), so flatten here and restore torch's shape at call time
        packed = torch._cslt_compress(dense)
        self._torch_shape = packed.shape
        return packed.reshape(-1).view(torch.uint8)

    def writes_metadata(self) -> bool:
        """Whether `nm_pack.write_metadata` may stand in for `compress` to make this weight's metadata.

        Yes when the shape is one the measured layout covers, ``SLOPE_CSLT_DIRECT_METADATA`` is not 0, and the
        bytes it writes for a random 2:4 mask equal the library's compress (checked once per shape, dtype, call
        layout and GPU; on a mismatch — another GPU or library version — it warns once and says no).
        """
        if os.environ.get("SLOPE_CSLT_DIRECT_METADATA", "1") == "0" or not nm_pack.direct_metadata_shape(self.m,
                                                                                                         self.k):
            return False
        key = (torch.cuda.get_device_name(), self.m, self.k, self.dtype, self.layout, self.implementation)
        if key not in _metadata_checks:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("the metadata layout check has not run yet: run one step before CUDA graph capture")
            scores = torch.rand(self.m, self.k, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
            mask = row_mask(scores, 2, 4)
            want = metadata_view(self.compress(mask.to(self.dtype)), self.m, self.k, self.dtype)
            got = nm_pack.write_metadata(nm_pack.pack_nibbles(mask), torch.empty_like(want))
            _metadata_checks[key] = bool(torch.equal(want, got))
            if not _metadata_checks[key]:
                warnings.warn(f"cuSPARSELt's metadata layout on {key[0]} differs from the one measured on an H100 "
                              f"(cuSPARSELt 0.8): a new W_RCᵀ mask is made with the library's compress (slower), and "
                              f"inference layers keep a mask copy beside the compressed weight (more memory)",
                              stacklevel=2)
        return _metadata_checks[key]

    def _alg(self, tokens: int, fuse_bias: bool) -> int:
        alg = self._algs.get((tokens, fuse_bias))
        if alg is None:
            alg = self._algs[(tokens, fuse_bias)] = best_alg_id(self.m, self.k, tokens, self.dtype, self.layout,
                                                                bias=fuse_bias)
        return alg

    def __call__(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.implementation == "torch":
            out = torch._cslt_sparse_mm(packed.view(self.dtype).view(self._torch_shape), x.t(), bias)  # (m, n)
            return out.t()
        fuse_bias = bias is not None and self.layout == 0
        out = torch.ops.slope_cslt.spmm(packed, self.m, self.k, x, bias if fuse_bias else None,
                                        self._alg(x.shape[0], fuse_bias), self.layout)
        if bias is not None and not fuse_bias:
            bias_add(out, bias, out=out)  # layout 1 adds per row of D, i.e. per token: add the bias after
        return out

    def into(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
             offset: int) -> None:
        """Write x·Wᵀ (+ bias) into columns [offset, offset + m) of ``out`` (n, ≥ offset + m), e.g. one tile."""
        if self.implementation == "torch":
            out[:, offset:offset + self.m] = self(packed, x, bias)
            return
        fuse_bias = bias is not None and self.layout == 0
        torch.ops.slope_cslt.spmm_out(packed, self.m, self.k, x, bias if fuse_bias else None,
                                      self._alg(x.shape[0], fuse_bias), self.layout, out, offset)
        if bias is not None and not fuse_bias:
            block = out[:, offset:offset + self.m]
            bias_add(block, bias, out=block)
