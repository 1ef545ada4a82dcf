"""`make bert-glue` / `bert-mixed` end to end at toy scale: shared pretraining, CSV schema, table, resume."""
import csv
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from accuracy_experiments import bert_tables  # noqa: E402
from experiments import bert_pretrain  # noqa: E402
from experiments.results_io import PROVENANCE_COLUMNS  # noqa: E402
from tests.test_bert_pretrain import TOY_FINETUNE, toy_bert_data  # noqa: E402

PRETRAIN = {"n_layer": 2, "hidden": 64, "n_head": 2, "intermediate": 128, "seq_len": 32, "batch_size": 4, "steps": 4,
            "eval_every": 4, "eval_batches": 1, "checkpoint_every": 4, "amp": "none"}


def test_tables_share_pretraining_write_the_schema_and_resume(tmp_path):
    corpus, tasks = toy_bert_data(tmp_path)
    pretrain = {**PRETRAIN, "corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/bert-wordpiece")}
    kwargs = dict(runs=tmp_path / "runs", data=str(tasks), curves=tmp_path / "curves", pretrain_overrides=pretrain,
                  finetune_overrides={**TOY_FINETUNE, "steps": 2})
    glue = tmp_path / "bert_glue_tiny.csv"
    bert_tables.run("bert_glue", "tiny", [0], ["slope-r0"], results=glue, **kwargs)
    rows = list(csv.DictReader(glue.open()))
    assert list(rows[0]) == [*bert_tables.COLUMNS, *PROVENANCE_COLUMNS]
    assert [(r["task"], r["metric"]) for r in rows] == [("acceptability", "mcc"), ("coherence", "acc"),
                                                        ("coherence", "f1"), ("source", "acc")]
    assert {(r["row"], r["method"], r["adapter_rank"], r["sparsity"], r["seed"]) for r in rows} == {
        ("slope-r0", "slope", "0", "2:4", "0")}
    assert all(-1 <= float(r["value"]) <= 1 and float(r["final_val_loss"]) > 0 and r["git_sha"] for r in rows)
    table = glue.with_suffix(".md").read_text()
    assert "| slope-r0 |" in table and "GLUE average" in table and "Chance:" in table  # the paper's rows beside
    assert len(list((tmp_path / "curves").glob("*.csv"))) == 1

    mixed = tmp_path / "bert_mixed_tiny.csv"
    bert_tables.run("bert_mixed", "tiny", [0], ["slope-2:4-2:4", "wanda-2:8-2:4"], results=mixed, **kwargs)
    # 2:4-2:4 is slope-r0's run (its three GLUE-task scores reused); Wanda pruned a new dense one
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs/tiny").iterdir()) == ["dense", "slope"]
    rows = list(csv.DictReader(mixed.open()))
    assert {r["task"] for r in rows} == {"acceptability", "coherence", "source", "span"}
    assert {(r["method"], r["sparsity"]) for r in rows} == {("slope", "2:4-2:4"), ("wanda", "2:8-2:4")}
    glue_scores = {(r["task"], r["metric"]): r["value"] for r in csv.DictReader(glue.open())}
    assert all(glue_scores[(r["task"], r["metric"])] == r["value"] for r in rows
               if r["row"] == "slope-2:4-2:4" and r["task"] != "span")
    bert_tables.run("bert_mixed", "tiny", [0], ["slope-2:4-2:4", "wanda-2:8-2:4"], results=mixed, **kwargs)
    assert len(list(csv.DictReader(mixed.open()))) == len(rows)  # resumed: nothing new to do
    # one column's cells deleted (say, a changed recipe): a run restricted to that task puts back exactly those
    with mixed.open(newline="") as f:
        reader = csv.DictReader(f)
        header, kept = reader.fieldnames, [r for r in reader if r["task"] != "span"]
    with mixed.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
    bert_tables.run("bert_mixed", "tiny", [0], ["slope-2:4-2:4", "wanda-2:8-2:4"], results=mixed, tasks=["span"],
                    **kwargs)
    again = list(csv.DictReader(mixed.open()))
    assert sorted((r["row"], r["task"], r["metric"], r["value"]) for r in again) == sorted(
        (r["row"], r["task"], r["metric"], r["value"]) for r in rows)
    assert "| wanda-2:8-2:4 |" in mixed.with_suffix(".md").read_text()


def test_rank_rows_start_from_the_rank0_runs_branch(tmp_path, capsys):
    corpus, tasks = toy_bert_data(tmp_path)
    pretrain = {**PRETRAIN, "corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/bert-wordpiece")}
    bert_tables.run("bert_glue", "tiny", [0], ["slope-r0", "slope-r1.56%"], results=tmp_path / "glue.csv",
                    runs=tmp_path / "runs", data=str(tasks), pretrain_overrides=pretrain,
                    finetune_overrides={**TOY_FINETUNE, "steps": 1})
    rank0, ranked = (next((tmp_path / "runs/tiny").glob(f"slope-2:4-{key}-*")) / "seed0" for key in ("r0", "r1.56pct"))
    assert "starting from the branch of" in capsys.readouterr().err
    curves = [list(csv.DictReader((run / "losses.csv").open())) for run in (rank0, ranked)]
    assert curves[0][:3] == curves[1][:3] and curves[0][3] != curves[1][3]  # adapters from step 3 of 4 on
    assert {r["row"] for r in csv.DictReader((tmp_path / "glue.csv").open())} == {"slope-r0", "slope-r1.56%"}


def test_a_rank_row_waits_for_the_rank0_run_another_process_is_training(tmp_path, capsys):
    corpus, tasks = toy_bert_data(tmp_path)
    pretrain = {**PRETRAIN, "corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/bert-wordpiece")}
    runs = tmp_path / "runs"
    rank0_cfg, _ = bert_tables.pretrain_config("tiny", bert_tables.TABLES["bert_glue"]["rows"]["slope-r0"], 0, runs,
                                               pretrain)
    ranked = threading.Thread(target=bert_tables.run, args=("bert_squad", "tiny", [0], ["slope-r1.56%"]),
                              kwargs=dict(results=tmp_path / "squad.csv", runs=runs, data=str(tasks),
                                          pretrain_overrides=pretrain, finetune_overrides={**TOY_FINETUNE, "steps": 1}))
    # "another process" (the lock is per open file, so a thread of this one stands in) trains rank 0 meanwhile
    with bert_tables._run_lock(Path(rank0_cfg.out)):
        ranked.start()
        time.sleep(1.0)  # the rank row reaches the lock and waits there
        bert_pretrain.train(rank0_cfg)
    ranked.join(timeout=300)
    err = capsys.readouterr().err
    assert f"{rank0_cfg.out} is being computed by another process; waiting for it" in err
    assert f"starting from the branch of {rank0_cfg.out}" in err  # not from scratch
    assert {r["row"] for r in csv.DictReader((tmp_path / "squad.csv").open())} == {"slope-r1.56%"}


def test_processes_on_one_row_split_its_finetunings(tmp_path, monkeypatch):
    """A fine-tuning another process holds is passed over; the others run first (longest first), then the held one
    is waited on."""
    configs = {task: bert_tables.finetune.FinetuneConfig(task=task, out=str(tmp_path / task), span_steps=80)
               for task in ("acceptability", "coherence", "span")}
    ran = []

    def fake_finetune(cfg):
        ran.append(cfg.task)
        return {"metrics": {"score": len(ran)}}

    monkeypatch.setattr(bert_tables.finetune, "finetune", fake_finetune)
    result = {}
    worker = threading.Thread(target=lambda: result.update(bert_tables.finetune_all(configs)))
    with bert_tables._run_lock(Path(configs["acceptability"].out)):  # "another process" computes acceptability
        worker.start()
        deadline = time.monotonic() + 30
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == ["span", "coherence"]  # the longest first, and not blocked behind the held one
    worker.join(timeout=30)
    assert ran == ["span", "coherence", "acceptability"]
    assert list(result) == ["acceptability", "coherence", "span"]  # the table's order, whoever ran first


def test_a_rank_row_alone_trains_the_rank0_run_and_branches_from_it(tmp_path, capsys):
    corpus, tasks = toy_bert_data(tmp_path)
    pretrain = {**PRETRAIN, "corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/bert-wordpiece")}
    runs = tmp_path / "runs"
    bert_tables.run("bert_squad", "tiny", [0], ["slope-r6.25%"], results=tmp_path / "squad.csv", runs=runs,
                    data=str(tasks), pretrain_overrides=pretrain, finetune_overrides={**TOY_FINETUNE, "steps": 1})
    rank0_cfg, _ = bert_tables.pretrain_config("tiny", bert_tables.TABLES["bert_squad"]["rows"]["slope-r0"], 0, runs,
                                               pretrain)
    assert f"starting from the branch of {rank0_cfg.out}" in capsys.readouterr().err
    steps = [int(r["step"]) for r in csv.DictReader((Path(rank0_cfg.out) / "losses.csv").open())]
    assert steps[-1] == PRETRAIN["steps"]  # the rank-0 row's run is done too, for its own row to reuse


def _worker(jobs, runs, tasks, pretrain, start):  # a spawned process: one table worker
    bert_tables.run_jobs(jobs, "tiny", [0], runs=runs, data=str(tasks), pretrain_overrides=pretrain,
                         finetune_overrides={**TOY_FINETUNE, "steps": 1}, start=start)


def test_worker_processes_share_the_units_and_match_one_process(tmp_path):
    import multiprocessing

    corpus, tasks = toy_bert_data(tmp_path)
    pretrain = {**PRETRAIN, "corpus": str(corpus), "tokenizer": str(corpus / "tokenizers/bert-wordpiece")}

    def jobs(folder):
        return [bert_tables.Job("bert_squad", ("dense", "slope-r0", "slope-r1.56%"), folder / "squad.csv"),
                bert_tables.Job("bert_mixed", ("slope-2:4-2:4",), folder / "mixed.csv", ("coherence", "span"))]

    alone, shared = tmp_path / "alone", tmp_path / "shared"
    _worker(jobs(alone), alone / "runs", tasks, pretrain, 0)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(jobs(shared), shared / "runs", tasks, pretrain, i))
               for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    assert [w.exitcode for w in workers] == [0, 0]

    def cells(path):
        rows = list(csv.DictReader(path.open()))
        return sorted((r["row"], r["seed"], r["task"], r["metric"], r["value"], r["final_val_loss"]) for r in rows)

    for name in ("squad.csv", "mixed.csv"):
        got = cells(shared / name)
        assert len(got) == len({c[:4] for c in got})  # every cell once, whoever computed it
        assert got == cells(alone / name)  # and the same numbers as one process
    # one pretraining per distinct run (slope-2:4-2:4 is slope-r0's), each fine-tuning once
    assert len(list((shared / "runs/tiny").glob("*/seed0/losses.csv"))) == 3
    assert (shared / "mixed.md").exists() and (shared / "squad.md").exists()


def test_the_launcher_starts_workers_with_its_own_arguments(tmp_path, monkeypatch):
    from accuracy_experiments import bert_parallel

    _, tasks = toy_bert_data(tmp_path)
    started = []

    class FakeWorker:
        returncode = 0

        def __init__(self, command, **kwargs):
            started.append((command, kwargs["env"]["OMP_NUM_THREADS"]))

        def poll(self):
            return 0

    monkeypatch.setattr(bert_parallel.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(bert_parallel.time, "sleep", lambda s: None)
    argv = ["--tables", "bert_squad", "--seeds", "0", "--procs", "2", "--scale", "tiny", "--data", str(tasks),
            "--runs", str(tmp_path / "runs"), "--results-dir", str(tmp_path)]
    assert bert_parallel.main(argv) == 0
    assert [c[-2:] for c, _ in started] == [["--worker", "0"], ["--worker", "1"]]
    assert all(c[1:3] == ["-m", "accuracy_experiments.bert_parallel"] and c[3:-2] == argv for c, _ in started)
    with pytest.raises(SystemExit):
        bert_parallel.main(["--tables", "bert_nope", "--data", str(tasks)])
