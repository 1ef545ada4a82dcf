"""Device-agnostic timing for whole-model experiments, on top of `experiments.bench` (the one timing harness).

* `time_fn(fn, device)` — a callable's time per call: CUDA events via `experiments.bench.cuda_time_ms` on a GPU;
  on the CPU (toy runs in tests) ``time.perf_counter`` around each call, which is exact there because CPU
  kernels are synchronous. Both return the same statistics dict (median, IQR, min, max, repeats, in ms).
* `kernel_families_fn(fn)` — the GPU's busy time per call: the sum of the durations of the kernels (and copies)
  one call runs, from torch.profiler. Host time and the gaps between kernels are left out, so this is what a
  host-bound call (one decode step, eager) would take if its launches were free — the figure a CUDA-graph replay
  approaches. It is reported beside `time_fn`'s wall-clock figure, never instead of it. It also splits that time
  by kernel family (`KERNEL_FAMILIES`, by the kernel's name), so that a decode step slower than dense says which
  kernels took the time (few-token kernel, adapter addmm, cuSPARSELt, dense GEMM, attention, copies, the rest).
* `PhaseTimer` — named phases inside one step (forward, backward, optimizer), one interval per phase per repeat,
  so the breakdown and the total come from the same steps.
* `LinearTimer` — in-situ time of chosen linear layers through module hooks: forward (pre-hook → hook) and
  backward (backward pre-hook → backward hook, i.e. BWD-1 and BWD-2 together: separating them needs a hook
  inside the layer's autograd Function, which the library does not expose). Used in a separate, instrumented
  pass so the hooks' host cost never touches the headline timings.
"""
from __future__ import annotations

import bisect
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch


def summarize(times_ms: list[float]) -> dict[str, float]:
    """The statistics `experiments.bench.cuda_time_ms` reports, for a list of per-repeat times."""
    if not times_ms:
        raise ValueError("summarize: no timings (repeats must be >= 1)")
    times = sorted(times_ms)
    q1, q3 = times[len(times) // 4], times[(3 * len(times)) // 4]
    return {"median_ms": statistics.median(times), "min_ms": times[0], "max_ms": times[-1], "iqr_ms": q3 - q1,
            "repeats": len(times)}


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device, *, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Time per call of ``fn`` on ``device`` (see the module docstring)."""
    if is_cuda(device):
        from experiments.bench import cuda_time_ms

        return cuda_time_ms(fn, warmup=warmup, repeats=repeats)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


# Kernel families of `kernel_families_fn`, the first pattern that a kernel's name matches (case-insensitive) wins:
# the suite's Triton kernels by their function names (`slope.kernels.sparse_gemv_triton`, `addmm_triton`), the
# libraries' by the words their kernel names carry (cuSPARSELt's sparse GEMMs name "sparse"; cuBLAS's "gemm",
# "gemv", or "nvjet" on Hopper; SDPA's flash / memory-efficient kernels "flash", "fmha" or "attention").
KERNEL_FAMILIES = (
    ("few-token kernel", r"sparse_gemv"),
    ("Triton addmm / bias add", r"addmm_kernel|bias_add_kernel"),
    ("attention", r"flash|fmha|attention|softmax"),
    ("cuSPARSELt", r"sparse|cusparselt|spmma"),
    ("dense GEMM", r"gemm|gemv|cutlass|xmma|nvjet|cublas"),
    ("copies and gathers", r"memcpy|memset|copy|index|gather|scatter"),
)
OTHER_KERNELS = "other (norms, activations, elementwise)"


def kernel_family(name: str) -> str:
    """The `KERNEL_FAMILIES` entry a kernel's name falls in (`OTHER_KERNELS` when none)."""
    return next((family for family, pattern in KERNEL_FAMILIES if re.search(pattern, name, re.IGNORECASE)),
                OTHER_KERNELS)


_PROFILER_SESSIONS = 0  # `kernel_families_fn` calls in this process so far
# A timed row's status when the process had run the profiler before the timing (`kernel_families_fn` on why):
# kept, but not counted as a clean measurement.
TIMED_AFTER_PROFILER = "suspect: timed after profiler sessions in this process"


def profiler_sessions() -> int:
    """How many `kernel_families_fn` calls this process has made (each may have run several sessions)."""
    return _PROFILER_SESSIONS


def kernel_families_fn(fn: Callable[[], object], *, warmup: int = 3,
                       repeats: int = 10) -> tuple[dict[str, float], dict[str, float]]:
    """GPU busy time per call of ``fn`` (CUDA only; see the module docstring), one profiler session per repeat:
    its statistics and, per kernel family (`kernel_family`), the median over the repeats of that family's busy
    time per call in ms (a family absent from a repeat counts 0 there).

    Profiling leaves its mark on the process: Kineto keeps CUPTI attached after a session
    (pytorch/pytorch#144455), and what runs afterwards pays for it. H200, OPT-13B decode, 8 blocks: SLoPe's
    CUDA-graph step replayed in 2.00 ms after profiler sessions where the same kernels had replayed in 1.77-1.79 ms
    without (7764597 against 4598767; dense moved by under 1%). Tearing CUPTI down after each session
    (TEARDOWN_CUPTI=1) left every later session recording nothing (torch 2.11+cu130, 4f0fd41). So the sessions are
    counted (`profiler_sessions`), and a timing taken after one is flagged by its caller (`speedup`: status
    `TIMED_AFTER_PROFILER`)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    global _PROFILER_SESSIONS
    _PROFILER_SESSIONS += 1  # counted before the first session starts: a failed one has attached CUPTI too

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, per_repeat = [], []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA and not _is_annotation(e)]
        if not device_events:
            raise RuntimeError("kernel_families_fn: the profiler recorded no GPU activity (is CUPTI available?)")
        families = defaultdict(float)
        for event in device_events:
            families[kernel_family(event.name)] += event.time_range.elapsed_us() / 1e3
        times.append(sum(families.values()))
        per_repeat.append(families)
    names = sorted({name for families in per_repeat for name in families})
    return summarize(times), {name: statistics.median(f.get(name, 0.0) for f in per_repeat) for name in names}


def _is_annotation(event) -> bool:
    """A ``record_function`` range's span on the GPU timeline (Kineto's gpu_user_annotation), not a kernel."""
    return bool(getattr(event, "is_user_annotation", False)) or "annotation" in str(getattr(event, "activity_type",
                                                                                            "")).lower()


class _Stamp:
    """A point in the device's work stream: a recorded CUDA event, or a host timestamp on the CPU."""

    __slots__ = ("event", "host")

    def __init__(self, cuda: bool):
        if cuda:
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
            self.host = None
        else:
            self.event = None
            self.host = time.perf_counter()

    def ms_until(self, later: "_Stamp") -> float:
        if self.event is not None:
            return self.event.elapsed_time(later.event)
        return (later.host - self.host) * 1e3


class PhaseTimer:
    """``with timer.phase("forward"): ...`` inside a step; ``timer.end_repeat()`` after it; ``timer.stats()``."""

    def __init__(self, device):
        self.cuda = is_cuda(device)
        self._pending: list[tuple[str, _Stamp, _Stamp]] = []
        self._repeats: list[dict[str, float]] = []

    class _Phase:
        def __init__(self, timer: "PhaseTimer", name: str):
            self.timer, self.name = timer, name

        def __enter__(self):
            self.start = _Stamp(self.timer.cuda)

        def __exit__(self, *exc):
            self.timer._pending.append((self.name, self.start, _Stamp(self.timer.cuda)))

    def phase(self, name: str) -> "PhaseTimer._Phase":
        return PhaseTimer._Phase(self, name)

    def end_repeat(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for name, start, end in self._pending:
            totals[name] += start.ms_until(end)
        self._pending.clear()
        self._repeats.append(dict(totals))

    def stats(self, skip: int = 0) -> dict[str, dict[str, float]]:
        """Per-phase statistics over the repeats after the first ``skip`` (warm-up) ones; plus ``step`` = their sum."""
        kept = self._repeats[skip:]
        names = list(dict.fromkeys(n for r in kept for n in r))
        out = {name: summarize([r.get(name, 0.0) for r in kept]) for name in names}
        out["step"] = summarize([sum(r.values()) for r in kept])
        return out

    def combined(self, names: tuple[str, ...], skip: int = 0) -> dict[str, float]:
        """Statistics of the per-repeat sum of several phases (e.g. forward + backward)."""
        return summarize([sum(r.get(n, 0.0) for n in names) for r in self._repeats[skip:]])


class LinearTimer:
    """In-situ forward and backward time of ``modules`` (name -> module), summed over them per repeat.

    Install with ``with LinearTimer(device, modules) as timer:``; call ``timer.end_repeat()`` after each step.
    A backward interval only counts when both its hooks fired (a layer whose input needs no gradient has no
    backward hook call).

    On a GPU a layer's time is the GPU time of the kernels launched between its pre-hook and hook (torch.profiler:
    each call is a ``record_function`` range, and the durations of the kernels inside its span on the GPU timeline
    are summed, see `_kernel_totals`). CUDA events around the layer would also count the GPU idling whenever the host falls behind, and
    the hooks themselves add host time, so a layer with more host work per call (an autograd Function around an
    extension op) looked slower in situ than its kernels are: OPT-2.7B bf16 SLoPe on an H100 read 38.7 ms of
    linear FWD by events, inside a 51.6 ms forward whose FWD GEMMs take 28.9 ms isolated. ``stats()["all"]`` is
    the GPU time of every kernel of the repeat, so ``forward / all`` is the layers' share of the GPU's work. On the
    CPU (toy runs) the intervals are host clocks, exact there because CPU kernels are synchronous; ``all`` is
    then absent.
    """

    _PREFIX = "LinearTimer::"

    def __init__(self, device, modules: dict[str, torch.nn.Module], backward: bool = True):
        self.cuda = is_cuda(device)
        self.modules = modules
        self.backward = backward  # False for inference: no backward hooks (they wrap tensors needing grad)
        self._handles: list = []
        self._open: dict[tuple[str, str], object] = {}  # (kind, layer) -> _Stamp, or (range, its call number)
        self._intervals: list[tuple[str, _Stamp, _Stamp]] = []
        self._closed: dict[int, str] = {}  # kernel mode: call number -> kind, for ranges whose both hooks fired
        self._calls = 0
        self._profiler = None
        self._repeats: list[dict[str, float]] = []

    def _start(self, kind: str, name: str):
        def hook(*_):
            if not self.cuda:
                self._open[(kind, name)] = _Stamp(False)
                return
            stale = self._open.pop((kind, name), None)
            if stale is not None:  # its end hook never fired: close the range, leave it out of the totals
                stale[0].__exit__(None, None, None)
            self._calls += 1
            # a unique name per call: a range whose end hook never fires is closed later and must not count
            span = torch.profiler.record_function(f"{self._PREFIX}{kind}::{self._calls}")
            span.__enter__()
            self._open[(kind, name)] = (span, self._calls)
        return hook

    def _end(self, kind: str, name: str):
        def hook(*_):
            start = self._open.pop((kind, name), None)
            if start is None:
                return
            if not self.cuda:
                self._intervals.append((kind, start, _Stamp(False)))
                return
            span, call = start
            span.__exit__(None, None, None)
            self._closed[call] = kind
        return hook

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        self._profiler.__enter__()

    def _stop_profiler(self) -> None:
        for span, _ in self._open.values():
            span.__exit__(None, None, None)
        self._open.clear()
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)

    def __enter__(self) -> "LinearTimer":
        for name, module in self.modules.items():
            self._handles += [module.register_forward_pre_hook(self._start("forward", name)),
                              module.register_forward_hook(self._end("forward", name))]
            if self.backward:
                self._handles += [module.register_full_backward_pre_hook(self._start("backward", name)),
                                  module.register_full_backward_hook(self._end("backward", name))]
        if self.cuda:
            torch.cuda.synchronize()
            self._start_profiler()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.cuda:
            self._stop_profiler()
            self._profiler = None

    def end_repeat(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._stop_profiler()
            totals = self._kernel_totals(self._profiler.events())
            self._closed.clear()
            self._start_profiler()
        else:
            totals = {"forward": 0.0, "backward": 0.0}
            for kind, start, end in self._intervals:
                totals[kind] += start.ms_until(end)
            self._intervals.clear()
            self._open.clear()
        self._repeats.append(totals)

    def _kernel_totals(self, events) -> dict[str, float]:
        """Per kind, the GPU time (ms) of the kernels inside the closed ranges; ``all``: every kernel and copy.

        A range's kernels are found on the GPU's timeline, not through the profiler's CPU op tree (whose device
        totals counted a cuSPARSELt kernel twice under one range, torch 2.11): Kineto marks each range on the GPU
        as a user annotation spanning its first kernel's start to its last kernel's end, and the step's kernels run
        in one stream, one after another, so a range's kernels are those inside its annotation. Summing their
        durations, not the annotation's length, leaves out the GPU idling between them."""
        from torch.autograd import DeviceType

        spans, kernels = {}, []
        for event in events:
            if event.device_type != DeviceType.CUDA:
                continue
            if event.name.startswith(self._PREFIX):
                spans[int(event.name.rsplit("::", 1)[1])] = (event.time_range.start, event.time_range.end)
            elif not _is_annotation(event):
                kernels.append((event.time_range.start, event.time_range.end))
        kernels.sort()
        starts = [start for start, _ in kernels]
        totals = {"forward": 0.0, "backward": 0.0, "all": sum(end - start for start, end in kernels) / 1e3}
        lost = [call for call in self._closed if call not in spans]
        if lost:
            raise RuntimeError(f"LinearTimer: {len(lost)} of {len(self._closed)} layer ranges have no GPU annotation "
                               "(no kernel recorded inside them: is CUPTI available?)")
        for call, kind in self._closed.items():
            first, last = spans[call]
            for start, end in kernels[bisect.bisect_left(starts, first):bisect.bisect_right(starts, last)]:
                if end <= last:
                    totals[kind] += (end - start) / 1e3
        return totals

    def stats(self, skip: int = 0) -> dict[str, dict[str, float]]:
        kept = self._repeats[skip:]
        return {kind: summarize([r[kind] for r in kept]) for kind in kept[0]}


def stat_fields(stats: dict) -> dict:
    """A statistics dict as the result columns median / iqr / min / max / repeats (ms, rounded)."""
    return {"median": round(stats["median_ms"], 5), "iqr": round(stats["iqr_ms"], 5), "min": round(stats["min_ms"], 5),
            "max": round(stats["max_ms"], 5), "repeats": stats["repeats"]}


def round_or_blank(value, digits: int = 4):
    return "" if value in ("", None) else round(float(value), digits)


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last `reset_peak`; None on the CPU (not tracked)."""
    return torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else None
