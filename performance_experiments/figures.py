"""Figures from the result CSVs (``make figures`` -> results/figures/*.png); the notebooks call the same functions.

Each ``fig_*`` function takes rows (lists of dicts from `load_csv`) and returns a matplotlib ``Figure``, or None
when its data is absent — a missing CSV skips its figures, it never fails the target. Figures are built with
``matplotlib.figure.Figure`` (no pyplot state), so they render headless and display inline in a notebook.

* ``linear_inference``   bench_linear: SpMM speedup over dense ``F.linear`` vs token count, per shape and dtype
* ``linear_training``    bench_linear: linear forward+backward speedup per shape, beside the kernel ceiling and 1.5x
* ``layer_inference``    bench_inference: inference-layer speedup vs tokens (tiled / untiled, merged adapters)
* ``training_speedup``   speedup CSVs + the paper: training step speedup per model (SLoPe, FST), ours beside paper
* ``inference_speedup``  prefill speedup per model and adapter rank, ours beside the paper
* ``decode_speedup``     decode speedup vs batch per model
* ``memory``             training and inference static memory / dense per model, ours beside the paper
* ``train_breakdown``    where a training step's time goes (in-situ linear FWD/BWD, other, optimizer), per variant
* ``ablations``          ablations: each model-level switch's speed vs its baseline setting (log scale), per experiment
* ``pretraining_curves`` the accuracy tables' pretraining validation loss per row (`accuracy_experiments.curves`)
* ``ddp_losses``         data-parallel pretraining: N processes vs 1 and resumed runs, gap vs the 1% goal
* ``seed_notes``         the seed's notes: in-place vs assigned tiles, tiles on CUDA streams (`figure_seed_notes`)

Only rows measured on a GPU (``mode == "gpu"``) enter the end-to-end figures: CPU toy rows are pipeline checks.

    python -m performance_experiments.figures [--results results] [--out results/figures]
"""
from __future__ import annotations

import argparse
import csv
import math
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from accuracy_experiments.curves import fig_pretraining_curves
from accuracy_experiments.ddp_curves import fig_ddp_losses
from performance_experiments.figure_seed_notes import fig_seed_notes, load_rows as load_seed_notes

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ORDER = ("opt-2.7b", "opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "llama-3-8b", "mistral-7b")


def load_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV, or [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_speedup(results: str | Path) -> list[dict]:
    """GPU rows of every results/speedup_*.csv (CPU toy rows left out), of one GPU: the one with the most rows.

    One GPU because the figures keep the newest run per configuration (`latest`), and an H200 run must not stand
    in for the H100's; the other GPUs' rows are in CLAIMS.md (P11)."""
    rows = []
    for path in sorted(Path(results).glob("speedup_*.csv")):
        rows += [r for r in load_csv(path) if r.get("mode") == "gpu" and r.get("status") == "ok"]
    devices = Counter(r.get("device", "") for r in rows)
    return [r for r in rows if r.get("device", "") == devices.most_common(1)[0][0]] if devices else rows


def latest(rows: list[dict], key_fields: tuple[str, ...]) -> list[dict]:
    """For each key, the row of the most recent run (by ``date``): re-runs replace older numbers."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k, "") for k in key_fields)
        if key not in best or row.get("date", "") >= best[key].get("date", ""):
            best[key] = row
    return list(best.values())


# one bar / line per configuration: precision too, so an fp32-master (`amp`) run does not replace the 16-bit one
RUN_KEY = ("experiment", "model", "dtype", "precision", "variant", "adapter_rank", "phase", "batch")


def _precision(r: dict) -> str:
    return "" if r.get("precision") in (None, "", "half") else f" {r['precision']}"


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _models(rows, paper_rows=()) -> list[str]:
    present = {r["model"] for r in rows} | {r["task"] for r in paper_rows}
    return [m for m in MODEL_ORDER if m in present] + sorted(present - set(MODEL_ORDER))


def _bars(ax, groups: list[str], series: dict[str, dict[str, float]], ylabel: str) -> None:
    """Grouped bars: one group per x label, one bar per series (missing values leave a gap)."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [values.get(group, float("nan")) for group in groups]
        ax.bar(xs, heights, width, label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: no bar hidden
    ax.grid(axis="y", alpha=0.3)


def _paper(paper_rows, table: str, method: str, rank: str = "N/A") -> dict[str, float]:
    return {r["task"]: float(r["value"]) for r in paper_rows
            if r["table"] == table and r["method"] == method and r["adapter_rank"] == rank}


# ----- kernel-level figures ---------------------------------------------------------------------------------------

def fig_linear_inference(rows: list[dict]) -> Figure | None:
    rows = latest([r for r in rows if r.get("benchmark") == "infer" and _float(r.get("speedup_vs_dense"))],
                  ("shape", "dtype", "variant", "tokens"))
    if not rows:
        return None
    dtypes = sorted({r["dtype"] for r in rows})
    fig = Figure(figsize=(6 * len(dtypes), 4.2), layout="constrained")
    for ax, dtype in zip(fig.subplots(1, len(dtypes), squeeze=False)[0], dtypes):
        lines = defaultdict(list)
        for r in rows:
            if r["dtype"] == dtype:
                lines[(r["shape"], r["variant"].replace("slope spmm ", ""))].append(
                    (int(r["tokens"]), float(r["speedup_vs_dense"])))
        for (shape, variant), points in sorted(lines.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", ms=3, label=f"{shape} {variant}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.45, color="tab:green", ls="--", lw=0.8, label="goal 1.45x at 8192")
        ax.axhline(2.0, color="tab:gray", ls=":", lw=0.8, label="ideal 2x")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel("speedup over dense F.linear")
        ax.set_title(f"2:4 SpMM inference, {dtype}")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    return fig


def fig_linear_training(rows: list[dict]) -> Figure | None:
    rows = latest([r for r in rows if r.get("benchmark") == "train" and _float(r.get("speedup_vs_dense"))],
                  ("shape", "dtype", "variant"))
    if not rows:
        return None
    groups = sorted({f"{r['shape']}\n{r['dtype']}" for r in rows})
    measured, ceiling = {}, {}
    for r in rows:
        group = f"{r['shape']}\n{r['dtype']}"
        measured[group] = float(r["speedup_vs_dense"])
        if "phases: " in r.get("note", ""):
            ceiling[group] = _float(r["note"].split("phases: ")[1].split("x")[0])
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    _bars(ax, groups, {"measured": measured, "cuSPARSELt-bound ceiling": ceiling}, "speedup over dense nn.Linear")
    ax.axhline(1.5, color="tab:gray", ls=":", label="ideal 1.5x")
    ax.axhline(1.3, color="tab:green", ls="--", lw=0.8, label="goal 1.3x")
    ax.legend(fontsize=7)
    ax.set_title("SLoPe linear forward+backward, 8192 tokens")
    return fig


def fig_layer_inference(rows: list[dict]) -> Figure | None:
    rows = latest([r for r in rows if r.get("benchmark") == "infer_layer" and _float(r.get("speedup_vs_dense"))
                   and ("addmm=" not in r["variant"] or r["variant"].endswith("addmm=auto"))],
                  ("shape", "dtype", "variant", "tokens"))
    if not rows:
        return None
    shapes = sorted({r["shape"] for r in rows})
    fig = Figure(figsize=(6 * len(shapes), 4.2), layout="constrained")
    for ax, shape in zip(fig.subplots(1, len(shapes), squeeze=False)[0], shapes):
        lines = defaultdict(list)
        for r in rows:
            if r["shape"] == shape:
                lines[f"{r['variant'].replace(' addmm=auto', '')} {r['dtype']}"].append(
                    (int(r["tokens"]), float(r["speedup_vs_dense"])))
        for label, points in sorted(lines.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", ms=3, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel("speedup over dense F.linear (no adapters)")
        ax.set_title(f"inference layer: tiling, merged adapters — {shape}")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return fig


# ----- end-to-end figures -----------------------------------------------------------------------------------------

def _ours(rows, experiment, phase, variant_filter, extra=lambda r: True) -> dict[str, dict[str, float]]:
    """{series label: {model: ratio}} from speedup rows, one series per dtype."""
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in latest(rows, RUN_KEY):
        if r["experiment"] == experiment and r["phase"] == phase and variant_filter(r["variant"]) and extra(r) \
                and _float(r["ratio_vs_dense"]):
            series[f"{r['variant']} {r['dtype']}{_precision(r)} (ours, H100)"][r["model"]] = float(r["ratio_vs_dense"])
    return dict(series)


def fig_training_speedup(rows: list[dict], paper_rows: list[dict]) -> Figure | None:
    ours = _ours(rows, "train", "step", lambda v: v in ("slope", "fst (simulated)"))
    paper = {f"{m} (paper, A100)": _paper(paper_rows, "speedup_training", m) for m in ("SLoPe", "FST")}
    paper = {k: v for k, v in paper.items() if v}
    if not ours and not paper:
        return None
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    _bars(ax, _models(rows, [r for r in paper_rows if r["table"] == "speedup_training"]), {**ours, **paper},
          "training step speedup over dense")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_title("End-to-end training speedup" + ("" if ours else " (paper only: no GPU speedup CSV yet)"))
    return fig


def fig_inference_speedup(rows: list[dict], paper_rows: list[dict]) -> Figure | None:
    ranks = ("0", "1.56%", "6.25%")
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, len(ranks))
    drawn = False
    for ax, rank in zip(axes, ranks):
        ours = _ours(rows, "prefill", "forward (last-position logits)",
                     lambda v: v == "slope" or v.endswith("merged adapters") and "unmerged" not in v,
                     lambda r, rank=rank: r["adapter_rank"] == rank)
        paper = _paper(paper_rows, "speedup_inference", "SLoPe", rank)
        series = {**ours, **({"SLoPe (paper, A100)": paper} if paper else {})}
        if not series:
            continue
        drawn = True
        _bars(ax, _models(rows, [r for r in paper_rows if r["table"] == "speedup_inference"]), series,
              "prefill speedup over dense")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"inference, adapter rank {rank}")
    return fig if drawn else None


# decode phases drawn: the eager step (dashed: host-bound at small batch) and the CUDA-graph replayed step (solid)
DECODE_PHASES = {"one token with KV cache": ("eager", "--"), "one token with KV cache: CUDA graph": ("CUDA graph", "-")}


def fig_decode_speedup(rows: list[dict]) -> Figure | None:
    decode = [r for r in latest(rows, RUN_KEY)
              if r["experiment"] == "decode" and r["phase"] in DECODE_PHASES and r["variant"] != "dense"
              and _float(r["ratio_vs_dense"])]
    if not decode:
        return None
    models = _models(decode)
    columns = min(3, len(models))
    grid_rows = math.ceil(len(models) / columns)
    fig = Figure(figsize=(7.5 * columns, 3.6 * grid_rows), layout="constrained")
    axes = fig.subplots(grid_rows, columns, squeeze=False).ravel()
    for ax, model in zip(axes, models):  # one panel per model: every line is one variant at one dtype
        lines = defaultdict(list)
        for r in decode:
            if r["model"] == model:
                lines[(f"{r['dtype']}{_precision(r)} {r['variant']} r={r['adapter_rank']}", r["phase"])].append(
                    (int(r["batch"]), float(r["ratio_vs_dense"])))
        palette = matplotlib.colormaps["tab20"]  # up to 20 configurations per model without a repeated colour
        colors = {config: palette(i % 20) for i, config in enumerate(sorted({config for config, _ in lines}))}
        for (config, phase), points in sorted(lines.items()):  # one colour per configuration, its phases by style
            how, style = DECODE_PHASES[phase]
            points.sort()
            ax.plot(*zip(*points), style, color=colors[config], marker="o", ms=3, label=f"{config}, {how}")
        ax.axhline(1.0, color="k", lw=0.8, label="dense (goal: never below)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decode batch")
        ax.set_ylabel("speedup over dense")
        ax.set_title(f"decode, {model}")
        ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.suptitle("Decode: one token with a KV cache, SLoPe / dense (solid: CUDA-graph replay; dashed: eager)")
    return fig


def fig_memory(rows: list[dict], paper_rows: list[dict]) -> Figure | None:
    panels = (("training static state", "memory", "train static: total", "memory_training", "N/A"),
              ("inference static, rank 0", "memory", "inference static (params + buffers)", "memory_inference", "0"))
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    drawn = False
    for ax, (title, experiment, phase, table, rank) in zip(fig.subplots(1, 2), panels):
        ours = _ours(rows, experiment, phase, lambda v: v in ("slope", "fst (simulated)"),
                     lambda r, rank=rank: r["adapter_rank"] in (rank, "0"))
        paper = {f"{m} (paper)": _paper(paper_rows, table, m, rank) for m in ("SLoPe", "FST")}
        series = {**ours, **{k: v for k, v in paper.items() if v}}
        if not series:
            continue
        drawn = True
        _bars(ax, _models(rows, [r for r in paper_rows if r["table"] == table]), series, "memory / dense")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.5625, color="tab:gray", ls=":", lw=0.8, label="2:4 storage bound 9/16")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title)
    return fig if drawn else None


def fig_train_breakdown(rows: list[dict]) -> Figure | None:
    parts = ("linear FWD (in situ)", "linear BWD-1+BWD-2 (in situ)",
             "other forward (attention, norms, embeddings, head, loss)", "other backward", "optimizer")
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for r in latest(rows, ("experiment", "model", "dtype", "precision", "variant", "phase")):
        if r["experiment"] == "train" and r["phase"] in parts and _float(r["median"]) is not None:
            table[f"{r['model']} {r['dtype']}{_precision(r)}\n{r['variant']}"][r["phase"]] = float(r["median"])
    if not table:
        return None
    labels = sorted(table)
    fig = Figure(figsize=(max(6, 1.2 * len(labels)), 4.5), layout="constrained")
    ax = fig.subplots()
    bottom = [0.0] * len(labels)
    for part in parts:
        heights = [table[label].get(part, 0.0) for label in labels]
        ax.bar(range(len(labels)), heights, bottom=bottom, label=part.split(" (")[0])
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("ms per training step")
    ax.set_title("Where a training step's time goes (instrumented pass)")
    ax.legend(fontsize=7)
    return fig


def fig_ablations(rows: list[dict]) -> Figure | None:
    """One bar per (switch, setting, variant, experiment, size): baseline time / setting time, > 1 = faster."""
    bars = []
    for r in latest([r for r in rows if r.get("status") == "ok" and r.get("setting") != r.get("baseline_setting")],
                    ("ablation", "model", "dtype", "experiment", "variant", "setting", "batch", "tokens")):
        ratio = _float(r.get("ratio_vs_baseline"))
        if ratio:
            decode = r["experiment"].startswith("decode")
            size = f"b={r['batch'] or r['tokens']}" if decode else f"{r['tokens']} tok"
            what = f"{r['ablation']}: {r['setting']} vs {r['baseline_setting']} ({r['variant']}), {r['experiment']}"
            bars.append((what, int(r["batch"] or r["tokens"] or 0), f"{what} {size}", ratio))
    if not bars:
        return None
    bars = [(what, label, ratio) for what, _, label, ratio in sorted(bars)]
    first = rows[0]
    fig = Figure(figsize=(9, 0.28 * len(bars) + 1.5), layout="constrained")
    ax = fig.subplots()
    switch = lambda what: what.split(":")[0]  # noqa: E731  (one colour per switch)
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(switch(b[0]) for b in bars))}
    ax.barh(range(len(bars)), [b[2] for b in bars], color=[colors[switch(b[0])] for b in bars])
    ax.set_yticks(range(len(bars)), [b[1] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12) if min(b[2] for b in bars) / 1.2 <= t
             <= max(b[2] for b in bars) * 1.2]
    ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("baseline time / setting time (> 1: the setting is faster)")
    ax.set_title(f"Model-level ablations: {first.get('model', '')} ({first.get('num_blocks', '?')} blocks, "
                 f"{first.get('dtype', '')})\n{first.get('device', '')}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def render_all(results: str | Path = REPO_ROOT / "results", out: str | Path | None = None) -> list[Path]:
    """Write every figure whose data exists; returns the paths written."""
    results = Path(results)
    out = Path(out) if out else results / "figures"
    out.mkdir(parents=True, exist_ok=True)
    linear = load_csv(results / "bench_linear_h100.csv")
    layers = load_csv(results / "bench_inference_h100.csv")
    speedup = load_speedup(results)
    paper = [r for r in load_csv(results / "paper_reference.csv") if r["table"].startswith(("speedup_", "memory_"))]
    figures = {"linear_inference": fig_linear_inference(linear), "linear_training": fig_linear_training(linear),
               "layer_inference": fig_layer_inference(layers), "training_speedup": fig_training_speedup(speedup, paper),
               "inference_speedup": fig_inference_speedup(speedup, paper),
               "decode_speedup": fig_decode_speedup(speedup),
               "memory": fig_memory(speedup, paper), "train_breakdown": fig_train_breakdown(speedup),
               "ablations": fig_ablations(load_csv(results / "ablations_h100.csv")),
               "pretraining_curves": fig_pretraining_curves(results), "ddp_losses": fig_ddp_losses(results),
               "seed_notes": fig_seed_notes(load_seed_notes(results))}
    written = []
    for name, fig in figures.items():
        if fig is None:
            print(f"figures: {name}: no data, skipped")
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
        print(f"figures: wrote {path}")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(REPO_ROOT / "results"), help="folder with the result CSVs")
    parser.add_argument("--out", default=None, help="where the PNGs go (default: <results>/figures)")
    args = parser.parse_args(argv)
    return render_all(args.results, args.out)


if __name__ == "__main__":
    main()
