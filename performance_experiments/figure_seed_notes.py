"""The seed's remaining performance notes as one figure (``make figures`` -> seed_notes.png), from
``results/seed_notes_<gpu>.csv`` (`performance_experiments.seed_notes`).

Three panels against token count, one line per (shape, dtype), the newest run of each point:

* in-place tiles vs the reference code's assigned ones (assigned time / in-place time: > 1 = writing in place wins),
* one CUDA stream per tile vs one stream, eager (> 1 = streams win),
* the same replayed in a CUDA graph, where the streams become parallel branches.
"""
from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

PANELS = (
    ("out_write", "tiled, in place (spmm_out)", "in place vs assigned tiles\n(assigned / in place)"),
    ("tile_streams", "tiled, one stream per tile", "one stream per tile, eager\n(one stream / streams)"),
    ("tile_streams", "tiled, one stream per tile (graph replay)",
     "one stream per tile, CUDA graph\n(one stream / streams)"),
)


def fig_seed_notes(rows: list[dict]) -> Figure | None:
    """None when no seed-notes rows with ratios exist (the CSV is absent or holds only probes)."""
    series: dict[tuple, dict[tuple, dict[int, float]]] = {}
    for r in rows:  # file order: a later run of the same point replaces an earlier one
        for panel, (benchmark, variant, _) in enumerate(PANELS):
            if r.get("benchmark") == benchmark and r.get("variant") == variant and r.get("speedup_vs_dense"):
                line = series.setdefault(panel, {}).setdefault((r["shape"], r["dtype"]), {})
                line[int(r["tokens"])] = float(r["speedup_vs_dense"])
    if not series:
        return None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    for panel, ax in enumerate(axes):
        for (shape, dtype), points in sorted(series.get(panel, {}).items()):
            tokens = sorted(points)
            ax.plot(tokens, [points[t] for t in tokens], marker="o", label=f"{shape} {dtype}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ticks = sorted({t for points in series.get(panel, {}).values() for t in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("tokens")
        ax.set_title(PANELS[panel][2], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ratio (> 1: the first named wins)")
    if axes[0].get_legend_handles_labels()[0]:  # the first panel may have no rows (a partial CSV)
        axes[0].legend(fontsize=7)
    devices = sorted({r.get("device", "") for r in rows if r.get("device")})
    fig.suptitle(f"The seed's performance notes, measured ({', '.join(devices)})", fontsize=10)
    return fig


def load_rows(results: str | Path) -> list[dict]:
    """Rows of every ``seed_notes_*.csv`` under ``results`` (each row names its device)."""
    rows = []
    for path in sorted(Path(results).glob("seed_notes_*.csv")):
        with path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows
