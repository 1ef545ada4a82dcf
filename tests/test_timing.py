"""`performance_experiments.timing.LinearTimer`: the in-situ time of chosen layers, which the training and prefill
breakdowns (and their Amdahl ideals) rest on."""
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd import DeviceType

from performance_experiments.timing import OTHER_KERNELS, LinearTimer, PhaseTimer, kernel_family


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


def _gpu_event(name, start_us, end_us, annotation=False):
    return SimpleNamespace(name=name, device_type=DeviceType.CUDA, is_user_annotation=annotation,
                           time_range=SimpleNamespace(start=start_us, end=end_us))


def test_kernel_totals_sum_the_kernels_inside_each_closed_range_on_the_gpu_timeline():
    timer = LinearTimer("cpu", {})
    timer._closed = {1: "forward", 2: "forward", 4: "backward"}  # call 3 opened but its end hook never fired
    events = [SimpleNamespace(name="LinearTimer::forward::1", device_type=DeviceType.CPU),  # the host side: unused
              _gpu_event("LinearTimer::forward::1", 0, 100, annotation=True),
              _gpu_event("sparse_gemm", 0, 40), _gpu_event("bias", 90, 100),  # idle 40-90: not counted
              _gpu_event("layernorm", 150, 170),                              # between layers: only in "all"
              _gpu_event("LinearTimer::forward::2", 200, 260, annotation=True), _gpu_event("gemm", 200, 260),
              _gpu_event("LinearTimer::backward::3", 300, 400, annotation=True), _gpu_event("gemm", 300, 400),
              _gpu_event("LinearTimer::backward::4", 500, 600, annotation=True), _gpu_event("gemm", 510, 530),
              _gpu_event("Optimizer.step", 700, 900, annotation=True), _gpu_event("adamw", 700, 720)]
    assert timer._kernel_totals(events) == pytest.approx({"forward": 0.11, "backward": 0.02, "all": 0.27})


def test_kernel_totals_refuse_a_closed_range_without_gpu_work():
    timer = LinearTimer("cpu", {})
    timer._closed = {1: "forward", 2: "forward"}
    events = [_gpu_event("LinearTimer::forward::1", 0, 10, annotation=True), _gpu_event("gemm", 0, 10)]
    with pytest.raises(RuntimeError, match="1 of 2 layer ranges have no GPU annotation"):
        timer._kernel_totals(events)


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


@pytest.mark.parametrize("name, family", [
    ("sparse_gemv_kernel", "few-token kernel"),
    ("sparse_gemv_finish_kernel", "few-token kernel"),
    ("addmm_kernel", "Triton addmm / bias add"),
    ("sm90_xmma_sparse_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x128x64", "cuSPARSELt"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "dense GEMM"),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, float, 128, 16, 4, 4, false>", "dense GEMM"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "attention"),
    ("Memcpy DtoD (Device -> Device)", "copies and gathers"),
    ("void at::native::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, true>", "copies and gathers"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", OTHER_KERNELS),
])
def test_kernel_family_sorts_the_kernels_of_a_decode_step_by_name(name, family):
    assert kernel_family(name) == family


def test_family_rows_compare_each_kernel_family_with_dense_and_list_families_one_side_lacks():
    from performance_experiments.speedup_infer import _family_rows

    run = SimpleNamespace(row=lambda *parts, **fields: {k: v for part in parts for k, v in part.items()} | fields)
    ref: dict = {}
    dense = _family_rows(run, {"variant": "dense"}, ref, True, "busy", "decode1", {"dense GEMM": 2.0, "attention": 0.5},
                         5, "n")
    assert [(r["phase"], r["ratio_vs_dense"]) for r in dense] == [("busy, attention", 1.0), ("busy, dense GEMM", 1.0)]
    slope_rows = _family_rows(run, {"variant": "slope"}, ref, False, "busy", "decode1",
                              {"few-token kernel": 1.25, "attention": 0.5}, 5, "n")
    by_phase = {r["phase"]: (r["median"], r["ratio_vs_dense"]) for r in slope_rows}
    assert by_phase == {"busy, attention": (0.5, 1.0), "busy, dense GEMM": (0.0, ""),
                        "busy, few-token kernel": (1.25, "")}
