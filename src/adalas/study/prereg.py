"""E3's pre-registered test: is the oracle at a small depth as good as choosing among K full-depth runs?

The plan writes the test down before any sweep runs (`preregistered:`); this module computes it.
- D(b) = the oracle's mean score at average depth b (each row picks one of the K candidates, a
  multiple-choice knapsack over the pooled rows) minus the null control's best of K (each row's best
  of K full-depth runs: the same selection with nothing to gain from depth). Both choose after the
  fact, so their difference is what depth costs once selection is paid for.
- Its interval: percentiles of D over resamples of rows drawn within each task (the pooled sizes
  kept), the knapsack solved again in each resample.
- The verdict (`decide`): reproduced if the interval's lower bound lies above -m, not reproduced if
  its upper bound lies below -m, else inconclusive (m: a share of full depth's mean).
- Beside it, a budget-matched null (the K full-depth runs charged the candidates' layer costs and put
  through the same knapsack at b), and the crossing depth (the shallowest depth where the oracle,
  less the null's gain, reaches full depth) with the resamples that never cross counted as censored.
Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..oracle import match_depth, oracle_curve
from ..stats import resample_indices

VERDICT_RULE = ("reproduced if the interval's lower bound lies above -m, not reproduced if its upper bound lies "
                "below -m, otherwise inconclusive")


@dataclass(frozen=True)
class Pooled:
    """The rows of the real tasks together, one row per sequence (N) and one column per candidate (K)."""

    scores: np.ndarray  # (N, K) each candidate's score
    layers: np.ndarray  # (N, K) layers per generated token of each candidate
    weights: np.ndarray  # (N,) decode steps at full depth: the unit of avg_layers
    alternatives: np.ndarray  # (N, K) the null: greedy full depth, then K - 1 sampled full-depth runs
    strata: np.ndarray  # (N,) the task of each row
    full_index: int  # the full-depth candidate's column

    def take(self, idx: np.ndarray) -> "Pooled":
        return Pooled(self.scores[idx], self.layers[idx], self.weights[idx], self.alternatives[idx],
                      self.strata[idx], self.full_index)

    @property
    def full_mean(self) -> float:
        return float(self.scores[:, self.full_index].mean())


def oracle_at(scores: np.ndarray, layers: np.ndarray, weights: np.ndarray, budget: float,
              method: str = "hull") -> float:
    """Mean score of the best per-row choice whose average depth (weighted) is at most `budget`."""
    return float(oracle_curve(scores, layers, budgets=[budget], method=method, weights=weights)[0]["score"])


def null_best(p: Pooled) -> float:
    return float(p.alternatives.max(axis=1).mean())


def d_at(p: Pooled, budget: float, method: str = "hull") -> dict:
    """D(b) and the budget-matched null's D on these rows."""
    oracle = oracle_at(p.scores, p.layers, p.weights, budget, method)
    matched = oracle_at(p.alternatives, p.layers, p.weights, budget, method)
    return {"oracle": oracle, "null_best": null_best(p), "budget_matched_null": matched,
            "difference": oracle - null_best(p), "difference_budget_matched": oracle - matched}


def decide(ci95: list[float], margin: float) -> str:
    """The pre-registered rule on a 95% interval of D and the margin m."""
    lo, hi = ci95
    if lo > -margin:
        return "reproduced"
    if hi < -margin:
        return "not reproduced"
    return "inconclusive"


def preregistered_test(p: Pooled, budget: float, margin: float, resamples: int = 1000, seed: int = 0) -> dict:
    """D(b) with its paired 95% interval over resamples drawn within each task, and the verdict."""
    point = d_at(p, budget, method="auto")
    idx = resample_indices(len(p.weights), p.strata.tolist(), resamples, seed)  # (R, N)
    draws = [d_at(p.take(i), budget) for i in idx]
    d = np.array([x["difference"] for x in draws])
    dm = np.array([x["difference_budget_matched"] for x in draws])
    ci = [float(v) for v in np.percentile(d, [2.5, 97.5])]
    return {"budget_layers": float(budget), **point, "ci95": ci,
            "ci95_budget_matched": [float(v) for v in np.percentile(dm, [2.5, 97.5])],
            "margin": float(margin), "resamples": int(resamples), "n": int(len(p.weights)),
            "verdict": decide(ci, margin)}


def crossing(p: Pooled, resamples: int = 1000, seed: int = 0) -> dict:
    """The shallowest average depth where the oracle less the null's gain reaches full depth's mean,
    with the resamples that never get there reported as censored (not counted as full depth)."""
    def cross(q: Pooled, method: str) -> float | None:
        curve = oracle_curve(q.scores, q.layers, method=method, weights=q.weights)
        return match_depth(curve, null_best(q))  # full depth's mean plus the null's gain

    point = cross(p, "auto")
    idx = resample_indices(len(p.weights), p.strata.tolist(), resamples, seed)
    got = [cross(p.take(i), "hull") for i in idx]
    crossed = np.array([g for g in got if g is not None])
    censored = len(got) - len(crossed)
    # censored resamples sit above every crossing: a percentile that falls among them is unknown
    ranked = np.concatenate([np.sort(crossed), np.full(censored, np.inf)])
    lo, hi = (float(v) for v in np.percentile(ranked, [2.5, 97.5], method="lower"))
    return {"point": point, "ci95": [None if not np.isfinite(lo) else lo, None if not np.isfinite(hi) else hi],
            "resamples": int(resamples), "censored": int(censored),
            "note": "censored: resamples whose oracle, less the null's gain, never reaches full depth; a bound "
                    "that falls among them is unknown (null), not 100% of the layers"}
