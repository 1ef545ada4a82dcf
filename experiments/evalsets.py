"""Generated zero-shot evaluation sets, built only from held-out corpus documents, as lm-eval custom tasks.

The paper's benchmarks (HellaSwag, LAMBADA, ARC, ...) cannot be downloaded here, so the suite generates
stand-ins from documents no model trained on (the corpus' ``test`` split), and says so in each datasheet:

* ``slope_continuation`` (HellaSwag-style): a sentence of a held-out prose document, then choose its true next
  sentence among 4 (the others: sentences of similar length from other held-out documents). Chance 25%.
* ``slope_lastword`` (LAMBADA-style): a passage whose final word already occurred earlier in it; predict that
  word. Accuracy = the word is the model's greedy continuation. Chance ≈ 0.
* ``slope_definitions``: a WordNet gloss; choose the word it defines among 4 words of the same part of speech.
  Chance 25%.
* ``slope_perplexity``: held-out documents of every source, scored with ``loglikelihood_rolling``
  (word/byte perplexity, bits per byte).

Each task is a folder with ``{task}.jsonl``, ``{task}.yaml`` (``dataset_path: json`` with an absolute
``data_files`` path, which lm-eval needs) and ``DATASHEET.md``. Load with
``lm_eval.tasks.TaskManager(include_path=<out>, include_defaults=False)``.

    python -m experiments.evalsets --corpus data/corpus --out data/evalsets
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from experiments.atomic import atomic_open

PROSE_SOURCES = ("python-docs", "jargon", "gnu-standards", "debian-reference", "doc-debian", "devils-dictionary")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORD = re.compile(r"[A-Za-z]{4,}")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def continuation_items(records: list[dict], rng: random.Random, n_choices: int = 4) -> list[dict]:
    prose = [r for r in records if r["source"] in PROSE_SOURCES]
    pool = [(i, s) for i, r in enumerate(prose) for s in sentences(r["text"]) if 20 <= len(s) <= 300]
    items = []
    for i, record in enumerate(prose):
        sents = sentences(record["text"])
        for before, after in zip(sents, sents[1:]):
            if len(before) < 40 or not 20 <= len(after) <= 300:
                continue
            similar = sorted({s for j, s in pool if j != i and 0.5 * len(after) <= len(s) <= 2 * len(after)
                              and s not in record["text"]})  # a distractor must not be a sentence of this document
            if len(similar) < n_choices - 1:
                continue
            choices = rng.sample(similar, n_choices - 1) + [after]
            rng.shuffle(choices)
            items.append({"context": before, "choices": choices, "gold": choices.index(after),
                          "source": record["source"], "doc_id": record["id"]})
    return items


def lastword_items(records: list[dict], rng: random.Random, max_context_chars: int = 1500) -> list[dict]:
    items = []
    for record in (r for r in records if r["source"] in PROSE_SOURCES):
        sents = sentences(record["text"])
        for end in range(2, len(sents) + 1):
            passage = " ".join(sents[max(0, end - 8):end])[-max_context_chars:]
            match = re.search(r"([A-Za-z]{4,})([.!?\"')]*)$", passage)
            if not match:
                continue
            word = match.group(1)
            context = passage[:match.start(1)].rstrip()
            if len(context) < 80 or word.lower() not in {w.lower() for w in _WORD.findall(context)}:
                continue  # LAMBADA's property: the target is recoverable from the passage
            items.append({"context": context, "target": " " + word, "source": record["source"], "doc_id": record["id"]})
    rng.shuffle(items)
    return items


def definition_items(records: list[dict], rng: random.Random, n_choices: int = 4) -> list[dict]:
    synsets = []
    for r in records:
        if r["source"] == "wordnet" and ": " in r["text"]:
            words, gloss = r["text"].split(": ", 1)
            pos = r["id"].split(":")[0]
            head = words.split(", ")[0]
            if head.lower() not in gloss.lower() and len(gloss) >= 15:
                synsets.append((pos, head, gloss))
    items = []
    for pos, head, gloss in synsets:
        others = sorted({h for p, h, _ in synsets if p == pos and h != head})
        if len(others) < n_choices - 1:
            continue
        choices = rng.sample(others, n_choices - 1) + [head]
        rng.shuffle(choices)
        items.append({"definition": gloss, "choices": [" " + c for c in choices], "gold": choices.index(head),
                      "pos": pos})
    return items


def perplexity_docs(records: list[dict]) -> list[dict]:
    return [{"page": r["text"], "source": r["source"], "doc_id": r["id"]} for r in records]


TASKS = {
    "slope_continuation": {
        "make": continuation_items, "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}", "metrics": ["acc", "acc_norm"], "chance": "25%",
        "how": "each held-out prose sentence of at least 40 characters, followed by its true next sentence and 3 "
               "sentences of similar length (0.5–2x) drawn from other held-out prose documents"},
    "slope_lastword": {
        "make": lastword_items, "output_type": "loglikelihood", "doc_to_text": "{{context}}",
        "doc_to_target": "{{target}}", "metrics": ["acc", "perplexity"], "chance": "≈0 (open vocabulary)",
        "how": "passages of up to 8 consecutive held-out prose sentences whose final word (4+ letters) already "
               "occurs earlier in the passage; the context stops before that word"},
    "slope_definitions": {
        "make": definition_items, "output_type": "multiple_choice", "doc_to_text": "Definition: {{definition}}\nWord:",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}", "metrics": ["acc", "acc_norm"], "chance": "25%",
        "how": "held-out WordNet synsets whose gloss does not contain the word; 3 distractors are other held-out "
               "synset head words of the same part of speech"},
    "slope_perplexity": {
        "make": None, "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{page}}",
        "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"], "chance": "n/a",
        "how": "every held-out document of every source, whole"},
}


def _yaml(task: str, spec: dict, data_file: Path) -> str:
    q = json.dumps  # JSON strings are valid YAML scalars
    lines = [f"task: {task}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
             f"    test: {q(str(data_file.resolve()))}", "test_split: test", f"output_type: {spec['output_type']}",
             f"doc_to_text: {q(spec['doc_to_text'])}", f"doc_to_target: {q(spec['doc_to_target'])}"]
    if "doc_to_choice" in spec:
        lines.append(f"doc_to_choice: {q(spec['doc_to_choice'])}")
    lines.append("metric_list:")
    for metric in spec["metrics"]:
        lines += [f"  - metric: {metric}"]
    lines.append("metadata:\n  version: 1.0")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    with atomic_open(path, encoding="utf-8") as f:
        f.write(text)


def build_evalsets(corpus: Path, out: Path, *, split: str = "test", seed: int = 0, max_items: int = 5000) -> dict:
    """Write every task under ``out``; return {task: item count}."""
    records = [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = {}
    for task, spec in TASKS.items():
        rng = random.Random(f"{seed}:{task}")
        items = perplexity_docs(records) if spec["make"] is None else spec["make"](records, rng)
        items = items[:max_items]
        counts[task] = len(items)
        folder = out / task
        data_file = folder / f"{task}.jsonl"
        _write_atomic(data_file, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
        _write_atomic(folder / f"{task}.yaml", _yaml(task, spec, data_file))
        _write_atomic(folder / "DATASHEET.md", (
            f"# {task}\n\nA stand-in generated by this suite, **not** the paper's benchmark.\n\n"
            f"- Generated from: the `{split}` split of the corpus in `{corpus}` (documents no model trained on), "
            f"seed {seed}.\n- How: {spec['how']}.\n- Items: {len(items)}.\n- lm-eval output type: "
            f"{spec['output_type']}; metrics: {', '.join(spec['metrics'])}.\n- Chance level: {spec['chance']}.\n"))
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--out", default="data/evalsets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-items", type=int, default=5000)
    args = parser.parse_args(argv)
    counts = build_evalsets(Path(args.corpus), Path(args.out), seed=args.seed, max_items=args.max_items)
    for task, count in counts.items():
        print(f"{task:>20}: {count} items")
    return counts


if __name__ == "__main__":
    main()
