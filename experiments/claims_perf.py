"""The performance part of ``results/CLAIMS.md``: the paper's speed and memory claims against our GPU CSVs.

``experiments.claims`` calls `render(results)`; nothing here runs a benchmark. This module orders the claims,
checks the CSVs themselves and renders; the claims live in `claims_perf_e2e` (P1–P4: step, prefill, decode,
memory) and `claims_perf_layers` (P5–P9: tiling, merged adapters, layers, the seed's notes, coverage), the
inputs, goals and shared helpers in `claims_perf_inputs`. Inputs, each optional (a missing file makes its claims
"not run"):

* ``speedup_<gpu>.csv``        end to end (`performance_experiments/speedup.py`): train step and phases, prefill,
                               decode, static and peak memory of a truncated model, dense and SLoPe variants
* ``bench_linear_<gpu>.csv``   one linear layer: fwd+bwd, inference by token count, host time, optimizer
* ``bench_inference_<gpu>.csv`` inference layers: tiling, merged adapters, Triton vs torch, CUDA graphs
* ``ablations_<gpu>.csv``      model-level switches on vs off (`performance_experiments/ablations.py`): P10 in
                               `claims_perf_ablations`
* ``speedup_<other gpu>.csv``  end to end on another GPU (the lent H200): P11 in `claims_perf_gpus`, the same
                               builders as P1–P4, its own lines
* ``paper_reference.csv``      the paper's figures (goals where the paper's number *is* the goal)

How a number is made (all from CSV rows; nothing measured is written in this file; the generic machinery —
pairing, samples, measures, verdicts, citations — lives in `experiments.perf_evidence`):

* A **sample** is one run's ratio of two rows, e.g. dense step time / SLoPe step time. The two rows are *paired*:
  same configuration fields, same run (commit + dirty flag + config hash + command), the nearest row in file
  order. Where the same run has no partner (e.g. the ``--mask-change-freq 100`` train run, which measured SLoPe
  only), the partner comes from another run and the sample is labelled **cross-run**.
* A sample's spread is each side's median ± half its IQR (the repeats of that run), combined at the extremes.
* A **measure** pools samples (runs, or runs × shapes): its number is the median of the sample values; its spread
  is the min–max of the sample values when there are several, else the one sample's IQR-derived interval.
* **Verdict** against a goal in the claimed direction: met if the whole spread is on the goal's side, missed if the
  whole spread is on the other side (by goal − median, also as a fraction of the goal), otherwise borderline; no
  sample: not measured. For the seed's notes the same rule reads confirmed / refuted / mixed. A speedup whose
  median is > 5% above the row's own ideal (Amdahl) figure is "suspect", not met: its reference row was disturbed.
* Every number carries device, commit (short sha, "+dirty" for a dirty tree) and date of the rows behind it.

Runs at different commits are pooled (their disagreement is part of the spread), except where a claim says the
measured code changed between the runs (the optimizer): then the newest run decides and older runs are listed.
"""
from __future__ import annotations

from pathlib import Path

from .claims_perf_ablations import claim_ablations
from .claims_perf_e2e import claim_decode, claim_memory, claim_prefill, claim_training
from .claims_perf_gpus import claim_other_gpus
from .claims_perf_inputs import E2E_KEYS, GPU, Inputs, load, speedup_vs_dense
from .claims_perf_layers import claim_coverage, claim_layer, claim_merged, claim_notes, claim_tiling
from .perf_evidence import cite, Claim, describe, Line, numeric, run_of, select

CLAIM_BUILDERS = (claim_training, claim_prefill, claim_decode, claim_memory, claim_tiling, claim_merged, claim_layer,
                  claim_notes, claim_coverage, claim_ablations, claim_other_gpus)


# ----- checks on the CSVs themselves ---------------------------------------------------------------------------
def csv_checks(inp: Inputs) -> list[str]:
    """Things in the inputs a reader should know before trusting a ratio: each found from the rows."""
    out = []
    for r in select(inp.e2e, status="ok", variant=lambda v: v != "dense", metric=lambda m: m in ("time", "bytes")):
        s, stored = speedup_vs_dense(inp, r), numeric(r, "ratio_vs_dense")
        if s and stored is not None and abs(s.value - stored) > 0.01 * stored:
            out.append(f"`{inp.names['e2e']}`: {r['variant']} / {r['phase']} stores ratio {stored} but its "
                       f"same-run dense row gives {s.value:.4f} [{cite(r)}]")
    lonely = {(r["variant"], cite(r), r["command"]) for r in select(inp.e2e, status="ok", experiment="train")
              if r["variant"] != "dense" and not speedup_vs_dense(inp, r)}
    for variant, where, command in sorted(lonely):
        out.append(f"`{inp.names['e2e']}`: the run `{command}` [{where}] measured no dense model and stores no "
                   f"ratio for \"{variant}\": its ratios here are cross-run against another run's dense rows")
    for r in select(inp.e2e, ideal_basis=lambda b: "failed" in b, phase="step"):
        if select([x for x in inp.e2e if run_of(x) == run_of(r)], phase=lambda p: "(in situ)" in p):
            out.append(f"`{inp.names['e2e']}`: \"{r['variant']}\" says \"{r['ideal_basis']}\" but the same run has "
                       f"in-situ phase rows [{cite(r)}]")
    out += _unstable_baselines(inp)
    for source in ("e2e", "linear", "inference"):
        dirty = sorted({r["git_sha"][:7] for r in getattr(inp, source) or [] if r.get("git_dirty") == "True"})
        if dirty:
            out.append(f"`{inp.names[source]}`: rows at {', '.join(dirty)} were measured on a dirty tree (the code "
                       "measured is that commit plus uncommitted changes)")
    baselines = {}
    for r in select(inp.inference, benchmark="infer_layer", variant=lambda v: v.startswith("dense")):
        baselines.setdefault(r["variant"], set()).add(r["git_sha"][:7])
    if len(baselines) > 1:
        out.append(f"`{inp.names['inference']}`: eager layer ratios use different dense baselines by run ("
                   + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(baselines.items()))
                   + "); the claims here compare SLoPe variants within a run or use the graph rows")
    crossover = select(inp.inference, benchmark="crossover")
    if any(numeric(r, "median") == 0 and r["tokens"] not in ("", "0") for r in crossover):
        out.append(f"`{inp.names['inference']}`: crossover rows keep the crossover in `tokens` "
                   f"({', '.join(sorted({r['tokens'] for r in crossover}, key=int))}) while `median` is 0, which "
                   "the rows' own note reads as \"sparse never slower\"")
    return out


def _unstable_baselines(inp: Inputs, tolerance: float = 0.25) -> list[str]:
    """Dense timings of one configuration that moved by more than ``tolerance`` between runs: the ratios of those
    runs then disagree for a reason that is not SLoPe (host load, clocks, warm-up)."""
    by_config: dict[tuple, list[dict]] = {}
    for r in select(inp.e2e, variant="dense", status="ok", metric="time"):
        by_config.setdefault(tuple(r.get(k, "") for k in E2E_KEYS), []).append(r)
    out = []
    for rows in by_config.values():
        values = [(numeric(r, "median"), r) for r in rows if numeric(r, "median")]
        if len({run_of(r) for _, r in values}) < 2:
            continue
        (low, r), (high, high_row) = min(values, key=lambda v: v[0]), max(values, key=lambda v: v[0])
        if high > (1 + tolerance) * low:
            out.append(f"`{inp.names['e2e']}`: dense {r['experiment']} / {r['phase']} (batch {r['batch']}, "
                       f"{r['dtype']}) took {low:g} ms [{cite(r)}] and {high:g} ms [{cite(high_row)}] in different "
                       f"runs ({high / low:.2f}×): the runs' ratios for it disagree for a reason outside SLoPe")
    return out


# ----- output ---------------------------------------------------------------------------------------------------
RULE = [
    "- A number is a ratio of two CSV rows of the same run (dense time / SLoPe time; memory: SLoPe / dense); where "
    "the run measured no partner, the partner comes from another run and the number is labelled **cross-run**.",
    "- One run: the number is the ratio of medians; its spread combines each side's median ± IQR/2 at the extremes. "
    "Several runs (or runs × shapes): the median of the per-run ratios, spread = their min–max.",
    "- **met** if the whole spread is on the goal's side; **missed** if the whole spread is on the other side (by "
    "goal − median, and that as a fraction of the goal); otherwise **borderline (spread straddles the goal)**; no "
    "rows: **not measured** (no CSV: **not run**). The seed's notes read confirmed / refuted / mixed by the same rule.",
    "- A speedup whose median is more than 5% above the row's ideal (Amdahl) figure is **suspect**, never met: "
    "nothing runs faster than its ideal, so the reference row of that run was disturbed.",
    "- Runs at different commits are pooled; only where the measured code changed between runs (the optimizer) does "
    "the newest run decide, the older ones listed.",
    "- Goals are the performance issue's, or the paper's figure where the issue takes it as the goal "
    "(`results/paper_reference.csv`, A100-40GB, OPT-13B rows); the paper ran a full model with FlashAttention-2, "
    "we run a truncated one (blocks in the subject) with PyTorch SDPA.",
]


def render_claims(inp: Inputs, claims: list[Claim]) -> list[str]:
    present = [f"`{n}`" for k, n in inp.names.items() if getattr(inp, k) is not None]
    out = ["## Performance claims", "",
           f"Generated by `experiments/claims_perf.py` from {', '.join(present) or 'no performance CSV (not run)'} "
           "and `paper_reference.csv`. Every number cites device · commit · date of its rows.", "",
           "### Verdict rule (performance)", "", *RULE, "",
           "### Summary", "", SUMMARY_NOTE, "",
           "| # | subject | ours, newest run: median (spread) | earlier runs | the kernels allow | goal | verdict | "
           "rests on |", "|---|---|---|---|---|---|---|---|"]
    for claim in claims:
        for line, earlier in current(claim.lines):
            ours = describe(line.measure, line.unit)
            before = (f"{len(earlier)}: {min(e.measure.median for e in earlier):.3f}–"
                      f"{max(e.measure.median for e in earlier):.3f}" if earlier else "—")
            bound = f"{line.bound:.3f}×" if line.bound else "—"
            out.append(f"| {line.key} | {line.subject} | {ours} | {before} | {bound} | {line.goal_text} | "
                       f"**{line.verdict}** | {line.measure.cites if line.measure else '—'} |")
    out.append("")
    for claim in claims:
        out += [f"### {claim.key}. {claim.title}", "", "Every run, oldest first.", ""]
        out += [f"- {line.subject}: {describe(line.measure, line.unit)}; goal {line.goal_text}: **{line.verdict}**"
                + (f". Why / context: {line.why}" if line.why else "") + "." for line in claim.lines] + [""]
        out += claim.details
    checks = csv_checks(inp)
    out += ["### Checks on the CSVs", "", *(f"- {c}." for c in checks or ["nothing found"]), ""]
    return out


SUMMARY_NOTE = (
    "One row per configuration: its newest run (the code improved between runs; every run is listed under its "
    "claim below). *Earlier runs*: how many, and the range of their medians. *The kernels allow*: the speedup "
    "Amdahl gives with the cuSPARSELt GEMMs' own measured speedup (`bench_linear`) on the linears' measured share "
    "of the dense time — where the goal is above it, no work outside the sparse kernels can meet the goal.")


def current(lines: list[Line]) -> list[tuple[Line, list[Line]]]:
    """(newest measured line, the earlier measured ones) per configuration (`Line.group`, else the subject), in
    first-seen order; a configuration never measured keeps its last line."""
    groups: dict[str, list[Line]] = {}
    for line in lines:
        groups.setdefault(line.group or line.subject, []).append(line)
    out = []
    for members in groups.values():
        measured = [m for m in members if m.measure]
        if not measured:
            out.append((members[-1], []))
            continue
        latest = max(measured, key=lambda m: max(s.when for s in m.measure.samples))
        out.append((latest, [m for m in measured if m is not latest]))
    return out


def build(results: Path, gpu: str = GPU) -> tuple[str, list[Claim]]:
    inp = load(results, gpu)
    claims = [builder(inp) for builder in CLAIM_BUILDERS]
    return "\n".join(render_claims(inp, claims)), claims


def render(results: Path) -> str:
    """The markdown section for CLAIMS.md (``experiments.claims`` appends it)."""
    return build(results)[0]
