"""Ablation harness on the CPU at toy size: each ablation lands as rows, refusals as 'unsupported'."""
import csv

from performance_experiments import ablations


def test_cpu_toy_ablations(tmp_path):
    out = tmp_path / "ablations.csv"
    ablations.main(["--preset", "cpu-toy", "--ablations", "tiling,cutlass,addmm,implementation",
                    "--decode-batches", "1", "--repeats", "1", "--warmup", "0", "--output", str(out)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    by = {}
    for r in rows:
        by.setdefault(r["ablation"], []).append(r)
    tiling = by["tiling"]
    assert {r["setting"] for r in tiling} == {"tiled", "untiled"}
    assert {r["experiment"] for r in tiling} == {"prefill", "decode"}
    assert all(r["status"] == "ok" and float(r["ratio_vs_dense"]) > 0 for r in tiling)
    assert all(float(r["ratio_vs_baseline"]) == 1.0 for r in tiling if r["setting"] == "untiled")
    # no GPU here: compressed backends refuse, the simulated layers have no addmm switch — rows say so
    for name in ("cutlass", "addmm", "implementation"):
        assert [r["status"] for r in by[name]] == ["unsupported"], by[name]
    assert all(r["mode"].startswith("cpu-toy") for r in rows)
