"""StepLog: losses stay on the device until settle, step times exclude what happens between settle and begin."""
import time

import pytest
import torch

from experiments.steps import StepLog, to_device


def _run_steps(log, device, count, work):
    rows = []
    for step in range(count):
        log.begin()
        work()
        rows.append({"step": step + 1, "train_loss": torch.tensor(float(step), device=device)})
        log.tick(rows[-1])
    return rows


def test_settle_turns_losses_into_floats_and_excludes_work_between_settle_and_begin():
    log = StepLog(torch.device("cpu"), settle_every=3)
    rows = _run_steps(log, "cpu", 3, lambda: time.sleep(0.01))
    assert log.due(3) and not log.due(2)
    assert log.settle() == 2.0 and [r["train_loss"] for r in rows] == [0.0, 1.0, 2.0]
    assert all(isinstance(r["train_loss"], float) for r in rows)
    time.sleep(0.3)  # an evaluation or a checkpoint: not part of any step
    _run_steps(log, "cpu", 2, lambda: time.sleep(0.01))
    log.settle()
    assert len(log.step_seconds) == 5 and all(0.009 < s < 0.2 for s in log.step_seconds)
    assert log.settle() is None and len(log.step_seconds) == 5  # nothing pending: nothing changes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_times_come_from_events_without_a_per_step_wait():
    device = torch.device("cuda")
    log = StepLog(device)
    batch = to_device(torch.arange(6).reshape(2, 3), device)
    assert batch.device.type == "cuda" and batch.sum().item() == 15
    rows = _run_steps(log, device, 4, lambda: torch.cuda._sleep(20_000_000))  # ~10 ms of GPU time per step
    assert all(isinstance(r["train_loss"], torch.Tensor) for r in rows)  # nothing was read back yet
    log.settle()
    assert [r["train_loss"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert len(log.step_seconds) == 4 and all(s > 0.002 for s in log.step_seconds)
