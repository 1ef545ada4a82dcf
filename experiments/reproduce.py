"""`make reproduce`: data -> GPT-2 zero-shot -> BERT GLUE / SQuAD / mixed -> CLAIMS.md, at this machine's scale.

    python -m experiments.reproduce [--scale tiny|small] [--seeds 0,1,2] [--stages data,gpt2-zeroshot,claims]
                                    [--results-dir results]

Each stage is the make target of the same name, so ``make reproduce`` and running the targets by hand do the same
work. The scale is the largest this machine runs: ``small`` with CUDA, ``tiny`` on CPU (``paper`` needs the hub and
a cluster: run its targets by hand). Nothing but the Debian package download of ``make data`` touches the network.

Where: by default everything is recomputed into ``runs/reproduce/<scale>/`` (tables and CLAIMS.md under
``results/`` there, run caches beside them), so the committed tables in ``results/`` — which already hold every
(row, seed) and would make the table runners skip all work — are neither reused nor overwritten.
``--results-dir results`` (``make reproduce RESULTS_DIR=results``) adds to the committed tables instead, with the
usual run caches.

Resuming: ``data`` is skipped when its outputs exist (``--rebuild-data`` forces it); the table runners skip the
(row, seed) pairs already in their CSV and resume an interrupted pretraining run from its checkpoint, so rerunning
``make reproduce`` after an interruption continues where it stopped. A stage whose make target does not exist in
this checkout, or that fails, is reported by name; the later stages still run (their claims then read "not run"),
``data`` excepted, since everything needs it. The exit status is non-zero if any stage was missing or failed,
unless ``--allow-missing`` (missing targets only).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_open
from .provenance import REPO_ROOT


@dataclass(frozen=True)
class Stage:
    name: str          # = the make target
    scaled: bool       # takes SCALE= and SEEDS=
    what: str


STAGES = (
    Stage("data", False, "offline corpus, tokenizers, generated evaluation and fine-tuning sets"),
    Stage("gpt2-zeroshot", True, "GPT-2 pretraining per row and seed + lm-eval zero-shot"),
    Stage("bert-glue", True, "BERT pretraining + GLUE-style fine-tuning"),
    Stage("bert-squad", True, "BERT SQuAD-style span fine-tuning"),
    Stage("bert-mixed", True, "BERT mixed N:M (2:4-2:8, 2:8-2:4), SLoPe vs Wanda"),
    Stage("claims", False, "results/CLAIMS.md from the results CSVs"),
)
# What `make data` leaves behind; all present = the stage is done.
DATA_OUTPUTS = ("data/corpus/manifest.json", "data/corpus/tokenizers/gpt2-bpe-4k/tokenizer.json",
                "data/evalsets/slope_perplexity",
                "data/finetune/span/validation.jsonl")


def make_targets(makefile: Path) -> set[str]:
    """Rule names defined in ``makefile`` (read, not run: `make -n` would run the venv set-up)."""
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile.read_text(), flags=re.MULTILINE))


def default_scale() -> str:
    import torch
    return "small" if torch.cuda.is_available() else "tiny"


def run_stages(stages: list[Stage], *, root: Path, scale: str, seeds: str, rebuild_data: bool = False,
               make: str = "make", places: list[str] | None = None) -> list[dict]:
    """Run ``stages`` in order with make in ``root``; one report dict per stage (status, seconds, return code)."""
    targets = make_targets(root / "Makefile")
    reports = []
    bar = tqdm(stages, desc="reproduce", unit="stage", file=sys.stderr, disable=None,
               bar_format="{desc}: {n_fmt}/{total_fmt} stages [{elapsed}]")
    for stage in bar:
        bar.set_description(f"reproduce: {stage.name}")
        report = {"stage": stage.name, "status": "", "seconds": 0.0, "returncode": None}
        reports.append(report)
        if stage.name not in targets:
            report["status"] = "missing"
            tqdm.write(f"[reproduce] stage {stage.name}: no `make {stage.name}` target in {root / 'Makefile'}; "
                       "skipped (its claims will read 'not run'). Update the checkout or run the other stages "
                       "with --stages.", file=sys.stderr)
            continue
        if stage.name == "data" and not rebuild_data and all((root / p).exists() for p in DATA_OUTPUTS):
            report["status"] = "done before"
            tqdm.write("[reproduce] stage data: outputs present, skipped (--rebuild-data to rebuild)", file=sys.stderr)
            continue
        # claims: CLAIMS.md from the largest scale present (SCALE= empty: not the one inherited via MAKEFLAGS)
        args = [f"SCALE={scale}", f"SEEDS={seeds}"] if stage.scaled else ["SCALE="] if stage.name == "claims" else []
        if stage.name != "data":
            args += places or []
        command = [make, "--no-print-directory", stage.name, *args]
        tqdm.write(f"[reproduce] stage {stage.name} ({stage.what}): {' '.join(command)}", file=sys.stderr)
        start = time.perf_counter()
        result = subprocess.run(command, cwd=root)
        report.update(seconds=round(time.perf_counter() - start, 1), returncode=result.returncode,
                      status="ran" if result.returncode == 0 else "failed")
        if result.returncode != 0:
            tqdm.write(f"[reproduce] stage {stage.name} failed (exit {result.returncode}); rerun `make reproduce` "
                       "after fixing it: finished work is kept", file=sys.stderr)
            if stage.name == "data":
                break  # every later stage needs the data
    bar.close()
    return reports


def result_places(root: Path, scale: str, results_dir: str | None) -> list[str]:
    """make variables that point the table runners and claims at the results folder and run caches."""
    if results_dir is not None:
        return [f"RESULTS_DIR={results_dir}"]
    scratch = Path("runs") / "reproduce" / scale
    results = root / scratch / "results"
    results.mkdir(parents=True, exist_ok=True)
    reference = root / "results" / "paper_reference.csv"  # the paper's numbers, shown beside ours
    if reference.exists():
        shutil.copyfile(reference, results / reference.name)
    return [f"RESULTS_DIR={scratch / 'results'}", f"RUNS_DIR={scratch / 'runs'}"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "small", "paper"), default=None,
                        help="default: small with CUDA, tiny on CPU")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stages", default=",".join(s.name for s in STAGES))
    parser.add_argument("--rebuild-data", action="store_true", help="run `make data` even if its outputs exist")
    parser.add_argument("--allow-missing", action="store_true", help="exit 0 when stages lack a make target")
    parser.add_argument("--root", default=str(REPO_ROOT), help="the checkout with the Makefile")
    parser.add_argument("--results-dir", default=None,
                        help="default runs/reproduce/<scale>/results (a fresh reproduction); `results` = the "
                             "committed tables (finished rows are kept and skipped)")
    args = parser.parse_args(argv)
    known = {s.name: s for s in STAGES}
    names = [n for n in args.stages.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--stages: unknown {unknown}; choose from {list(known)}")
    if not re.fullmatch(r"\d+(,\d+)*", args.seeds):
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    scale = args.scale or default_scale()
    root = Path(args.root)
    places = result_places(root, scale, args.results_dir)
    start = time.perf_counter()
    reports = run_stages([known[n] for n in names], root=root, scale=scale, seeds=args.seeds,
                         rebuild_data=args.rebuild_data, make=os.environ.get("MAKE", "make"), places=places)
    total = round(time.perf_counter() - start, 1)
    print(f"\nreproduce at scale {scale}, seeds {args.seeds}: {total:.0f} s; tables and CLAIMS.md in "
          f"{places[0].split('=', 1)[1]}")
    for r in reports:
        print(f"  {r['stage']:<14} {r['status']:<12} {r['seconds']:>7.0f} s")
    log = root / "runs" / "reproduce" / f"{scale}.json"  # stage timings of the last run (runs/ is not committed)
    with atomic_open(log) as f:
        json.dump({"scale": scale, "seeds": args.seeds, "total_seconds": total, "stages": reports}, f, indent=2)
    bad = [r["stage"] for r in reports
           if r["status"] == "failed" or (r["status"] == "missing" and not args.allow_missing)]
    not_reached = [n for n in names if n not in {r["stage"] for r in reports}]
    if bad or not_reached:
        print(f"incomplete: {', '.join(bad + [n + ' (not reached)' for n in not_reached])}", file=sys.stderr)
        sys.exit(1)
    return reports


if __name__ == "__main__":
    main()
