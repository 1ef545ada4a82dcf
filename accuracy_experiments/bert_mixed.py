"""`make bert-mixed`: the paper's mixed-sparsity table (2:4-2:4, 2:4-2:8, 2:8-2:4 by block halves; SLoPe vs Wanda).

SLoPe rows pretrain sparse with the schedule; Wanda rows prune the dense pretraining one-shot with the schedule
and fine-tune with that mask fixed. All four generated tasks; writes ``results/bert_mixed_<scale>.{csv,md}``.
The run loop, caching and table: `bert_tables`.

    python -m accuracy_experiments.bert_mixed [--scale tiny|small|paper] [--seeds 0,1,2] [--rows slope-2:4-2:8]
"""
from __future__ import annotations

from pathlib import Path

from accuracy_experiments import bert_tables


def main(argv: list[str] | None = None) -> Path:
    return bert_tables.main("bert_mixed", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
