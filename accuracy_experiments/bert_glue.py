"""`make bert-glue`: the paper's BERT-Large GLUE column (dense vs SLoPe 2:4, adapter ranks 0 / 0.39% / 1.56% / 6.25%).

Fine-tunes each pretraining on the generated GLUE-style stand-ins (acceptability MCC, coherence acc/F1, source
acc); writes ``results/bert_glue_<scale>.{csv,md}``. The run loop, caching and table: `bert_tables`.

    python -m accuracy_experiments.bert_glue [--scale tiny|small|paper] [--seeds 0,1,2] [--rows dense,slope-r0]
"""
from __future__ import annotations

from pathlib import Path

from accuracy_experiments import bert_tables


def main(argv: list[str] | None = None) -> Path:
    return bert_tables.main("bert_glue", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
