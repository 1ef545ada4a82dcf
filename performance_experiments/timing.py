"""Device-agnostic timing for whole-model experiments, on top of `experiments.bench` (the one timing harness).

* `time_fn(fn, device)` — a callable's time per call: CUDA events via `experiments.bench.cuda_time_ms` on a GPU;
  on the CPU (toy runs in tests) ``time.perf_counter`` around each call, which is exact there because CPU
  kernels are synchronous. Both return the same statistics dict (median, IQR, min, max, repeats, in ms).
* `kernel_time_fn(fn)` — the GPU's busy time per call: the sum of the durations of the kernels (and copies) one
  call runs, from torch.profiler. Host time and the gaps between kernels are left out, so this is what a
  host-bound call (one decode step, eager) would take if its launches were free — the figure a CUDA-graph replay
  approaches. It is reported beside `time_fn`'s wall-clock figure, never instead of it.
* `PhaseTimer` — named phases inside one step (forward, backward, optimizer), one interval per phase per repeat,
  so the breakdown and the total come from the same steps.
* `LinearTimer` — in-situ time of chosen linear layers through module hooks: forward (pre-hook → hook) and
  backward (backward pre-hook → backward hook, i.e. BWD-1 and BWD-2 together: separating them needs a hook
  inside the layer's autograd Function, which the library does not expose). Used in a separate, instrumented
  pass so the hooks' host cost never touches the headline timings.
"""
from __future__ import annotations

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


def kernel_time_fn(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """GPU busy time per call of ``fn`` (CUDA only; see the module docstring): one profiler session per repeat."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        if not device_events:
            raise RuntimeError("kernel_time_fn: the profiler recorded no GPU activity (is CUPTI available?)")
        times.append(sum(e.time_range.elapsed_us() for e in device_events) / 1e3)
    return summarize(times)


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
    """

    def __init__(self, device, modules: dict[str, torch.nn.Module], backward: bool = True):
        self.cuda = is_cuda(device)
        self.modules = modules
        self.backward = backward  # False for inference: no backward hooks (they wrap tensors needing grad)
        self._handles: list = []
        self._open: dict[tuple[str, str], _Stamp] = {}
        self._intervals: list[tuple[str, _Stamp, _Stamp]] = []
        self._repeats: list[dict[str, float]] = []

    def _start(self, kind: str, name: str):
        def hook(*_):
            self._open[(kind, name)] = _Stamp(self.cuda)
        return hook

    def _end(self, kind: str, name: str):
        def hook(*_):
            start = self._open.pop((kind, name), None)
            if start is not None:
                self._intervals.append((kind, start, _Stamp(self.cuda)))
        return hook

    def __enter__(self) -> "LinearTimer":
        for name, module in self.modules.items():
            self._handles += [module.register_forward_pre_hook(self._start("forward", name)),
                              module.register_forward_hook(self._end("forward", name))]
            if self.backward:
                self._handles += [module.register_full_backward_pre_hook(self._start("backward", name)),
                                  module.register_full_backward_hook(self._end("backward", name))]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def end_repeat(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        totals = {"forward": 0.0, "backward": 0.0}
        for kind, start, end in self._intervals:
            totals[kind] += start.ms_until(end)
        self._intervals.clear()
        self._open.clear()
        self._repeats.append(totals)

    def stats(self, skip: int = 0) -> dict[str, dict[str, float]]:
        kept = self._repeats[skip:]
        return {kind: summarize([r[kind] for r in kept]) for kind in ("forward", "backward")}


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
