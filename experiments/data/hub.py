"""Paper-scale datasets through `datasets.load_dataset`: pretraining text, GLUE and SQuAD v1.1, in the suite's layouts.

For users with Hugging Face hub access. Nothing here is reachable from this project's machines, so every loader
takes either a hub name or a local builder plus ``data_files`` (``"parquet"``, ``"json"``) and runs the *same*
code on both — that is how the tests exercise it, on small files with the real column names.

* Pretraining text (`pretraining_source`): OpenWebText (``Skylion007/openwebtext``, GPT-2) and English Wikipedia
  (``wikimedia/wikipedia``, config ``20231101.en``, BERT), streamed, as a `Source` that
  `experiments.data.build.build_corpus` writes into the layout ``make data`` produces (``{train,validation,
  test}.{txt,jsonl}`` + manifest), so the pretraining runners take it unchanged:

      python -m experiments.data.build --hf-dataset openwebtext --out data/owt
      python -m experiments.data.build --hf-dataset wikipedia --out data/wiki          # config 20231101.en
      python -m experiments.data.build --hf-dataset json --hf-data-files my.jsonl --out data/mine

  Both datasets ship a single ``train`` split; documents are split by the corpus builder's hash of
  (seed, source, document id), the id being the dataset's ``id`` column or the stream position.
* Fine-tuning (`build_glue`, `build_squad`): GLUE (``nyu-mll/glue``: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte)
  and SQuAD v1.1 (``rajpurkar/squad``) into ``<out>/<task>/{train,validation}.jsonl``: the hub's text columns and
  ``label`` as they are (``idx`` dropped: a collator would pass it to the model), which for CoLA / SST-2
  (``sentence``), MRPC / RTE / STS-B (``sentence1``, ``sentence2``) and SQuAD (``context``, ``question``,
  ``answers: {text, answer_start}``) are the item keys of the generated stand-ins of `experiments.finetune_sets`;
  plus ``task.json`` (kind, text fields, labels, metrics) and a datasheet, so a fine-tuning runner reads either
  folder the same way (``experiments.finetune`` keys its fields by task name). `task_info` reads ``task.json`` or
  infers the same from the items (generated sets).

      python -m experiments.data.hub --glue all --squad --out data/finetune_paper

GLUE's test splits carry no labels (-1): only train and validation are written; MNLI's validation is the matched
one, the mismatched one goes to ``validation_mismatched.jsonl``. The zero-shot benchmarks of the paper are
lm-eval's own tasks: `experiments.zeroshot.PAPER_TASKS`.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_open
from .sources import Doc, Source

# Short names for the paper's pretraining corpora: (hub name, config).
PRETRAINING = {
    "openwebtext": ("Skylion007/openwebtext", None),   # GPT-2 (the paper: 400k steps x 512 x 1024 tokens)
    "wikipedia": ("wikimedia/wikipedia", "20231101.en"),  # BERT-Large phases 1 and 2
}
LOCAL_BUILDERS = ("parquet", "json", "csv", "text", "arrow")


@dataclass(frozen=True)
class GlueTask:
    fields: tuple[str, ...]          # the hub's text columns, in order
    num_labels: int                  # 1 = regression (STS-B)
    metrics: tuple[str, ...]         # what the GLUE leaderboard reports for the task
    validation: str = "validation"   # the split scored


GLUE_NAME = "nyu-mll/glue"
GLUE = {
    "cola": GlueTask(("sentence",), 2, ("mcc",)),
    "sst2": GlueTask(("sentence",), 2, ("acc",)),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2, ("acc", "f1")),
    "qqp": GlueTask(("question1", "question2"), 2, ("acc", "f1")),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    "mnli": GlueTask(("premise", "hypothesis"), 3, ("acc",), validation="validation_matched"),
    "qnli": GlueTask(("question", "sentence"), 2, ("acc",)),
    "rte": GlueTask(("sentence1", "sentence2"), 2, ("acc",)),
}
SQUAD_NAME = "rajpurkar/squad"  # v1.1


def load(name: str, config: str | None = None, *, split: str, data_files=None, streaming: bool = True):
    """`datasets.load_dataset` for a hub name, or a local builder ("parquet", "json", ...) with ``data_files``.

    Streaming, because only one pass is needed: OpenWebText and Wikipedia are never downloaded whole, and local
    files are read without filling the datasets cache.
    """
    try:
        import datasets
    except ImportError as error:
        raise RuntimeError("the hub loaders need the `datasets` package: pip install -e .[eval]") from error
    if name in LOCAL_BUILDERS and not data_files:
        raise ValueError(f"dataset {name!r} is a local file format: pass data_files (--hf-data-files PATH)")
    return datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=streaming)


def _hub_spec(spec: str) -> tuple[str, str | None]:
    """"openwebtext" / "wikipedia" / "owner/name[:config]" -> (name, config)."""
    if spec in PRETRAINING:
        return PRETRAINING[spec]
    name, _, config = spec.partition(":")
    return name, config or None


def pretraining_docs(spec: str, *, data_files=None, field: str = "text", split: str = "train") -> Iterator[Doc]:
    """Documents of a text dataset, streamed: ``field`` is the text, ``id`` / ``title`` are used where present."""
    name, config = _hub_spec(spec)
    for index, row in enumerate(load(name, config, split=split, data_files=data_files)):
        if field not in row:
            raise KeyError(f"{spec}: no column {field!r} (columns: {sorted(row)}); choose one with --hf-field")
        text = row[field] or ""
        if text.strip():
            # the stream position is stable for a fixed dataset revision; a real id is better where there is one
            yield Doc(f"hf:{spec}", str(row.get("id", index)), str(row.get("title") or ""), text)


def pretraining_source(spec: str, *, data_files=None, field: str = "text") -> Source:
    """A corpus `Source` for `build_corpus` (its ``extract`` ignores the unpacked-root argument)."""
    name, config = _hub_spec(spec)
    package = f"{name}:{config}" if config else name
    return Source(f"hf:{spec}", package, "see the dataset card",
                  lambda _root: pretraining_docs(spec, data_files=data_files, field=field))


# ----- fine-tuning ----------------------------------------------------------------------------------------------
def glue_items(task: str, rows: Iterable[dict]) -> Iterator[dict]:
    """GLUE rows -> items: the task's text columns and the label (float for STS-B); unlabelled rows dropped."""
    spec = GLUE[task]
    for row in rows:
        label = row["label"]
        if spec.num_labels > 1 and int(label) < 0:  # GLUE test splits: label -1
            continue
        yield {**{f: row[f] for f in spec.fields}, "label": float(label) if spec.num_labels == 1 else int(label)}


def squad_items(rows: Iterable[dict]) -> Iterator[dict]:
    """SQuAD rows -> span items, checking each answer's character offset (a bad file would train on garbage)."""
    for row in rows:
        answers = {"text": list(row["answers"]["text"]),
                   "answer_start": [int(s) for s in row["answers"]["answer_start"]]}
        for text, start in zip(answers["text"], answers["answer_start"]):
            if row["context"][start:start + len(text)] != text:
                raise ValueError(f"SQuAD item {row.get('id', '?')}: answer {text!r} is not at offset {start}")
        yield {"context": row["context"], "question": row["question"], "answers": answers}


def _write_task(folder: Path, splits: dict[str, Iterable[dict]], info: dict, max_items: int | None) -> dict[str, int]:
    counts = {}
    for split, items in splits.items():
        with atomic_open(folder / f"{split}.jsonl", encoding="utf-8", newline="\n") as f:
            counts[split] = 0
            for item in items:
                if max_items is not None and counts[split] >= max_items:
                    break
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
                counts[split] += 1
    with atomic_open(folder / "task.json") as f:
        json.dump({**info, "items": counts}, f, indent=2)
    with atomic_open(folder / "DATASHEET.md") as f:
        f.write(f"# {folder.name}\n\nThe real benchmark, converted from `{info['source']}` by "
                f"`experiments.data.hub` (not generated by this suite).\n\n- Items: {counts}.\n"
                f"- Metrics: {', '.join(info['metrics'])}.\n")
    return counts


def build_glue(task: str, out: Path, *, data_files: dict | None = None, max_items: int | None = None) -> dict:
    """``out/<task>/{train,validation}.jsonl`` (+ MNLI's mismatched validation) from the hub or local files."""
    if task not in GLUE:
        raise ValueError(f"unknown GLUE task {task!r}; choose from {list(GLUE)}")
    spec = GLUE[task]
    builder = _builder(data_files, GLUE_NAME)
    splits = {"train": "train", "validation": spec.validation}
    if task == "mnli":
        splits["validation_mismatched"] = "validation_mismatched"
    rows = {ours: glue_items(task, load(builder, None if data_files else task, split=theirs, data_files=data_files))
            for ours, theirs in splits.items()}
    info = {"task": task, "source": f"{GLUE_NAME}:{task}", "kind": "regression" if spec.num_labels == 1 else
            "classification", "text_fields": list(spec.fields),
            "num_labels": spec.num_labels, "metrics": list(spec.metrics)}
    return _write_task(out / task, rows, info, max_items)


def build_squad(out: Path, *, data_files: dict | None = None, max_items: int | None = None) -> dict:
    """``out/squad/{train,validation}.jsonl`` from SQuAD v1.1 (hub or local files)."""
    builder = _builder(data_files, SQUAD_NAME)
    rows = {split: squad_items(load(builder, None, split=split, data_files=data_files))
            for split in ("train", "validation")}
    info = {"task": "squad", "source": SQUAD_NAME, "kind": "span", "text_fields": ["question", "context"],
            "num_labels": 0, "metrics": ["em", "f1"]}
    return _write_task(out / "squad", rows, info, max_items)


def _builder(data_files: dict | None, hub_name: str) -> str:
    if not data_files:
        return hub_name
    suffixes = {Path(str(p)).suffix for files in data_files.values() for p in ([files] if isinstance(files, str)
                                                                              else files)}
    formats = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
    if len(suffixes) != 1 or next(iter(suffixes)) not in formats:
        raise ValueError(f"data_files {data_files}: use one format of {sorted(formats)}")
    return formats[suffixes.pop()]


def task_info(task_dir: str | Path) -> dict:
    """What a fine-tuning runner needs about a task folder: ``task.json``, or inferred from its first item."""
    task_dir = Path(task_dir)
    if (task_dir / "task.json").exists():
        return json.loads((task_dir / "task.json").read_text())
    with (task_dir / "train.jsonl").open(encoding="utf-8") as f:
        first = json.loads(f.readline())
    if "answers" in first:
        return {"task": task_dir.name, "kind": "span", "text_fields": ["question", "context"], "num_labels": 0,
                "metrics": ["em", "f1"]}
    with (task_dir / "train.jsonl").open(encoding="utf-8") as f:
        labels = {json.loads(line)["label"] for line in f}
    regression = any(isinstance(label, float) for label in labels)
    return {"task": task_dir.name, "kind": "regression" if regression else "classification",
            "text_fields": [k for k in first if k != "label"], "num_labels": 1 if regression else len(labels),
            "metrics": ["pearson", "spearman"] if regression else ["acc"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="GLUE / SQuAD v1.1 from the hub into data/finetune-style folders")
    parser.add_argument("--glue", default="", help=f"comma-separated GLUE tasks or 'all': {', '.join(GLUE)}")
    parser.add_argument("--squad", action="store_true", help="also SQuAD v1.1")
    parser.add_argument("--out", default="data/finetune_paper")
    parser.add_argument("--max-items", type=int, default=None, help="per split (quick checks)")
    args = parser.parse_args(argv)
    tasks = list(GLUE) if args.glue == "all" else [t for t in args.glue.split(",") if t]
    unknown = [t for t in tasks if t not in GLUE]
    if unknown:
        parser.error(f"--glue: unknown tasks {unknown}; choose from {list(GLUE)} or 'all'")
    if not (tasks or args.squad):
        parser.error("nothing to build: give --glue TASKS and/or --squad")
    counts = {task: build_glue(task, Path(args.out), max_items=args.max_items) for task in tasks}
    if args.squad:
        counts["squad"] = build_squad(Path(args.out), max_items=args.max_items)
    for task, sizes in counts.items():
        print(f"{task:>8}: {sizes}")
    return counts


if __name__ == "__main__":
    main()
