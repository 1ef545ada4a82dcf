"""`make gpt2-zeroshot` end to end at toy scale: pretrain, lm-eval, CSV with provenance, table; resumes."""
import csv

import pytest

pytest.importorskip("lm_eval")

from accuracy_experiments import gpt2_zeroshot  # noqa: E402
from experiments import evalsets  # noqa: E402
from tests.test_evalsets import _corpus  # noqa: E402
from tests.test_pretrain import toy_corpus  # noqa: E402


def _toy_setup(tmp_path, **extra) -> dict:
    """A toy corpus and eval sets in tmp_path; the pretraining overrides that size a run to seconds."""
    corpus = toy_corpus(tmp_path)
    fake, _ = _corpus(tmp_path)
    evalsets.build_evalsets(fake, tmp_path / "evalsets")
    return {"corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/gpt2-bpe"), "steps": 4, "batch_size": 2,
            "seq_len": 128, "n_embd": 32, "n_layer": 2, "n_head": 2, "eval_every": 4, "eval_batches": 1,
            "checkpoint_every": 4, **extra}


def test_rows_seeds_tasks_land_in_the_csv_and_a_rerun_adds_nothing(tmp_path):
    overrides = _toy_setup(tmp_path, adapter_fraction=0.25)
    results = tmp_path / "gpt2_zeroshot_tiny.csv"
    kwargs = dict(results=results, runs=tmp_path / "runs", evalsets=str(tmp_path / "evalsets"), overrides=overrides)
    gpt2_zeroshot.run("tiny", [0], ["dense", "slope-r2.1%"], **kwargs)
    rows = list(csv.DictReader(results.open()))
    assert {(r["row"], r["task"]) for r in rows} >= {(row, task) for row in ("dense", "slope-r2.1%")
                                                     for task in ("slope_continuation", "slope_definitions")}
    assert all(r["git_sha"] and r["device"] and r["date"] for r in rows)
    table = results.with_suffix(".md").read_text()
    assert "| dense |" in table and "| slope-r2.1% |" in table and "Extended SR-STE" in table  # paper rows beside
    curve = list(csv.DictReader((tmp_path / "gpt2_losses/tiny/slope-r2.1%_seed0.csv").open()))
    assert [int(r["step"]) for r in curve] == list(range(1, 5)) and curve[-1]["val_loss"]  # the run's whole curve
    assert "gpt2_losses/tiny/" in table
    gpt2_zeroshot.run("tiny", [0], ["dense", "slope-r2.1%"], **kwargs)  # resumes: nothing new to do
    assert len(list(csv.DictReader(results.open()))) == len(rows)


def test_train_here_score_there_through_shards(tmp_path):
    import shutil

    overrides = _toy_setup(tmp_path)
    results = tmp_path / "out.csv"
    kwargs = dict(results=results, evalsets=str(tmp_path / "evalsets"), overrides=overrides)
    gpt2_zeroshot.run("tiny", [0], ["slope-r0"], runs=tmp_path / "gpu_runs", stage="train",
                      export=tmp_path / "shards", **kwargs)
    assert not results.exists() and (tmp_path / "shards" / "slope-r0-s0.0.pt").exists()
    shutil.rmtree(tmp_path / "gpu_runs")  # the other machine has only the shards
    gpt2_zeroshot.run("tiny", [0], ["slope-r0"], runs=tmp_path / "cpu_runs", stage="eval",
                      import_dir=tmp_path / "shards", eval_limit=5, **kwargs)
    rows = list(csv.DictReader(results.open()))
    assert rows and all("(pretraining)" in r["device"] and r["final_val_loss"] for r in rows)
    assert (tmp_path / "gpt2_losses/tiny/slope-r0_seed0.csv").exists()  # the curve came along in the shards
    assert {r["eval_limit"] for r in rows} == {"5"} and "5 items per task" in results.with_suffix(".md").read_text()
    # another row scored on another number of items would not be comparable: refused, naming both
    with pytest.raises(SystemExit, match=r"scored on \['5'\] items per task, this run would score 50"):
        gpt2_zeroshot.run("tiny", [0], ["dense"], runs=tmp_path / "cpu_runs", stage="eval",
                          import_dir=tmp_path / "shards", **kwargs)


def test_paper_scale_is_scored_on_the_papers_lm_eval_tasks(tmp_path, monkeypatch):
    """At `paper` scale the table asks lm-eval for the real benchmarks (hub), not the generated stand-ins."""
    from experiments import zeroshot

    asked = {}

    def fake_evaluate(model, tokenizer, tasks, evalsets, limit, device, include_defaults):
        asked.update(tasks=tasks, include_defaults=include_defaults)
        return {"hellaswag": {"acc,none": 0.25}}

    monkeypatch.setattr(zeroshot, "evaluate", fake_evaluate)
    overrides = _toy_setup(tmp_path, steps=2, eval_every=2, checkpoint_every=2, amp="none", eps=1e-8)
    gpt2_zeroshot.run("paper", [0], ["dense"], results=tmp_path / "paper.csv", runs=tmp_path / "runs",
                      evalsets=str(tmp_path / "evalsets"), overrides=overrides)
    assert asked == {"tasks": zeroshot.PAPER_TASKS, "include_defaults": True}
    assert {r["task"] for r in csv.DictReader((tmp_path / "paper.csv").open())} == {"hellaswag"}
