"""Fine-tune a pretrained (possibly sparse) BERT on one task, sparsity kept, and score it on the validation split.

    python -m experiments.finetune --preset tiny --task coherence --pretrained runs/bert-tiny-slope
    python -m experiments.finetune --task span --pretrained runs/bert-tiny-dense --prune wanda --sparsity 2:4-2:8

* Model: the pretraining run's encoder (`experiments.bert_pretrain.load_pretrained`) under a new head —
  ``BertForSequenceClassification`` (pooler + classifier) or ``BertForQuestionAnswering`` — built with the same
  sparse layers, so SLoPe's fixed masks (buffers) and adapters load with the weights and stay: pruned weights
  stay zero, adapters keep training. Heads stay dense (`slope.paper_filter`).
* ``--prune wanda``: the pretrained model must be dense; it is pruned one-shot with Wanda (`slope.wanda_prune`)
  at ``--sparsity`` from ``--calibration-batches`` batches of the task's train split, then fine-tuned with that
  mask fixed — the paper's Wanda baseline.
* Tasks (`TASKS`): the suite's generated stand-ins in ``--data`` (``{task}/{train,validation}.jsonl``, built by
  `experiments.finetune_sets`) and, for users with hub access, the paper's GLUE / SQuAD v1.1 through
  ``datasets.load_dataset`` (same fields, so the same code path). Metrics with scikit-learn (MCC, accuracy, F1)
  and SQuAD's EM / F1 (`experiments.span_qa`), as fractions.
* AdamW, warm-up then linear decay, clipping, AMP as in pretraining; span tasks may have their own step count and
  peak lr (``--span-steps``, ``--span-lr``; `recipe`). A finished run writes ``metrics.json`` to
  ``--out``; rerunning an identical configuration returns it instead of training again (the unit of resume).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from experiments.atomic import atomic_open
from experiments.bert_pretrain import (adapter_start, apply_method, bert_config, final_val_loss, load_pretrained,
                                      make_optimizer)
from experiments.cli import parse_config
from experiments.finetune_sets import SOURCE_LABELS
from experiments.pretrain import sparsity_schedule
from experiments.span_qa import encode_spans, extract_answers, squad_scores


@dataclass(frozen=True)
class Task:
    kind: str  # "classification" | "span"
    fields: tuple[str, ...]  # the text column(s) (classification); span tasks use question / context / answers
    metrics: tuple[str, ...]
    num_labels: int = 2
    hub: tuple[str, ...] = ()  # datasets.load_dataset(*hub) for the real benchmark


TASKS = {
    # generated stand-ins (experiments.finetune_sets)
    "acceptability": Task("classification", ("sentence",), ("mcc",)),
    "coherence": Task("classification", ("sentence1", "sentence2"), ("acc", "f1")),
    "source": Task("classification", ("text",), ("acc",), num_labels=len(SOURCE_LABELS)),
    "span": Task("span", (), ("em", "f1")),
    # the paper's benchmarks (need the Hugging Face hub)
    "cola": Task("classification", ("sentence",), ("mcc",), hub=("nyu-mll/glue", "cola")),
    "sst2": Task("classification", ("sentence",), ("acc",), hub=("nyu-mll/glue", "sst2")),
    "mrpc": Task("classification", ("sentence1", "sentence2"), ("acc", "f1"), hub=("nyu-mll/glue", "mrpc")),
    "rte": Task("classification", ("sentence1", "sentence2"), ("acc",), hub=("nyu-mll/glue", "rte")),
    "qnli": Task("classification", ("question", "sentence"), ("acc",), hub=("nyu-mll/glue", "qnli")),
    "squad": Task("span", (), ("em", "f1"), hub=("rajpurkar/squad",)),
}


@dataclass(frozen=True)
class FinetuneConfig:
    preset: str = "tiny"
    task: str = "acceptability"
    pretrained: str = ""  # a finished experiments.bert_pretrain run folder
    prune: str = ""  # "" = fine-tune the pretrained model as it is; "wanda" = Wanda-prune a dense one first
    sparsity: str = "2:4"  # Wanda's N:M schedule ("2:4", "2:4-2:8")
    calibration_batches: int = 4
    data: str = "data/finetune"
    seq_len: int = 64  # classification inputs
    span_seq_len: int = 64  # span-task windows (SQuAD's BERT recipe: 384); at most the pretrained positions
    doc_stride: int = 16
    max_query_len: int = 24
    max_answer_len: int = 30
    batch_size: int = 8
    steps: int = 40  # tiny (a pipeline check: 120 fine-tunings per `make reproduce` on 2 CPU cores)
    lr: float = 1e-3
    span_steps: int = 0  # span tasks' own recipe (0 = steps / lr): their loss has a long plateau, see the
    span_lr: float = 0.0  # small preset
    weight_decay: float = 0.01
    eps: float = 1e-6
    warmup_fraction: float = 0.1
    clip: float = 1.0
    eval_limit: int = 100  # score a fixed sample of so many validation items (0 = all)
    eval_batch_size: int = 128
    amp: str = "auto"
    seed: int = 0
    out: str = ""  # metrics.json goes here ("" = not written)


PRESETS = {
    "tiny": FinetuneConfig(),
    "small": replace(FinetuneConfig(), preset="small", seq_len=128, span_seq_len=128, doc_stride=32, max_query_len=48,
                     batch_size=32, steps=1000, lr=1e-4, eval_limit=0,
                     # The span task's loss sits on a plateau (~3.0, start/end among the passage's words) until the
                     # model learns to align the question with the passage, then drops. Dense left it by step ~200;
                     # some SLoPe and Wanda models had not by step 1000 (EM 0.1-0.5 against 0.9+ for the same row's
                     # other seeds; lr 2e-4 made it worse), so span fine-tuning gets 2000 steps (3.2 epochs). Measured
                     # on the H100: every SLoPe row then reached EM 0.89-0.96; one Wanda 2:4-2:8 model still left the
                     # plateau late (EM 0.65).
                     span_steps=2000),
    # BERT-Large fine-tuning as usual for GLUE / SQuAD v1.1: ~3 epochs at batch 32 of 20k items, lr 3e-5;
    # SQuAD windows of 384 tokens with a 128-token stride.
    "paper": replace(FinetuneConfig(), preset="paper", seq_len=128, span_seq_len=384, doc_stride=128, max_query_len=64,
                     batch_size=32, steps=1875, lr=3e-5, eval_limit=0, eval_batch_size=256),
}


def load_split(cfg: FinetuneConfig, split: str) -> list[dict]:
    task = TASKS[cfg.task]
    if task.hub and not (Path(cfg.data) / cfg.task).exists():
        import datasets

        return list(datasets.load_dataset(*task.hub, split=split))
    path = Path(cfg.data) / cfg.task / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found: build the fine-tuning sets with `make data` (or pass --data DIR)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def encode(cfg: FinetuneConfig, tokenizer, items: list[dict], with_labels: bool) -> dict:
    task = TASKS[cfg.task]
    if task.kind == "span":
        return encode_spans(tokenizer, items, seq_len=cfg.span_seq_len, doc_stride=cfg.doc_stride,
                            max_query_len=cfg.max_query_len, with_labels=with_labels)
    columns = [[str(item[f]) for item in items] for f in task.fields]
    enc = tokenizer(*columns, truncation=True, max_length=cfg.seq_len, padding="max_length", return_tensors="pt",
                    return_token_type_ids=True)
    features = {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    if with_labels:
        features["labels"] = torch.tensor([int(item["label"]) for item in items])
    return features


def build_task_model(cfg: FinetuneConfig):
    """(task model with the pretrained encoder and its sparse layers, pretraining config, tokenizer, history)."""
    from transformers import BertForQuestionAnswering, BertForSequenceClassification

    pre_cfg, tokenizer, mlm, history = load_pretrained(cfg.pretrained)
    if cfg.prune == "wanda" and pre_cfg.method != "dense":
        raise SystemExit(f"--prune wanda prunes a dense model, but {cfg.pretrained} was pretrained with "
                         f"method={pre_cfg.method!r}: point --pretrained at a dense run")
    task = TASKS[cfg.task]
    config = bert_config(pre_cfg, tokenizer)
    seq_len = cfg.span_seq_len if task.kind == "span" else cfg.seq_len
    if seq_len > config.max_position_embeddings:
        raise SystemExit(f"{'--span-seq-len' if task.kind == 'span' else '--seq-len'} {seq_len} exceeds the "
                         f"{config.max_position_embeddings} positions {cfg.pretrained} was pretrained with: "
                         "lower it, or pretrain with a longer (phase 2) sequence")
    config.num_labels = task.num_labels
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = (BertForQuestionAnswering if task.kind == "span" else BertForSequenceClassification)(config)
    apply_method(model, pre_cfg, adapters=adapter_start(pre_cfg) is not None)
    encoder = {k: v for k, v in mlm.state_dict().items() if k.startswith("bert.")}
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    new = [k for k in missing if not k.startswith(("bert.pooler.", "classifier.", "qa_outputs."))]
    if new or unexpected:
        raise RuntimeError(f"encoder weights do not fit the task model: missing {new[:3]}, unexpected {unexpected[:3]}")
    return model, pre_cfg, tokenizer, history


def batches_of(features: dict, indices, keys: tuple[str, ...], device) -> dict:
    return {k: features[k][indices].to(device) for k in keys}


def draw_order(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """The first ``count`` item indices of epochs of fresh permutations of ``n`` items (sampling without
    replacement, epoch after epoch), drawn up front so that the training loop indexes on the device."""
    epochs = [torch.randperm(n, generator=generator) for _ in range(-(-count // n))] if count else []
    return torch.cat(epochs)[:count] if epochs else torch.empty(0, dtype=torch.long)


def recipe(cfg: FinetuneConfig) -> tuple[int, float]:
    """(steps, peak lr) of ``cfg``'s task: span tasks may have their own."""
    if TASKS[cfg.task].kind == "span":
        return cfg.span_steps or cfg.steps, cfg.span_lr or cfg.lr
    return cfg.steps, cfg.lr


def finetune(cfg: FinetuneConfig) -> dict:
    """Train, score, write ``metrics.json``; returns {"metrics": {name: value}, "final_val_loss", ...}."""
    if cfg.task not in TASKS:
        raise SystemExit(f"--task {cfg.task!r}: choose one of {list(TASKS)}")
    if cfg.prune not in ("", "wanda"):
        raise SystemExit(f"--prune {cfg.prune!r}: use '' (keep the pretrained model) or 'wanda'")
    if not cfg.pretrained:
        raise SystemExit("--pretrained: give a finished experiments.bert_pretrain run folder")
    target = Path(cfg.out) / "metrics.json" if cfg.out else None
    if target and target.exists():
        done = json.loads(target.read_text())
        if done["config"] == asdict(cfg):
            return done
    from slope import wanda_prune

    started = time.perf_counter()
    task = TASKS[cfg.task]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    autocast = dict(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                    enabled=amp != "none")
    model, pre_cfg, tokenizer, history = build_task_model(cfg)
    model.to(device)
    train_items, val_items = load_split(cfg, "train"), load_split(cfg, "validation")
    if cfg.eval_limit and len(val_items) > cfg.eval_limit:
        # a fixed sample (same for every run and seed), not the first items: the files are not shuffled by class
        keep = torch.randperm(len(val_items), generator=torch.Generator().manual_seed(0))[:cfg.eval_limit]
        val_items = [val_items[i] for i in sorted(keep.tolist())]
    steps, peak_lr = recipe(cfg)
    reach = steps * cfg.batch_size
    if len(train_items) > reach:
        # the steps can see at most `reach` items: encode only a seeded sample of that many (one epoch of it)
        keep = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(cfg.seed))[:reach]
        train_items = [train_items[i] for i in sorted(keep.tolist())]
    train_features = encode(cfg, tokenizer, train_items, with_labels=True)
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    labels = ("start_positions", "end_positions") if task.kind == "span" else ("labels",)
    # Everything a step reads is on the device before the loop, and the losses are read back once at the end: a
    # per-step host copy or .item() would wait for the GPU every step, and this small model is launch-bound.
    train_features = {k: v.to(device) for k, v in train_features.items() if k in inputs + labels}
    calibration_rows = cfg.calibration_batches * cfg.batch_size if cfg.prune == "wanda" else 0
    order = draw_order(len(train_features["input_ids"]), calibration_rows + steps * cfg.batch_size,
                       torch.Generator().manual_seed(cfg.seed)).to(device)
    if cfg.prune == "wanda":
        calibration = [batches_of(train_features, order[i * cfg.batch_size:(i + 1) * cfg.batch_size], inputs, device)
                       for i in range(cfg.calibration_batches)]
        wanda_prune(model, calibration, sparsity=sparsity_schedule(cfg.sparsity))
    optimizer = make_optimizer(model.named_parameters(), kind="adamw", lr=peak_lr, weight_decay=cfg.weight_decay,
                               eps=cfg.eps)
    warmup = max(1, round(cfg.warmup_fraction * steps))
    losses = []
    model.train()
    seconds = {"setup": time.perf_counter() - started}  # load, encode, prune: where a slow fine-tuning spends time
    for step in tqdm(range(steps), desc=f"finetune {cfg.task}", file=sys.stderr, disable=None):
        lr = peak_lr * ((step + 1) / warmup if step < warmup else max(0.0, (steps - step) / (steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        first = calibration_rows + step * cfg.batch_size
        batch = batches_of(train_features, order[first:first + cfg.batch_size], inputs + labels, device)
        with torch.autocast(**autocast):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses = torch.stack(losses).float().tolist() if losses else []
    seconds["train"] = time.perf_counter() - started - seconds["setup"]
    metrics = evaluate(cfg, model, tokenizer, val_items, autocast, device)
    seconds["evaluate"] = time.perf_counter() - started - seconds["setup"] - seconds["train"]
    result = {"config": asdict(cfg), "metrics": metrics, "final_val_loss": final_val_loss(history),
              "pretrain_steps": pre_cfg.steps, "train_losses": losses, "validation_items": len(val_items),
              "seconds": seconds}
    if target:
        with atomic_open(target) as f:
            json.dump(result, f, indent=1)
    return result


@torch.no_grad()
def evaluate(cfg: FinetuneConfig, model, tokenizer, items: list[dict], autocast, device) -> dict[str, float]:
    task = TASKS[cfg.task]
    features = encode(cfg, tokenizer, items, with_labels=False)
    model.eval()
    outputs = []
    n = len(features["input_ids"])
    for first in range(0, n, cfg.eval_batch_size):
        batch = batches_of(features, list(range(first, min(n, first + cfg.eval_batch_size))),
                           ("input_ids", "attention_mask", "token_type_ids"), device)
        with torch.autocast(**autocast):
            out = model(**batch)
        outputs.append((out.start_logits.float().cpu(), out.end_logits.float().cpu()) if task.kind == "span"
                       else out.logits.float().cpu())
    model.train()
    if task.kind == "span":
        starts, ends = torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
        predictions = extract_answers(items, features, starts, ends, max_answer_len=cfg.max_answer_len)
        return squad_scores(predictions, [item["answers"]["text"] for item in items])
    predicted = torch.cat(outputs).argmax(-1).tolist()
    return classification_scores([int(item["label"]) for item in items], predicted, task.metrics, task.num_labels)


def classification_scores(truth: list[int], predicted: list[int], metrics: tuple[str, ...],
                          num_labels: int) -> dict[str, float]:
    """scikit-learn's MCC / accuracy / F1 (binary: of class 1; more classes: macro), as fractions."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    scores = {"mcc": lambda: matthews_corrcoef(truth, predicted), "acc": lambda: accuracy_score(truth, predicted),
              "f1": lambda: f1_score(truth, predicted, average="binary" if num_labels == 2 else "macro")}
    return {name: float(scores[name]()) for name in metrics}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv, default="small" if torch.cuda.is_available() else "tiny")
    result = finetune(cfg)
    print(f"{cfg.task} ({cfg.preset}{', wanda ' + cfg.sparsity if cfg.prune else ''}): "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()))
    return result


if __name__ == "__main__":
    main()
