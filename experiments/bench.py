"""Timing in one place: CUDA events, warm-up, median and spread over repeats, inputs rotated past L2."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Device time of ``fn`` per call: median, min, max and interquartile range over ``repeats`` event pairs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    q1, q3 = times[len(times) // 4], times[(3 * len(times)) // 4]
    return {"median_ms": statistics.median(times), "min_ms": times[0], "max_ms": times[-1], "iqr_ms": q3 - q1,
            "repeats": repeats}


def capture_graph(fn: Callable[[], object], *, warmup: int = 2) -> tuple[torch.cuda.CUDAGraph, object]:
    """``fn()`` captured once in a CUDA graph; returns (the graph, what ``fn`` returned during the capture: the
    buffers every replay rewrites). ``warmup`` calls run first on a side stream, so that autotuning, algorithm
    choice and compilation happen before the capture, where they could not. Hold the graph while replaying it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


def graph_replay(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph (`capture_graph`); returns the replay (the bound method holds the
    graph, and with it the buffers every replay rewrites)."""
    graph, _ = capture_graph(fn)
    return graph.replay


def host_time_us(fn: Callable[[], object], *, calls: int = 100, warmup: int = 20) -> float:
    """Host (CPU) time to issue one call, measured without synchronising inside the loop.

    A GPU sleep is queued first, long enough (~1 ms of GPU clock per call) that the calls' kernels all wait behind
    it: the wall time of the loop is then the host's alone, whatever the calls' GPU time. ``calls`` × the launches
    per call must stay under the driver's queue of pending launches (about a thousand on an H100): past it the host
    blocks until the GPU drains the queue, and the figure becomes the sleep's (a 5120² layer with merged adapters
    launches 6 kernels per call: 200 calls measured ~1 ms each, 100 calls do not reach the limit).
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(calls * 2_000_000)  # cycles: ~1 ms per call at the H100's ~2 GHz
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


class Rotating:
    """Cycle through enough copies of an input that the set exceeds L2 (50 MB on an H100), so no call hits cache."""

    def __init__(self, make: Callable[[], torch.Tensor], l2_bytes: int = 64 << 20):
        first = make()
        copies = max(1, min(8, -(-l2_bytes // max(1, first.numel() * first.element_size()))))
        self.items = [first] + [make() for _ in range(copies - 1)]
        self.index = 0

    def __call__(self) -> torch.Tensor:
        self.index = (self.index + 1) % len(self.items)
        return self.items[self.index]
