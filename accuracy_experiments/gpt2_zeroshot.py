"""`make gpt2-zeroshot`: the paper's GPT-2 table (dense vs SLoPe vs Extended SR-STE, adapter ranks) at small scale.

Every row x seed pretrains GPT-2 with `experiments.pretrain` (resumable), then scores the final model with
lm-eval on the suite's generated zero-shot tasks. One long-form CSV row per (row, seed, task, metric) goes to
``results/gpt2_zeroshot_<scale>.csv`` with provenance; rows already there are skipped, so an interrupted run
resumes without losing or repeating anything. A markdown table (mean ± std over seeds) is written beside it,
next to the paper's numbers from ``results/paper_reference.csv`` — on different, real benchmarks: compare the
ordering of the methods, not the values.

    python -m accuracy_experiments.gpt2_zeroshot [--scale tiny|small|paper] [--seeds 0,1,2] [--rows dense,slope-r0]

Pretraining and scoring can run on different machines (``--stage train --export DIR`` where the GPU is,
``--stage eval --import-dir DIR`` where lm-eval is): the trained weights travel as small fp16 shards
(`experiments.shards`) that carry the pretraining run's loss history and provenance, and each result row then
names both machines in ``device`` and the pretraining commit in ``git_sha``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import torch

from experiments import pretrain
from experiments.provenance import REPO_ROOT, config_hash, provenance
from experiments.results_io import provenance_summary, write_rows
from experiments.shards import export_shards, has_shards, import_shards, shard_name

# The paper's rows. The original README lists a 0.05% adapter; the issue asks for 0.5% (kept here).
ROWS = {
    "dense": {"method": "dense", "adapter_rank": "0"},
    "slope-r0": {"method": "slope", "adapter_rank": "0"},
    "slope-r0.5%": {"method": "slope", "adapter_rank": "0.5%"},
    "slope-r2.1%": {"method": "slope", "adapter_rank": "2.1%"},
    "srste-r0": {"method": "srste", "adapter_rank": "0"},
    "srste-r0.5%": {"method": "srste", "adapter_rank": "0.5%"},
    "srste-r2.1%": {"method": "srste", "adapter_rank": "2.1%"},
}
COLUMNS = ("experiment", "scale", "row", "method", "adapter_rank", "seed", "steps", "eval_limit", "task", "metric",
           "value", "final_val_loss")
# items per task scored at each scale (lm-eval `limit`); None = all. `small` scores 300 of each generated task's
# >= 1,000 items: the committed small table was scored so (~2.5 min per model on 2 CPU cores), and rows added to it
# must be scored the same way.
EVAL_LIMIT = {"tiny": 50, "small": 300, "paper": None}


def _done(path: Path, eval_limit: int | None, scoring: bool = True) -> set[tuple[str, str]]:
    """(row, seed) already scored in ``path``; when ``scoring``, refuses a table scored on another number of items
    per task (rows of one table must be comparable)."""
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    limits = {r.get("eval_limit", "?") for r in rows} - {_limit_text(eval_limit)}
    if limits and scoring:
        raise SystemExit(f"{path}: its rows were scored on {sorted(limits)} items per task, this run would score "
                         f"{_limit_text(eval_limit)}; pass --eval-limit to match, or --results / --results-dir for "
                         "a new table")
    return {(r["row"], r["seed"]) for r in rows}


def _limit_text(limit: int | None) -> str:
    return "all" if limit is None else str(limit)


def run_config(scale: str, row: str, seed: int, runs: Path, overrides: dict | None = None):
    """The pretraining of (row, seed), in a folder named by its configuration: a changed preset starts afresh
    instead of clashing with an older run's checkpoint."""
    cfg = replace(pretrain.PRESETS[scale], **ROWS[row], seed=seed, **(overrides or {}))
    digest = config_hash({k: v for k, v in asdict(cfg).items() if k not in ("seed", *pretrain.PLACEMENT_FIELDS)})
    return replace(cfg, out=str(runs / scale / f"{row}-{digest[:8]}" / f"seed{seed}"))


def run(scale: str, seeds: list[int], rows: list[str], *, results: Path, runs: Path, evalsets: str,
        overrides: dict | None = None, stage: str = "all", export: Path | None = None,
        import_dir: Path | None = None, eval_limit: int | None = None, nproc: int = 1) -> Path:
    limit = EVAL_LIMIT[scale] if eval_limit is None else eval_limit
    done = _done(results, limit, scoring=stage in ("all", "eval"))
    for row in rows:
        for seed in seeds:
            if (row, str(seed)) in done:
                continue
            cfg = run_config(scale, row, seed, runs, overrides)
            name = shard_name(row, seed)
            if stage in ("all", "train") and not (import_dir and has_shards(import_dir, name)):
                history = pretrain.launch(cfg, nproc)  # nproc > 1: torchrun, data parallel
                if export is not None:
                    model_state = torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False)["model"]
                    export_shards(model_state, export, name, {"history": history, "config": asdict(cfg),
                                                              "provenance": provenance(cfg)})
            if stage in ("all", "eval"):
                _evaluate_run(cfg, row, seed, name, results=results, evalsets=evalsets, import_dir=import_dir,
                              limit=limit)
    if results.exists():
        write_table(results)
    return results


def _evaluate_run(cfg, row: str, seed: int, name: str, *, results: Path, evalsets: str, import_dir: Path | None,
                  limit: int | None) -> None:
    from experiments.data.tokenizer import load_tokenizer
    from experiments.zeroshot import evaluate, tasks_for

    tokenizer = load_tokenizer(cfg.tokenizer, "gpt2", cfg.seq_len)
    model = pretrain.build_model(cfg, tokenizer, adapters=pretrain.adapter_start(cfg) is not None)
    checkpoint = Path(cfg.out) / "checkpoint.pt"
    trained_on: dict = {}
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        history = state["history"]
        model.load_state_dict(state["model"])
    elif import_dir is not None and has_shards(import_dir, name):
        model_state, meta = import_shards(import_dir, name)
        if not pretrain.same_training(meta["config"], cfg):  # run folders may differ between machines
            raise SystemExit(f"{import_dir}/{name}: trained with another configuration than {row} seed {seed} here")
        model.load_state_dict(model_state)
        history, trained_on = meta["history"], meta["provenance"]
    else:
        raise SystemExit(f"{row} seed {seed}: no checkpoint at {checkpoint} and no shards {name}.* in {import_dir}; "
                         "run the train stage first")
    tasks, include_defaults = tasks_for(cfg.preset)  # paper: lm-eval's own benchmarks (hub access needed)
    scores = evaluate(model.eval(), tokenizer, tasks=tasks, evalsets=evalsets, limit=limit,
                      device="cuda" if torch.cuda.is_available() else "cpu", include_defaults=include_defaults)
    # the run's loss curve beside its scores (pretrained elsewhere: the history travelled in the shards)
    pretrain.write_losses(curves_dir(results, cfg.preset) / f"{row}_seed{seed}.csv", history)
    val_loss = next((h["val_loss"] for h in reversed(history) if h["val_loss"] != ""), "")
    out = [{"experiment": "gpt2_zeroshot", "scale": cfg.preset, "row": row, "method": ROWS[row]["method"],
            "adapter_rank": ROWS[row]["adapter_rank"], "seed": seed, "steps": cfg.steps,
            "eval_limit": _limit_text(limit), "task": task,
            "metric": metric.split(",")[0], "value": value, "final_val_loss": val_loss}
           for task, metrics in scores.items() for metric, value in metrics.items()
           if not metric.endswith("_stderr,none") and metric != "sample_len"]
    # pretrained elsewhere: the rows name that run's commit and both machines
    stamp = {} if not trained_on else {
        "git_sha": trained_on["git_sha"], "git_dirty": trained_on["git_dirty"],
        "device": f"{trained_on['device']} (pretraining) + {provenance()['device']} (lm-eval)"}
    write_rows(results, out, columns=COLUMNS, config=cfg, overrides=stamp)  # per run: an interruption loses one


def curves_dir(results: Path, scale: str) -> Path:
    return results.parent / "gpt2_losses" / scale


def write_table(results: Path) -> Path:
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    values = defaultdict(list)
    for r in rows:
        values[(r["row"], f"{r['task']}/{r['metric']}")].append(float(r["value"]))
    columns = sorted({key[1] for key in values})
    order = [row for row in ROWS if any(key[0] == row for key in values)]
    lines = [f"# GPT-2 zero-shot, {rows[0]['scale']} scale (generated stand-in tasks; mean ± std over seeds)", "",
             f"From `{results.name}`: {len({r['seed'] for r in rows})} seed(s), {rows[0]['steps']} steps, "
             f"{', '.join(sorted({r['eval_limit'] for r in rows}))} items per task scored, "
             f"{provenance_summary(rows)}.", "",
             "| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in order:
        cells = []
        for column in columns:
            v = values.get((row, column), [])
            cells.append("" if not v else f"{statistics.mean(v):.4g} ± {statistics.stdev(v):.2g}" if len(v) > 1
                         else f"{v[0]:.4g}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"Pretraining loss curves (train / validation loss per step): "
                  f"`{results.parent.name}/gpt2_losses/{rows[0]['scale']}/`."]
    reference = REPO_ROOT / "results" / "paper_reference.csv"
    if reference.exists():
        with reference.open(newline="") as f:
            paper = [r for r in csv.DictReader(f) if r["table"] == "gpt2_zeroshot"]
        tasks = list(dict.fromkeys(r["task"] for r in paper))
        lines += ["", "The paper's GPT-2 table (real benchmarks, accuracy %), for the ordering of the methods:", "",
                  "| method | rank | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for key in dict.fromkeys((r["method"], r["adapter_rank"]) for r in paper):
            vals = {r["task"]: r["value"] for r in paper if (r["method"], r["adapter_rank"]) == key}
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(vals[t] for t in tasks) + " |")
    target = results.with_suffix(".md")
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(pretrain.PRESETS),
                        default="small" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--results", default=None, help="CSV path (default <results-dir>/gpt2_zeroshot_<scale>.csv)")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"), help="folder of the results CSVs")
    parser.add_argument("--runs", default="runs/gpt2_zeroshot")
    parser.add_argument("--evalsets", default="data/evalsets")
    parser.add_argument("--stage", choices=["all", "train", "eval"], default="all",
                        help="train only (with --export), evaluate only (with --import-dir or local runs), or both")
    parser.add_argument("--export", default=None, help="after training, write each model's fp16 shards here")
    parser.add_argument("--import-dir", default=None, help="evaluate models trained elsewhere from shards here")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's pretraining steps")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per task (default: per scale)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes (GPUs) per pretraining run, launched with torchrun; the global batch and the "
                             "result are those of one process")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.stage != "train" and args.scale != "paper" and not Path(args.evalsets).exists():
        parser.error(f"{args.evalsets} not found: run `make data` first")
    results = Path(args.results or Path(args.results_dir) / f"gpt2_zeroshot_{args.scale}.csv")
    path = run(args.scale, [int(s) for s in args.seeds.split(",")], rows, results=results, runs=Path(args.runs),
               evalsets=args.evalsets, overrides={"steps": args.steps} if args.steps else None, stage=args.stage,
               export=Path(args.export) if args.export else None,
               import_dir=Path(args.import_dir) if args.import_dir else None, eval_limit=args.eval_limit,
               nproc=args.nproc)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path


if __name__ == "__main__":
    main()
