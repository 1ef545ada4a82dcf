"""One way to write results: long-form CSV rows, schema-checked, provenance on every row, atomic writes."""
from __future__ import annotations

import csv
from pathlib import Path

from .atomic import atomic_open
from .provenance import provenance

PROVENANCE_COLUMNS = ("git_sha", "git_dirty", "command", "config_hash", "torch", "cuda", "triton", "cusparselt",
                      "device", "date")


def write_rows(path: str | Path, rows: list[dict], *, columns: tuple[str, ...], config=None, append: bool = True,
               overrides: dict | None = None) -> Path:
    """Add ``rows`` (each with exactly ``columns``) plus provenance to the CSV at ``path``, atomically.

    Existing rows are kept when ``append``; the file is rewritten through a temporary file and renamed, so a
    crash never leaves a half-written CSV. ``overrides`` replaces provenance fields (e.g. the commit and machine
    of a pretraining run that happened elsewhere).
    """
    path = Path(path)
    header = [*columns, *PROVENANCE_COLUMNS]
    stamp = provenance(config)
    unknown = set(overrides or {}) - set(PROVENANCE_COLUMNS)
    if unknown:
        raise ValueError(f"overrides {sorted(unknown)} are not provenance columns {PROVENANCE_COLUMNS}")
    stamp.update(overrides or {})
    for row in rows:
        if set(row) != set(columns):
            raise ValueError(f"{path.name}: row keys {sorted(row)} differ from the schema {sorted(columns)}")
    old: list[dict] = []
    if append and path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != header:
                raise ValueError(f"{path}: existing columns {reader.fieldnames} differ from {header}; "
                                 "move the old file aside or write to a new one")
            old = list(reader)
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(old)
        writer.writerows({**row, **stamp} for row in rows)
    return path


def provenance_summary(rows: list[dict]) -> str:
    """"device D, commit a, b (dirty), 2026-11-22 – 2026-11-23" over ALL rows (a table grown over several runs
    cites every commit and machine it rests on, not just its first row's)."""
    devices = sorted({r["device"] for r in rows})
    commits = sorted({r["git_sha"][:7] + (" (dirty)" if r.get("git_dirty") == "True" else "") for r in rows})
    dates = sorted({r["date"][:10] for r in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} – {dates[-1]}"
    return f"device {', '.join(devices)}, commit {', '.join(commits)}, {when}"
