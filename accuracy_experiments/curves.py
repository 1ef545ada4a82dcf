"""Pretraining loss curves of the accuracy tables as one figure (``make figures`` -> pretraining_curves.png).

The table runners keep every run's curve beside its scores: ``results/gpt2_losses/<scale>/<row>_seed<s>.csv`` and
``results/bert_losses/<scale>/<run>_seed<s>.csv`` (step, train_loss, val_loss, lr). Here each row's validation
loss is drawn against the step, the mean over its seeds as a line and the seeds' min–max as a band, one panel
per model at the largest scale that has curves — the picture behind the tables' ``final_val_loss`` column.
"""
from __future__ import annotations

import csv
import re
import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

SCALES = ("paper", "small", "tiny")  # largest first
PANELS = (("gpt2_losses", "GPT-2"), ("bert_losses", "BERT (MLM)"))
_SEED = re.compile(r"^(?P<row>.+)_seed(?P<seed>\d+)$")


def load_curves(folder: Path) -> dict[str, dict[int, list[float]]]:
    """{row: {step: [validation loss per seed]}} from a folder of ``<row>_seed<s>.csv`` files."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("*_seed*.csv")):
        match = _SEED.match(path.stem)
        if not match:
            continue
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if r.get("val_loss"):
                    curves[match["row"]][int(r["step"])].append(float(r["val_loss"]))
    return curves


def largest_scale(results: Path, folder: str) -> str | None:
    return next((s for s in SCALES if any((results / folder / s).glob("*_seed*.csv"))), None)


def fig_pretraining_curves(results: Path) -> Figure | None:
    panels = [(title, scale, load_curves(results / folder / scale)) for folder, title in PANELS
              if (scale := largest_scale(results, folder))]
    if not panels:
        return None
    fig = Figure(figsize=(7 * len(panels), 4.2), layout="constrained")
    for ax, (title, scale, curves) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for row, by_step in sorted(curves.items()):
            steps = sorted(by_step)
            values = [by_step[s] for s in steps]
            seeds = max(len(v) for v in values)
            (line,) = ax.plot(steps, [statistics.mean(v) for v in values], marker="o", ms=2,
                              label=f"{row} ({seeds} seed{'s' if seeds > 1 else ''})")
            if seeds > 1:
                ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15,
                                color=line.get_color())
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.set_title(f"{title} pretraining, {scale} scale (mean, band = min–max over seeds)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig
