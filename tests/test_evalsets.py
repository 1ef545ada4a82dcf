"""Generated evaluation sets from held-out documents (small local corpus; lm-eval itself runs where installed)."""
import json

import pytest

from experiments import evalsets

PROSE = ("The parser reads a file. It builds a tree from the tokens it finds. Each node of the tree keeps "
         "its children in order. The printer walks the tree and writes every node back into the file. A tree "
         "that was read can be written again without loss. Comments are kept with the following node. ")


def _corpus(tmp_path):
    records = [{"source": "python-docs", "id": f"doc{i}", "title": f"doc{i}",
                "text": PROSE.replace("tree", ["tree", "graph", "forest", "table"][i]) + f"Document {i} ends here."}
               for i in range(4)]
    records += [{"source": "wordnet", "id": f"noun:{i:08d}", "title": w, "text": f"{w}, other: {gloss}"}
                for i, (w, gloss) in enumerate([("departure", "the act of leaving a place"),
                                                ("propulsion", "the act of pushing something forward"),
                                                ("refugee", "a person who has been forced to leave home"),
                                                ("weekend", "the time from friday evening to monday"),
                                                ("apple", "fruit with red or yellow or green skin")])]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return corpus, records


def test_items_have_the_right_answers_and_tasks_are_lm_eval_configs(tmp_path):
    corpus, records = _corpus(tmp_path)
    counts = evalsets.build_evalsets(corpus, tmp_path / "out", seed=1)
    assert all(counts[t] > 0 for t in evalsets.TASKS) and counts["slope_perplexity"] == len(records)
    load = lambda task: [json.loads(x) for x in (tmp_path / "out" / task / f"{task}.jsonl").read_text().splitlines()]  # noqa: E731
    texts = {r["id"]: r["text"] for r in records}
    for item in load("slope_continuation"):
        gold = item["choices"][item["gold"]]
        assert item["context"] + " " + gold in texts[item["doc_id"]]  # the true next sentence
        assert len(set(item["choices"])) == 4
        assert all(c not in texts[item["doc_id"]] for i, c in enumerate(item["choices"]) if i != item["gold"])
    for item in load("slope_lastword"):
        word = item["target"].strip()
        assert word.lower() in item["context"].lower() and (item["context"] + item["target"]) in texts[item["doc_id"]]
    for item in load("slope_definitions"):
        head = item["choices"][item["gold"]].strip()
        assert f"{head}, other: {item['definition']}" in texts.values()
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((tmp_path / "out/slope_definitions/slope_definitions.yaml").read_text())
    data_file = config["dataset_kwargs"]["data_files"]["test"]
    assert config["dataset_path"] == "json" and data_file.startswith("/") and data_file.endswith(".jsonl")
    assert config["doc_to_text"] == "Definition: {{definition}}\nWord:" and config["output_type"] == "multiple_choice"
    assert "not** the paper's benchmark" in (tmp_path / "out/slope_definitions/DATASHEET.md").read_text()


def test_generation_is_deterministic(tmp_path):
    corpus, _ = _corpus(tmp_path)
    evalsets.build_evalsets(corpus, tmp_path / "a", seed=2)
    evalsets.build_evalsets(corpus, tmp_path / "b", seed=2)
    for task in evalsets.TASKS:
        assert (tmp_path / "a" / task / f"{task}.jsonl").read_bytes() == (tmp_path / "b" / task / f"{task}.jsonl").read_bytes()
