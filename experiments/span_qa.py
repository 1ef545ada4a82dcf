"""SQuAD-style extractive spans for BERT: features with a sliding window, answer extraction, EM / F1.

* `encode_spans`: question + context pairs through the fast tokenizer with ``truncation="only_second"``, a
  ``doc_stride`` overlap between windows of a long context, and the character offsets of every token. A training
  feature's label is the answer's first / last token, or [CLS] (index 0) when the answer is not wholly inside
  its window (as BERT's SQuAD recipe does). Questions longer than ``max_query_len`` tokens are cut to a window
  around the blank "____" of the suite's cloze questions (or their start), so every window keeps context room.
* `extract_answers`: per example, over all its windows, the best (start + end logit) span inside the context, at
  most ``max_answer_len`` tokens, mapped back to the context's characters through the offsets.
* `squad_scores`: exact match and token F1 with the official SQuAD v1.1 normalisation (lower case, no
  punctuation, no articles a/an/the, single spaces), the max over the gold answers, as fractions in [0, 1].
  Answers that normalise to nothing (a blanked "the") score F1 = EM, as in SQuAD v2's script.
"""
from __future__ import annotations

import collections
import re
import string

import torch


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation (evaluate-v1.1.py)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        # an answer that normalises to nothing ("the"): 1 if both do, as SQuAD v2's script has it (v1.1's would
        # give F1 0 beside EM 1), so F1 >= EM always
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """{"em", "f1"}: means over examples of the best score against any gold answer."""
    if len(predictions) != len(answers) or not predictions:
        raise ValueError(f"squad_scores: {len(predictions)} predictions for {len(answers)} examples")
    em = sum(max(exact_match(p, t) for t in truths) for p, truths in zip(predictions, answers))
    f1 = sum(max(token_f1(p, t) for t in truths) for p, truths in zip(predictions, answers))
    return {"em": em / len(predictions), "f1": f1 / len(predictions)}


def shorten_question(tokenizer, question: str, max_query_len: int) -> str:
    """At most ``max_query_len`` tokens of ``question``: a window around its blank "____", else its start."""
    # through the transformers wrapper, which resets the truncation a previous pair encoding left set
    offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    if len(offsets) <= max_query_len:
        return question
    blank = next((i for i, (a, b) in enumerate(offsets) if "_" in question[a:b]), 0)
    first = min(max(0, blank - max_query_len // 2), len(offsets) - max_query_len)
    return question[offsets[first][0]:offsets[first + max_query_len - 1][1]]


def encode_spans(tokenizer, examples: list[dict], *, seq_len: int, doc_stride: int, max_query_len: int,
                 with_labels: bool) -> dict:
    """Features of ``examples`` (dicts with question, context, answers{text, answer_start})."""
    if seq_len - max_query_len - 3 <= doc_stride:
        raise ValueError(f"seq_len {seq_len} leaves {seq_len - max_query_len - 3} context tokens after a "
                         f"{max_query_len}-token question; doc_stride {doc_stride} must be smaller: lower "
                         "--doc-stride or --max-query-len, or raise --seq-len")
    questions = [shorten_question(tokenizer, e["question"], max_query_len) for e in examples]
    enc = tokenizer(questions, [e["context"] for e in examples], truncation="only_second", max_length=seq_len,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length", return_token_type_ids=True)
    example_of = enc["overflow_to_sample_mapping"]
    # offsets of context tokens only; None elsewhere (question, specials, padding)
    offsets = [[o if s == 1 else None for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
               for i in range(len(example_of))]
    features = {key: torch.tensor(enc[key]) for key in ("input_ids", "attention_mask", "token_type_ids")}
    features["example"], features["offsets"] = list(example_of), offsets
    if with_labels:
        starts, ends = [], []
        for i, e in enumerate(example_of):
            answer = examples[e]["answers"]
            first_char = answer["answer_start"][0]
            last_char = first_char + len(answer["text"][0])
            tokens = [t for t, o in enumerate(offsets[i]) if o is not None]
            start = next((t for t in tokens if offsets[i][t][0] <= first_char < offsets[i][t][1]), None)
            end = next((t for t in reversed(tokens) if offsets[i][t][0] < last_char <= offsets[i][t][1]), None)
            inside = start is not None and end is not None and start <= end
            starts.append(start if inside else 0)
            ends.append(end if inside else 0)
        features["start_positions"], features["end_positions"] = torch.tensor(starts), torch.tensor(ends)
    return features


def extract_answers(examples: list[dict], features: dict, start_logits: torch.Tensor, end_logits: torch.Tensor,
                    *, max_answer_len: int = 30, n_best: int = 20) -> list[str]:
    """The best-scoring context span of each example (over all its windows), as text."""
    best: dict[int, tuple[float, str]] = {}
    for i, e in enumerate(features["example"]):
        offsets = features["offsets"][i]
        starts = torch.topk(start_logits[i], min(n_best, start_logits.shape[1])).indices.tolist()
        ends = torch.topk(end_logits[i], min(n_best, end_logits.shape[1])).indices.tolist()
        for s in starts:
            for t in ends:
                if offsets[s] is None or offsets[t] is None or t < s or t - s + 1 > max_answer_len:
                    continue
                score = float(start_logits[i, s] + end_logits[i, t])
                if e not in best or score > best[e][0]:
                    best[e] = (score, examples[e]["context"][offsets[s][0]:offsets[t][1]])
    return [best.get(e, (0.0, ""))[1] for e in range(len(examples))]
