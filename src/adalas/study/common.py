"""What the study's experiments share: the verdicts, the depth unit, the sign of an interval, and a
curve's scores at any depth (interpolated per sequence)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not run")
DEPTH_UNIT = ("average layers run per generated token: decode steps pooled over sequences (`avg_layers`; "
              "the prompt runs every layer)")


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
