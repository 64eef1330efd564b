"""Intervals for the numbers adalas reports (pure numpy).

- `bootstrap_ci`: percentile bootstrap of a mean over sequences (1,000 resamples, seed 0), the
  `rougeL_ci95` of every sweep row and of `metrics.json`.
- `paired_bootstrap`: the difference of two means over the same sequences, resampling sequences
  (so what the two share cancels), with its 95% interval.
- `describe_difference`: the sentence a report states for a comparison, worded by its interval: a
  difference whose interval covers 0 is "no measurable difference"; `difference_text`: the same
  difference in a table cell.
- `paired_ratio`, `paired_difference`, `equivalence` (two one-sided tests against a margin, with the
  smallest difference the rows could detect) and `gap_closed`, for the real-task reports; their
  resamples may keep strata (tasks pooled) at their sizes.
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


def difference_text(result: dict | None, digits: int = 3) -> str:
    """A paired difference and its 95% interval in a table cell ("–" for none).

    >>> difference_text({"diff": 0.012, "ci95": [-0.003, 0.027], "n": 48})
    '+0.012 [-0.003, +0.027]'
    """
    if not result:
        return "–"
    lo, hi = result["ci95"]
    return f"{result['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# ---------------------------------------------------------------------------------------------
# Ratios, equivalence and the detectable difference (the real-task reports)

def resample_indices(n: int, strata: Sequence | None = None, resamples: int = RESAMPLES,
                     seed: int = SEED) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; with `strata` (one label per row), each
    resample draws within each stratum, so it keeps every stratum's size (pooled tasks)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    labels = np.asarray(list(strata))
    if len(labels) != n:
        raise ValueError(f"strata: {len(labels)} labels for {n} rows")
    cols = []
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        cols.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(cols, axis=1)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores: need two non-empty lists of the same length, got {a.shape} and {b.shape}")
    return a, b


def paired_ratio(a: Sequence[float], b: Sequence[float], strata: Sequence | None = None,
                 resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"ratio": mean(a) / mean(b), "ci95", "n"}: A's mean as a share of B's on the same rows, with
    the percentile interval of the ratio over paired resamples of rows."""
    a, b = _paired(a, b)
    idx = resample_indices(len(a), strata, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = a[idx].mean(axis=1) / b[idx].mean(axis=1)
        point = a.mean() / b.mean()
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return {"ratio": float(point), "ci95": [float(lo), float(hi)], "n": int(len(a))}


def paired_difference(a: Sequence[float], b: Sequence[float], strata: Sequence | None = None,
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"diff": mean(a - b), "ci95", "ci90", "se", "n"} over paired resamples of rows."""
    a, b = _paired(a, b)
    d = a - b
    means = d[resample_indices(len(d), strata, resamples, seed)].mean(axis=1)
    lo95, lo90, hi90, hi95 = np.percentile(means, [2.5, 5, 95, 97.5])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"diff": float(d.mean()), "ci95": [float(lo95), float(hi95)], "ci90": [float(lo90), float(hi90)],
            "se": se, "n": int(len(d))}


DETECTABLE_Z = 2.80  # z(0.975) + z(0.80): a two-sided test at 0.05 with 80% power


def equivalence(a: Sequence[float], b: Sequence[float], margin: float, strata: Sequence | None = None,
                resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Two one-sided tests of |mean(a - b)| < margin at 0.05 each (the 90% paired interval inside
    [-margin, +margin]), with the smallest difference these rows could detect (80% power)."""
    if not margin > 0:
        raise ValueError(f"margin: must be > 0, got {margin}")
    d = paired_difference(a, b, strata, resamples, seed)
    lo, hi = d["ci90"]
    return {**d, "margin": float(margin), "equivalent": bool(-margin < lo and hi < margin),
            "detectable": DETECTABLE_Z * d["se"]}


def gap_closed(adapted: Sequence[float], off_the_shelf: Sequence[float], full: Sequence[float],
               strata: Sequence | None = None, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"share", "ci95"}: (adapted - off the shelf) / (full - off the shelf), means on the same rows."""
    x, o = _paired(adapted, off_the_shelf)
    _, f = _paired(adapted, full)
    idx = resample_indices(len(x), strata, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = (x[idx].mean(1) - o[idx].mean(1)) / (f[idx].mean(1) - o[idx].mean(1))
        point = (x.mean() - o.mean()) / (f.mean() - o.mean())
    lo, hi = np.nanpercentile(shares, [2.5, 97.5])
    return {"share": float(point), "ci95": [float(lo), float(hi)], "n": int(len(x))}
