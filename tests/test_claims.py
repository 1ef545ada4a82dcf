"""CLAIMS.md verdicts on synthetic result CSVs: holds / does not hold / inconclusive / not run, per the stated rule."""
import csv

import pytest

from experiments import claims
from experiments.results_io import PROVENANCE_COLUMNS

COLUMNS = ("experiment", "scale", "row", "method", "adapter_rank", "sparsity", "seed", "steps", "task", "metric",
           "value", "final_val_loss", *PROVENANCE_COLUMNS)


def _write(path, experiment, scale, table, seeds=(0, 1, 2)):
    """table: {row: {(task, metric): mean}}; seeds spread the mean by -0.01, 0, +0.01 (std 0.01)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row, cells in table.items():
            for (task, metric), mean in cells.items():
                for seed in seeds:
                    offset = 0.01 * (seed - 1) if len(seeds) == 3 else 0.0
                    writer.writerow({**dict.fromkeys(COLUMNS, ""), "experiment": experiment, "scale": scale,
                                     "row": row, "seed": seed, "steps": 100, "task": task, "metric": metric,
                                     "value": mean + offset, "git_sha": "abcdef0123", "git_dirty": "False",
                                     "device": f"device-{scale}", "date": "2026-11-23T00:00:00+00:00"})


def _by_key(summary):
    return {s["claim"]: s for s in summary}


def test_each_verdict_from_synthetic_results(tmp_path):
    gpt2 = {"dense": {("cont", "acc"): 0.50, ("ppl", "word_perplexity"): 100.0},
            "slope-r0": {("cont", "acc"): 0.49, ("ppl", "word_perplexity"): 101.0},
            "slope-r0.5%": {("cont", "acc"): 0.495, ("ppl", "word_perplexity"): 100.5},
            "slope-r2.1%": {("cont", "acc"): 0.30, ("ppl", "word_perplexity"): 200.0},
            # SR-STE clearly worse on both (perplexity: lower is better, so 300 loses to 101)
            "srste-r0": {("cont", "acc"): 0.40, ("ppl", "word_perplexity"): 300.0},
            "srste-r0.5%": {("cont", "acc"): 0.40, ("ppl", "word_perplexity"): 300.0},
            "srste-r2.1%": {("cont", "acc"): 0.20, ("ppl", "word_perplexity"): 300.0}}
    _write(tmp_path / "gpt2_zeroshot_tiny.csv", "gpt2_zeroshot", "tiny", gpt2)
    cells = {("acceptability", "mcc"), ("span", "f1")}
    mixed = {"slope-2:4-2:4": 0.50, "wanda-2:4-2:4": 0.505,   # overlapping spreads
             "slope-2:4-2:8": 0.30, "slope-2:8-2:4": 0.60,    # the paper's order reversed, well beyond the spread
             "wanda-2:4-2:8": 0.40, "wanda-2:8-2:4": 0.70}  # and Wanda above SLoPe in both mixed patterns
    _write(tmp_path / "bert_mixed_small.csv", "bert_mixed", "small",
           {row: {cell: mean for cell in cells} for row, mean in mixed.items()})
    (tmp_path / "paper_reference.csv").write_text(
        "table,method,adapter_rank,sparsity_pattern,task,metric,value,source\n"
        "bert_mixed,SLoPe,0,2:4-2:8,GLUE,average,79.0,test\nbert_mixed,SLoPe,0,2:8-2:4,GLUE,average,76.0,test\n")
    summary = _by_key(claims.main(["--results", str(tmp_path)]))
    text = (tmp_path / "CLAIMS.md").read_text()

    assert summary["2"]["verdict"] == claims.HOLDS            # SLoPe beats SR-STE at every rank, both metrics
    assert summary["4"]["verdict"] == claims.FAILS            # 2:8-2:4 wins in our numbers
    assert summary["5"]["verdict"] == claims.FAILS            # 4 of 6 cells reversed, 2 within the spread
    assert summary["3a"]["verdict"] == claims.DISAGREE        # r2.1% worse than r0 (2 cells), r0.5% better perplexity (1), acc within spread (1)
    assert summary["3d"]["verdict"] == claims.FAILS           # r2.1% worse than r0.5% on both cells
    # close to dense: r0 and r0.5% are within 3 points / 5%; r2.1% is 20 points below -> 2 of 3 pairs hold, 1 fails
    assert summary["1a"]["verdict"] == claims.DISAGREE
    for key in ("1b", "1c", "3b", "3e"):
        assert summary[key]["verdict"] == claims.NOT_RUN and "make bert-" in summary[key]["rests_on"]
    assert "device device-small" in summary["4"]["rests_on"] and "commit abcdef0" in summary["4"]["rests_on"]
    assert "## Performance claims" in text and "## Verdict rule" in text
    assert "The paper, by the same rule: holds (1 of 1 for, 0 against)" in text  # quoted from paper_reference.csv


def test_close_to_dense_holds_and_fails_and_inconclusive(tmp_path):
    rows = {"dense": 0.50, "slope-r0": 0.49, "slope-r0.39%": 0.495, "slope-r1.56%": 0.50, "slope-r6.25%": 0.50}
    _write(tmp_path / "bert_glue_tiny.csv", "bert_glue", "tiny", {r: {("source", "acc"): v} for r, v in rows.items()})
    assert _by_key(claims.build(tmp_path)[1])["1b"]["verdict"] == claims.HOLDS
    rows = {"dense": 0.50, "slope-r0": 0.30, "slope-r0.39%": 0.30, "slope-r1.56%": 0.30, "slope-r6.25%": 0.30}
    _write(tmp_path / "bert_glue_tiny.csv", "bert_glue", "tiny", {r: {("source", "acc"): v} for r, v in rows.items()})
    assert _by_key(claims.build(tmp_path)[1])["1b"]["verdict"] == claims.FAILS
    rows = {"dense": 0.50, "slope-r0": 0.47, "slope-r0.39%": 0.47, "slope-r1.56%": 0.47, "slope-r6.25%": 0.47}
    _write(tmp_path / "bert_glue_tiny.csv", "bert_glue", "tiny", {r: {("source", "acc"): v} for r, v in rows.items()})
    assert _by_key(claims.build(tmp_path)[1])["1b"]["verdict"] == claims.UNSURE  # 3 points short, spread 0.02


def test_one_seed_is_inconclusive_and_the_largest_scale_wins(tmp_path):
    table = {"slope-r0": {("span", "f1"): 0.2}, "slope-r0.39%": {("span", "f1"): 0.9}}
    _write(tmp_path / "bert_squad_tiny.csv", "bert_squad", "tiny", table)
    _write(tmp_path / "bert_squad_small.csv", "bert_squad", "small", table, seeds=(0,))
    summary = _by_key(claims.build(tmp_path)[1])
    assert summary["3c"]["scale"] == "small" and summary["3c"]["verdict"] == claims.ONE_SEED  # no spread
    summary = _by_key(claims.build(tmp_path, scale="tiny")[1])
    assert summary["3c"]["verdict"] == claims.HOLDS
    # a larger table without this claim's rows yet does not hide the smaller one that has them
    _write(tmp_path / "bert_squad_small.csv", "bert_squad", "small", {"dense": {("span", "f1"): 0.5}}, seeds=(0,))
    summary = _by_key(claims.build(tmp_path)[1])
    assert summary["3c"]["scale"] == "tiny" and summary["3c"]["verdict"] == claims.HOLDS
    assert summary["3c"]["rests_on"].startswith("bert_squad_small.csv lacks this claim's rows so far")


@pytest.mark.parametrize("metric, a, b, expected", [
    ("acc", [0.6, 0.61, 0.62], [0.5, 0.51, 0.52], claims.HOLDS),
    ("acc", [0.5, 0.51, 0.52], [0.6, 0.61, 0.62], claims.FAILS),
    ("word_perplexity", [10, 11, 12], [20, 21, 22], claims.HOLDS),     # lower is better
    ("bits_per_byte", [2.0, 2.1, 2.2], [2.05, 2.1, 2.15], claims.UNSURE),
])
def test_order_rule_per_metric_direction(metric, a, b, expected):
    assert claims.judge("order", a, b, metric)[0] == expected


def test_every_claim_row_name_matches_the_runners_and_the_paper_table():
    from accuracy_experiments.gpt2_zeroshot import ROWS
    reference = list(csv.DictReader((claims.REPO_ROOT / "results" / "paper_reference.csv").open(newline="")))
    try:
        from accuracy_experiments.bert_tables import TABLES
    except ImportError:  # the BERT runner is not in this checkout
        TABLES = {}
    runner_rows = {"gpt2_zeroshot": ROWS, **{name: table["rows"] for name, table in TABLES.items()}}
    for claim in claims.CLAIMS:
        for a, b in claim.pairs:
            if claim.experiment in runner_rows:
                assert a in runner_rows[claim.experiment] and b in runner_rows[claim.experiment], (claim.key, a, b)
            assert claims.paper_values(reference, claim.experiment, a), (claim.key, a)


def test_cells_that_clearly_disagree_are_not_called_seed_noise():
    assert claims.aggregate([claims.HOLDS] * 8 + [claims.FAILS] * 4) == claims.DISAGREE
    assert claims.aggregate([claims.HOLDS] * 2 + [claims.UNSURE] * 2) == claims.UNSURE  # no majority, no conflict
    assert claims.aggregate([claims.FAILS] * 3 + [claims.HOLDS] * 2) == claims.FAILS
