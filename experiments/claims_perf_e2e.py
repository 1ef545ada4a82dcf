"""Performance claims P1–P4 from the end-to-end CSV (``speedup_<gpu>.csv``): training step, prefill, decode,
memory — each against its goal, with the per-phase and per-part tables that say where a missed goal went.
See `experiments.claims_perf` for how a number is made."""
from __future__ import annotations

import re

from .claims_perf_inputs import (amdahl, basis_share, BENCH_KEYS, cited, DECODE_GOAL, DEFAULT_LAYOUT, E2E_KEYS,
                                 gb_text, INFER_MEMORY_CEILING, INFER_MEMORY_GOAL, Inputs, layer_ceiling, layer_infer,
                                 linear_share, mask_freq, ms_text, paper_figure, paper_text, PREFILL_GOAL,
                                 same_run_row, sample_cell, speedup_vs_dense, TRAIN_MEMORY_GOAL, TRAIN_STEP_FALLBACK,
                                 vs_dense)
from .perf_evidence import cite, cite_key, cites_text, Claim, Line, measure, numeric, pair, ratios, run_of, select


def claim_training(inp: Inputs) -> Claim:
    title = "Training step speedup (truncated model, end to end)"
    steps = select(inp.e2e, experiment="train", phase="step", status="ok", variant=lambda v: v.startswith("slope"))
    if not steps:
        fallback = paper_figure(inp, "speedup_training", "N/A", "opt-13b") or TRAIN_STEP_FALLBACK
        return Claim("P1", title, [Line("P1", "training step", None, fallback, f"≥ {fallback:g}",
                                        absent=inp.absent("e2e"))])
    lines, details = [], []
    for step in steps:
        model, freq = step["model"], mask_freq(step)
        goal = paper_figure(inp, "speedup_training", "N/A", model) or TRAIN_STEP_FALLBACK
        m = vs_dense(inp, step, cross_run=True)
        how = "every step (the paper's)" if freq == 1 else f"every {freq} steps"
        # amp: fp32 parameters, master weights and Adam moments on both sides (dense too), compute in dtype
        precision = ", amp: fp32 masters on both sides" if step["precision"] == "amp" else ""
        config = (f"{model} ({step['num_blocks']} of {step['full_blocks']} blocks, {step['dtype']}{precision}) "
                  f"train step, W_RCᵀ mask {how}")
        lines.append(Line("P1", config + _nan_dense_caveat(inp, step), m, goal,
                          f"≥ {goal:g} (paper, A100); ideal: linears 1.5×"
                          + (f", this step (Amdahl) {step['ideal']}×" if step["ideal"] else ""),
                          why=_training_why(inp, step), ceiling=numeric(step, "ideal"),
                          bound=_kernel_bound(inp, step), group=config))
    configs: dict[tuple, list[dict]] = {}  # one phase table per configuration: each has its own dense column
    for step in steps:
        configs.setdefault(tuple(step[k] for k in ("model", "num_blocks", "dtype", "precision")), []).append(step)
    for group in configs.values():
        details += _phase_table(inp, group)
    return Claim("P1", title, lines, details)


def _nan_dense_caveat(inp: Inputs, step: dict) -> str:
    """A caveat when the same run's dense step was timed on non-finite weights (runs before e2e.TIMING_LR = 0:
    pure fp16 dense AdamW diverged, and fp16 GEMMs on NaN data run ~14% faster on an H100)."""
    dense = [r for r in select(inp.e2e, experiment="train", phase="step", variant="dense", model=step["model"],
                               dtype=step["dtype"], precision=step["precision"]) if run_of(r) == run_of(step)]
    if any("not finite" in r.get("note", "") for r in dense):
        return " (dense timed on NaN weights, faster than on finite ones: this ratio is understated)"
    return ""


def _training_why(inp: Inputs, step: dict) -> str:
    fb = same_run_row(inp, step, experiment="train", phase="forward+backward")
    opt = same_run_row(inp, step, experiment="train", phase="optimizer")
    fb_s = speedup_vs_dense(inp, fb, cross_run=True) if fb else None
    dense_opt = pair(select(inp.e2e, variant="dense", phase="optimizer"), [opt], E2E_KEYS, True) if opt else []
    dense_step = pair(select(inp.e2e, variant="dense", phase="step"), [step], E2E_KEYS, True)
    out = []
    tag = ", cross-run" if dense_step and run_of(dense_step[0][0]) != run_of(step) else ""
    if fb_s:
        out.append(f"forward+backward {fb_s.value:.3f}×" + (f" (ideal {fb['ideal']}×)" if fb["ideal"] else "")
                   + (" (cross-run)" if tag else ""))
    if opt and dense_opt:
        d_opt = float(dense_opt[0][0]["median"])
        out.append(f"optimizer {float(opt['median']):.1f} ms vs dense {d_opt:.1f} ms (ADAMWSparse also keeps W_RCᵀ "
                   "up to date)")
        if fb and dense_step:  # what the step would be if the sparse optimizer cost what dense AdamW does
            what_if = float(dense_step[0][0]["median"]) / (float(fb["median"]) + d_opt)
            out.append(f"with a dense-cost optimizer the step would be {what_if:.3f}× (derived{tag})")
    bound = _kernel_bound(inp, step)
    if bound:
        share, ceiling = linear_share(inp, dense_step[0][0]), layer_ceiling(inp, step["dtype"])
        out.append(f"with the layer-level cuSPARSELt-bound fwd+bwd ceiling ({ceiling:.3f}×, median of "
                   f"`{inp.names['linear']}` {step['dtype']} notes) on the linears' {share:.1%} of the dense step "
                   f"(in-situ rows), Amdahl allows {bound:.3f}× (derived)")
    return "; ".join(out)


def _kernel_bound(inp: Inputs, step: dict) -> float | None:
    """The step speedup the measured cuSPARSELt kernels allow: Amdahl with the layer-level fwd+bwd ceiling on the
    linears' share of the same run's dense step (None where either is unmeasured)."""
    dense_step = pair(select(inp.e2e, variant="dense", phase="step"), [step], E2E_KEYS, True)
    share = linear_share(inp, dense_step[0][0]) if dense_step else None
    ceiling = layer_ceiling(inp, step["dtype"])
    return amdahl(share, ceiling) if share and ceiling else None


def _phase_table(inp: Inputs, steps: list[dict]) -> list[str]:
    """Per-phase medians of dense and the SLoPe train runs of ONE configuration (model, blocks, dtype, precision),
    with each ratio (same run where possible)."""
    first = steps[0]
    config = {k: first[k] for k in ("model", "num_blocks", "dtype", "precision")}
    dense_rows = select(inp.e2e, experiment="train", variant="dense", **config)
    dense_phases = dict.fromkeys(r["phase"] for r in dense_rows)
    heads = [f"{s['variant']} @ {s['git_sha'][:7]}" for s in steps]
    out = [f"Per phase, {first['model']} ({first['num_blocks']} of {first['full_blocks']} blocks, {first['dtype']}, "
           f"`--precision {first['precision']}`) (ms, medians; ratio = dense / SLoPe with its IQR-derived spread; "
           "† = cross-run: the dense row is from another run; the dense column is the last run's). The *in situ* "
           "rows are the GPU time of the layers' own kernels in runs at 6943c33 and later; earlier runs timed CUDA "
           "events around each layer, which also counted the GPU idling while the host (slowed by the hooks) fell "
           "behind, and so overstated SLoPe's layers and understated its *other* rows. Dense: "
           + cites_text({cite_key(r) for r in dense_rows}) + ".", "",
           "| phase | dense | " + " | ".join(f"{h} | ratio" for h in heads) + " | ideal |",
           "|---|---|" + "---|---|" * len(steps) + "---|"]
    for phase in dense_phases:
        cells, dense_row, ideal = [], None, "—"
        for step in steps:
            row = same_run_row(inp, step, experiment="train", phase=phase)
            s = speedup_vs_dense(inp, row, cross_run=True) if row else None
            found = pair(select(inp.e2e, variant="dense"), [row], E2E_KEYS, True) if row else []
            dense_row = (found[0][0] if found else None) or dense_row  # the latest run's dense: runs are in order
            ideal = ideal if ideal != "—" else (row or {}).get("ideal") or "—"
            cells.append(f"{ms_text(row)} | {sample_cell(s)}")
        out.append(f"| {phase} | {ms_text(dense_row)} | " + " | ".join(cells) + f" | {ideal} |")
    return out + [""]


def claim_prefill(inp: Inputs) -> Claim:
    title = "Inference prefill speedup (end to end)"
    rows = select(inp.e2e, experiment="prefill", variant="slope", status="ok",
                  phase="forward (last-position logits)")
    if not rows:
        return Claim("P2", title, [Line("P2", "prefill, r=0", None, PREFILL_GOAL, f"≥ {PREFILL_GOAL}",
                                        absent=inp.absent("e2e"))])
    lines = []
    for row in rows:
        paper = paper_figure(inp, "speedup_inference", "0", row["model"])
        m = vs_dense(inp, row)
        why, bound = [f"ideal {row['ideal']}× ({row['ideal_basis']})"], None
        share, kernel = basis_share(row.get("ideal_basis", "")), layer_infer(inp, row["dtype"], 8192)
        if share and kernel:
            bound = amdahl(share, kernel.median)
            why.append(f"the layer-level kernel at 8192 tokens reaches {kernel.median:.3f}× ({row['dtype']}, "
                       f"{DEFAULT_LAYOUT}, median of {len(kernel.samples)}), which on {share:.1%} of the time "
                       f"allows {bound:.3f}× (derived)")
        lines.append(Line("P2", f"{row['model']} {row['dtype']} prefill, batch {row['batch']} × {row['seq']}, r=0",
                          m, PREFILL_GOAL, f"≥ {PREFILL_GOAL} (issue); {paper_text(paper)}", why="; ".join(why),
                          ceiling=numeric(row, "ideal"), bound=bound))
    return Claim("P2", title, lines)


WALL, BUSY, GRAPH = ("one token with KV cache", "one token with KV cache: GPU busy time",
                     "one token with KV cache: CUDA graph")


def claim_decode(inp: Inputs) -> Claim:
    title = "Decode never slower than dense"
    # eager: wall-clock of `model(...)` per token (host-bound at small batch); GPU busy: the sum of the step's
    # kernel times (profiler), i.e. the step with its launches free, as a CUDA-graph replay would have it
    how = {("slope", WALL): "eager", ("slope + dense fallback", WALL): "dense fallback",
           ("slope (cuSPARSELt decode)", WALL): "eager, cuSPARSELt only",
           ("slope (JIT dispatch)", WALL): "eager, few-token kernel launched through Triton's JIT",
           ("slope", BUSY): "GPU busy time", ("slope (cuSPARSELt decode)", BUSY): "GPU busy time, cuSPARSELt only",
           ("slope", GRAPH): "CUDA graph", ("slope (cuSPARSELt decode)", GRAPH): "CUDA graph, cuSPARSELt only"}
    rows = select(inp.e2e, experiment="decode", status="ok", phase=lambda p: p in (WALL, BUSY, GRAPH),
                  variant=lambda v: v in {variant for variant, _ in how})
    rows = [r for r in rows if (r["variant"], r["phase"]) in how]
    if not rows:
        return Claim("P3", title, [Line("P3", "decode", None, DECODE_GOAL, "≥ 1.0", absent=inp.absent("e2e"))])
    rows.sort(key=lambda r: (r["phase"], r["variant"], r["model"], int(r["batch"] or 0)))
    lines = [Line("P3", f"{r['model']} decode b={r['batch']}, {how[(r['variant'], r['phase'])]} ({r['dtype']})"
                        f"{mask_placement(r)}",
                  vs_dense(inp, r), DECODE_GOAL,
                  f"≥ {DECODE_GOAL} (issue)" + (f"; Amdahl ideal {r['ideal'] or '—'}×" if r["phase"] == WALL else ""),
                  ceiling=numeric(r, "ideal") if r["phase"] == WALL else None)
             for r in rows]
    details = ["How to read these lines: *eager* is the wall-clock time of one `model(...)` call per token. At "
               "small batch it is bound by the host issuing kernels, for dense and SLoPe alike, so it measures each "
               "layer's per-call host cost as much as its GPU work (one 1-token call, bench_inference "
               "`decode_host` rows: dense nn.Linear ~20-30 µs, the SLoPe layer ~70-150 µs at rank 0 and 140-490 µs "
               "with merged adapters while every few-token launch went through Triton's JIT dispatch; from 9c74647 "
               "`sparse_gemv.GemvPlan` launches the compiled kernels directly: 39-69 µs at rank 0 against 88-150 µs "
               "through the JIT in the same process, ae4c28e; end to end, alternating processes on one host, "
               "results/decode_dispatch_ab_h100.csv, the host's jitter was larger than the change). Eager rows of "
               "different commits also ran on different hosts: compare the dense rows before the ratios. *GPU busy "
               "time* is the sum "
               "of the step's kernel times (torch.profiler, same process, same step): the step with its launches "
               "free, as a CUDA-graph replay would have it. *CUDA graph* is the wall-clock time of the same step "
               "captured once in a CUDA graph and replayed, as serving engines run decode (static KV cache, "
               "explicit positions and mask; `e2e.graph_decode_fn`): the measured form of the GPU-busy figure, "
               "gaps between kernels included. Which kernel the SLoPe layers decode with: before commit "
               "57861b2 cuSPARSELt; at 57861b2 the few-token kernel (`slope.kernels.sparse_gemv`) in every layer; "
               "from ca6cdf5 on, per layer shape, whichever was faster when measured (`few_token_kernel_tokens="
               "\"auto\"`), timed back to back with host cost until 4937eff and on the GPU alone (CUDA-graph "
               "replay) from f48ffff; from 9854dec the kernel has its FMA form for one token; from a540681 its dot form "
               "(2+ tokens) reads the kept pairs as words and splits k towards 528 programs on narrow weights "
               "(results/sparse_gemv_variants_h100.md). The *cuSPARSELt only* "
               "lines are the same layers with that kernel off, in the same process.", ""]
    small = layer_infer(inp, rows[0]["dtype"], 16)
    graph = pair(select(inp.inference, benchmark="infer_graph", variant="dense F.linear", tokens="16"),
                 select(inp.inference, benchmark="infer_graph", variant="slope r0 untiled", tokens="16"), BENCH_KEYS)
    if small or graph:
        details.append("Why: a decode step feeds each linear `batch` tokens, where the sparse call does not pay. "
                       + (f"One layer at 16 tokens, eager, vs dense F.linear: {cited(small)}. " if small else "")
                       + ("The inference layer (r=0, untiled) replayed in a CUDA graph (no per-call host cost) at 16 "
                          f"tokens: {cited(measure(ratios(graph), 'shapes × runs'))}."
                          if graph else ""))
        details.append("")
    return Claim("P3", title, lines, details)


def claim_memory(inp: Inputs) -> Claim:
    title = "Memory vs dense (static state, end to end)"
    e2e = select(inp.e2e, experiment="memory", status="ok")
    lines, anchors = [], {}
    # half: 16-bit weights, grads and AdamW moments on the dense side; amp: fp32 optimizer state on both sides
    for precision in ("half", "amp"):
        rows = [r for r in select(e2e, phase="train static: total", precision=precision,
                                  variant=lambda v: v.startswith("slope")) if vs_dense(inp, r)]
        for r, runs in _distinct_memory(inp, rows, ("model", "num_blocks", "dtype", "precision")):
            paper = paper_figure(inp, "memory_training", "N/A", r["model"])
            lines.append(Line("P4", f"{r['model']} training static state ({r['dtype']}, `--precision {precision}`)",
                              vs_dense(inp, r), TRAIN_MEMORY_GOAL, f"≤ {TRAIN_MEMORY_GOAL} (issue); "
                              f"{paper_text(paper)}; analytic {r['ideal'] or '—'}", higher=False,
                              why=_memory_parts(inp, r) + _runs_text(runs)))
            anchors.setdefault((r["variant"], r["adapter_rank"], run_of(r)), r)
        if not rows:
            lines.append(Line("P4", f"training static state, `--precision {precision}`", None, TRAIN_MEMORY_GOAL,
                              f"≤ {TRAIN_MEMORY_GOAL} (issue)", higher=False, absent=inp.absent("e2e")))
    infer = select(e2e, phase="inference static (params + buffers)", variant=lambda v: v in (
        "slope", "slope merged adapters"))
    for r, runs in _distinct_memory(inp, infer, ("model", "num_blocks", "dtype", "precision", "variant",
                                                          "adapter_rank")):
        rank = r["adapter_rank"] or "0"
        paper = paper_figure(inp, "memory_inference", rank, r["model"])
        goal, goal_text = (INFER_MEMORY_GOAL, f"≤ {INFER_MEMORY_GOAL} (issue); storage ceiling "
                           f"{INFER_MEMORY_CEILING}; {paper_text(paper)}") if rank == "0" else \
            (paper, f"≤ {paper_text(paper)}")
        lines.append(Line("P4", f"{r['model']} inference static ({r['dtype']}), {r['variant']}"
                                f"{'' if rank == '0' else ' r=' + rank}{mask_placement(r)}",
                          vs_dense(inp, r), goal, goal_text, higher=False,
                          why=f"analytic {r['ideal'] or '—'} ({r['ideal_basis']})" + _runs_text(runs)))
        anchors.setdefault((r["variant"], r["adapter_rank"], run_of(r)), r)
    if not infer:
        lines.append(Line("P4", "inference static, r=0", None, INFER_MEMORY_GOAL, f"≤ {INFER_MEMORY_GOAL} (issue)",
                          higher=False, absent=inp.absent("e2e")))
    # the sparse-able linears alone (runs from the commit that measures them): the ratio the 0.5625 ceiling is of,
    # free of the truncated model's dense embeddings
    linears = select(e2e, phase="inference static, sparse-able linears", variant="slope")
    for r, runs in _distinct_memory(inp, linears, ("model", "num_blocks", "dtype", "precision")):
        lines.append(Line("P4", f"{r['model']} inference static ({r['dtype']}), slope, sparse-able linears only"
                                f"{mask_placement(r)}",
                          vs_dense(inp, r), INFER_MEMORY_GOAL, f"≤ {INFER_MEMORY_GOAL} (issue); storage ceiling "
                          f"{INFER_MEMORY_CEILING}", higher=False,
                          why=f"analytic {r['ideal'] or '—'} ({r['ideal_basis']})" + _runs_text(runs)))
    return Claim("P4", title, lines, _memory_table(inp, list(anchors.values())))


_MASKS_NOTE = re.compile(r"masks: cuSPARSELt's metadata only in (\d+) of (\d+) layers")  # e2e.masks_note


def mask_placement(row: dict) -> str:
    """Where the inference layers of a run kept their masks (`SLoPeInferenceLinear`'s ``separate_mask``), as a
    subject suffix, so that runs of the two storage layouts are separate configurations (they differ in bytes and
    in the few-token kernel); empty for runs from before the note said (every layer then kept a mask copy)."""
    found = _MASKS_NOTE.search(row.get("note") or "")
    if not found:
        return ""
    in_metadata, layers = map(int, found.groups())
    if in_metadata == 0:
        return ", mask copies"
    if in_metadata == layers:
        return ", masks in cuSPARSELt's metadata"
    return f", masks in cuSPARSELt's metadata in {in_metadata} of {layers} layers"


def _distinct_memory(inp: Inputs, rows: list[dict], keys: tuple[str, ...]) -> list[tuple[dict, list[dict]]]:
    """Static state is a count, not a timing: every run of the same configuration measures the same bytes (the
    W_RCᵀ mask frequency changes none). One line per configuration and distinct ratio (the latest run's row),
    with the runs that share it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        ratio = vs_dense(inp, r)
        groups.setdefault(tuple(r[k] for k in keys) + (round(ratio.median, 4) if ratio else None,), []).append(r)
    measured = {key[:-1] for key in groups if key[-1] is not None}
    return [(max(runs, key=lambda r: r.get("date", "")), runs) for key, runs in groups.items()
            if key[-1] is not None or key[:-1] not in measured]  # a run without its dense partner adds nothing


def _runs_text(runs: list[dict]) -> str:
    if len(runs) == 1:
        return ""
    shas = list(dict.fromkeys(r["git_sha"][:7] for r in sorted(runs, key=lambda r: r.get("date", ""))))
    return f"; the same ratio in {len(runs)} runs ({shas[0]} … {shas[-1]})" if len(shas) > 1 else \
        f"; the same ratio in {len(runs)} runs at {shas[0]}"


# A component whose dense counterpart is this small (e.g. LLaMA's rotary buffers) gets bytes, not a ratio
TINY_DENSE_BYTES = 1e7


def _memory_parts(inp: Inputs, total: dict) -> str:
    """Each static component of the same run against dense: which part keeps the total above the goal."""
    out = []
    for r in select(inp.e2e, experiment="memory", variant=total["variant"], phase=lambda p: p.startswith(
            "train static: ") and p != "train static: total"):
        if run_of(r) == run_of(total):
            s = speedup_vs_dense(inp, r)
            dense = pair(select(inp.e2e, variant="dense", status="ok"), [r], E2E_KEYS)
            dense_bytes = float(dense[0][0]["median"]) if dense else 0.0
            name = r["phase"].split(": ", 1)[1]
            out.append(f"{name} {s.value:.3f}×" if s and dense_bytes >= TINY_DENSE_BYTES else
                       f"{name} {gb_text(r)} GB (dense: {dense_bytes / 1e9:.2f})")
    return ", ".join(out)


def _memory_table(inp: Inputs, anchors: list[dict]) -> list[str]:
    """Each memory row of the anchors' runs and variants beside dense: where the bytes go."""
    if not anchors:
        return []
    out = ["Where the bytes go (GB; ratio = variant / dense, same run):", "",
           "| variant | row | dense | variant | ratio | analytic | paper | rests on |", "|---" * 8 + "|"]
    for a in anchors:
        for r in select(inp.e2e, experiment="memory", variant=a["variant"], adapter_rank=a["adapter_rank"]):
            if run_of(r) != run_of(a):
                continue
            s = speedup_vs_dense(inp, r)
            dense = pair(select(inp.e2e, variant="dense"), [r], E2E_KEYS)
            out.append(f"| {r['variant']} {r['adapter_rank']} ({r['dtype']}, {r['precision']}) | {r['phase']} "
                       f"| {gb_text(dense[0][0] if dense else None)} | {gb_text(r)} | {'—' if s is None else f'{s.value:.3f}'} | {r['ideal'] or '—'} "
                       f"| {r['paper'] or '—'} | {cite(r)} |")
    return out + [""]
