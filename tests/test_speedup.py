"""The end-to-end speed/memory harness on the CPU at toy size (simulated sparsity): rows, ratios, accounting."""
import csv
import os

import pytest
import torch

import slope
from performance_experiments import e2e, speedup
from performance_experiments.models import TOY_MODELS, build_model
from performance_experiments.reference import load_paper, paper_value

TOY_ARGS = ["--preset", "cpu-toy", "--models", "opt-toy", "--adapter-ranks", "0,6.25%", "--decode-batches", "1,2"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedup") / "speedup_cpu.csv"
    speedup.main(TOY_ARGS + ["--output", str(out)])
    return _read(out)


def test_every_section_and_variant_lands_with_provenance(toy_rows):
    assert {r["status"] for r in toy_rows} == {"ok"}
    assert all(r["mode"].startswith("cpu-toy") and r["git_sha"] and r["device"].startswith("cpu") for r in toy_rows)
    seen = {(r["experiment"], r["variant"], r["adapter_rank"]) for r in toy_rows}
    for experiment in ("train", "memory"):
        for variant in ("dense", "slope (simulated)", "fst (simulated)"):
            assert (experiment, variant, "0") in seen
    for experiment in ("prefill", "decode"):
        assert {(experiment, v, "0") for v in ("dense", "slope (simulated)")} <= seen
        for mode in ("merged", "unmerged"):
            assert (experiment, f"slope (simulated) {mode} adapters", "6.25%") in seen
    decode_batches = {r["batch"] for r in toy_rows if r["experiment"] == "decode"}
    assert decode_batches == {"1", "2"}


def test_phases_add_up_and_every_timing_row_has_an_ideal(toy_rows):
    train = {(r["variant"], r["phase"]): r for r in toy_rows if r["experiment"] == "train"}
    for variant in ("dense", "slope (simulated)", "fst (simulated)"):
        parts = sum(float(train[(variant, p)]["median"]) for p in ("forward", "backward", "optimizer"))
        assert float(train[(variant, "step")]["median"]) == pytest.approx(parts, rel=0.3)
        for phase in ("linear FWD (in situ)", "linear BWD-1+BWD-2 (in situ)", "BWD-1 (isolated GEMMs x layer count)"):
            assert (variant, phase) in train or (variant.startswith("fst") and "isolated" in phase)
    assert float(train[("dense", "step")]["ratio_vs_dense"]) == 1.0
    for r in toy_rows:
        if r["metric"] == "time" and r["phase"] != "optimizer":
            assert r["ideal_basis"], r
    slope_step = train[("slope (simulated)", "step")]
    assert 1.0 < float(slope_step["ideal"]) < 1.5 and "Amdahl" in slope_step["ideal_basis"]


def test_static_memory_counts_params_grads_and_adam_state(toy_rows):
    model = build_model(TOY_MODELS["opt-toy"], 2)
    params = sum(p.numel() for p in model.parameters()) * 4  # fp32, the tied LM head counted once
    memory = {(r["variant"], r["phase"]): float(r["median"]) for r in toy_rows if r["experiment"] == "memory"}
    assert memory[("dense", "train static: params")] == params
    assert memory[("dense", "train static: grads")] == params
    assert memory[("dense", "train static: optimizer")] >= 2 * params  # two moments (+ step counters)
    assert memory[("dense", "inference static (params + buffers)")] == params
    # the sparse-able linears alone: their weights and biases, fp32 here (the toy's paper-filtered linears)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and slope.paper_filter(m, n)]
    assert memory[("dense", "inference static, sparse-able linears")] == 4 * sum(
        m.weight.numel() + m.bias.numel() for m in linears)
    # the simulator keeps dense weights plus a bool mask per sparse weight: more than dense, never less
    assert memory[("slope (simulated)", "train static: buffers")] > 0


def test_state_bytes_counts_shared_storage_once():
    layer = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(layer, layer)  # the same parameters twice
    view = torch.nn.Module()
    view.register_buffer("alias", layer.weight.detach()[:4])  # a view of a parameter's storage
    model.add_module("view", view)
    counted = e2e.state_bytes(model)
    assert counted["params"] == (64 + 8) * 4 and counted["buffers"] == 0


def test_analytic_accounting_matches_the_design_numbers():
    half = e2e.analytic_static_bytes(100, 0, "half", training=True)
    amp = e2e.analytic_static_bytes(100, 0, "amp", training=True)
    infer = e2e.analytic_static_bytes(100, 0, "half", training=False)
    assert amp["slope"] / amp["dense"] == pytest.approx(9.75 / 16)
    assert half["slope"] / half["dense"] == pytest.approx(9.75 / 8)  # fp32 masters cost more than 16-bit AdamW
    assert infer["slope"] / infer["dense"] == pytest.approx(0.5625 + 0.125)  # 9/16 storage + the inference mask


def test_refused_merged_path_becomes_an_unsupported_row(tmp_path, monkeypatch):
    real = e2e.build_variant

    def refuse_merged(kind, *args, adapter_mode="unmerged", adapter_rank="0", **kwargs):
        if adapter_mode == "merged" and adapter_rank != "0":
            raise slope.BackendUnavailableError("merged compressed inference is not in this release")
        return real(kind, *args, adapter_mode=adapter_mode, adapter_rank=adapter_rank, **kwargs)

    monkeypatch.setattr(e2e, "build_variant", refuse_merged)
    out = tmp_path / "s.csv"
    speedup.main(TOY_ARGS + ["--variants", "slope", "--sections", "prefill", "--output", str(out)])
    rows = _read(out)
    refused = [r for r in rows if r["variant"] == "slope merged adapters"]
    assert refused and all(r["status"] == "unsupported" and "not in this release" in r["note"] for r in refused)
    assert any(r["variant"] == "slope (simulated) unmerged adapters" and r["status"] == "ok" for r in rows)


def test_time_budget_skips_later_sections(tmp_path):
    out = tmp_path / "s.csv"
    speedup.main(TOY_ARGS + ["--time-budget-s", "0.000001", "--output", str(out)])
    rows = _read(out)
    assert rows and {r["status"] for r in rows} == {"skipped (time budget)"}


def test_budget_spent_inside_decode_leaves_skipped_rows(tmp_path, monkeypatch):
    """The budget runs out after the first decode batch: the later batch reads 'skipped', never absent."""
    real_decode_fn, spent = e2e.decode_fn, []

    def decode_then_spend(*args, **kwargs):
        spent.append(True)
        return real_decode_fn(*args, **kwargs)

    monkeypatch.setattr(e2e, "decode_fn", decode_then_spend)
    monkeypatch.setattr(speedup.Run, "over_budget", lambda self: bool(spent))
    out = tmp_path / "s.csv"
    speedup.main(TOY_ARGS + ["--variants", "dense", "--sections", "decode", "--models", "opt-toy",
                             "--output", str(out)])
    decode = {(r["batch"], r["status"]) for r in _read(out) if r["experiment"] == "decode"}
    assert ("1", "ok") in decode and ("2", "skipped (time budget)") in decode
    assert ("2", "ok") not in decode


def test_timings_after_a_profiler_session_are_flagged_not_counted(tmp_path, monkeypatch):
    """CUPTI stays attached after a profiler session (`timing.kernel_families_fn`): the rows timed after one carry
    `TIMED_AFTER_PROFILER` (so the claims, which count status "ok", leave them out); a profile's own rows and
    memory rows do not."""
    from performance_experiments import timing

    real_decode_fn, calls = e2e.decode_fn, []

    def decode_after_a_profile(*args, **kwargs):  # as if the first batch had been profiled
        calls.append(True)
        if len(calls) == 2:
            monkeypatch.setattr(timing, "_PROFILER_SESSIONS", 1)
        return real_decode_fn(*args, **kwargs)

    monkeypatch.setattr(timing, "_PROFILER_SESSIONS", 0)
    monkeypatch.setattr(e2e, "decode_fn", decode_after_a_profile)
    out = tmp_path / "s.csv"
    speedup.main(TOY_ARGS + ["--variants", "dense", "--sections", "decode", "--output", str(out)])
    rows = _read(out)
    decode = {(r["batch"], r["phase"], r["status"]) for r in rows if r["experiment"] == "decode"}
    assert {("1", "one token with KV cache", "ok"), ("1", "throughput", "ok")} <= decode
    assert {("2", "one token with KV cache", timing.TIMED_AFTER_PROFILER),
            ("2", "throughput", timing.TIMED_AFTER_PROFILER)} <= decode
    assert {r["status"] for r in rows if r["experiment"] == "memory"} == {"ok"}
    run = speedup.Run(speedup.PRESETS["cpu-toy"], "opt-toy", "float32", out, {}, 0.0)
    busy = run.row(experiment="decode", phase="one token with KV cache: GPU busy time, attention", metric="time")
    assert busy["status"] == "ok"


def test_capped_algorithm_search_is_named_on_slope_rows_only(tmp_path, monkeypatch):
    monkeypatch.delenv("SLOPE_CSLT_SEARCH_BUDGET_S", raising=False)
    out = tmp_path / "s.csv"
    speedup.main(TOY_ARGS + ["--sections", "prefill", "--cslt-search-budget-s", "8", "--output", str(out)])
    assert os.environ["SLOPE_CSLT_SEARCH_BUDGET_S"] == "8"  # what the kernels read per search
    rows = _read(out)
    capped = [r for r in rows if "capped at 8 s" in r["note"]]
    assert capped and {r["variant"] for r in capped} == {r["variant"] for r in rows if "slope" in r["variant"]}
    assert not any("capped" in r["note"] for r in rows if r["variant"] == "dense")
    with pytest.raises(SystemExit, match="--cslt-search-budget-s -1"):
        speedup.main(TOY_ARGS + ["--cslt-search-budget-s", "-1", "--output", str(out)])


def test_search_budget_reads_the_environment(monkeypatch):
    from slope.kernels import cusparselt

    monkeypatch.delenv("SLOPE_CSLT_SEARCH_BUDGET_S", raising=False)
    assert cusparselt.search_budget_s() == 0
    monkeypatch.setenv("SLOPE_CSLT_SEARCH_BUDGET_S", "2.5")
    assert cusparselt.search_budget_s() == 2.5
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("SLOPE_CSLT_SEARCH_BUDGET_S", bad)
        with pytest.raises(ValueError, match="SLOPE_CSLT_SEARCH_BUDGET_S"):
            cusparselt.search_budget_s()


def test_paper_reference_has_the_performance_tables():
    paper = load_paper()
    assert paper_value(paper, "speedup_training", "SLoPe", "opt-13b") == "1.25"
    assert paper_value(paper, "speedup_inference", "SLoPe", "opt-13b", "6.25%") == "1.36"
    assert paper_value(paper, "memory_training", "FST", "llama-3-8b") == "1.17"
    assert paper_value(paper, "memory_inference", "SLoPe", "mistral-7b", "6.25%") == "0.65"
    assert len([k for k in paper if k[0] == "speedup_training"]) == 14


def test_cli_errors_name_the_fix():
    with pytest.raises(SystemExit, match="sections"):
        speedup.main(["--preset", "cpu-toy", "--sections", "training"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="cpu-toy"):
            speedup.main(["--preset", "quick"])


def test_data_parallel_step_benchmark_on_two_cpu_processes(tmp_path):
    """`make speedup NGPU=2`'s module on 2 gloo processes (simulated sparsity): one GPU vs DDP rows, replicas equal."""
    import subprocess
    import sys

    out = tmp_path / "ddp.csv"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "performance_experiments.speedup_ddp", *TOY_ARGS, "--variants", "dense,slope",
               "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _read(out)
    assert rows and {r["status"] for r in rows} == {"ok"}       # "error: replicas differ" would show here
    by = {(r["variant"], r["phase"]): r for r in rows}
    for variant in ("dense", "slope (simulated)"):
        one, two = by[(variant, "step (1 GPU)")], by[(variant, "step (2 GPUs, DDP)")]
        assert one["world_size"] == "1" and two["world_size"] == "2"
        efficiency = float(by[(variant, "weak-scaling efficiency")]["median"])
        assert efficiency == pytest.approx(float(one["median"]) / float(two["median"]), rel=1e-3)
        throughput = float(by[(variant, "throughput (2 GPUs, DDP)")]["median"])
        assert throughput == pytest.approx(2 * int(two["tokens"]) / float(two["median"]) * 1e3, rel=1e-3)
    assert by[("dense", "step (2 GPUs, DDP)")]["ratio_vs_dense"] == "1.0"
    assert float(by[("slope (simulated)", "step (2 GPUs, DDP)")]["ratio_vs_dense"]) > 0


def test_data_parallel_step_benchmark_refuses_one_process():
    from performance_experiments import speedup_ddp

    with pytest.raises(SystemExit, match="torchrun"):
        speedup_ddp.main(TOY_ARGS)


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_static_decode_step_equals_the_full_forward_and_repeats(name):
    """The capturable decode step (static cache, explicit positions and mask) computes the next-token logits of
    prompt + token, and a second call gives the same: the cache's write position is rewound every call."""
    spec = TOY_MODELS[name]
    model = build_model(spec, 2).eval()
    step, _ = e2e.static_decode_step(model, 2, 8, spec.vocab, "cpu")
    prompt, token = e2e._decode_inputs(2, 8, spec.vocab, "cpu")  # the prompt and token `static_decode_step` uses
    with torch.no_grad():
        reference = model(input_ids=torch.cat([prompt, token], dim=1)).logits[:, -1:]
    first = step().clone()
    torch.testing.assert_close(first, reference, rtol=1e-4, atol=1e-5)
    assert torch.equal(step(), first)


def test_to_inference_applies_its_settings_to_layers_built_as_inference_layers():
    """A merged-adapter variant's layers are inference layers from the start (prune_model(merge_lora=True)): the
    few-token and dense-fallback settings must still reach them (they once kept the library's defaults)."""
    from slope.linear import SparseLinearBase

    class Built(SparseLinearBase):  # stands in for SLoPeInferenceLinear, which needs a GPU to build
        def __init__(self):
            super().__init__(8, 8, False, sparsity="2:4", layer_name="fc", device="cpu", dtype=torch.float32)
            self.few_token_kernel_tokens, self.dense_fallback_tokens = 1, 0

        def set_few_token_kernel(self, tokens):
            self.few_token_kernel_tokens = tokens

        def set_dense_fallback(self, tokens):
            self.dense_fallback_tokens = tokens

    variant = e2e.Variant("slope merged adapters", torch.nn.Sequential(Built()))
    note = e2e.to_inference(variant, torch.float32, few_token_kernel_tokens="auto", dense_fallback_tokens=8)
    layer = variant.model[0]
    assert (layer.few_token_kernel_tokens, layer.dense_fallback_tokens) == ("auto", 8)
    assert "few-token kernel at <= ['auto'] tokens" in note
    e2e.to_inference(variant, torch.float32)  # nothing asked: the layer keeps what it has
    assert (layer.few_token_kernel_tokens, layer.dense_fallback_tokens) == ("auto", 8)


def test_launchers_note_counts_jit_launches_and_says_when_direct_launches_went_off(monkeypatch):
    """The decode rows' note says which launchers ran and how many calls went through Triton's JIT: the number that
    tells an eager row that paid the JIT's host time on every call from one that launched directly."""
    from slope.kernels import sparse_gemv

    class Layer:  # the two methods the note reads, as SLoPeInferenceLinear has them
        def __init__(self, launchers, jit):
            self.launchers, self.jit = launchers, jit

        def few_token_launchers(self):
            return self.launchers

        def few_token_jit_launches(self):
            return self.jit

    layers = [Layer({"static"}, 2), Layer({"static"}, 1), torch.nn.Linear(2, 2)]
    monkeypatch.setattr(sparse_gemv, "DIRECT_LAUNCH", True)
    assert e2e.launchers_note(layers) == ("; few-token direct launches: static launcher; few-token JIT launches: 3 in "
                                          "2 layers")
    monkeypatch.setattr(sparse_gemv, "DIRECT_LAUNCH", False)
    assert e2e.launchers_note([Layer(set(), 40)]) == ("; few-token JIT launches: 40 in 1 layers, direct launches off "
                                                      "by the end")
    assert e2e.launchers_note([Layer(set(), 0), torch.nn.Linear(2, 2)]) == ""


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                               reason="needs an sm_80+ CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", ["opt-toy", "llama-toy"])
def test_graph_replayed_decode_equals_eager_with_slope_inference_layers(name):
    """The CUDA-graph decode row's step: captured with SLoPe inference layers (few-token kernel at 1-2 tokens,
    cuSPARSELt at 8), each replay gives the eager step's logits."""
    spec = TOY_MODELS[name]
    variant = e2e.build_variant("slope", lambda: build_model(spec, 2, dtype=torch.float16, device="cuda"),
                                device="cuda", dtype=torch.float16, train=False)
    e2e.to_inference(variant, torch.float16, few_token_kernel_tokens=2)
    assert any(isinstance(m, slope.SLoPeInferenceLinear) for m in variant.model.modules())
    for batch in (1, 2, 8):
        step, _ = e2e.static_decode_step(variant.model, batch, 16, spec.vocab, "cuda")
        eager = step().clone()
        replay, held = e2e.graph_decode_fn(variant.model, batch, 16, spec.vocab, "cuda")
        held["logits"].zero_()
        replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(held["logits"], eager, rtol=2e-3, atol=2e-3)
