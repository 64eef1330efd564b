"""The multiple-choice knapsack (MCKP) that the per-sequence oracle solves: N rows (sequences), K
options per row (configurations) with a value (score) and an integer cost (layers used); pick one
option per row for the largest total value whose total cost fits a budget.

Its own module because it is a self-contained solver with its own property tests and benchmark
(`benchmarks/knapsack.py`); `adalas.oracle` turns sweep rows into its values and costs.

Notable:
- `solve_knapsack` is exact dynamic programming over integer costs while that is fast, and the
  convex-hull (LP relaxation, Sinha-Zoltners) greedy beyond; the hull result carries its
  optimality gap (LP bound - integral total), which goes into `oracle.json`.
- One DP table answers every budget at once, and one hull answers each budget with a single
  greedy pass (`solve_at_budgets`), so a whole oracle curve costs about one solve.

Pure numpy and the standard library: no torch.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

DP_MAX_WORK = 200_000_000  # N * K * budget cells; the DP does ~200M a second on 2 cores
DP_MAX_BACK_BYTES = 256 * 2**20  # backpointer table limit for method="auto"
DP_HARD_BACK_BYTES = 4 * 2**30  # ... and for method="dp", beyond which we refuse rather than swap


@dataclass(frozen=True)
class KnapsackResult:
    """One solution: `choice[i]` is row i's option; `gap` bounds how far `total` may be from the
    optimum (0.0 for the exact DP); `upper_bound` = total + gap; `cost` is the cost spent."""

    choice: np.ndarray  # (N,) int64
    total: float
    solver: str  # "dp" | "hull"
    gap: float
    upper_bound: float
    cost: int


def knapsack_problem(values: Any, costs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, K) float64 values and (N, K) int64 costs (a length-K cost row broadcasts)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"values must be a non-empty (N, K) array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    c = np.asarray(costs)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != v.shape[1] or c.shape[0] not in (1, v.shape[0]):
        raise ValueError(f"costs must have shape {v.shape} or ({v.shape[1]},), got {np.shape(costs)}")
    if c.dtype.kind == "f":
        if not (np.isfinite(c).all() and (c == np.round(c)).all()):
            raise ValueError("costs must be integers (scale fractional costs, e.g. to 1/8 layer)")
    elif c.dtype.kind not in "iub":
        raise ValueError(f"costs must be integers, got dtype {c.dtype}")
    c = np.broadcast_to(c.astype(np.int64), v.shape)
    if (c < 0).any():
        raise ValueError("costs must be non-negative")
    return v, c


def _budget_int(budget: Any) -> int:
    """An integer budget: an int, or a float that is a whole number (bools refused: they are usually mistakes)."""
    if isinstance(budget, (float, np.floating)) and float(budget).is_integer():
        return int(budget)
    if not isinstance(budget, bool):
        try:
            return operator.index(budget)
        except TypeError:
            pass
    raise ValueError(f"budget must be an integer, got {budget!r}")


# -- exact DP ---------------------------------------------------------------------------------
# Subtracting each row's cheapest cost and dividing by the gcd of what is left shrinks the budget
# axis without changing the problem: depths that are whole layers (x8) divide out entirely.
@dataclass
class _DP:
    value: np.ndarray  # (W,) best total with reduced cost <= w, non-decreasing
    back: np.ndarray  # (N, W) uint8/uint16 option chosen for row i at reduced budget w
    units: np.ndarray  # (N, K) reduced costs in units of `step`
    base_cost: int  # sum of row minimum costs
    step: int  # gcd of reduced costs


def _dp_width(c: np.ndarray, max_budget: int) -> tuple[int, int]:
    """(step, W): the gcd of reduced costs and the number of budget cells the DP needs."""
    reduced = c - c.min(axis=1, keepdims=True)
    step = int(np.gcd.reduce(reduced.ravel())) or 1
    cap = int(reduced.max(axis=1).sum()) // step  # at this budget every row takes its dearest
    return step, min((max_budget - int(c.min(axis=1).sum())) // step, cap) + 1


def _dp_build(v: np.ndarray, c: np.ndarray, max_budget: int) -> _DP:
    """value[w] = max over choices of sum(values) with sum(reduced costs) <= w, for all w < W."""
    N, K = v.shape
    step, W = _dp_width(c, max_budget)
    units = (c - c.min(axis=1, keepdims=True)) // step  # (N, K)
    back = np.empty((N, W), dtype=np.min_scalar_type(max(K - 1, 1)))
    value = np.zeros(W)  # zero rows: total 0 at any budget
    cand = np.empty((K, W))  # (K, W) value of taking option k at budget w
    cols = np.arange(W)
    for i in range(N):
        for k in range(K):
            u = min(int(units[i, k]), W)
            cand[k, :u] = -np.inf  # cannot afford option k below its cost
            np.add(value[: W - u], v[i, k], out=cand[k, u:])
        arg = cand.argmax(axis=0)  # ties: the lowest option index
        back[i] = arg
        value = cand[arg, cols]  # finite: every row has an option of reduced cost 0
    return _DP(value, back, units, int(c.min(axis=1).sum()), step)


def _dp_solve(dp: _DP, v: np.ndarray, c: np.ndarray, budget: int) -> KnapsackResult:
    w = min((budget - dp.base_cost) // dp.step, len(dp.value) - 1)
    # value is non-decreasing: backtrack from the cheapest budget that reaches the optimum
    w = int(np.argmax(dp.value[: w + 1] >= dp.value[w]))
    choice = np.empty(len(v), dtype=np.int64)
    for i in range(len(v) - 1, -1, -1):
        choice[i] = k = dp.back[i, w]
        w -= int(dp.units[i, k])
    rows = np.arange(len(v))
    total = float(v[rows, choice].sum())
    return KnapsackResult(choice, total, "dp", 0.0, total, int(c[rows, choice].sum()))


# -- convex hull / LP relaxation ---------------------------------------------------------------
# Relaxing "one option per row" to "a convex combination per row" makes each row's value a
# concave function of its cost: the upper convex hull of its (cost, value) points. The LP optimum
# then buys hull increments in order of slope (value per cost) until the budget runs out, the last
# one fractionally (Sinha & Zoltners 1979). Dropping that fraction, then buying any later
# increments that still fit, gives an integral solution at most one increment's value below the
# LP bound; with thousands of rows that is a tiny relative gap.
@dataclass
class _Hull:
    start: np.ndarray  # (N,) each row's cheapest option (best value among the cheapest)
    to: np.ndarray  # (S, N) option reached after step s of row n's hull
    base_cost: int
    base_value: float
    row: np.ndarray  # (M,) increments, in the order the greedy buys them
    step: np.ndarray  # (M,)
    dc: np.ndarray  # (M,) int64 > 0
    dv: np.ndarray  # (M,) float64 > 0
    cum_dc: np.ndarray  # (M,)
    cum_dv: np.ndarray  # (M,)
    suffix_min_dc: np.ndarray  # (M,) smallest dc from position j on


def _hull_build(v: np.ndarray, c: np.ndarray) -> _Hull:
    N, K = v.shape
    rows = np.arange(N)
    start = np.lexsort((-v, c), axis=1)[:, 0]  # (N,) min cost, then max value
    cur, active = start.copy(), np.ones(N, dtype=bool)
    to, dcs, dvs, slopes = [], [], [], []
    for _ in range(K - 1):  # gift wrapping: each step moves every active row one hull point right
        dc = c - c[rows, cur][:, None]  # (N, K)
        dv = v - v[rows, cur][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(dc > 0, dv / dc, -np.inf)
        best = slope.max(axis=1)
        active &= best > 0  # a dearer option that is not better is never worth buying
        if not active.any():
            break
        # among equal slopes take the nearest point: collinear points stay separate, smaller steps
        nxt = np.where(slope == best[:, None], dc, np.iinfo(np.int64).max).argmin(axis=1)
        to.append(np.where(active, nxt, cur))
        dcs.append(np.where(active, dc[rows, nxt], 0))
        dvs.append(np.where(active, dv[rows, nxt], 0.0))
        slopes.append(np.where(active, best, -np.inf))
        cur = to[-1]
    S = len(to)
    to_m = np.array(to, dtype=np.int64).reshape(S, N)  # (S, N)
    dc_m = np.array(dcs, dtype=np.int64).reshape(S, N)
    dv_m = np.array(dvs, dtype=np.float64).reshape(S, N)
    # rounding can make a collinear later slope a hair larger; a row must buy its steps in order
    slope_m = np.minimum.accumulate(np.array(slopes).reshape(S, N), axis=0)
    step_m = np.broadcast_to(np.arange(S)[:, None], (S, N))
    row_m = np.broadcast_to(rows[None, :], (S, N))
    valid = dc_m > 0
    step, row, dc, dv = step_m[valid], row_m[valid], dc_m[valid], dv_m[valid]
    order = np.lexsort((step, -slope_m[valid]))  # steepest first; a row's steps in order
    step, row, dc, dv = step[order], row[order], dc[order], dv[order]
    return _Hull(
        start=start, to=to_m, base_cost=int(c[rows, start].sum()),
        base_value=float(v[rows, start].sum()), row=row, step=step, dc=dc, dv=dv,
        cum_dc=np.cumsum(dc), cum_dv=np.cumsum(dv),
        suffix_min_dc=np.minimum.accumulate(dc[::-1])[::-1] if len(dc) else dc,
    )


def _hull_solve(h: _Hull, v: np.ndarray, c: np.ndarray, budget: int) -> KnapsackResult:
    N, M = len(h.start), len(h.dc)
    room = budget - h.base_cost
    m = int(np.searchsorted(h.cum_dc, room, side="right"))  # increments that fit as a prefix
    bought = np.bincount(h.row[:m], minlength=N)  # (N,) hull steps taken per row
    spent = int(h.cum_dc[m - 1]) if m else 0
    if m < M:
        upper = h.base_value + (float(h.cum_dv[m - 1]) if m else 0.0) \
            + (room - spent) / float(h.dc[m]) * float(h.dv[m])
        # fill: keep scanning in slope order; an increment that does not fit blocks its row
        left = room - spent
        blocked = np.zeros(N, dtype=bool)
        blocked[h.row[m]] = True
        rows_l, dc_l, smin = h.row.tolist(), h.dc.tolist(), h.suffix_min_dc.tolist()
        for j in range(m + 1, M):
            if left < smin[j]:
                break
            r = rows_l[j]
            if blocked[r]:
                continue
            if dc_l[j] <= left:
                bought[r] += 1
                left -= dc_l[j]
            else:
                blocked[r] = True
    else:
        upper = None  # everything fits: every row at its best option, which is optimal
    choice = h.start.copy()
    has = bought > 0
    choice[has] = h.to[bought[has] - 1, np.flatnonzero(has)]
    rows = np.arange(N)
    total = float(v[rows, choice].sum())
    gap = 0.0 if upper is None else max(upper - total, 0.0)
    return KnapsackResult(choice, total, "hull", gap, total + gap, int(c[rows, choice].sum()))


# -- front door --------------------------------------------------------------------------------
def solve_at_budgets(values: Any, costs: Any, budgets: Sequence[int],
                     method: str = "auto") -> list[KnapsackResult]:
    """Solve one instance at several budgets, building the DP table or the hull once."""
    if method not in ("auto", "dp", "hull"):
        raise ValueError(f"method must be 'auto', 'dp' or 'hull', got {method!r}")
    v, c = knapsack_problem(values, costs)
    budgets = [_budget_int(b) for b in budgets]
    if not budgets:
        return []
    minimum = int(c.min(axis=1).sum())
    for b in budgets:
        if b < minimum:
            raise ValueError(f"knapsack budget {b} is below the minimum total cost {minimum} "
                             "(every row's cheapest option)")
    N, K = v.shape
    _, W = _dp_width(c, max(budgets))
    back_bytes = N * W * np.dtype(np.min_scalar_type(max(K - 1, 1))).itemsize
    if method == "auto":
        method = "dp" if N * K * W <= DP_MAX_WORK and back_bytes <= DP_MAX_BACK_BYTES else "hull"
    if method == "dp":
        if back_bytes > DP_HARD_BACK_BYTES:
            raise ValueError(f"the DP would need {back_bytes / 2**30:.1f} GiB of backpointers "
                             "(N x budget); use method='hull'")
        dp = _dp_build(v, c, max(budgets))
        return [_dp_solve(dp, v, c, b) for b in budgets]
    hull = _hull_build(v, c)
    return [_hull_solve(hull, v, c, b) for b in budgets]


def solve_knapsack(values: Any, costs: Any, budget: int, method: str = "auto") -> KnapsackResult:
    """Multiple-choice knapsack: one option per row, max sum of values, sum of costs <= budget.

    values: (N, K) floats; costs: (N, K) or (K,) non-negative integers; budget: integer. `method`
    "dp" is exact (O(N * K * budget) after shrinking the budget axis), "hull" is the LP-based
    greedy with a reported gap, "auto" takes the DP while N * K * budget <= DP_MAX_WORK.
    Raises ValueError when the budget is below the sum of every row's cheapest cost.
    """
    return solve_at_budgets(values, costs, [budget], method)[0]


def knapsack(values: Any, costs: Any, budget: int) -> tuple[np.ndarray, float]:
    """(choice, total) of `solve_knapsack(values, costs, budget)`; see it for the gap."""
    res = solve_knapsack(values, costs, budget)
    return res.choice, res.total
