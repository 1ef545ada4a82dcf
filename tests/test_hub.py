"""Paper-scale loaders on local files in the hub datasets' real formats (same code path as a hub name)."""
import json

import pytest

from experiments.data import build, hub

pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402  (after the importorskip that guards it)


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openwebtext_format_builds_the_make_data_corpus_layout(tmp_path):
    docs = [f"Document {i} line one.\n\nAnd\tits second   line, long enough to keep." for i in range(40)]
    files = _parquet(tmp_path / "owt.parquet", [{"text": t} for t in docs] + [{"text": "   "}])
    out = tmp_path / "corpus"
    manifest = build.main(["--hf-dataset", "parquet", "--hf-data-files", files, "--out", str(out),
                           "--fractions", "0.6,0.2"])
    lines = {split: (out / f"{split}.txt").read_text().splitlines() for split in build.SPLITS}
    assert sorted(sum(lines.values(), [])) == sorted(" ".join(t.split()) for t in docs)  # cleaned, each once
    assert all(lines.values())
    records = _read(out / "train.jsonl")
    assert {r["source"] for r in records} == {"hf:parquet"} and [r["text"] for r in records] == lines["train"]
    entry = manifest["sources"][0]
    assert entry["package"] == "parquet" and sum(s["documents"] for s in entry["splits"].values()) == len(docs)
    assert json.loads((out / "manifest.json").read_text())["sha256"].keys() >= {"train.txt", "test.jsonl"}


def test_wikipedia_format_keeps_ids_and_titles(tmp_path):
    rows = [{"id": str(100 + i), "url": f"https://en.wikipedia.org/wiki?curid={100 + i}", "title": f"Article {i}",
             "text": f"Article {i} is about topic {i}."} for i in range(5)]
    docs = list(hub.pretraining_docs("json", data_files=_jsonl(tmp_path / "wiki.jsonl", rows)))
    assert [(d.doc_id, d.title, d.text) for d in docs] == [(r["id"], r["title"], r["text"]) for r in rows]
    with pytest.raises(KeyError, match="--hf-field"):
        next(hub.pretraining_docs("json", data_files=str(tmp_path / "wiki.jsonl"), field="body"))


def test_hub_names_and_local_builders_resolve():
    assert hub._hub_spec("openwebtext") == ("Skylion007/openwebtext", None)
    assert hub._hub_spec("wikipedia") == ("wikimedia/wikipedia", "20231101.en")
    assert hub._hub_spec("wikitext:wikitext-103-raw-v1") == ("wikitext", "wikitext-103-raw-v1")
    with pytest.raises(ValueError, match="data_files"):
        hub.load("parquet", split="train")


def _glue_fixtures(tmp_path):
    """Tiny GLUE tasks with the hub's columns (label -1 = GLUE's unlabelled test rows)."""
    cola = {"train": [{"sentence": f"Sentence {i} here.", "label": i % 2, "idx": i} for i in range(6)]
            + [{"sentence": "Unlabelled.", "label": -1, "idx": 6}],
            "validation": [{"sentence": "The cat sat.", "label": 1, "idx": 0}]}
    mrpc = {split: [{"sentence1": f"A {i}.", "sentence2": f"B {i}.", "label": i % 2, "idx": i} for i in range(4)]
            for split in ("train", "validation")}
    qnli = {split: [{"question": f"What is {i}?", "sentence": f"{i} is a number.", "label": 0, "idx": i}
                    for i in range(3)] for split in ("train", "validation")}
    stsb = {split: [{"sentence1": "A man plays.", "sentence2": "A man is playing.", "label": 4.6, "idx": 0}]
            for split in ("train", "validation")}
    mnli = {split: [{"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": i % 3, "idx": i} for i in range(3)]
            for split in ("train", "validation_matched", "validation_mismatched")}
    folder = tmp_path / "glue"
    folder.mkdir()
    return {task: {split: _parquet(folder / f"{task}-{split}.parquet", rows) for split, rows in splits.items()}
            for task, splits in {"cola": cola, "mrpc": mrpc, "qnli": qnli, "stsb": stsb, "mnli": mnli}.items()}


def test_glue_converts_to_the_generated_item_format(tmp_path):
    files = _glue_fixtures(tmp_path)
    out = tmp_path / "finetune"
    counts = {task: hub.build_glue(task, out, data_files=data_files) for task, data_files in files.items()}
    assert counts["cola"] == {"train": 6, "validation": 1}  # the unlabelled row is dropped
    # same keys as experiments.finetune_sets' acceptability (single) and coherence (pair) items
    assert _read(out / "cola" / "validation.jsonl") == [{"sentence": "The cat sat.", "label": 1}]
    assert _read(out / "mrpc" / "train.jsonl")[1] == {"sentence1": "A 1.", "sentence2": "B 1.", "label": 1}
    # the hub's own columns (what experiments.finetune keys on for qnli), idx dropped
    assert _read(out / "qnli" / "train.jsonl")[0] == {"question": "What is 0?", "sentence": "0 is a number.",
                                                      "label": 0}
    assert _read(out / "stsb" / "train.jsonl")[0]["label"] == pytest.approx(4.6)
    assert counts["mnli"] == {"train": 3, "validation": 3, "validation_mismatched": 3}
    info = hub.task_info(out / "mnli")
    assert info["kind"] == "classification" and info["num_labels"] == 3 and info["text_fields"] == ["premise",
                                                                                                   "hypothesis"]
    assert hub.task_info(out / "stsb")["kind"] == "regression"
    assert hub.task_info(out / "cola")["metrics"] == ["mcc"]
    with pytest.raises(ValueError, match="unknown GLUE task"):
        hub.build_glue("wnli", out)


def test_squad_converts_to_span_items_and_checks_offsets(tmp_path):
    context = "Normandy is a region in France. The Normans gave their name to it."
    rows = [{"id": "5733be284776f41900661182", "title": "Normans", "context": context,
             "question": "In what country is Normandy located?",
             "answers": {"text": ["France", "France"], "answer_start": [24, 24]}}]
    files = {split: _jsonl(tmp_path / f"squad-{split}.jsonl", rows) for split in ("train", "validation")}
    assert hub.build_squad(tmp_path / "out", data_files=files) == {"train": 1, "validation": 1}
    item = _read(tmp_path / "out" / "squad" / "validation.jsonl")[0]
    assert set(item) == {"context", "question", "answers"}  # the generated span task's keys
    start, text = item["answers"]["answer_start"][0], item["answers"]["text"][0]
    assert item["context"][start:start + len(text)] == text
    assert hub.task_info(tmp_path / "out" / "squad")["kind"] == "span"
    rows[0]["answers"]["answer_start"] = [3, 3]
    bad = {split: _jsonl(tmp_path / f"bad-{split}.jsonl", rows) for split in ("train", "validation")}
    with pytest.raises(ValueError, match="not at offset 3"):
        hub.build_squad(tmp_path / "bad", data_files=bad)


def test_task_info_infers_the_generated_sets(tmp_path):
    for task, items in {"acceptability": [{"sentence": "x", "label": 1}, {"sentence": "y", "label": 0}],
                        "source": [{"text": "x", "label": k} for k in range(4)],
                        "span": [{"context": "a b", "question": "q", "answers": {"text": ["b"], "answer_start": [2]}}]
                        }.items():
        (tmp_path / task).mkdir()
        _jsonl(tmp_path / task / "train.jsonl", items)
    assert hub.task_info(tmp_path / "acceptability")["text_fields"] == ["sentence"]
    assert hub.task_info(tmp_path / "source")["num_labels"] == 4
    assert hub.task_info(tmp_path / "span")["kind"] == "span"


def test_paper_scale_names_the_paper_benchmarks_and_the_default_stays_offline():
    from experiments import zeroshot
    assert zeroshot.tasks_for("paper") == (zeroshot.PAPER_TASKS, True)
    assert zeroshot.tasks_for("tiny") == zeroshot.tasks_for("small") == (zeroshot.TASKS, False)


@pytest.mark.slow
def test_lm_eval_knows_the_paper_task_names_offline(monkeypatch):
    """lm-eval's default index is local YAML (~12 s): resolving the names needs no network."""
    pytest.importorskip("lm_eval")
    from experiments.zeroshot import OFFLINE, PAPER_TASKS
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    from lm_eval.tasks import TaskManager
    assert set(PAPER_TASKS) <= set(TaskManager().all_tasks)
