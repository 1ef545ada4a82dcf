"""Performance claim P10 from ``ablations_<gpu>.csv`` (`performance_experiments.ablations`): each model-level switch
on vs off in one run, as setting time / baseline time inverted (> 1: the setting is faster).

A row names its ``setting`` and the ``baseline_setting`` it is compared with; the pair is the baseline row of the
same run and configuration (ablation, model, blocks, dtype, experiment, variant, batch, tokens). One line per
(ablation, setting, variant, experiment), since a switch can help decode and hurt training (CUDA graphs): decode's
batch sizes (and repeated runs) pooled into a median with their min–max, the per-configuration ratios listed under
the table. A switch the GPU refuses (CUTLASS on sm_90) keeps its refusal as the line's verdict.
"""
from __future__ import annotations

from .claims_perf_inputs import Inputs, NOT_GOAL
from .perf_evidence import Claim, Line, measure, pair, ratio, select

ABLATION_KEYS = ("ablation", "model", "num_blocks", "dtype", "experiment", "variant", "batch", "tokens")
WHAT = {
    "tiling": "square tiles vs untiled inference layers",
    "implementation": "the cached cuSPARSELt extension vs torch's private `_cslt_sparse_mm`",
    "cutlass": "the CUTLASS backend",
    "cuda_graph": "the step captured in a CUDA graph and replayed vs eager",
    "addmm": "merged-adapter addmm through {setting} vs torch",
    "dense_fallback": "the dense path below the measured crossover vs always sparse",
    "attention": "SLoPe vs dense with {variant} (the paper's headline is against FlashAttention, sdpa)",
}


def _where(row: dict) -> str:
    return f"b={row['batch'] or row['tokens']}" if row["experiment"].startswith("decode") else f"{row['tokens']} tokens"


def claim_ablations(inp: Inputs) -> Claim:
    title = "Model-level ablations (each switch on vs off in one run)"
    rows = inp.ablations or []
    if not rows:
        return Claim("P10", title, [Line("P10", "ablations", None, NOT_GOAL, "≥ 1", absent=inp.absent("ablations"))])
    lines, details = [], []
    groups = dict.fromkeys((r["ablation"], r["setting"], r["variant"], r["experiment"]) for r in rows
                           if r["setting"] != r["baseline_setting"])
    for ablation, setting, variant, experiment in groups:
        mine = select(rows, ablation=ablation, setting=setting, variant=variant, experiment=experiment)
        first = mine[0]
        subject = (f"{first['model']} ({first['num_blocks']} blocks, {first['dtype']}) {ablation}: "
                   + WHAT.get(ablation, f"{setting} vs {first['baseline_setting']}").format(setting=setting,
                                                                                            variant=variant)
                   + ("" if ablation == "attention" else f" ({variant})") + (f", {experiment}" if experiment else ""))
        refused = [r for r in mine if r["status"] != "ok"]
        if refused:
            lines.append(Line("P10", subject, None, None, "—", note=True,
                              absent=f"{refused[0]['status']} ({refused[0]['note'].split(';')[0]})"))
            continue
        pairs = pair(select(rows, ablation=ablation, setting=first["baseline_setting"], status="ok"),
                     [r for r in mine if r["status"] == "ok"], ABLATION_KEYS)
        per_config = [(v, ratio(base, v)) for base, v in pairs]
        per_config = [(v, s) for v, s in per_config if s is not None]
        lines.append(Line("P10", subject, measure([s for _, s in per_config], "configurations × runs"), NOT_GOAL,
                          "≥ 1 (faster than the baseline setting)", note=True, absent=inp.absent("ablations")))
        if len(per_config) > 1:
            details.append(f"- {subject}: " + "; ".join(f"{_where(v)} {s.value:.3f}×" for v, s in per_config))
    return Claim("P10", title, lines, details + [""] if details else [])
