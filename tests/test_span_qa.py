"""Fine-tuning metrics on hand-worked cases: SQuAD EM / F1, MCC, and span labels <-> answer text."""
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("sklearn")

import torch  # noqa: E402

from experiments import finetune  # noqa: E402
from experiments.span_qa import (encode_spans, extract_answers, normalize_answer, squad_scores,  # noqa: E402
                                 token_f1)


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    assert normalize_answer("an apple a day") == "apple day"
    # prediction "the black cat sat" vs gold "a cat sat down": tokens {black, cat, sat} vs {cat, sat, down}
    assert token_f1("the black cat sat", "a cat sat down") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("The", "a") == 1.0 and token_f1("", "cat") == 0.0  # both normalise to nothing: F1 = EM = 1
    scores = squad_scores(["The Eiffel Tower", "paris", ""], [["Eiffel tower"], ["Paris, France", "Paris"], ["x"]])
    assert scores["em"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)


def test_classification_metrics_by_hand():
    cfg = finetune.PRESETS["tiny"]
    truth, predicted = [1, 1, 0, 0], [1, 0, 0, 0]  # TP 1, FN 1, TN 2, FP 0
    scores = finetune.classification_scores(truth, predicted, ("mcc", "acc", "f1"), num_labels=2)
    assert scores["mcc"] == pytest.approx(2 / 12 ** 0.5)  # (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    assert scores["acc"] == 0.75 and scores["f1"] == pytest.approx(2 / 3)
    assert cfg.task in finetune.TASKS


def test_span_labels_point_at_the_answer_and_extraction_returns_it(tmp_path):
    from experiments.data.tokenizer import load_tokenizer, train_bert_wordpiece

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog near the river bank\n" * 20)
    tokenizer = load_tokenizer(train_bert_wordpiece([str(text)], tmp_path / "tok", 200), "bert", 64)
    context = "The quick brown fox jumps over the lazy dog near the river bank. " * 3
    start = context.index("lazy dog", 60)  # the answer in the second copy
    example = {"question": "Fill the blank: jumps over the ____ dog", "context": context,
               "answers": {"text": ["lazy dog"], "answer_start": [start]}}
    features = encode_spans(tokenizer, [example], seq_len=32, doc_stride=8, max_query_len=12, with_labels=True)
    assert len(features["example"]) > 1  # the context needed several windows
    inside = [i for i in range(len(features["example"])) if features["start_positions"][i] > 0]
    assert inside, "some window holds the whole answer"
    n = features["input_ids"].shape[1]
    starts, ends = torch.full((len(features["example"]), n), -10.0), torch.full((len(features["example"]), n), -10.0)
    for i in inside:  # one-hot logits at the labels: extraction must give back the answer text
        starts[i, features["start_positions"][i]] = ends[i, features["end_positions"][i]] = 10.0
        offsets = features["offsets"][i]
        s, e = offsets[features["start_positions"][i]], offsets[features["end_positions"][i]]
        assert context[s[0]:e[1]] == "lazy dog" and s[0] == start
    assert extract_answers([example], features, starts, ends) == ["lazy dog"]
