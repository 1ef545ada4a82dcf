"""`make bert-squad`: the paper's BERT-Large SQuAD column (dense vs SLoPe 2:4, adapter ranks 0 / 0.39% / 1.56% / 6.25%).

Fine-tunes each pretraining (shared with `bert_glue`) on the generated SQuAD-style span task (EM / F1); writes
``results/bert_squad_<scale>.{csv,md}``. The run loop, caching and table: `bert_tables`.

    python -m accuracy_experiments.bert_squad [--scale tiny|small|paper] [--seeds 0,1,2] [--rows dense,slope-r0]
"""
from __future__ import annotations

from pathlib import Path

from accuracy_experiments import bert_tables


def main(argv: list[str] | None = None) -> Path:
    return bert_tables.main("bert_squad", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
