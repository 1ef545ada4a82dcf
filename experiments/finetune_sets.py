"""Generated fine-tuning tasks for BERT (stand-ins for GLUE and SQuAD), from the offline corpus.

* ``acceptability`` (CoLA-style, metric MCC): a prose sentence as written (1) or locally corrupted (0): two
  adjacent words swapped, one word dropped, or one word doubled.
* ``coherence`` (RTE/MRPC-style, acc/F1): a sentence pair that follows in its document (1) or a sentence and one
  from another document (0).
* ``source`` (SST-style classification, acc): which corpus source a passage comes from.
* ``span`` (SQuAD-style extraction, EM/F1): a passage and a cloze question — one of its sentences with a word
  replaced by "____"; the answer is that word's character span in the passage.

Train items come from the corpus' ``train`` split, validation items from its held-out ``test`` split, so the
fine-tuning evaluation never sees a document that pretraining saw. Each task is ``{task}/{train,validation}.jsonl``
plus a datasheet; all are stand-ins generated here, not the paper's benchmarks.

    python -m experiments.finetune_sets --corpus data/corpus --out data/finetune
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from experiments.evalsets import PROSE_SOURCES, _write_atomic, sentences

_TOKEN = re.compile(r"[A-Za-z]{3,}")


def _prose_sentences(records: list[dict]) -> list[tuple[int, list[str]]]:
    return [(i, [s for s in sentences(r["text"]) if 30 <= len(s) <= 300])
            for i, r in enumerate(records) if r["source"] in PROSE_SOURCES]


def corrupt(sentence: str, rng: random.Random) -> str | None:
    words = sentence.split()
    if len(words) < 5:
        return None
    i = rng.randrange(1, len(words) - 2)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap" and words[i] != words[i + 1]:
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "drop":
        del words[i]
    else:
        words.insert(i, words[i])
    out = " ".join(words)
    return out if out != sentence else None


def acceptability_items(records, rng, limit):
    items = []
    for _, sents in _prose_sentences(records):
        for s in sents:
            bad = corrupt(s, rng)
            if bad:
                items += [{"sentence": s, "label": 1}, {"sentence": bad, "label": 0}]
    rng.shuffle(items)
    return items[:limit]


def coherence_items(records, rng, limit):
    docs = _prose_sentences(records)
    pool = [(i, s) for i, sents in docs for s in sents]
    items = []
    for i, sents in docs:
        for first, second in zip(sents, sents[1:]):
            items.append({"sentence1": first, "sentence2": second, "label": 1})
            j, other = rng.choice(pool)
            if j != i:
                items.append({"sentence1": first, "sentence2": other, "label": 0})
    rng.shuffle(items)
    return items[:limit]


def source_items(records, rng, limit, labels: tuple[str, ...]):
    items = [{"text": r["text"][:400], "label": labels.index(r["source"])} for r in records if r["source"] in labels]
    rng.shuffle(items)
    # balance the classes so accuracy is not the majority-class rate
    per_class = min(sum(1 for x in items if x["label"] == k) for k in range(len(labels)))
    counts, balanced = [0] * len(labels), []
    for item in items:
        if counts[item["label"]] < per_class:
            counts[item["label"]] += 1
            balanced.append(item)
    return balanced[:limit]


# Function words are never the blank: "the" was 9% of the answers, and a model that always answers "the" matched
# them anywhere in the passage (SQuAD scoring compares text), inflating EM with no reading at all.
SPAN_STOPWORDS = frozenset(
    "the and for that with this are was were from not but you your his her its our their they them she him has "
    "have had been being which who whom what when where why how all any can could would should will shall may "
    "might must into onto than then there here also such some one two per via upon each other more most very "
    "only just out off over under about after before between both did does doing done own same too nor yet".split())


def span_items(records, rng, limit):
    items = []
    for i, sents in _prose_sentences(records):
        for start in range(0, len(sents) - 2, 3):
            context = " ".join(sents[start:start + 3])
            target_sentence = sents[start + rng.randrange(3)]
            words = [m for m in _TOKEN.finditer(target_sentence) if m.group().lower() not in SPAN_STOPWORDS]
            if not words:
                continue
            word = rng.choice(words)
            offset = context.find(target_sentence) + word.start()
            question = target_sentence[:word.start()] + "____" + target_sentence[word.end():]
            items.append({"context": context, "question": f"Fill the blank: {question}",
                          "answers": {"text": [word.group()], "answer_start": [offset]}})
    rng.shuffle(items)
    return items[:limit]


SOURCE_LABELS = ("gcide", "wordnet", "python-docs", "jargon")
TASKS = {
    "acceptability": (acceptability_items, "MCC", "50% (balanced) / MCC 0"),
    "coherence": (coherence_items, "accuracy, F1", "about 50%"),
    "source": (lambda r, g, n: source_items(r, g, n, SOURCE_LABELS), "accuracy",
               f"{100 / len(SOURCE_LABELS):.0f}% (balanced over {', '.join(SOURCE_LABELS)})"),
    "span": (span_items, "exact match, F1 (SQuAD normalisation)", "≈0"),
}


def build_finetune_sets(corpus: Path, out: Path, *, seed: int = 0, train_items: int = 20000,
                        validation_items: int = 2000) -> dict[str, dict[str, int]]:
    splits = {"train": ("train", train_items), "validation": ("test", validation_items)}
    counts: dict[str, dict[str, int]] = {}
    loaded = {name: [json.loads(line) for line in (corpus / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
              for name in {"train", "test"}}
    for task, (make, metric, chance) in TASKS.items():
        counts[task] = {}
        for split, (corpus_split, limit) in splits.items():
            items = make(loaded[corpus_split], random.Random(f"{seed}:{task}:{split}"), limit)
            counts[task][split] = len(items)
            _write_atomic(out / task / f"{split}.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
        _write_atomic(out / task / "DATASHEET.md", (
            f"# {task}\n\nA stand-in generated by this suite, **not** a GLUE/SQuAD task.\n\n"
            f"- How: {TASKS_HOW[task]}\n- Train: {counts[task]['train']} items from "
            f"the corpus `train` split; validation: {counts[task]['validation']} items from its held-out `test` split "
            f"(seed {seed}).\n- Metric: {metric}. Chance: {chance}.\n"))
    return counts


TASKS_HOW = {
    "acceptability": "held-out prose sentences as written (label 1) or with one local corruption — adjacent words "
                     "swapped, a word dropped or doubled (label 0); balanced.",
    "coherence": "a sentence and the sentence after it in the same document (1), or a sentence from another "
                 "document (0).",
    "source": "the first 400 characters of a document; the label is its corpus source; classes balanced.",
    "span": "three consecutive sentences as the passage; one word (3+ letters, not a function word such as "
            "'the') of one of them blanked in the question; the answer is its character span in the passage.",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--out", default="data/finetune")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = build_finetune_sets(Path(args.corpus), Path(args.out), seed=args.seed)
    for task, sizes in counts.items():
        print(f"{task:>14}: {sizes}")
    return counts


if __name__ == "__main__":
    main()
