"""Regression gate for the GPU benchmarks: a fresh `bench_linear` run against the last committed GPU results.

Rows are matched on (benchmark, shape, d_in, d_out, tokens, dtype, variant). A CSV may hold several runs (the
committed one accumulates them; `make bench-gpu` runs the quick preset twice): each side's figure for a key is the
*median over its runs*. One run is not enough: on the H100, two back-to-back runs of the same code moved the
linear forward+backward ratio from 1.20 to 1.11, and the committed runs hold 1.24 and 1.28 for it. A speedup
ratio (``speedup_vs_dense``, dense and SLoPe timed in the same process) whose fresh median fell by more than
``--tolerance`` (10%) below the baseline median is a regression, and the exit code is 1.

Rows below ``--min-tokens`` (default 1024) are reported but not gated: at 16–256 tokens the committed H100 runs
moved by up to ±40% between two runs of the same code (host-bound calls, algorithm choice), so a 10% gate there
would fail at random. The baseline and the fresh run must come from the same GPU model (``device`` column), unless
``--any-device``; a comparison that matches no row fails too (a gate that compares nothing proves nothing).

    python -m performance_experiments.compare_bench --baseline results/bench_linear_h100.csv --fresh runs/quick.csv
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

KEY = ("benchmark", "shape", "d_in", "d_out", "tokens", "dtype", "variant")


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"compare_bench: {path} does not exist")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def ratios_by_key(rows: list[dict]) -> dict[tuple, list[float]]:
    """Every run's speedup ratio per key (rows without a ratio are skipped)."""
    out: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get("speedup_vs_dense", "") in ("", None):
            continue
        out.setdefault(tuple(row.get(k, "") for k in KEY), []).append(float(row["speedup_vs_dense"]))
    return out


def compare(baseline: list[dict], fresh: list[dict], *, tolerance: float = 0.10, min_tokens: int = 1024,
            any_device: bool = False) -> tuple[list[dict], list[str]]:
    """(one result per fresh key, errors). A result: the key, baseline and fresh medians, runs, change, status."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance} must be in (0, 1), e.g. 0.10 for 10%")
    old, new = ratios_by_key(baseline), ratios_by_key(fresh)
    errors = []
    old_devices = {r.get("device", "") for r in baseline if r.get("speedup_vs_dense")}
    new_devices = {r.get("device", "") for r in fresh if r.get("speedup_vs_dense")}
    if not any_device and old_devices and new_devices and not old_devices & new_devices:
        errors.append(f"the fresh run is on {sorted(new_devices)}, the baseline on {sorted(old_devices)}: ratios from "
                      "different GPUs are not comparable (pass --any-device to compare anyway)")
    results = []
    for key, values in sorted(new.items()):
        fresh_ratio = statistics.median(values)
        base = old.get(key)
        result = dict(zip(KEY, key), fresh=fresh_ratio, baseline="", change="", status="new (no baseline)",
                      runs=f"{len(base) if base else 0}/{len(values)}")
        if base is not None:
            base_ratio = statistics.median(base)
            change = fresh_ratio / base_ratio - 1
            tokens = int(key[KEY.index("tokens")] or 0)
            gated = not key[KEY.index("tokens")] or tokens >= min_tokens
            status = "ok" if change >= -tolerance else "REGRESSED" if gated else f"not gated (< {min_tokens} tokens)"
            result.update(baseline=base_ratio, change=change, status=status)
        results.append(result)
    if not any(r["baseline"] != "" for r in results):
        errors.append("no fresh row matches a baseline row: check that the preset's shapes, dtypes and token counts "
                      "are in the baseline CSV")
    return results, errors


def report(results: list[dict]) -> str:
    lines = ["| benchmark | shape | dtype | tokens | variant | baseline (median) | fresh (median) | runs | change | "
             "status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = f"{r['baseline']:.3f}" if r["baseline"] != "" else ""
        change = f"{r['change']:+.1%}" if r["change"] != "" else ""
        lines.append(f"| {r['benchmark']} | {r['shape']} | {r['dtype']} | {r['tokens']} | {r['variant']} | {base} | "
                     f"{r['fresh']:.3f} | {r['runs']} | {change} | {r['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="results/bench_linear_h100.csv")
    parser.add_argument("--fresh", required=True, help="CSV of the fresh bench_linear run")
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest allowed relative drop (0.10 = 10%%)")
    parser.add_argument("--min-tokens", type=int, default=1024, help="rows below this token count are not gated")
    parser.add_argument("--any-device", action="store_true", help="compare runs from different GPU models")
    parser.add_argument("--report", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    results, errors = compare(load(args.baseline), load(args.fresh), tolerance=args.tolerance,
                              min_tokens=args.min_tokens, any_device=args.any_device)
    text = report(results)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    regressed = [r for r in results if r["status"] == "REGRESSED"]
    for error in errors:
        print(f"compare_bench: {error}", file=sys.stderr)
    if regressed:
        print(f"compare_bench: {len(regressed)} speedup ratio(s) fell by more than {args.tolerance:.0%}",
              file=sys.stderr)
    return 1 if regressed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
