"""The GPU regression gate (`make bench-gpu`) on synthetic CSVs."""
import csv

import pytest

from performance_experiments.compare_bench import compare, main

FIELDS = ("benchmark", "shape", "d_in", "d_out", "tokens", "dtype", "variant", "speedup_vs_dense", "device", "date")


def _rows(ratios, device="NVIDIA H100 80GB HBM3", date="2026-11-23T06:00:00+00:00"):
    return [{"benchmark": b, "shape": "opt-13b.fc1", "d_in": "5120", "d_out": "20480", "tokens": t, "dtype": "bfloat16",
             "variant": "slope", "speedup_vs_dense": str(r), "device": device, "date": date}
            for (b, t), r in ratios.items()]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_a_drop_beyond_tolerance_fails_and_within_passes():
    base = _rows({("train", "8192"): 1.30, ("infer", "8192"): 1.45, ("optim", ""): 0.5})
    fresh = _rows({("train", "8192"): 1.15, ("infer", "8192"): 1.40, ("optim", ""): 0.49})
    results, errors = compare(base, fresh)
    status = {r["benchmark"]: r["status"] for r in results}
    assert status == {"train": "REGRESSED", "infer": "ok", "optim": "ok"} and not errors
    assert next(r for r in results if r["benchmark"] == "train")["change"] == pytest.approx(1.15 / 1.30 - 1)


def test_small_token_counts_are_reported_not_gated():
    results, _ = compare(_rows({("infer", "16"): 1.4}), _rows({("infer", "16"): 0.9}))
    assert results[0]["status"].startswith("not gated")
    results, _ = compare(_rows({("infer", "16"): 1.4}), _rows({("infer", "16"): 0.9}), min_tokens=16)
    assert results[0]["status"] == "REGRESSED"


def test_each_side_is_the_median_over_its_runs():
    base = [r for v in (1.0, 1.3, 1.32) for r in _rows({("train", "8192"): v})]
    fresh = _rows({("train", "8192"): 1.1}) + _rows({("train", "8192"): 1.25})  # one unlucky run of two
    results, _ = compare(base, fresh)
    assert results[0]["baseline"] == 1.3 and results[0]["fresh"] == pytest.approx(1.175)
    assert results[0]["runs"] == "3/2" and results[0]["status"] == "ok"


def test_other_gpu_or_no_overlap_is_an_error():
    _, errors = compare(_rows({("train", "8192"): 1.3}), _rows({("train", "8192"): 1.3}, device="NVIDIA H200"))
    assert any("different GPUs" in e for e in errors)
    _, errors = compare(_rows({("train", "8192"): 1.3}), _rows({("train", "4096"): 1.3}))
    assert any("no fresh row matches" in e for e in errors)


def test_cli_exit_codes(tmp_path, capsys):
    base = _write(tmp_path / "base.csv", _rows({("train", "8192"): 1.3}))
    good = _write(tmp_path / "good.csv", _rows({("train", "8192"): 1.25}))
    bad = _write(tmp_path / "bad.csv", _rows({("train", "8192"): 1.0}))
    assert main(["--baseline", base, "--fresh", good, "--report", str(tmp_path / "r.md")]) == 0
    assert "| train |" in (tmp_path / "r.md").read_text()
    assert main(["--baseline", base, "--fresh", bad]) == 1
    assert "fell by more than 10%" in capsys.readouterr().err


def test_the_committed_gpu_csv_compares_with_itself():
    from performance_experiments.compare_bench import load

    rows = load("results/bench_linear_h100.csv")
    results, errors = compare(rows, rows)
    assert not errors and results and all(r["status"] in ("ok",) or r["status"].startswith("not gated")
                                          for r in results)
