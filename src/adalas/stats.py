"""Intervals for the numbers adalas reports (pure numpy).

- `bootstrap_ci`: percentile bootstrap of a mean over sequences (1,000 resamples, seed 0), the
  `rougeL_ci95` of every sweep row and of `metrics.json`.
- `paired_bootstrap`: the difference of two means over the same sequences, resampling sequences
  (so what the two share cancels), with its 95% interval.
- `describe_difference`: the sentence a report states for a comparison, worded by its interval: a
  difference whose interval covers 0 is "no measurable difference".
Resamples are drawn from a fixed seed over the sorted values, so the same numbers give the same
interval, byte for byte, in any order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples,) means of `values` (N,) resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))  # (R, N)
    return values[idx].mean(axis=1)


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                 level: float = 0.95) -> list[float]:
    """[lo, hi]: the percentile bootstrap interval of the mean of `values` (one per sequence). The
    values are sorted first, so the interval depends on them alone, not on the order of the rows."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values: need a non-empty 1-d sequence, got shape {x.shape}")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(_resampled_means(x, resamples, seed), [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = 0.95) -> dict:
    """{"diff": mean(a - b), "ci95": [lo, hi], "n"}: a and b are scores of the same sequences, in the same order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: the two score lists differ in shape, {a.shape} and {b.shape}")
    d = a - b
    return {"diff": float(d.mean()), "ci95": bootstrap_ci(d, resamples, seed, level), "n": int(len(d))}


def describe_difference(a: str, b: str, result: dict, where: str = "", digits: int = 3) -> str:
    """One sentence for a paired comparison of A with B (`paired_bootstrap`'s result).

    >>> describe_difference("uniform skipping", "early exit", {"diff": 0.1, "ci95": [0.05, 0.15], "n": 48}, "at 27 layers")
    'At 27 layers, uniform skipping scores 0.100 higher than early exit (95% CI 0.050 to 0.150, paired over 48 sequences).'
    >>> describe_difference("A", "B", {"diff": -0.01, "ci95": [-0.04, 0.02], "n": 48})
    'No measurable difference between A and B (difference -0.010, 95% CI -0.040 to 0.020, paired over 48 sequences).'
    """
    d, (lo, hi), n = result["diff"], result["ci95"], result["n"]
    ci = f"95% CI {lo:.{digits}f} to {hi:.{digits}f}, paired over {n} sequences"
    if lo > 0 or hi < 0:
        text = f"{a} scores {abs(d):.{digits}f} {'higher' if d > 0 else 'lower'} than {b} ({ci})"
    else:
        text = f"no measurable difference between {a} and {b} (difference {d:.{digits}f}, {ci})"
    text = f"{where}, {text}" if where else text
    return text[0].upper() + text[1:] + "."
