"""Training section of `performance_experiments.speedup`: the full step, its phases, and training memory.

A step = forward with the LM loss, backward, every optimizer's step (CUDA events around each phase). A second,
instrumented pass puts module hooks on the sparse-able linears for their in-situ FWD and BWD time (BWD-1 + BWD-2
together; on a GPU the GPU time of the kernels they launch, `timing.LinearTimer`); "other" is the headline phase
minus it. Isolated GEMMs per layer shape split BWD-1 from BWD-2. See speedup.py for the row conventions.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from . import e2e
from .models import param_counts
from .reference import paper_value
from .timing import (LinearTimer, PhaseTimer, is_cuda, peak_bytes, reset_peak, round_or_blank, stat_fields,
                     summarize, time_fn)


_IN_SITU_NOTE = {True: "instrumented pass: GPU time of the layers' kernels (torch.profiler ranges opened by module "
                       "hooks), median of up to 5 steps; other = the headline phase minus it",
                 False: "instrumented pass: host clock between module hooks, median of up to 5 steps; other = the "
                        "headline phase minus it"}


def _isolated_phase_fns(layer, x, g) -> dict:
    """FWD / BWD-1 / BWD-2 of one layer as standalone calls (the same kernels its autograd Function runs)."""
    import torch.nn.functional as F

    if hasattr(layer, "forward_op"):  # compressed SLoPe
        from slope.kernels import nm_pack

        return {"FWD": lambda: layer.forward_op(layer.w_packed, x, None),
                "BWD-1": lambda: nm_pack.gather_kept(g.t() @ x, layer.mask_nibbles),
                "BWD-2": lambda: layer.backward_op(layer.wt_packed, g)}
    if hasattr(layer, "backward_mask"):  # simulated SLoPe: dense GEMMs on masked weights
        w = layer.weight.detach().to(x.dtype)
        mask, bmask = layer.mask, layer.backward_mask()
        return {"FWD": lambda: F.linear(x, w * mask), "BWD-1": lambda: (g.t() @ x) * mask,
                "BWD-2": lambda: g @ (w * bmask)}
    w = layer.weight.detach().to(x.dtype)  # dense nn.Linear
    return {"FWD": lambda: F.linear(x, w), "BWD-1": lambda: g.t() @ x, "BWD-2": lambda: g @ w}


def isolated_phases(run, model) -> dict[str, float]:
    """Sum over the sparse-able linears of each GEMM phase's isolated time (ms): per shape, times layer count."""
    groups: dict[tuple, list] = defaultdict(list)
    for module in e2e.sparse_able_modules(model).values():
        groups[(module.in_features, module.out_features)].append(module)
    totals: dict[str, float] = defaultdict(float)
    compute_dtype = run.dtype
    for (d_in, d_out), modules in groups.items():
        x = torch.randn(run.tokens, d_in, device=run.device, dtype=compute_dtype)
        g = torch.randn(run.tokens, d_out, device=run.device, dtype=compute_dtype)
        for phase, fn in _isolated_phase_fns(modules[0], x, g).items():
            stats = time_fn(fn, run.device, warmup=2, repeats=max(3, run.cfg.repeats))
            totals[phase] += stats["median_ms"] * len(modules)
        del x, g
    return dict(totals)


def build_train_variant(run, kind: str, device=None) -> e2e.Variant:
    """``kind`` with its optimizers, as the run's config says; the name records a non-default W_RC mask frequency."""
    cfg = run.cfg
    variant = e2e.build_variant(kind, run.make_model, device=device or run.device, dtype=run.dtype,
                                precision=cfg.precision, simulate=cfg.simulate, mask_change_freq=cfg.mask_change_freq)
    if kind == "slope" and cfg.mask_change_freq != 1:
        variant.name += f" (W_RC mask every {cfg.mask_change_freq} steps)"
    return variant


def train_section(run, kind: str) -> tuple[list[dict], e2e.Variant | None]:
    cfg, device = run.cfg, run.device
    variant = build_train_variant(run, kind)
    base = dict(experiment="train", batch=cfg.batch, tokens=run.tokens, variant=variant.name, adapter_rank="0")
    timer = PhaseTimer(device)
    losses = []
    for i in range(cfg.warmup + cfg.repeats):
        if i == cfg.warmup:
            reset_peak(device)
        losses.append(e2e.train_step(variant, run.train_ids, device, timer))
        timer.end_repeat()
    peak = peak_bytes(device)
    phases = timer.stats(skip=cfg.warmup)
    # without the optimizer: what the sparse GEMMs change, apart from the optimizer's own cost
    phases["forward+backward"] = timer.combined(("forward", "backward"), skip=cfg.warmup)
    finite = all(bool(torch.isfinite(loss)) for loss in losses)
    # static state at its largest: optimizer state exists (warm-up steps ran) and gradients are present
    e2e.forward_backward(variant, run.train_ids, device)
    static = e2e.state_bytes(variant.model, variant.optimizers)
    for optimizer in variant.optimizers:
        optimizer.zero_grad(set_to_none=True)
    # instrumented pass: the sparse-able linears' in-situ time (hooks and the profiler cost host time, so a
    # separate pass; on a GPU it counts the layers' kernel time, which host time cannot inflate)
    linear = None
    modules = e2e.sparse_able_modules(variant.model)
    try:
        with LinearTimer(device, modules) as linear_timer:
            for _ in range(1 + min(cfg.repeats, 5)):
                e2e.train_step(variant, run.train_ids, device)
                linear_timer.end_repeat()
        linear = linear_timer.stats(skip=1)
        linear_error = ""
    except Exception as error:  # noqa: BLE001 - the breakdown is optional; the headline timing stands
        linear_error = f"{type(error).__name__}: {error}"[:300]
    isolated = isolated_phases(run, variant.model) if cfg.isolated_phases and "fst" not in kind else {}

    rows = []
    is_dense = kind == "dense"
    if is_dense:
        run.dense["phases"], run.dense["static"], run.dense["peak"] = phases, static, peak
        run.dense["isolated"] = isolated
        if linear:
            run.dense["linear"] = linear
    dense_phases = run.dense.get("phases", {})
    dl = run.dense.get("linear")
    share = None
    if dl and dense_phases:
        # the linears' in-situ time against the headline (uninstrumented) phases of the same dense model
        linear_ms = dl["forward"]["median_ms"] + dl["backward"]["median_ms"]
        share = {"step": linear_ms / dense_phases["step"]["median_ms"],
                 "fwd+bwd": linear_ms / dense_phases["forward+backward"]["median_ms"],
                 "forward": dl["forward"]["median_ms"] / dense_phases["forward"]["median_ms"],
                 "backward": dl["backward"]["median_ms"] / dense_phases["backward"]["median_ms"]}
    method = "FST" if "fst" in kind else "SLoPe"
    for phase in ("step", "forward+backward", "forward", "backward", "optimizer"):
        stats = phases[phase]
        ratio = dense_phases[phase]["median_ms"] / stats["median_ms"] if phase in dense_phases else ""
        if is_dense:
            ideal, basis = 1.0, "reference"
        elif share is None or phase == "optimizer":
            ideal, basis = "", "none defined (optimizer: ADAMWSparse also rebuilds W_RCᵀ)" if phase == "optimizer" \
                else "unavailable (instrumented pass failed)"
        else:
            saved = {"step": share["step"] / 3, "forward+backward": share["fwd+bwd"] / 3,
                     "forward": share["forward"] / 2, "backward": share["backward"] / 4}
            ideal = 1 / (1 - saved[phase])
            basis = (f"Amdahl: sparse-able linears are {share['fwd+bwd' if phase == 'forward+backward' else phase]:.1%}"
                     f" of the dense {phase}; "
                     + {"step": "1.5x on them (FWD, BWD-2 at 2x; BWD-1 dense)", "forward": "2x on them",
                        "forward+backward": "1.5x on them (FWD, BWD-2 at 2x; BWD-1 dense)",
                        "backward": "4/3 on them (BWD-2 at 2x, BWD-1 dense)"}[phase])
        paper = paper_value(run.paper, "speedup_training", method, run.spec.name) if phase == "step" and not is_dense \
            else ""
        note = variant.note + ("" if finite else "; loss not finite (timing only, no loss scaling)")
        rows.append(run.row(base, phase=phase, metric="time", unit="ms", **stat_fields(stats),
                            ratio_vs_dense=round_or_blank(ratio),
                            ideal=round_or_blank(ideal), ideal_basis=basis, paper=paper, note=note.strip("; ")))
    if linear:
        other_ms = {"forward": phases["forward"]["median_ms"] - linear["forward"]["median_ms"],
                    "backward": phases["backward"]["median_ms"] - linear["backward"]["median_ms"]}
        breakdown = {"linear FWD (in situ)": (linear["forward"], 2.0),
                     "linear BWD-1+BWD-2 (in situ)": (linear["backward"], 4 / 3),
                     "other forward (attention, norms, embeddings, head, loss)":
                         (summarize([other_ms["forward"]]), 1.0),
                     "other backward": (summarize([other_ms["backward"]]), 1.0)}
        if is_dense:
            run.dense["breakdown"] = {p: s["median_ms"] for p, (s, _) in breakdown.items()}
        dense_breakdown = run.dense.get("breakdown", {})
        for phase, (stats, ideal) in breakdown.items():
            ref = dense_breakdown.get(phase)
            ratio = ref / stats["median_ms"] if ref and stats["median_ms"] > 0 else ""
            rows.append(run.row(base, phase=phase, metric="time", unit="ms", **stat_fields(stats),
                                ratio_vs_dense=round_or_blank(ratio), ideal=round_or_blank(1.0 if is_dense else ideal),
                                ideal_basis="kernel-level ideal for this phase" if not is_dense else "reference",
                                note=_IN_SITU_NOTE[is_cuda(device)]))
    elif linear_error:
        rows.append(run.row(base, phase="linear breakdown", metric="time", status="error", note=linear_error))
    for phase, ms in isolated.items():
        ref = run.dense.get("isolated", {}).get(phase)
        rows.append(run.row(base, phase=f"{phase} (isolated GEMMs x layer count)", metric="time", unit="ms",
                            median=round(ms, 5), repeats=max(3, cfg.repeats),
                            ratio_vs_dense=round_or_blank(ref / ms if ref else ""),
                            ideal=1.0 if is_dense or phase == "BWD-1" else 2.0,
                            ideal_basis="reference" if is_dense else "2:4 on FWD/BWD-2, BWD-1 dense",
                            note="sum over sparse-able linears of the isolated kernel's median"))
    rows += _train_memory_rows(run, base, kind, static, peak)
    return rows, variant


def _train_memory_rows(run, base: dict, kind: str, static: dict, peak) -> list[dict]:
    counts = param_counts(run.spec, run.blocks)
    sparse, other = counts["sparse"], counts["dense"]
    analytic = e2e.analytic_static_bytes(sparse, other, run.cfg.precision, training=True)
    dense_static, dense_peak = run.dense.get("static"), run.dense.get("peak")
    is_dense = kind == "dense"
    method = "FST" if "fst" in kind else "SLoPe"
    expected = analytic["slope"] / analytic["dense"] if kind == "slope" and not run.cfg.simulate else ""
    basis = ("analytic static accounting (weights, grads, optimizer state, masks; "
             f"precision={run.cfg.precision})") if expected else "reference" if is_dense else \
        "none (simulated sparsity keeps dense weights)"
    rows = []
    for part in ("params", "grads", "optimizer", "buffers", "total"):
        ratio = static[part] / dense_static[part] if dense_static and dense_static[part] else ""
        rows.append(run.row(base, experiment="memory", phase=f"train static: {part}", metric="bytes", unit="bytes",
                            median=static[part], repeats=1, ratio_vs_dense=round_or_blank(ratio),
                            ideal=round_or_blank(1.0 if is_dense else expected) if part == "total" else "",
                            ideal_basis=basis if part == "total" else "",
                            paper=paper_value(run.paper, "memory_training", method, run.spec.name)
                            if part == "total" and not is_dense else ""))
    if peak is not None:
        ideal = ""
        if expected and dense_peak and dense_static:  # activations as dense, state at the analytic figure
            ideal = (dense_peak - dense_static["total"] + dense_static["total"] * expected) / dense_peak
        rows.append(run.row(base, experiment="memory", phase="train peak", metric="bytes", unit="bytes", median=peak,
                            repeats=run.cfg.repeats,
                            ratio_vs_dense=round_or_blank(peak / dense_peak if dense_peak else ""),
                            ideal=round_or_blank(1.0 if is_dense else ideal),
                            ideal_basis="reference" if is_dense else "dense peak with the static state at its analytic "
                            "fraction (activations unchanged)" if ideal else "none"))
    return rows


