"""Zero-shot evaluation with lm-eval on the suite's generated tasks, fully offline.

    python -m experiments.zeroshot --model runs/gpt2-small/final --tokenizer data/corpus/tokenizers/gpt2-bpe

The model is passed to lm-eval in memory (``HFLM(pretrained=model, tokenizer=tok)``), the tasks come from
``data/evalsets`` through ``TaskManager(include_path=..., include_defaults=False)`` (the default index scans ~14k
tasks), and the hub is switched off before lm-eval is imported, so no network attempt is made.
"""
from __future__ import annotations

import argparse
import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = ("slope_continuation", "slope_lastword", "slope_definitions", "slope_perplexity")


def evaluate(model, tokenizer, tasks=TASKS, evalsets: str = "data/evalsets", limit: int | None = None,
             batch_size: int = 16, device: str | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for an in-memory causal LM and its tokenizer."""
    os.environ.update(OFFLINE)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=os.path.abspath(evalsets), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved transformers causal LM folder")
    parser.add_argument("--tokenizer", default="data/corpus/tokenizers/gpt2-bpe")
    parser.add_argument("--evalsets", default="data/evalsets")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.update(OFFLINE)
    from transformers import AutoModelForCausalLM

    from experiments.data.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.tokenizer, "gpt2", model.config.n_positions)
    scores = evaluate(model, tokenizer, args.tasks.split(","), args.evalsets, args.limit)
    for task, metrics in scores.items():
        print(task, {k: round(v, 4) for k, v in metrics.items()})
    return scores


if __name__ == "__main__":
    main()
