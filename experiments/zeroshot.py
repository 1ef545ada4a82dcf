"""Zero-shot evaluation with lm-eval on the suite's generated tasks, fully offline.

    python -m experiments.zeroshot --model runs/gpt2-small/final --tokenizer data/corpus/tokenizers/gpt2-bpe

The model is passed to lm-eval in memory (``HFLM(pretrained=model, tokenizer=tok)``), the tasks come from
``data/evalsets`` through ``TaskManager(include_path=..., include_defaults=False)`` (the default index scans ~14k
tasks), and the hub is switched off before lm-eval is imported, so no network attempt is made.

The paper's benchmarks are lm-eval's own tasks (`PAPER_TASKS`: MMLU, ARC-Challenge, OpenBookQA, WinoGrande,
HellaSwag, MathQA, PIQA, RACE). They need the hub to download their data, so they are opt-in: pass
``include_defaults=True`` (CLI: ``--tasks paper``), which indexes lm-eval's built-in tasks and leaves the hub
switches as the caller set them. The offline default never changes: generated tasks, hub off.

    python -m experiments.zeroshot --model runs/gpt2-paper/final --tasks paper      # with hub access
"""
from __future__ import annotations

import argparse
import os
import traceback

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = ("slope_continuation", "slope_lastword", "slope_definitions", "slope_perplexity")
# lm-eval's names for the paper's GPT-2 zero-shot table (mmlu is a group of 57 subjects)
PAPER_TASKS = ("mmlu", "arc_challenge", "openbookqa", "winogrande", "hellaswag", "mathqa", "piqa", "race")


def tasks_for(scale: str) -> tuple[tuple[str, ...], bool]:
    """(tasks, include_defaults) for a preset scale: the real benchmarks only at ``paper`` (needs the hub)."""
    return (PAPER_TASKS, True) if scale == "paper" else (TASKS, False)


def evaluate(model, tokenizer, tasks=TASKS, evalsets: str = "data/evalsets", limit: int | None = None,
             batch_size: int = 16, device: str | None = None, include_defaults: bool = False
             ) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for an in-memory causal LM and its tokenizer.

    ``include_defaults=True`` adds lm-eval's built-in tasks (e.g. `PAPER_TASKS`, which download from the hub);
    ``evalsets`` is still included where it exists, so generated and real tasks can be mixed in one call.
    """
    if not include_defaults:
        os.environ.update(OFFLINE)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    include = os.path.abspath(evalsets) if not include_defaults or os.path.isdir(evalsets) else None
    manager = TaskManager(include_path=include, include_defaults=include_defaults)
    try:
        results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False)
    except AssertionError as error:
        # lm-eval's bare `assert len(continuation_enc) <= self.max_length`: say what it means and what to do
        if "continuation" not in "".join(traceback.format_exception(error)[-3:]):
            raise
        raise ValueError(f"lm-eval: a task's answer (continuation) is longer than the model's context of "
                         f"{lm.max_length} tokens (n_positions / max_position_embeddings of the model): score it with "
                         "a model of more positions (pretraining --seq-len; the generated tasks' longest continuation "
                         "is ~151 tokens with the 4k BPE) or leave that task out (--tasks)") from error
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved transformers causal LM folder")
    parser.add_argument("--tokenizer", default="data/corpus/tokenizers/gpt2-bpe")
    parser.add_argument("--evalsets", default="data/evalsets")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated task names, or 'paper' for the paper's lm-eval benchmarks (hub)")
    parser.add_argument("--include-defaults", action="store_true",
                        help="also index lm-eval's built-in tasks (needs the hub for their data)")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    paper = args.tasks == "paper"
    tasks = list(PAPER_TASKS) if paper else args.tasks.split(",")
    include_defaults = paper or args.include_defaults
    if not include_defaults:
        os.environ.update(OFFLINE)
    from transformers import AutoModelForCausalLM

    from experiments.data.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.tokenizer, "gpt2", model.config.n_positions)
    scores = evaluate(model, tokenizer, tasks, args.evalsets, args.limit, include_defaults=include_defaults)
    for task, metrics in scores.items():
        print(task, {k: round(v, 4) for k, v in metrics.items()})
    return scores


if __name__ == "__main__":
    main()
