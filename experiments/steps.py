"""Training-loop bookkeeping that never makes the host wait for the GPU between two steps.

A small model on a big GPU is launch-bound: if every step copies its batch from pageable host memory (a stream
synchronisation before the copy) or reads its loss with ``.item()``, the CPU's work for step n+1 (drawing and
masking a batch, launching kernels) cannot overlap the GPU's work for step n, and a step costs their sum instead
of their maximum. So the runners

* copy batches with `to_device` (pinned memory, ``non_blocking``: the copy is queued on the stream, in order);
* keep each step's loss on the device in its history row and `StepLog.settle` them all with one read-back at
  the points that need numbers anyway — evaluation, checkpoint, the progress bar every ``settle_every`` steps,
  the end;
* time steps with CUDA events recorded at each step's end (`StepLog.tick`), read at settle time: the interval
  between two steps' ends on the GPU's own timeline, i.e. the pipelined cost of one step. On the CPU, where work
  is synchronous anyway, the host clock does the same.
"""
from __future__ import annotations

import time

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host → GPU copy is queued, not waited for (the stream keeps it in order)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class StepLog:
    """Device-side losses and step times of a training loop, read back in batches (see the module docstring).

    Per step: `begin` first, `tick` right after the optimizer step; `settle` whenever numbers are needed. Work
    done between a `settle` and the next `begin` (evaluation, a checkpoint) is outside every step's time.
    """

    def __init__(self, device: torch.device, settle_every: int = 50):
        self.cuda = device.type == "cuda"
        self.settle_every = settle_every
        self.step_seconds: list[float] = []
        self._pending_rows: list[dict] = []
        self._marks: list = []
        self._start = None

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def begin(self) -> None:
        if self._start is None:  # else the previous step's end is this one's start
            self._start = self._mark()

    def tick(self, row: dict) -> None:
        """End of one step: ``row["train_loss"]`` may be a device tensor until the next `settle`."""
        self._marks.append(self._mark())
        if isinstance(row["train_loss"], torch.Tensor):
            self._pending_rows.append(row)

    def due(self, step: int) -> bool:
        return step % self.settle_every == 0

    def settle(self) -> float | None:
        """Turn the pending losses into floats and the pending marks into step times (one wait for the GPU);
        returns the latest settled loss."""
        if self._pending_rows:
            values = torch.stack([row["train_loss"].float() for row in self._pending_rows]).tolist()
            for row, value in zip(self._pending_rows, values):
                row["train_loss"] = value
        if self.cuda and self._marks:
            self._marks[-1].synchronize()
        previous = self._start
        for mark in self._marks:
            self.step_seconds.append(previous.elapsed_time(mark) / 1e3 if self.cuda else mark - previous)
            previous = mark
        latest = self._pending_rows[-1]["train_loss"] if self._pending_rows else None
        self._pending_rows, self._marks, self._start = [], [], None
        return latest
