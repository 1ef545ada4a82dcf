"""`performance_experiments.timing.LinearTimer`: the in-situ time of chosen layers, which the training and prefill
breakdowns (and their Amdahl ideals) rest on."""
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd import DeviceType

from performance_experiments.timing import LinearTimer, PhaseTimer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))


def test_host_clock_times_forward_and_backward_of_each_hooked_layer():
    model = _model()
    modules = {"0": model[0], "2": model[2]}
    x = torch.randn(16, 32, requires_grad=True)
    with LinearTimer("cpu", modules) as timer:
        for _ in range(3):
            model(x).sum().backward()
            timer.end_repeat()
    stats = timer.stats(skip=1)
    assert set(stats) == {"forward", "backward"}  # no "all" without a profiler
    assert stats["forward"]["repeats"] == 2 and stats["forward"]["median_ms"] > 0
    assert stats["backward"]["median_ms"] > 0
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in modules.values())


def _range(name, device_ms):
    return SimpleNamespace(name=name, device_type=DeviceType.CPU, device_time_total=device_ms * 1e3)


def _kernel(ms):
    return SimpleNamespace(name="kernel", device_type=DeviceType.CUDA,
                           time_range=SimpleNamespace(elapsed_us=lambda: ms * 1e3))


def test_kernel_totals_count_closed_ranges_only_and_every_kernel_in_all():
    timer = LinearTimer("cpu", {})
    timer._closed = {1: "forward", 2: "forward", 4: "backward"}  # call 3 opened but its end hook never fired
    events = [_range("LinearTimer::forward::1", 2.0), _range("LinearTimer::forward::2", 3.0),
              _range("LinearTimer::backward::3", 50.0), _range("LinearTimer::backward::4", 7.0),
              _range("aten::mm", 9.0), _kernel(4.0), _kernel(6.0)]
    assert timer._kernel_totals(events) == pytest.approx({"forward": 5.0, "backward": 7.0, "all": 10.0})


def test_kernel_totals_refuse_a_lost_range_and_a_profile_without_gpu_activity():
    timer = LinearTimer("cpu", {})
    timer._closed = {1: "forward", 2: "forward"}
    with pytest.raises(RuntimeError, match="lost 1 of 2"):
        timer._kernel_totals([_range("LinearTimer::forward::1", 2.0), _kernel(1.0)])
    with pytest.raises(RuntimeError, match="no GPU activity"):
        timer._kernel_totals([_range("LinearTimer::forward::1", 0.0), _range("LinearTimer::forward::2", 0.0)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_host_stalls_inside_a_layer_do_not_count():
    """A layer whose host side stalls (here: a sleep in a pre-hook, standing in for Python and launch overhead)
    lets the GPU idle inside CUDA events around it; the kernel-time figure leaves that out."""
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024)).cuda().half()
    x = torch.randn(256, 1024, device="cuda", dtype=torch.half, requires_grad=True)
    stall_s = 0.02
    model[1].register_forward_pre_hook(lambda *_: time.sleep(stall_s))
    modules = {"0": model[0], "1": model[1]}
    events = PhaseTimer("cuda")
    with LinearTimer("cuda", modules) as timer:
        for _ in range(4):
            with events.phase("forward"):
                y = model(x)
            y.float().sum().backward()
            events.end_repeat()
            timer.end_repeat()
    stats = timer.stats(skip=1)
    forward_ms, all_ms = stats["forward"]["median_ms"], stats["all"]["median_ms"]
    assert 0 < forward_ms < all_ms < 5, stats  # two 256×1024×1024 GEMMs: microseconds, not the 20 ms stall
    assert stats["backward"]["median_ms"] > 0
    assert events.stats(skip=1)["forward"]["median_ms"] > stall_s * 1e3  # what CUDA events would have said
