"""Evidence from long-form benchmark CSVs: rows paired into ratios, ratios pooled into measures, verdicts.

The generic half of `experiments.claims_perf` (which holds the paper's claims themselves):

* a **run** is a commit + dirty flag + config hash + command (`run_of`); rows are cited as device · commit · day;
* a **sample** (`Sample`) is one run's ratio of two paired rows (`pair`: same configuration fields, same run,
  nearest in time; ``cross_run`` lets the partner come from another run, and the sample says so), its spread each
  side's median ± half its IQR, combined at the extremes (`ratio`);
* a **measure** (`Measure`) pools samples: the median of their values, spread = their min–max (one sample: its
  own interval);
* a **verdict** against a goal in the claimed direction: met if the whole spread is on the goal's side, missed if
  the whole spread is on the other side, otherwise borderline; no sample: not measured.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

MET, MISSED, BORDERLINE = "met", "missed", "borderline (spread straddles the goal)"
NOT_MEASURED, NOT_RUN = "not measured", "not run"
SUSPECT, SUSPECT_MARGIN = "suspect: above the ideal", 1.05
NOTE_WORDS = {MET: "confirmed", MISSED: "refuted", BORDERLINE: "mixed (spread straddles)"}


# ----- rows -----------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict] | None:
    """The CSV's rows with their file position in ``_i`` (pairing prefers the nearest row); None if absent."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        return [{**row, "_i": i} for i, row in enumerate(csv.DictReader(f))]


def run_of(row: dict) -> tuple:
    """What makes a run: the code (commit, dirty flag) and the invocation (config hash, command), not the clock."""
    return row.get("git_sha", ""), row.get("git_dirty", ""), row.get("config_hash", ""), row.get("command", "")


def cite_key(row: dict) -> tuple[str, str, str]:
    """(device, short commit with "+dirty" for a dirty tree, day) of a row."""
    dirty = "+dirty" if row.get("git_dirty") == "True" else ""
    return row.get("device", "?"), row.get("git_sha", "")[:7] + dirty, row.get("date", "")[:10]


def cites_text(keys) -> str:
    """Citations grouped per device: "device · sha1, sha2 · day" (each sha with its day when the days differ)."""
    by_device: dict[str, set] = {}
    for device, sha, day in keys:
        by_device.setdefault(device, set()).add((sha, day))
    out = []
    for device, pairs in sorted(by_device.items()):
        days = {d for _, d in pairs}
        shas = ", ".join(sorted(s for s, _ in pairs)) if len(days) == 1 else \
            ", ".join(f"{s} ({d})" for s, d in sorted(pairs))
        out.append(f"{device} · {shas}" + (f" · {days.pop()}" if len(days) == 1 else ""))
    return "; ".join(out)


def cite(row: dict) -> str:
    return cites_text([cite_key(row)])


def _time(row: dict) -> float:
    try:
        return datetime.fromisoformat(row.get("date", "")).timestamp()
    except ValueError:
        return 0.0


def numeric(row: dict, column: str) -> float | None:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError):
        return None


def select(rows: list[dict] | None, **equal) -> list[dict]:
    """Rows whose fields equal the given values (a callable value is a predicate on the field)."""
    return [r for r in rows or [] if all(v(r.get(k, "")) if callable(v) else r.get(k, "") == v
                                          for k, v in equal.items())]


def pair(bases: list[dict], variants: list[dict], keys: tuple[str, ...], cross_run: bool = False) -> list[tuple]:
    """(base, variant) for every variant row: the base row with equal ``keys`` from the same run, nearest in time
    and then in file order (preceding first); with ``cross_run``, from the nearest other run when its own has none."""
    out = []
    for v in variants:
        same = [b for b in bases if all(b.get(k) == v.get(k) for k in keys)]
        pool = [b for b in same if run_of(b) == run_of(v)] or (same if cross_run else [])
        if pool:
            out.append((min(pool, key=lambda b: (abs(_time(b) - _time(v)), b["_i"] > v["_i"],
                                                 abs(b["_i"] - v["_i"]))), v))
    return out


# ----- samples, measures, verdicts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    value: float
    lo: float
    hi: float
    cites: tuple[tuple[str, str, str], ...]    # cite_key of each row behind it
    cross_run: bool = False
    run: tuple = ()         # the run of the variant side
    when: str = ""          # the latest date of its rows (ISO), to find the newest run


def ratio(top: dict, bottom: dict) -> Sample | None:
    """top median / bottom median; spread from each side's median ± IQR/2 (memory rows: no IQR, no spread).
    None when the bottom is not positive (e.g. a dense model's 0 bytes of buffers): no ratio to speak of."""
    t, b = float(top["median"]), float(bottom["median"])
    if b <= 0:
        return None
    ht, hb = (numeric(top, "iqr") or 0.0) / 2, (numeric(bottom, "iqr") or 0.0) / 2
    hi = (t + ht) / (b - hb) if b - hb > 0 else float("inf")
    return Sample(t / b, (t - ht) / (b + hb), hi, tuple(sorted({cite_key(top), cite_key(bottom)})),
                  run_of(top) != run_of(bottom), run_of(bottom), max(top.get("date", ""), bottom.get("date", "")))


def ratios(pairs: list[tuple], flip: bool = False) -> list[Sample]:
    """base / variant for each (base, variant) pair (``flip``: variant / base), the undefined ones left out."""
    out = [ratio(v, b) if flip else ratio(b, v) for b, v in pairs]
    return [x for x in out if x is not None]


def value(row: dict) -> Sample:
    m, h = float(row["median"]), (numeric(row, "iqr") or 0.0) / 2
    return Sample(m, m - h, m + h, (cite_key(row),), run=run_of(row), when=row.get("date", ""))


@dataclass(frozen=True)
class Measure:
    samples: tuple[Sample, ...]
    over: str = "runs"      # what the samples are, for the spread's label

    @property
    def median(self) -> float:
        return statistics.median(s.value for s in self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        if len(self.samples) > 1:
            return min(s.value for s in self.samples), max(s.value for s in self.samples)
        return self.samples[0].lo, self.samples[0].hi

    @property
    def basis(self) -> str:
        if len(self.samples) > 1:
            return f"min–max of {len(self.samples)} {self.over}"
        s = self.samples[0]
        return "one measurement" if s.lo == s.hi else "IQR of one run's repeats"

    @property
    def cross_run(self) -> bool:
        return any(s.cross_run for s in self.samples)

    @property
    def cites(self) -> str:
        return cites_text({c for s in self.samples for c in s.cites})


def measure(samples: list[Sample], over: str = "runs") -> Measure | None:
    return Measure(tuple(samples), over) if samples else None


def newest(samples: list[Sample]) -> list[Sample]:
    """The samples of the newest run (by the latest date it cites), for claims whose code changed between runs."""
    if not samples:
        return []
    last = max(samples, key=lambda s: s.when).run
    return [s for s in samples if s.run == last]


def verdict(m: Measure | None, goal: float, higher: bool = True) -> str:
    if m is None:
        return NOT_MEASURED
    lo, hi = m.spread
    if higher:
        return MET if lo >= goal else MISSED if hi < goal else BORDERLINE
    return MET if hi <= goal else MISSED if lo > goal else BORDERLINE


def shortfall(m: Measure, goal: float) -> str:
    gap = abs(goal - m.median)
    return f"by {gap:.3g} ({gap / goal:.0%} of the goal)"


def fmt(x: float, unit: str = "×") -> str:
    return f"{x:.1f}{unit}" if abs(x) >= 10 else f"{x:.3f}{unit}"


def describe(m: Measure | None, unit: str = "×") -> str:
    if m is None:
        return "—"
    lo, hi = m.spread
    tag = ", **cross-run**" if m.cross_run else ""
    return f"{fmt(m.median, unit)} ({fmt(lo, '')}–{fmt(hi, '')}, {m.basis}{tag})"


@dataclass
class Line:
    key: str
    subject: str
    measure: Measure | None
    goal: float | None
    goal_text: str
    higher: bool = True
    unit: str = "×"
    why: str = ""
    note: bool = False          # a seed note: confirmed / refuted / mixed
    absent: str = NOT_MEASURED  # the verdict without a measure: not measured, or not run (no CSV)
    ceiling: float | None = None  # the ideal speedup: a median above it (+5%) is a measurement problem
    bound: float | None = None    # what the measured kernels allow (Amdahl with their own speedup), if known
    group: str = ""               # the configuration, when runs differ in their subject's caveats (default: subject)

    @property
    def verdict(self) -> str:
        if self.measure is None or self.goal is None:
            return self.absent
        if self.ceiling and self.higher and self.measure.median > SUSPECT_MARGIN * self.ceiling:
            # faster than the ideal can only mean a slow reference (e.g. a disturbed dense row): never "met"
            return f"{SUSPECT} {fmt(self.ceiling)}: a measurement problem, not counted"
        v = verdict(self.measure, self.goal, self.higher)
        text = NOTE_WORDS[v] if self.note else v
        return f"{text} {shortfall(self.measure, self.goal)}" if v == MISSED and not self.note else text


@dataclass
class Claim:
    key: str
    title: str
    lines: list[Line]
    details: list[str] = field(default_factory=list)
