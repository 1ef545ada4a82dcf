"""Inputs of the performance claims: the result CSVs, the goals, and the helpers every claim uses (ratios vs
the dense row of the same run, paper figures, Amdahl bounds, layer-level measures). See `experiments.claims_perf`
for how a number is made."""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from .perf_evidence import (describe, measure, Measure, NOT_MEASURED, NOT_RUN, pair, ratios, read_rows, run_of, Sample,
                            select)


GPU = "h100"
FILES = {"e2e": "speedup_{gpu}.csv", "linear": "bench_linear_{gpu}.csv", "inference": "bench_inference_{gpu}.csv",
         "ablations": "ablations_{gpu}.csv"}
# Read from every GPU that has the file (each row cites its device): the seed's remaining notes
# (`performance_experiments/seed_notes.py`) and the data-parallel training step (`speedup_ddp.py`, 2 GPUs).
ANY_GPU_FILES = {"notes": "seed_notes_*.csv", "ddp": "speedup_ddp_*.csv"}
# Goals of the performance issue where they are not the paper's own figure (the paper's figures are read from
# paper_reference.csv; the fallbacks below are used only when that file lacks the row).
PREFILL_GOAL = 1.55          # issue: prefill ≥ 1.55x (paper, OPT-13B on A100: 1.54x)
DECODE_GOAL = 1.0            # issue: decode never slower than dense
TRAIN_MEMORY_GOAL = 0.62     # issue: training static memory ≤ 0.62x dense
INFER_MEMORY_GOAL = 0.58     # issue: inference memory ≤ 0.58x dense
INFER_MEMORY_CEILING = 0.5625  # DESIGN.md §1: 2:4 16-bit keeps 1/2 the values + 2-bit metadata each = 9/16
TILING_PAPER_GAIN = 1.12     # DESIGN.md §1: tiling, "up to +12%" inference on the paper's A100
TRAIN_STEP_FALLBACK = 1.25   # paper_reference.csv speedup_training SLoPe opt-13b, if that row is missing
NOT_GOAL = 1.0               # "not slower" / "helps at all"
DEFAULT_LAYOUT = "layout0"   # slope/kernels/cusparselt.py DEFAULT_LAYOUT: the layout the library uses

E2E_KEYS = ("experiment", "model", "num_blocks", "dtype", "precision", "attention", "batch", "seq", "phase", "metric")
BENCH_KEYS = ("benchmark", "shape", "dtype", "tokens")


# ----- inputs -----------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    e2e: list[dict] | None
    linear: list[dict] | None
    inference: list[dict] | None
    paper: list[dict]
    names: dict[str, str]
    ablations: list[dict] | None = None
    notes: list[dict] | None = None
    ddp: list[dict] | None = None
    e2e_other: dict[str, list[dict]] | None = None  # gpu tag -> rows of speedup_<gpu>.csv, other GPUs (P11)

    def absent(self, source: str) -> str:
        return NOT_MEASURED if getattr(self, source) is not None else f"{NOT_RUN} (no `{self.names[source]}`)"


def load(results: Path, gpu: str = GPU) -> Inputs:
    names = {k: v.format(gpu=gpu) for k, v in FILES.items()}
    rows = {k: read_rows(results / n) for k, n in names.items()}
    for key, pattern in ANY_GPU_FILES.items():
        paths = sorted(results.glob(pattern))
        names[key] = ", ".join(p.name for p in paths) or pattern
        found = [read_rows(p) for p in paths]
        rows[key] = [r for part in found for r in part] if found else None
    paper = read_rows(results / "paper_reference.csv") or []
    other = {}
    for path in sorted(results.glob("speedup_*.csv")):
        tag = path.stem.removeprefix("speedup_")
        if tag != gpu and not tag.startswith("ddp_") and (found := read_rows(path)):
            other[tag] = found
    return Inputs(rows["e2e"], rows["linear"], rows["inference"], paper, names, rows["ablations"], rows["notes"],
                  rows["ddp"], other or None)


def paper_figure(inp: Inputs, table: str, rank: str, model: str) -> float | None:
    hit = select(inp.paper, table=table, method="SLoPe", adapter_rank=rank, task=model)
    return float(hit[0]["value"]) if hit else None


def basis_share(ideal_basis: str) -> float | None:
    """The sparse-able linears' share of the dense time, from the row's Amdahl note ("... 68.2% of ...")."""
    found = re.search(r"(\d+(?:\.\d+)?)% of", ideal_basis)
    return float(found.group(1)) / 100 if found else None


def linear_share(inp: Inputs, dense_step: dict) -> float | None:
    """The sparse-able linears' share of a dense train step, from the same run's in-situ FWD and BWD rows."""
    parts = [r for r in select(inp.e2e, variant="dense", experiment="train", phase=lambda p: p.startswith("linear "))
             if run_of(r) == run_of(dense_step)]
    return sum(float(r["median"]) for r in parts) / float(dense_step["median"]) if parts else None


def amdahl(share: float, speedup: float) -> float:
    return 1 / ((1 - share) + share / speedup)


def cited(m: Measure | None, unit: str = "×") -> str:
    return "not measured" if m is None else f"{describe(m, unit)} [{m.cites}]"


def paper_text(figure: float | None) -> str:
    return f"paper (A100) {figure:g}" if figure is not None else "no paper figure"


def ms_text(row: dict | None) -> str:
    return f"{float(row['median']):.2f}" if row else "—"


def gb_text(row: dict | None) -> str:
    return f"{float(row['median']) / 1e9:.2f}" if row else "—"


def sample_cell(s: Sample | None) -> str:
    return "—" if s is None else f"{s.value:.3f} ({s.lo:.3f}–{s.hi:.3f}){' †' if s.cross_run else ''}"


def speedup_vs_dense(inp: Inputs, row: dict, cross_run: bool = False) -> Sample | None:
    """dense time / this row's time (memory rows: this row / dense), dense from the same run if it has one."""
    dense = select(inp.e2e, variant="dense", status="ok")
    found = pair(dense, [row], E2E_KEYS, cross_run)
    if not found:
        return None
    return (ratios(found, flip=row["experiment"] == "memory") or [None])[0]


def vs_dense(inp: Inputs, row: dict, cross_run: bool = False) -> Measure | None:
    return measure([s for s in [speedup_vs_dense(inp, row, cross_run)] if s])


def same_run_row(inp: Inputs, row: dict, **equal) -> dict | None:
    hits = [r for r in select(inp.e2e, variant=row["variant"], **equal) if run_of(r) == run_of(row)]
    return hits[0] if hits else None


def mask_freq(row: dict) -> int:
    found = re.search(r"--mask-change-freq[ =](\d+)", row.get("command", ""))
    return int(found.group(1)) if found else 1  # the speedup harness's default: every step (the paper's)


# ----- layer-level helpers (bench_linear) --------------------------------------------------------------------------
def layer_pairs(inp: Inputs, benchmark: str, base: str, variant: str, **equal) -> list[tuple]:
    return pair(select(inp.linear, benchmark=benchmark, variant=base, **equal),
                select(inp.linear, benchmark=benchmark, variant=variant, **equal), BENCH_KEYS)


def layer_infer(inp: Inputs, dtype: str, tokens) -> Measure | None:
    """Forward of the library's default cuSPARSELt layout vs dense F.linear, pooled over shapes × runs."""
    want = tokens if callable(tokens) else (lambda t: t == str(tokens))
    found = layer_pairs(inp, "infer", "dense F.linear", f"slope spmm {DEFAULT_LAYOUT}", dtype=dtype, tokens=want)
    return measure(ratios(found), "shapes × runs")


def small_tokens(inp: Inputs, dtype: str) -> Measure | None:
    found = layer_infer(inp, dtype, lambda t: t.isdigit() and 16 <= int(t) <= 256)
    return Measure(found.samples, "shapes × tokens × runs") if found else None


def layer_ceiling(inp: Inputs, dtype: str) -> float | None:
    """Median of the cuSPARSELt-bound fwd+bwd ceiling each fwd+bwd row's note gives (from its measured phases)."""
    notes = [re.search(r"ceiling from measured phases: ([\d.]+)x", r["note"])
             for r in select(inp.linear, benchmark="train", variant="slope compressed fwd+bwd", dtype=dtype)]
    values = [float(n.group(1)) for n in notes if n]
    return statistics.median(values) if values else None
