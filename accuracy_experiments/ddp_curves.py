"""Data-parallel pretraining curves (``make figures`` -> ddp_losses.png), from `experiments.ddp_check`'s exports.

``results/ddp_losses/<scale>/<method>/<run>.csv`` holds each run's training loss per step, where ``<run>`` is
``1proc``, ``<N>proc`` (same global batch on N processes), ``killed<N>_resumed<M>`` (an N-process run SIGKILLed
mid-way and resumed on M), or a throughput-only run, not drawn: ``weak<N>proc`` (N times the batch) and the extra
``*_pair<K>`` runs of ``--throughput-pairs``. One column per
method: the curves on top, and below, each run's relative gap |loss − reference| / reference per step — the
N-process run against one process, the resumed runs against the uninterrupted N-process run — beside the
issue's 1% goal.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from matplotlib.figure import Figure

SCALES = ("paper", "small", "tiny")  # largest first
GOAL = 0.01
_MANY = re.compile(r"^(\d+)proc$")
_RESUMED = re.compile(r"^killed(\d+)_resumed(\d+)$")


def load_losses(path: Path) -> dict[int, float]:
    with path.open(newline="") as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f)}


def reference_of(run: str) -> str | None:
    """The run a curve is compared with: 1 process for ``Nproc``, the N-process run for a resumed one."""
    if (many := _MANY.match(run)) and many[1] != "1":
        return "1proc"
    if resumed := _RESUMED.match(run):
        return f"{resumed[1]}proc"
    return None


def throughput_only(run: str) -> bool:
    return run.startswith("weak") or "_pair" in run


def fig_ddp_losses(results: Path) -> Figure | None:
    root = next((results / "ddp_losses" / s for s in SCALES if any((results / "ddp_losses" / s).glob("*/*.csv"))),
                None)
    if root is None:
        return None
    methods = sorted(p.name for p in root.iterdir() if p.is_dir())
    fig = Figure(figsize=(5 * len(methods), 6.5), layout="constrained")
    axes = fig.subplots(2, len(methods), squeeze=False, sharex="col")
    for column, method in enumerate(methods):
        curves = {p.stem: load_losses(p) for p in sorted((root / method).glob("*.csv")) if not throughput_only(p.stem)}
        top, bottom = axes[0][column], axes[1][column]
        for run, losses in curves.items():
            steps = sorted(losses)
            top.plot(steps, [losses[s] for s in steps], lw=1, label=run)
            reference = curves.get(reference_of(run) or "")
            if reference:
                shared = [s for s in steps if s in reference]
                bottom.plot(shared, [abs(losses[s] - reference[s]) / abs(reference[s]) for s in shared], lw=1,
                            label=f"{run} vs {reference_of(run)}")
        bottom.axhline(GOAL, color="k", ls="--", lw=1, label="goal: 1%")
        bottom.set_yscale("log")
        top.set_title(f"{method} ({root.name} preset)")
        top.set_ylabel("training loss")
        bottom.set_ylabel("relative loss gap")
        bottom.set_xlabel("step")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.suptitle("Data-parallel pretraining: N processes vs 1, and SIGKILLed runs resumed")
    return fig
