"""The study's rows, read back from the published stores: per evaluation set, and the real tasks pooled.

Why its own module: every experiment states its numbers per set and pooled the same way (the real
tasks' rows together, each row once, resampled within its task), with the real-task report's
metrics (`task_report.summarize_config`: ROUGE-L F, precision, recall, length, stop share, ratios to
full depth, and two one-sided tests at 5% of full depth's mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import read_jsonl
from ..tasks import REAL_TASKS

POOLED = "pooled"
REAL = tuple(REAL_TASKS)


@dataclass
class Rows:
    """One model's rows: {set: {config_id: {sequence id: row}}}, and each set's sequence order."""

    sets: dict[str, dict[str, dict[str, dict]]]
    order: dict[str, list[str]]

    def has(self, cid: str, sets: Sequence[str]) -> bool:
        return all(s in self.sets and all(i in self.sets[s].get(cid, {}) for i in self.order[s]) for s in sets)

    def rows(self, cid: str, where: str) -> list[dict]:
        """The config's rows of one set, or of the real tasks pooled (in task order)."""
        sets = REAL if where == POOLED else (where,)
        return [self.sets[s][cid][i] for s in sets for i in self.order[s]]

    def strata(self, where: str) -> list[str] | None:
        return [s for s in REAL for _ in self.order[s]] if where == POOLED else None

    def column(self, cid: str, where: str, key: str = "rougeL") -> np.ndarray:
        return np.array([float(r[key]) for r in self.rows(cid, where)])

    def mean_of(self, cids: Sequence[str], where: str, key: str = "rougeL") -> np.ndarray:
        """Per row, the mean over configs (the seeds of an arm)."""
        return np.mean([self.column(c, where, key) for c in cids], axis=0)

    def places(self) -> list[str]:
        """Where numbers are stated: each set present, then the real tasks pooled when all are."""
        return [*self.sets] + ([POOLED] if all(s in self.sets for s in REAL) else [])


def read_rows(dirs: dict[str, Path], full: str = "full") -> Rows:
    """Rows of each set's published store (`{set: directory}`); a set's order is its `full` rows'."""
    sets, order = {}, {}
    for name, d in dirs.items():
        by: dict[str, dict[str, dict]] = {}
        for r in read_jsonl(Path(d) / "per_sequence.jsonl"):
            by.setdefault(r["config_id"], {})[str(r["id"])] = r
        sets[name] = by
        order[name] = sorted(by.get(full, {}))
    return Rows(sets, order)


def summary(rows: Rows, cid: str, where: str, full: str = "full") -> dict:
    """P/R/F, length, stop share and the comparison with full depth of one config (`task_report`'s)."""
    from ..task_report import summarize_config

    return summarize_config(rows.rows(cid, where), rows.rows(full, where), rows.strata(where))


def summaries(rows: Rows, cids: Sequence[str], full: str = "full") -> dict:
    """{place: {config_id: summary}} for every place and every config that has its rows there."""
    out = {}
    for where in rows.places():
        sets = REAL if where == POOLED else (where,)
        out[where] = {c: summary(rows, c, where, full) for c in cids if rows.has(c, sets) and rows.has(full, sets)}
    return out
