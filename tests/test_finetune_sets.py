"""Generated BERT fine-tuning tasks: labels and spans are right, held-out documents feed only validation."""
import json
import random
from collections import Counter

from experiments import finetune_sets
from tests.test_evalsets import PROSE


def _corpus(tmp_path):
    def records(tag, n):
        prose = [{"source": src, "id": f"{tag}{i}", "title": "", "text": PROSE.replace("tree", f"{tag}tree{i}")}
                 for i in range(n) for src in ("python-docs", "jargon")]
        words = [{"source": src, "id": f"{tag}w{i}", "title": "", "text": f"{tag} entry {i} of {src}: a gloss"}
                 for i in range(n) for src in ("gcide", "wordnet")]
        return prose + words
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, tag, n in (("train", "tr", 6), ("test", "te", 3)):
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(tag, n)))
    return corpus


def test_tasks_have_correct_labels_spans_and_held_out_validation(tmp_path):
    counts = finetune_sets.build_finetune_sets(_corpus(tmp_path), tmp_path / "out", train_items=500,
                                               validation_items=500)
    load = lambda task, split: [json.loads(x) for x in (tmp_path / "out" / task / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    assert all(sizes["train"] > 0 and sizes["validation"] > 0 for sizes in counts.values())
    held_out = {s for i in range(3) for s in finetune_sets.sentences(PROSE.replace("tree", f"tetree{i}"))}
    for item in load("acceptability", "validation"):
        assert (item["label"] == 1) == (item["sentence"] in held_out)  # positives are held-out sentences as written
    for item in load("coherence", "validation"):
        joined = item["sentence1"] + " " + item["sentence2"]
        assert (item["label"] == 1) == any(joined in PROSE.replace("tree", f"tetree{i}") for i in range(3))
    for item in load("span", "train") + load("span", "validation"):
        start, text = item["answers"]["answer_start"][0], item["answers"]["text"][0]
        assert item["context"][start:start + len(text)] == text and "____" in item["question"]
        assert text.lower() not in finetune_sets.SPAN_STOPWORDS  # "the" answers made EM free
    for item in load("span", "validation"):
        assert "tetree" in item["context"] or "tree" not in item["context"]  # built from held-out documents only
    labels = Counter(item["label"] for item in load("source", "train"))
    assert len(labels) == len(finetune_sets.SOURCE_LABELS) and len(set(labels.values())) == 1  # balanced


def test_corruption_changes_the_sentence_locally():
    rng = random.Random(0)
    sentence = "The printer walks the tree and writes every node back into the file."
    for _ in range(20):
        bad = finetune_sets.corrupt(sentence, rng)
        assert bad is None or (bad != sentence and abs(len(bad.split()) - len(sentence.split())) <= 1)
