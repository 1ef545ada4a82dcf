"""The paper's BERT tables at small scale: one run loop shared by `make bert-glue`, `bert-squad` and `bert-mixed`.

Every (row, seed) pretrains BERT with `experiments.bert_pretrain` (resumable), then fine-tunes it on each of the
table's tasks with `experiments.finetune` (sparsity kept; Wanda rows prune the dense model first) and writes one
long-form CSV row per (task, metric) to ``results/bert_<table>_<scale>.csv`` with provenance, right after that
(row, seed) — cells (row, seed, task) already in the CSV are skipped, so an interrupted run resumes without losing
or repeating any, and deleting a column's cells (a changed fine-tuning recipe) re-runs only that column.

Runs are cached under ``--runs`` by what they compute, not by table: one pretraining per distinct
(method, sparsity, adapter rank, seed) — GLUE and SQuAD share theirs, ``2:4-2:4`` is the same run as ``2:4``,
and every Wanda row prunes the dense row's model — and one fine-tuning per (pretraining, task, pruning), whose
``metrics.json`` a later table reuses. A SLoPe row with adapters starts from the branch state (before the
adapters, step ~99%) of a run of the same seed that differs only in the rank, when one got there: the same
computation, without repeating 99% of the pretraining (`bert_pretrain.start_from_branch`). Each pretraining's
loss curve is copied to ``results/bert_losses/<scale>/`` beside the scores. Table processes may run side by side on
one cache: each run folder is locked while it is computed, a process needing it waits and then reads it, a rank
row waits for the rank-0 run another process is training rather than repeat it (and trains it first when no process
has), and a row's fine-tuning that another process is computing is passed over until the row's others are done
(two processes on one row split it).

The markdown table (mean ± std over seeds) sits beside the CSV, next to the paper's numbers from
``results/paper_reference.csv`` — on the real GLUE / SQuAD v1.1 with BERT-Large: compare the ordering of the
methods, not the values.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import shutil
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments import bert_pretrain, finetune
from experiments.provenance import REPO_ROOT, config_hash
from experiments.results_io import provenance_summary, write_rows

COLUMNS = ("experiment", "scale", "row", "method", "adapter_rank", "sparsity", "seed", "steps", "task", "metric",
           "value", "final_val_loss")

# The paper's BERT-Large table: dense and SLoPe 2:4 with adapter ranks 0, 4, 16, 64 of 1024 (0.39%, 1.56%, 6.25%).
_LARGE_ROWS = {
    "dense": {"method": "dense", "adapter_rank": "0", "sparsity": ""},
    "slope-r0": {"method": "slope", "adapter_rank": "0", "sparsity": "2:4"},
    "slope-r0.39%": {"method": "slope", "adapter_rank": "0.39%", "sparsity": "2:4"},
    "slope-r1.56%": {"method": "slope", "adapter_rank": "1.56%", "sparsity": "2:4"},
    "slope-r6.25%": {"method": "slope", "adapter_rank": "6.25%", "sparsity": "2:4"},
}
# The paper's mixed-sparsity table: first half of the blocks – second half, SLoPe vs Wanda, no adapters.
_MIXED_ROWS = {f"{method}-{spec}": {"method": method, "adapter_rank": "0", "sparsity": spec}
               for method in ("slope", "wanda") for spec in ("2:4-2:4", "2:4-2:8", "2:8-2:4")}

TABLES = {
    "bert_glue": {"rows": _LARGE_ROWS, "tasks": ("acceptability", "coherence", "source"),
                  "paper": ("bert_large", "GLUE"), "title": "BERT, GLUE-style stand-ins"},
    "bert_squad": {"rows": _LARGE_ROWS, "tasks": ("span",), "paper": ("bert_large", "SQuAD v1.1"),
                   "title": "BERT, SQuAD-style stand-in"},
    "bert_mixed": {"rows": _MIXED_ROWS, "tasks": ("acceptability", "coherence", "source", "span"),
                   "paper": ("bert_mixed", None), "title": "BERT, mixed N:M sparsity, SLoPe vs Wanda"},
}
# chance levels of the generated tasks (their datasheets), printed under the table
CHANCE = "acceptability MCC 0; coherence acc ≈ 0.5; source acc 0.25 (4 balanced classes); span EM ≈ 0"


def pretrain_config(scale: str, spec: dict, seed: int, runs: Path, overrides: dict | None):
    """The pretraining a row needs (Wanda rows: the dense one), in a folder named by what it computes."""
    method = "dense" if spec["method"] in ("dense", "wanda") else spec["method"]
    if method == "dense":
        fields, key = {"method": "dense"}, "dense"
    else:
        sparsity = bert_pretrain.canonical_sparsity(spec["sparsity"])
        fields = {"method": method, "sparsity": sparsity, "adapter_rank": spec["adapter_rank"]}
        key = f"{method}-{sparsity}-r{spec['adapter_rank'].replace('%', 'pct')}"
    cfg = replace(bert_pretrain.PRESETS[scale], **fields, seed=seed, **(overrides or {}))
    # the folder names the configuration too, so a changed preset starts fresh instead of clashing with a checkpoint
    digest = config_hash({k: v for k, v in asdict(cfg).items() if k not in ("seed", "out", "stop_after")})
    return replace(cfg, out=str(runs / scale / f"{key}-{digest[:8]}" / f"seed{seed}")), key


def finetune_config(scale: str, spec: dict, task: str, seed: int, pretrained: Path, data: str,
                    overrides: dict | None):
    prune = {"prune": "wanda", "sparsity": spec["sparsity"]} if spec["method"] == "wanda" else {}
    name = task + (f"-wanda-{spec['sparsity']}" if prune else "")
    return replace(finetune.PRESETS[scale], task=task, pretrained=str(pretrained), data=data, seed=seed,
                   out=str(pretrained / "finetune" / name), **prune, **(overrides or {}))


def start_from_sibling(scale: str, spec: dict, seed: int, runs: Path, overrides: dict | None, cfg) -> str:
    """Start ``cfg``'s run from the branch of a run differing only in the adapter rank (rank 0 first); returns
    that run's folder, or "" when ``cfg`` has no adapters or a checkpoint of its own."""
    if bert_pretrain.adapter_start(cfg) is None or (Path(cfg.out) / "checkpoint.pt").exists():
        return ""
    ranks = dict.fromkeys(["0"] + [row["adapter_rank"] for table in TABLES.values() for row in table["rows"].values()])
    for rank in ranks:
        if rank != spec["adapter_rank"]:
            source, _ = pretrain_config(scale, {**spec, "adapter_rank": rank}, seed, runs, overrides)
            # Rank 0's run is the one every rank row branches from: when another process is training it, wait for
            # it rather than repeat its 99%; when nobody has, train it here (its 1% past the branch is the only
            # extra, and the rank-0 row then finds it done). The other ranks are only looked at (waiting on them
            # could deadlock).
            with _run_lock(Path(source.out)) if rank == "0" else contextlib.nullcontext():
                if rank == "0":
                    bert_pretrain.train(source)  # a finished run returns at once
                branched = bert_pretrain.start_from_branch(cfg, source.out)
            if branched:
                print(f"{cfg.out}: starting from the branch of {source.out} (step "
                      f"{bert_pretrain.branch_step(cfg)} of {cfg.steps}, before any adapters)", file=sys.stderr)
                return source.out
    return ""


def done_cells(path: Path) -> set[tuple[str, str, str]]:
    """The (row, seed, task) cells already in the CSV."""
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        return {(r["row"], r["seed"], r["task"]) for r in csv.DictReader(f)}


@contextlib.contextmanager
def _locked(lock_file: Path, what: str, wait: bool = True):
    """Hold an exclusive lock on ``lock_file``; a second process asking for it waits (and says so, when ``what``
    names the computation) until it is free. Yields whether the lock is held: with ``wait=False`` a busy lock
    yields False at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if what:
                print(f"{what} is being computed by another process; waiting for it", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield True


def _csv_lock(results: Path, runs: Path):
    """One writer at a time per results CSV (a short hold: the cells missing are re-read, then appended)."""
    # the lock lives with the (git-ignored) run cache, not in results/; it is named by the CSV's full path, so
    # that runs writing different CSVs of the same name may share a cache side by side
    return _locked(runs / f".{results.name}.{config_hash(str(results.resolve()))[:8]}.lock", "")  # a short wait


def _run_lock(run_folder: Path, wait: bool = True):
    """One process per pretraining or fine-tuning folder: tables run side by side (GLUE and SQuAD of one seed, the
    rank rows of one seed) share their runs through the cache instead of training one twice at the same time."""
    return _locked(run_folder.with_name(f".{run_folder.name}.lock"), str(run_folder), wait)


def finetune_all(configs: dict[str, finetune.FinetuneConfig]) -> dict[str, dict]:
    """Each task's scores (task -> config in, task -> metrics out, same order). A fine-tuning another process is
    computing is passed over and waited on only when nothing else is left, so that processes running the same row
    side by side split its fine-tunings instead of queueing behind one another. The longest are tried first, so
    that such processes end together rather than one of them finishing a long one alone."""
    scores: dict[str, dict] = {}
    longest_first = sorted(configs, key=lambda task: -finetune.recipe(configs[task])[0])
    while len(scores) < len(configs):
        took_one = False
        for task in longest_first:
            cfg = configs[task]
            if task in scores:
                continue
            with _run_lock(Path(cfg.out), wait=False) as mine:
                if mine:
                    scores[task], took_one = finetune.finetune(cfg)["metrics"], True
        if not took_one:  # every one left is being computed elsewhere: wait for one, then look again
            task = next(t for t in longest_first if t not in scores)
            cfg = configs[task]
            with _run_lock(Path(cfg.out)):
                scores[task] = finetune.finetune(cfg)["metrics"]
    return {task: scores[task] for task in configs}


@dataclass(frozen=True)
class Job:
    """One table's part of a run: which rows, into which CSV, which of its tasks (None: all)."""
    table: str
    rows: tuple[str, ...]
    results: Path
    tasks: tuple[str, ...] | None = None


def run(table: str, scale: str, seeds: list[int], rows: list[str], *, results: Path, runs: Path, data: str,
        curves: Path | None = None, pretrain_overrides: dict | None = None,
        finetune_overrides: dict | None = None, tasks: list[str] | None = None) -> Path:
    """Compute the (row, seed, task) cells missing from ``results`` (``tasks``: only those of the table's tasks, e.g.
    to re-run one column whose cells were deleted from the CSV) and rewrite the markdown table."""
    job = Job(table, tuple(rows), results, tuple(tasks) if tasks is not None else None)
    run_jobs([job], scale, seeds, runs=runs, data=data, curves=curves, pretrain_overrides=pretrain_overrides,
             finetune_overrides=finetune_overrides)
    return results


def run_jobs(jobs: list[Job], scale: str, seeds: list[int], *, runs: Path, data: str, curves: Path | None = None,
             pretrain_overrides: dict | None = None, finetune_overrides: dict | None = None, start: int = 0) -> None:
    """Compute every missing cell of ``jobs``, one (table, row, seed) unit at a time, side by side with any other
    process doing the same on this run cache (`accuracy_experiments.bert_parallel` starts N of them).

    Order of work, re-decided after each unit: a unit whose pretraining is not done and free (nobody holds its
    lock, nor the lock of the rank-0 run it branches from) comes first — pretrainings are the long poles —, then a
    unit whose pretraining is done, whose fine-tunings this process then shares with whoever else is on it; with
    nothing free, the process waits for the first unit left. ``start`` rotates where each pass begins, so that N
    processes started together spread over the units. Every unit's cells are appended to its CSV under that CSV's
    lock, leaving out cells another process wrote meanwhile; the markdown tables are rewritten at the end.
    """
    context = dict(scale=scale, runs=runs, data=data, curves=curves, pretrain_overrides=pretrain_overrides,
                   finetune_overrides=finetune_overrides)
    units = [(job, row, seed) for job in jobs for row in job.rows for seed in seeds]
    units = units[start % len(units):] + units[:start % len(units)] if units else []
    computed = set()
    while True:
        left = [u for u in units if _missing(*u)]
        if not left:
            break
        if computed.intersection(left):  # a bug guard: never loop on a unit whose cells do not land
            raise RuntimeError(f"{next(u for u in left if u in computed)}: computed, but its cells are not in the CSV")
        fresh = [u for u in left if not _pretrained(_pretraining(u, context)[0])]
        for unit in fresh + [u for u in left if u not in fresh]:
            if _compute(unit, context, wait=False):
                computed.add(unit)
                break
        else:  # everything left is being computed elsewhere: wait for the first unit, then look again
            _compute(left[0], context, wait=True)
            computed.add(left[0])
    for job in jobs:
        if job.results.exists():
            with _csv_lock(job.results, runs):
                write_table(job.results, job.table)


def _tasks(job: Job) -> list[str]:
    return [t for t in TABLES[job.table]["tasks"] if job.tasks is None or t in job.tasks]


def _missing(job: Job, row: str, seed: int) -> list[str]:
    done = done_cells(job.results)
    return [task for task in _tasks(job) if (row, str(seed), task) not in done]


def _pretraining(unit, context):
    job, row, seed = unit
    spec = TABLES[job.table]["rows"][row]
    return pretrain_config(context["scale"], spec, seed, context["runs"], context["pretrain_overrides"])


def _pretrained(cfg) -> bool:
    """Whether ``cfg``'s run has finished (its loss curve reached the last step)."""
    losses = Path(cfg.out) / "losses.csv"
    if not losses.exists():
        return False
    with losses.open(newline="") as f:
        last = None
        for last in csv.DictReader(f):
            pass
    return last is not None and int(last["step"]) >= cfg.steps


def _rank0_busy(unit, context) -> bool:
    """Whether the rank-0 run this unit's run would branch from is being computed by another process."""
    job, row, seed = unit
    spec = TABLES[job.table]["rows"][row]
    cfg, _ = _pretraining(unit, context)
    if bert_pretrain.adapter_start(cfg) is None or (Path(cfg.out) / "checkpoint.pt").exists():
        return False
    source, _ = pretrain_config(context["scale"], {**spec, "adapter_rank": "0"}, seed, context["runs"],
                                context["pretrain_overrides"])
    with _run_lock(Path(source.out), wait=False) as free:
        return not free


def _compute(unit, context, wait: bool) -> bool:
    """Pretrain (or find pretrained), fine-tune and write one unit's missing cells; False when ``wait`` is False and
    its pretraining (or the rank-0 run it branches from) is being computed by another process."""
    job, row, seed = unit
    todo = _missing(job, row, seed)
    if not todo:
        return True
    spec = TABLES[job.table]["rows"][row]
    scale, runs = context["scale"], context["runs"]
    pre_cfg, key = _pretraining(unit, context)
    if not wait and _rank0_busy(unit, context):
        return False
    with _run_lock(Path(pre_cfg.out), wait=wait) as mine:
        if not mine:
            return False
        branched_from = start_from_sibling(scale, spec, seed, runs, context["pretrain_overrides"], pre_cfg)
        history = bert_pretrain.train(pre_cfg)  # a finished run returns its history at once
    if context["curves"] is not None:
        context["curves"].mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(pre_cfg.out) / "losses.csv", context["curves"] / f"{key}_seed{seed}.csv")
    val_loss = bert_pretrain.final_val_loss(history)
    ft_cfgs = {task: finetune_config(scale, spec, task, seed, Path(pre_cfg.out), context["data"],
                                     context["finetune_overrides"]) for task in todo}
    configs = {"pretrain": asdict(pre_cfg), "branched_from": branched_from,
               **{task: asdict(cfg) for task, cfg in ft_cfgs.items()}}
    out = [{"experiment": job.table, "scale": scale, "row": row, "method": spec["method"],
            "adapter_rank": spec["adapter_rank"], "sparsity": spec["sparsity"], "seed": seed,
            "steps": pre_cfg.steps, "task": task, "metric": metric, "value": value, "final_val_loss": val_loss}
           for task, scores in finetune_all(ft_cfgs).items() for metric, value in scores.items()]
    with _csv_lock(job.results, runs):  # per unit: an interruption loses at most one; another process's cells stay
        done = done_cells(job.results)
        out = [r for r in out if (row, str(seed), r["task"]) not in done]
        if out:
            write_rows(job.results, out, columns=COLUMNS, config=configs)
    return True


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def write_table(results: Path, table: str) -> Path:
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    spec_table = TABLES[table]
    values, per_seed, losses = defaultdict(list), defaultdict(list), defaultdict(dict)
    for r in rows:
        values[(r["row"], f"{r['task']}/{r['metric']}")].append(float(r["value"]))
        per_seed[(r["row"], r["seed"])].append(float(r["value"]))
        if r["final_val_loss"] != "":
            losses[r["row"]][r["seed"]] = float(r["final_val_loss"])
    columns = [f"{t}/{m}" for t in spec_table["tasks"] for m in finetune.TASKS[t].metrics]
    order = [row for row in spec_table["rows"] if any(key[0] == row for key in values)]
    seeds = sorted({r["seed"] for r in rows}, key=int)
    first = rows[0]
    lines = [f"# {spec_table['title']}, {first['scale']} scale (generated stand-in tasks; mean ± std over seeds)", "",
             f"From `{results.name}`: {len(seeds)} seed(s) ({', '.join(seeds)}), {first['steps']} pretraining steps, "
             f"{provenance_summary(rows)}. Values are fractions "
             "(MCC in [-1, 1]); `avg` is the mean of the row's task metrics per seed; `val loss` is the final "
             "validation MLM loss of the pretraining (Wanda rows: of the dense model before pruning).", "",
             f"Chance: {CHANCE}.", ""]
    if first["scale"] == "tiny":
        lines += ["At tiny scale (a pipeline check sized for 2 CPU cores) scores near chance are expected: compare "
                  "rows only where the seed spreads do not overlap.", ""]
    lines += ["| row | " + " | ".join(columns) + " | avg | val loss |", "|---|" + "---|" * (len(columns) + 2)]
    for row in order:
        cells = [_cell(values.get((row, c), [])) for c in columns]
        averages = [statistics.mean(v) for (r, _), v in sorted(per_seed.items()) if r == row]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {_cell(averages)} | "
                     f"{_cell(list(losses[row].values()))} |")
    lines += ["", f"Pretraining loss curves: `results/bert_losses/{first['scale']}/`."]
    lines += _paper_lines(*spec_table["paper"])
    target = results.with_suffix(".md")
    target.write_text("\n".join(lines) + "\n")
    return target


def _paper_lines(paper_table: str, task: str | None) -> list[str]:
    reference = REPO_ROOT / "results" / "paper_reference.csv"
    if not reference.exists():
        return []
    with reference.open(newline="") as f:
        paper = [r for r in csv.DictReader(f) if r["table"] == paper_table and (task is None or r["task"] == task)]
    columns = list(dict.fromkeys(f"{r['task']} {r['metric']}" for r in paper))
    lines = ["", "The paper's table (BERT-Large on the real benchmarks, %), for the ordering of the methods:", "",
             "| method | rank | sparsity | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for key in dict.fromkeys((r["method"], r["adapter_rank"], r["sparsity_pattern"]) for r in paper):
        cells = {f"{r['task']} {r['metric']}": r["value"] for r in paper
                 if (r["method"], r["adapter_rank"], r["sparsity_pattern"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | {key[2] or '2:4' if key[0] != 'Dense' else ''} | "
                     + " | ".join(cells.get(c, "") for c in columns) + " |")
    return lines


def main(table: str, argv: list[str] | None = None, description: str = "") -> Path:
    import argparse

    import torch

    rows_of = TABLES[table]["rows"]
    parser = argparse.ArgumentParser(description=description or TABLES[table]["title"])
    parser.add_argument("--scale", choices=sorted(bert_pretrain.PRESETS),
                        default="small" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(rows_of))
    parser.add_argument("--results", default=None, help=f"CSV path (default <results-dir>/{table}_<scale>.csv)")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"), help="folder of the results CSVs")
    parser.add_argument("--runs", default="runs/bert", help="cache of pretraining and fine-tuning runs")
    parser.add_argument("--data", default="data/finetune", help="the generated fine-tuning sets")
    parser.add_argument("--tasks", default=",".join(TABLES[table]["tasks"]),
                        help="only these of the table's tasks (the cells of the others are left as they are)")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in rows_of]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(rows_of)}")
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or set(tasks) - set(TABLES[table]["tasks"]):
        parser.error(f"--tasks {args.tasks!r}: choose from {list(TABLES[table]['tasks'])}")
    missing = [t for t in tasks if not (Path(args.data) / t / "validation.jsonl").exists()]
    if missing:
        parser.error(f"{args.data} lacks {missing}: run `make data` first")
    results = Path(args.results or Path(args.results_dir) / f"{table}_{args.scale}.csv")
    path = run(table, args.scale, [int(s) for s in args.seeds.split(",")], rows, results=results,
               runs=Path(args.runs), data=args.data, curves=results.parent / "bert_losses" / args.scale, tasks=tasks)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path
