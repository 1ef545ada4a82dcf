"""Inference sections of `performance_experiments.speedup`: prefill, decode (with and without the dense
fallback) and inference memory, for dense, SLoPe and SLoPe with merged / unmerged adapters.

Decode has three figures per batch on a GPU: the wall-clock time of an eager step (what ``model(...)`` in a loop
costs; at small batch it is bound by the host issuing kernels, for dense and SLoPe alike); the GPU busy time of
the same step (the sum of its kernels, `timing.kernel_families_fn`: what the step's GPU work costs once the host is
out of the way); and the wall-clock time of the same step captured in a CUDA graph and replayed (how serving
engines run decode; `e2e.graph_decode_fn`). Both GPU figures are also split by kernel family
(`timing.kernel_families_fn`: few-token kernel, adapter addmm, cuSPARSELt, dense GEMM, attention, copies, the
rest), one row per family with the ratio against dense's same family, so that a decode step slower than dense
shows which kernels lost the time. The graph's split profiles the replay itself, which is the path a captured
call takes (at one token the merged adapters' addmm path, `slope.inference.GRAPH_ADDMM_MAX_TOKENS`), not the
eager one. The profiled figures come only with ``decode_kernel_time``: a profiler session leaves CUPTI attached,
so every row timed after the first one is flagged (`timing.TIMED_AFTER_PROFILER`); each batch's graph step is
timed before that batch is profiled.
"""
from __future__ import annotations

import slope
from slope.kernels import sparse_gemv

from . import e2e
from .models import param_counts
from .reference import paper_value
from .timing import (LinearTimer, PhaseTimer, is_cuda, kernel_families_fn, peak_bytes, reset_peak, round_or_blank,
                     stat_fields, time_fn)

DECODE_MEMORY_BOUND_IDEAL = 1 / 0.5625


def _linear_share(run, model, fn) -> float | None:
    """Fraction of ``fn``'s work done inside the sparse-able linears (instrumented forward-only pass): of its GPU
    time on a GPU (the layers' kernels against all kernels, `LinearTimer`), of its host time on the CPU."""
    modules = e2e.sparse_able_modules(model)
    timer = PhaseTimer(run.device)
    try:
        with LinearTimer(run.device, modules, backward=False) as linear:
            for _ in range(4):
                with timer.phase("call"):
                    fn()
                timer.end_repeat()
                linear.end_repeat()
        stats = linear.stats(skip=1)
        whole = stats["all"] if "all" in stats else timer.stats(skip=1)["call"]
        return stats["forward"]["median_ms"] / whole["median_ms"]
    except Exception:  # noqa: BLE001 - the ideal is then left blank, the measurement stands
        return None


_NO_DENSE = object()  # the dense variant did not run in this process (e.g. --variants slope)


def _ideal(share, gain: float) -> tuple[float | str, str]:
    """Amdahl with ``gain`` on the sparse-able linears' share of the dense time."""
    if share is _NO_DENSE:
        return "", "unavailable (no dense run in this process to measure the linears' share)"
    if share is None:
        return "", "unavailable (instrumented pass failed)"
    return 1 / (1 - share + share / gain), f"Amdahl: {gain:.3g}x on the sparse-able linears ({share:.1%} of dense)"


def inference_section(run, variant: e2e.Variant, rank: str = "0") -> list[dict]:
    cfg, device = run.cfg, run.device
    is_dense = variant.name == "dense"
    separate = {"true": True, "false": False, "auto": "auto"}.get(cfg.separate_mask.lower())
    if separate is None:
        raise SystemExit(f"--separate-mask must be true, false or auto, got {cfg.separate_mask!r}")
    layers_note = e2e.to_inference(variant, run.dtype, prepare="unmerged" not in variant.name, tiling=cfg.tiling,
                                   separate_mask=separate,
                                   few_token_kernel_tokens=_few_token_setting(cfg.few_token_kernel_tokens))
    model = variant.model
    ref = run.dense.get("infer", {})
    method_rank = rank
    note = f"{variant.note}; {layers_note}".strip("; ")
    if rank != "0":
        note += "; dense reference = the dense model (adapters fold into W)"
    common = dict(variant=variant.name, adapter_rank=rank)
    rows = []
    static = e2e.state_bytes(model)
    merged = "merged" in variant.name
    counts = param_counts(run.spec, run.blocks)
    rank_int = 0 if rank == "0" else slope.resolve_rank(rank, run.spec.hidden)
    copies = e2e.mask_copy_elements(model)
    analytic = e2e.analytic_static_bytes(counts["sparse"], counts["dense"], cfg.precision, training=False,
                                         adapters=e2e.adapter_elements(model, rank_int), merged=merged,
                                         mask_copies=copies)
    expected = analytic["slope"] / analytic["dense"] if not is_dense and not cfg.simulate else ""
    mask_text = (f"a byte-per-group-of-4 mask on {copies / counts['sparse']:.0%} of them (the layers that keep one "
                 "beside cuSPARSELt's metadata)" if copies else "no mask copy (the masks are cuSPARSELt's metadata)")
    basis = (f"analytic: 16-bit weights, sparse-able at 9/16 (the 2:4 storage bound) + {mask_text}"
             if expected != "" else "none (simulated sparsity keeps dense weights)")
    linears = e2e.linear_state_bytes(model)
    if is_dense:
        ref["static"], ref["linears"] = static["total"], linears
    rows.append(run.row(common, experiment="memory", phase="inference static (params + buffers)", metric="bytes",
                        unit="bytes", median=static["total"], repeats=1,
                        ratio_vs_dense=round_or_blank(static["total"] / ref["static"] if ref.get("static") else ""),
                        ideal=round_or_blank(1.0 if is_dense else expected),
                        ideal_basis="reference" if is_dense else basis,
                        paper="" if is_dense else paper_value(run.paper, "memory_inference", "SLoPe", run.spec.name,
                                                              method_rank), note=note))
    # the same count over the sparse-able linears alone: what 2:4 storage shrinks, free of how many blocks the
    # truncated model keeps beside its dense embeddings (the goal's 0.5625 ceiling is this ratio's)
    linear_ideal = "" if is_dense or cfg.simulate else 9 / 16 + copies / counts["sparse"] / 8
    rows.append(run.row(common, experiment="memory", phase="inference static, sparse-able linears", metric="bytes",
                        unit="bytes", median=linears, repeats=1,
                        ratio_vs_dense=round_or_blank(linears / ref["linears"] if ref.get("linears") else ""),
                        ideal=round_or_blank(1.0 if is_dense else linear_ideal),
                        ideal_basis="reference" if is_dense else (
                            f"analytic, weights only: 9/16 + 1/8 × {copies / counts['sparse']:.0%} (the weights "
                            "whose layer keeps a mask copy)" if linear_ideal != "" and copies else
                            "analytic, weights only: 9/16 (no mask copy: the masks are cuSPARSELt's metadata)"
                            if linear_ideal != "" else "none (simulated sparsity keeps dense weights)"),
                        note=note))
    if "prefill" in cfg.sections and run.over_budget():
        rows.append(_skipped_row(run, common, experiment="prefill", batch=cfg.prefill_batch))
    elif "prefill" in cfg.sections:
        tokens = cfg.prefill_batch * cfg.seq
        fn = e2e.prefill_fn(model, run.prefill_ids)
        reset_peak(device)
        stats = time_fn(fn, device, warmup=cfg.warmup, repeats=cfg.repeats)
        peak = peak_bytes(device)
        if is_dense:
            ref["prefill"], ref["prefill_peak"] = stats["median_ms"], peak
            ref["prefill_share"] = _linear_share(run, model, fn)
        ideal, basis = (1.0, "reference") if is_dense else _ideal(ref.get("prefill_share", _NO_DENSE), 2.0)
        ratio = ref["prefill"] / stats["median_ms"] if "prefill" in ref else ""
        base = dict(common, experiment="prefill", batch=cfg.prefill_batch, tokens=tokens)
        rows.append(run.row(base, phase="forward (last-position logits)", metric="time", unit="ms",
                            **stat_fields(stats),
                            ratio_vs_dense=round_or_blank(ratio), ideal=round_or_blank(ideal), ideal_basis=basis,
                            paper="" if is_dense else paper_value(run.paper, "speedup_inference", "SLoPe",
                                                                  run.spec.name, method_rank), note=note))
        rows.append(run.row(base, phase="throughput", metric="throughput", unit="tokens/s",
                            median=round(tokens / stats["median_ms"] * 1e3, 1), repeats=stats["repeats"],
                            ratio_vs_dense=round_or_blank(ratio), ideal=round_or_blank(ideal), ideal_basis=basis))
        if peak is not None:
            dense_peak = ref.get("prefill_peak")
            rows.append(run.row(base, experiment="memory", phase="prefill peak", metric="bytes", unit="bytes",
                                median=peak, repeats=stats["repeats"],
                                ratio_vs_dense=round_or_blank(peak / dense_peak if dense_peak else ""),
                                ideal=1.0 if is_dense else "", ideal_basis="reference" if is_dense else "none"))
    if "decode" in cfg.sections:
        decoded = _decode_rows(run, model, common, ref, is_dense, note)
        launched = e2e.launchers_note(slope.sparse_layers(model).values())  # known once the layers have run
        rows += [dict(row, note=row["note"] + launched) if launched and row.get("note") else row for row in decoded]
        fallback_layers = [layer for layer in slope.sparse_layers(model).values()
                           if hasattr(layer, "set_dense_fallback")]
        few_token = [layer for layer in fallback_layers if layer.few_token_kernel_tokens]
        if cfg.decode_cusparselt_too and rank == "0" and few_token:
            # the same layers with the few-token kernel off: cuSPARSELt at every size, in this process
            chosen = [layer.few_token_kernel_tokens for layer in few_token]
            for layer in few_token:
                layer.set_few_token_kernel(0)
            rows += _decode_rows(run, model, dict(common, variant=f"{variant.name} (cuSPARSELt decode)"), ref, False,
                                 f"{note}; few-token kernel off")
            for layer, tokens in zip(few_token, chosen):
                layer.set_few_token_kernel(tokens)
        if cfg.decode_jit_dispatch_too and rank == "0" and few_token:
            with sparse_gemv.direct_launch(False):  # eager rows only: a graph replay has no launches to dispatch
                rows += _decode_rows(run, model, dict(common, variant=f"{variant.name} (JIT dispatch)"), ref, False,
                                     f"{note}; few-token kernel launched through Triton's JIT", eager_only=True)
        if cfg.decode_fallback not in ("", "0") and rank == "0" and fallback_layers and run.over_budget():
            rows.append(_skipped_row(run, dict(common, variant=f"{variant.name} + dense fallback"),
                                     experiment="decode"))
        elif cfg.decode_fallback not in ("", "0") and rank == "0" and fallback_layers:
            # the library's answer for few tokens: a dense copy of W_R used at or below a token threshold
            threshold = cfg.decode_fallback if cfg.decode_fallback == "auto" else int(cfg.decode_fallback)
            for layer in fallback_layers:
                layer.set_dense_fallback(threshold)
            crossovers = sorted({layer.dense_fallback_tokens for layer in fallback_layers})
            label = dict(common, variant=f"{variant.name} + dense fallback")
            static = e2e.state_bytes(model)["total"]
            rows.append(run.row(label, experiment="memory", phase="inference static (params + buffers)",
                                metric="bytes", unit="bytes", median=static, repeats=1,
                                ratio_vs_dense=round_or_blank(static / ref["static"] if ref.get("static") else ""),
                                ideal_basis="none (the dense copies are the point)",
                                note=f"dense copies of W_R up to {crossovers} tokens"))
            rows += _decode_rows(run, model, label, ref, False,
                                 f"{note}; dense_fallback_tokens={cfg.decode_fallback!r} (per layer: {crossovers})")
    run.dense["infer"] = ref if is_dense else run.dense.get("infer", ref)
    return rows


def _few_token_setting(value: str) -> int | str | None:
    """The config's text as `slope.SLoPeInferenceLinear.set_few_token_kernel` takes it (None: library default)."""
    if value == "default":
        return None
    if value == "auto" or value.isdigit():
        return value if value == "auto" else int(value)
    raise ValueError(f"few_token_kernel_tokens must be an int >= 0, 'auto' or 'default', got {value!r}")


def _skipped_row(run, common: dict, **fields) -> dict:
    return run.row(common, status="skipped (time budget)", **fields)


def _decode_rows(run, model, common: dict, ref: dict, is_dense: bool, note: str, *,
                 eager_only: bool = False) -> list[dict]:
    """One-token decode against a KV cache at each batch size: time and throughput rows (and, unless
    ``eager_only``, the GPU-busy and CUDA-graph rows the config asks for)."""
    cfg, rows = run.cfg, []
    for batch in map(int, cfg.decode_batches):
        if run.over_budget():  # the remaining batches get a row saying so: a cut-off never reads as absent
            rows.append(_skipped_row(run, common, experiment="decode", batch=batch, tokens=batch))
            continue
        fn, cache = e2e.decode_fn(model, batch, cfg.decode_context, run.spec.vocab, run.device)
        stats = time_fn(fn, run.device, warmup=cfg.warmup, repeats=cfg.repeats)
        if is_dense:
            ref[f"decode{batch}"], ref[f"decode{batch}_share"] = stats["median_ms"], _linear_share(run, model, fn)
        ideal, basis = (1.0, "reference") if is_dense else _ideal(ref.get(f"decode{batch}_share", _NO_DENSE),
                                                                  DECODE_MEMORY_BOUND_IDEAL)
        ratio = ref[f"decode{batch}"] / stats["median_ms"] if f"decode{batch}" in ref else ""
        base = dict(common, experiment="decode", batch=batch, tokens=batch, seq=cfg.decode_context)
        rows.append(run.row(base, phase="one token with KV cache", metric="time", unit="ms", **stat_fields(stats),
                            ratio_vs_dense=round_or_blank(ratio), ideal=round_or_blank(ideal), ideal_basis=basis,
                            note=note))
        rows.append(run.row(base, phase="throughput", metric="throughput", unit="tokens/s",
                            median=round(batch / stats["median_ms"] * 1e3, 1), repeats=stats["repeats"],
                            ratio_vs_dense=round_or_blank(ratio), ideal=round_or_blank(ideal), ideal_basis=basis))
        # the CUDA-graph step is timed before this batch's profiler sessions (`timing.kernel_families_fn` on why)
        graph_rows = (_graph_decode_rows(run, model, base, ref, is_dense, note, batch)
                      if cfg.decode_graph and is_cuda(run.device) and not eager_only else [])
        if cfg.decode_kernel_time and is_cuda(run.device) and not eager_only:
            busy, families = kernel_families_fn(fn, warmup=1, repeats=cfg.repeats)
            if is_dense:
                ref[f"decode{batch}_busy"] = busy["median_ms"]
            dense_busy = ref.get(f"decode{batch}_busy")
            rows.append(run.row(base, phase=BUSY_PHASE, metric="time", unit="ms",
                                **stat_fields(busy), ratio_vs_dense=round_or_blank(
                                    dense_busy / busy["median_ms"] if dense_busy else ""),
                                ideal=1.0 if is_dense else "", ideal_basis="reference" if is_dense else
                                "none (the linears' share of the GPU time is not measured)",
                                note=f"{note}; sum of kernel times per step (torch.profiler), host time excluded"))
            rows += _family_rows(run, base, ref, is_dense, BUSY_PHASE, f"decode{batch}_busy", families,
                                 busy["repeats"], note)
        del cache, fn
        rows += graph_rows
    return rows


BUSY_PHASE = "one token with KV cache: GPU busy time"
GRAPH_PHASE = "one token with KV cache: CUDA graph"
FAMILY_REPEATS = 5  # profiled replays for the graph's split by kernel family (the timed replays are not profiled)


def _family_rows(run, base: dict, ref: dict, is_dense: bool, phase: str, key: str, families: dict[str, float],
                 repeats: int, note: str) -> list[dict]:
    """One row per kernel family of a profiled decode step (`timing.kernel_families_fn`): its GPU busy ms per
    step and the ratio against dense's same family (blank where dense has none). Dense records its split in
    ``ref`` under ``key``; a family dense has but this variant lacks gets a row of 0 ms."""
    if is_dense:
        ref[f"{key}_families"] = dict(families)
    dense = ref.get(f"{key}_families", {})
    rows = []
    for family in sorted(set(families) | set(dense)):
        ms = families.get(family, 0.0)
        ratio = dense[family] / ms if ms and dense.get(family) else ""
        rows.append(run.row(base, phase=f"{phase}, {family}", metric="time", unit="ms", median=round(ms, 5),
                            repeats=repeats, ratio_vs_dense=round_or_blank(ratio),
                            ideal_basis="none (one kernel family of the step)",
                            note=f"{note}; median over the profiled steps of this kernel family's summed kernel "
                                 f"times (timing.KERNEL_FAMILIES, by kernel name)"))
    return rows


def _graph_decode_rows(run, model, base: dict, ref: dict, is_dense: bool, note: str, batch: int) -> list[dict]:
    """The decode step captured in a CUDA graph and replayed (`e2e.graph_decode_fn`): wall-clock per token with
    the host out of the way, as serving engines run decode; with ``decode_kernel_time`` also the replay's split
    by kernel family. A step that cannot be captured gets an error row."""
    cfg = run.cfg
    fields = dict(phase=GRAPH_PHASE, metric="time", unit="ms")
    graph_note = (f"{note}; one CUDA-graph replay per token: static KV cache of context + 1 slots, explicit "
                  "positions and all-ones mask (SDPA's masked kernel on both sides)")
    try:
        replay, keep = e2e.graph_decode_fn(model, batch, cfg.decode_context, run.spec.vocab, run.device)
        stats = time_fn(replay, run.device, warmup=cfg.warmup, repeats=cfg.repeats)
        if is_dense:
            ref[f"decode{batch}_graph"] = stats["median_ms"]
        dense = ref.get(f"decode{batch}_graph")
        # the timed row is made before this replay is profiled (`Run.row` flags timings made after a profiler)
        rows = [run.row(base, **fields, **stat_fields(stats),
                        ratio_vs_dense=round_or_blank(dense / stats["median_ms"] if dense else ""),
                        ideal=1.0 if is_dense else "", ideal_basis="reference" if is_dense else
                        "none (the linears' share of the GPU time is not measured)", note=graph_note)]
        if cfg.decode_kernel_time:
            try:
                families = kernel_families_fn(replay, warmup=1, repeats=FAMILY_REPEATS)[1]
                rows += _family_rows(run, base, ref, is_dense, f"{GRAPH_PHASE}: GPU busy time",
                                     f"decode{batch}_graph", families, FAMILY_REPEATS, graph_note)
            except RuntimeError as error:  # a profiler that does not see graph kernels: the timed row stands
                rows[0]["note"] += f"; no split by kernel family ({error})"
        del replay, keep
    except Exception as error:  # noqa: BLE001 - recorded in the row; the other decode rows stand
        return [run.row(base, **fields, status="error", note=f"{note}; CUDA graph capture or replay failed: "
                                                              f"{e2e.describe(error)}")]
    finally:
        e2e.free_memory()
    return rows
