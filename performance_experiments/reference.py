"""The paper's performance numbers, read from ``results/paper_reference.csv`` (never written into code).

Tables (column ``table``): ``speedup_training`` and ``memory_training`` (adapter_rank "N/A"), ``speedup_inference``
and ``memory_inference`` (adapter_rank "0", "1.56%", "6.25%"); ``method`` is "SLoPe" or "FST"; ``task`` is the
model key of `performance_experiments.models.MODELS`.
"""
from __future__ import annotations

import csv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO_ROOT / "results" / "paper_reference.csv"
PERFORMANCE_TABLES = ("speedup_training", "speedup_inference", "memory_training", "memory_inference")


def load_paper(path: str | Path = PAPER_CSV) -> dict[tuple[str, str, str, str], float]:
    """{(table, method, adapter_rank, model): value} for the performance tables; {} if the file is missing."""
    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {(r["table"], r["method"], r["adapter_rank"], r["task"]): float(r["value"])
                for r in csv.DictReader(f) if r["table"] in PERFORMANCE_TABLES}


def paper_value(paper: dict, table: str, method: str, model: str, adapter_rank: str = "N/A") -> str:
    """The paper's number as a CSV cell ('' when the paper has none for this combination)."""
    value = paper.get((table, method, adapter_rank, model))
    return "" if value is None else f"{value:g}"
