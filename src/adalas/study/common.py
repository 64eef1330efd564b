"""What the study's experiments share: the verdicts, the depth unit, paired per-sequence scores, a
curve's scores at any depth (interpolated per sequence), and how a point and an error bar are written
(a difference: `adalas.stats.difference_text`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not run")
DEPTH_UNIT = ("average layers run per generated token: decode steps pooled over sequences (`avg_layers`; "
              "the prompt runs every layer)")


def aligned_scores(scores: dict, configs: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """The sequence ids every config scored, and each config's scores over them (same order)."""
    missing = [c for c in configs if c not in scores]
    if missing:
        raise ValueError(f"no per-sequence rows for config(s) {missing}")
    ids = sorted(set.intersection(*(set(scores[c]) for c in configs)))
    return ids, [np.array([scores[c][i] for i in ids]) for c in configs]


def point(row: dict) -> dict:
    return {"config_id": row["config_id"], "avg_layers": row["avg_layers"], "rougeL": row["rougeL"],
            "ci95": row.get("rougeL_ci95"), "n": row["n"]}


def direction(ci: Sequence[float]) -> int:
    """+1: the interval lies above 0; -1: below; 0: it covers 0."""
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def curve_scores(points: Sequence[tuple[float, np.ndarray]], depth: float) -> np.ndarray | None:
    """Per-sequence scores of a curve at `depth`, linear between its two bracketing points (a mix of
    the two configs with that average depth; None outside the curve). points: (avg_layers, (N,)) sorted."""
    xs = [x for x, _ in points]
    if not points or depth < xs[0] - 1e-9 or depth > xs[-1] + 1e-9:
        return None
    hi = next(k for k, x in enumerate(xs) if x >= depth - 1e-9)
    if abs(xs[hi] - depth) <= 1e-9 or hi == 0:
        return points[hi][1]
    lo = hi - 1
    p = (depth - xs[lo]) / (xs[hi] - xs[lo])
    return (1 - p) * points[lo][1] + p * points[hi][1]


def depth_curve(rows: dict[str, dict], scores: dict, config_ids: Sequence[str], ids: Sequence[str]) -> list:
    """[(avg_layers, (N,) scores over ids)] sorted by depth; configs at the same depth are averaged."""
    by_depth: dict[float, list[np.ndarray]] = {}
    for c in config_ids:
        by_depth.setdefault(round(float(rows[c]["avg_layers"]), 6), []).append(np.array([scores[c][i] for i in ids]))
    return [(d, np.mean(v, axis=0)) for d, v in sorted(by_depth.items())]


def ci_text(p: dict | None) -> str:
    if not p:
        return "–"
    ci = p.get("ci95")
    return f"{p['rougeL']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def yerr(points: Sequence[dict], ys: Sequence[float]) -> np.ndarray:
    """(2, n) error bars from each point's ci95 (clipped at 0: a bootstrap bound can differ from the mean
    in the last float digit)."""
    return np.clip(np.array([[y - p["ci95"][0], p["ci95"][1] - y] for p, y in zip(points, ys)]).T, 0, None)
