"""`make bert-tables`: several BERT tables computed by N processes side by side, sharing one run cache.

    python -m accuracy_experiments.bert_parallel --tables bert_squad,bert_mixed --seeds 2 --procs 12 [--scale small]

Why processes: at the small scale one BERT fine-tuning is launch-bound (one process cannot keep an H100 busy),
so processes side by side finish a seed's tables in about the time of its longest pretraining plus its longest
fine-tuning. On the H100 (2026-11-23, these locks, the processes started by a script) 10–16 processes did one
seed of the SQuAD and mixed tables (4 MLM pretrainings, 3 adapter branches, ~30 fine-tunings) in 8–10 minutes.

Each worker is `bert_tables.run_jobs` over all the tables' (row, seed) units, started at a different unit; the
order of work and the locks that keep two processes off the same computation are described there. The CSVs are
shared: each unit's cells are appended under the CSV's lock. The launcher shows a progress bar over the cells,
keeps each worker's output in ``<runs>/workers/worker<i>.log`` and exits non-zero when a worker failed (the cells
written stay: rerun to compute the rest).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from accuracy_experiments.bert_tables import done_cells, Job, run_jobs, TABLES, write_table
from experiments.provenance import REPO_ROOT


def jobs_for(tables: list[str], scale: str, results_dir: Path) -> list[Job]:
    return [Job(table, tuple(TABLES[table]["rows"]), results_dir / f"{table}_{scale}.csv") for table in tables]


def cells_written(jobs: list[Job], seeds: list[int]) -> int:
    count = 0
    for job in jobs:
        done = done_cells(job.results)
        count += sum((row, str(seed), task) in done for row in job.rows for seed in seeds
                     for task in TABLES[job.table]["tasks"])
    return count


def parse(argv: list[str] | None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="bert_glue,bert_squad,bert_mixed")
    parser.add_argument("--scale", choices=("tiny", "small", "paper"),
                        default="small" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--procs", type=int, default=1, help="worker processes side by side")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"), help="folder of the results CSVs")
    parser.add_argument("--runs", default="runs/bert", help="cache of pretraining and fine-tuning runs")
    parser.add_argument("--data", default="data/finetune", help="the generated fine-tuning sets")
    parser.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)  # internal: run as worker i
    args = parser.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    unknown = [t for t in tables if t not in TABLES]
    if not tables or unknown:
        parser.error(f"--tables {args.tables!r}: choose from {list(TABLES)}")
    if args.procs < 1:
        parser.error(f"--procs {args.procs}: give at least 1")
    missing = sorted({t for table in tables for t in TABLES[table]["tasks"]
                      if not (Path(args.data) / t / "validation.jsonl").exists()})
    if missing:
        parser.error(f"{args.data} lacks {missing}: run `make data` first")
    return args, tables, [int(s) for s in args.seeds.split(",") if s]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, tables, seeds = parse(argv)
    results_dir, runs = Path(args.results_dir), Path(args.runs)
    jobs = jobs_for(tables, args.scale, results_dir)
    if args.worker >= 0:
        run_jobs(jobs, args.scale, seeds, runs=runs, data=args.data, curves=results_dir / "bert_losses" / args.scale,
                 start=args.worker)
        return 0
    logs = runs / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    # one thread each: N processes side by side must not oversubscribe the CPU cores with intra-op threads
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    workers = []
    for i in range(args.procs):
        log = (logs / f"worker{i}.log").open("w")
        workers.append((subprocess.Popen([sys.executable, "-m", "accuracy_experiments.bert_parallel", *argv,
                                          "--worker", str(i)], stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(1.0)  # staggered, so that the first ones take the first pretraining locks in order
    total = sum(len(job.rows) * len(seeds) * len(TABLES[job.table]["tasks"]) for job in jobs)
    with tqdm(total=total, initial=cells_written(jobs, seeds), desc="bert tables (cells)", file=sys.stderr,
              disable=None) as bar:
        while any(w.poll() is None for w, _ in workers):
            time.sleep(5)
            bar.update(cells_written(jobs, seeds) - bar.n)
        bar.update(cells_written(jobs, seeds) - bar.n)
    for _, log in workers:
        log.close()
    failed = [i for i, (w, _) in enumerate(workers) if w.returncode]
    for job in jobs:
        if job.results.exists():
            write_table(job.results, job.table)
            print(f"wrote {job.results} and {job.results.with_suffix('.md')}")
    if failed:
        print(f"workers {failed} failed: see {logs}/worker<i>.log; rerun to compute the cells left", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
