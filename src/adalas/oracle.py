"""Routes per budget, the multiple-choice knapsack, and the per-sequence oracle.

The paper's oracle asks: if each sequence could pick its own depth configuration after the fact,
how few layers would the model need on average to match the full model? Picking one
configuration per sequence under a total layer budget is a multiple-choice knapsack (MCKP):
rows are sequences, options are configurations, values are scores, costs are layers used.

Notable:
- Routes are plain `list[bool]` (True = the layer runs), with a compact string form "1101...".
  `uniform_skip_route` spreads the smaller of {skipped, kept} layers evenly; `random_routes`
  draws distinct routes once from a seed, so a sweep can evaluate each as a fixed route.
- `solve_knapsack` is exact dynamic programming over integer costs while that is fast, and the
  convex-hull (LP relaxation, Sinha-Zoltners) greedy beyond; the hull result carries its
  optimality gap (LP bound - integral total), which goes into `oracle.json`.
- One DP table answers every budget at once, and one hull answers each budget with a single
  greedy pass, so a whole oracle curve costs about one solve.
- Fractional depths become integer costs at 1/8 layer (`LAYER_RESOLUTION`).
- Depth is in the unit of `avg_layers` (decode steps pooled over sequences): a sequence's cost is
  weighted by its number of decode steps at full depth, so a sequence that stops early weighs less.
- The oracle is an in-sample upper bound: picking each sequence's best of K outputs against one
  noisy reference gains even when the K are equally good. `null_control` measures that selection
  gain with the same best-of-K over K full-depth alternatives (the greedy full model and K - 1
  sampled runs, `full_sample` rows of `sweep --null-k K`); `match_avg_layers_null_adjusted` is the
  match once that gain is taken off the oracle's curve.
- `run_oracle` reads a sweep directory and writes `oracle.json` atomically.

Pure numpy and the standard library: no torch.
"""
from __future__ import annotations

import itertools
import json
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_json, check_output_file, read_jsonl, require_field, require_number

LAYER_RESOLUTION = 8  # cost units per layer: fractional depths are rounded to 1/8 layer
CURVE_STEP = 0.25  # default spacing of the oracle curve, in layers
DP_MAX_WORK = 200_000_000  # N * K * budget cells; the DP does ~200M a second on 2 cores
DP_MAX_BACK_BYTES = 256 * 2**20  # backpointer table limit for method="auto"
DP_HARD_BACK_BYTES = 4 * 2**30  # ... and for method="dp", beyond which we refuse rather than swap
_ENUMERATE_ROUTES = 1 << 16  # up to this many possible routes, draw by permuting all of them
# strategies that are never the oracle's candidates by default: the null control's sampled full-depth
# runs, and a per-sequence router's rows (each a lookup of another config's row)
NOT_CANDIDATES = ("full_sample", "sequence")


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------
def _index(x: Any, name: str) -> int:
    """An integer argument (bools and integral floats refused: they are usually mistakes)."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {x!r}") from None


def _check_budget(num_layers: int, budget: int, name: str = "budget") -> tuple[int, int]:
    num_layers = _index(num_layers, "num_layers")
    budget = _index(budget, name)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 1 <= budget <= num_layers:
        raise ValueError(f"{name} must be in 1..{num_layers}, got {budget}")
    return num_layers, budget


def uniform_skip_route(num_layers: int, budget: int) -> list[bool]:
    """Keep exactly `budget` of `num_layers` layers, spread evenly through the stack.

    Whichever set is smaller is placed evenly, in exact integer arithmetic (L = num_layers):
    - at least half kept (s = L - budget skipped, 2s <= L): cut the stack into s equal blocks and
      skip the middle layer of each, i.e. layer floor((2j + 1) * L / (2s)) for j < s. Layer 0 is
      then always kept, and layer L - 1 too unless exactly half is skipped. budget = L/2 on even L
      skips every odd layer (keeps 0, 2, 4, ...); skipping 3 of 30 skips 5, 15, 25.
    - fewer than half kept: keep layer round_half_up(j * (L - 1) / (budget - 1)) for j < budget,
      so the first and last layers are both kept and the rest sit evenly between them (24 layers,
      budget 4: 0, 8, 15, 23); budget 1 keeps layer 0.
    In both cases the spacing is at least one layer, so the positions are distinct and the route
    has exactly `budget` True values.
    """
    L, budget = _check_budget(num_layers, budget)
    n_skip = L - budget
    if 2 * n_skip <= L:
        skip = {(2 * j + 1) * L // (2 * n_skip) for j in range(n_skip)}
        return [i not in skip for i in range(L)]
    if budget == 1:
        return [i == 0 for i in range(L)]
    keep = {(2 * j * (L - 1) + budget - 1) // (2 * (budget - 1)) for j in range(budget)}
    return [i in keep for i in range(L)]


def early_exit_route(num_layers: int, exit_after: int) -> list[bool]:
    """Run layers 0..exit_after-1, then go to the head."""
    L, exit_after = _check_budget(num_layers, exit_after, "exit_after")
    return [i < exit_after for i in range(L)]


def random_routes(num_layers: int, budget: int, n: int, seed: int,
                  keep_first: bool = False) -> list[list[bool]]:
    """Up to `n` distinct random routes that each keep exactly `budget` layers.

    Drawn from one numpy Generator seeded by (seed, budget), so a budget's routes do not depend
    on which other budgets a sweep draws, and the first m routes of a larger `n` are the same m
    routes. With `keep_first`, layer 0 is always kept and counts within `budget`. When fewer than
    `n` distinct routes exist, all of them are returned (len < n): repeating a route would only
    make a sweep evaluate the same configuration twice.
    """
    L, budget = _check_budget(num_layers, budget)
    n, seed = _index(n, "n"), _index(seed, "seed")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    free = list(range(1, L)) if keep_first else list(range(L))
    k = budget - 1 if keep_first else budget
    n_possible = math.comb(len(free), k)
    n = min(n, n_possible)
    rng = np.random.default_rng([seed, budget])
    if n_possible <= _ENUMERATE_ROUTES:
        # few enough to list: a permutation gives distinct routes with no rejection loop
        combos = list(itertools.combinations(free, k))
        picks = [combos[i] for i in rng.permutation(n_possible)[:n]]
    else:
        # n << n_possible in any real sweep, so rejections are rare
        seen: set[tuple[int, ...]] = set()
        picks = []
        while len(picks) < n:
            c = tuple(sorted(rng.choice(free, size=k, replace=False).tolist()))
            if c not in seen:
                seen.add(c)
                picks.append(c)
    kept = [set(c) | ({0} if keep_first else set()) for c in picks]
    return [[i in keep for i in range(L)] for keep in kept]


def route_to_skip_layers(route: Sequence[bool]) -> list[int]:
    """The 0-based indices a route skips (what `DepthConfig(skip_layers=...)` takes)."""
    return [i for i, keep in enumerate(route) if not keep]


# ---------------------------------------------------------------------------------------------
# Multiple-choice knapsack
# ---------------------------------------------------------------------------------------------
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


def _as_problem(values: Any, costs: Any) -> tuple[np.ndarray, np.ndarray]:
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
    if isinstance(budget, (float, np.floating)) and float(budget).is_integer():
        return int(budget)
    return _index(budget, "budget")


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
def _solve_many(values: Any, costs: Any, budgets: Sequence[int],
                method: str = "auto") -> list[KnapsackResult]:
    """Solve one instance at several budgets, building the DP table or the hull once."""
    if method not in ("auto", "dp", "hull"):
        raise ValueError(f"method must be 'auto', 'dp' or 'hull', got {method!r}")
    v, c = _as_problem(values, costs)
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
    return _solve_many(values, costs, [budget], method)[0]


def knapsack(values: Any, costs: Any, budget: int) -> tuple[np.ndarray, float]:
    """(choice, total) of `solve_knapsack(values, costs, budget)`; see it for the gap."""
    res = solve_knapsack(values, costs, budget)
    return res.choice, res.total


# ---------------------------------------------------------------------------------------------
# Oracle curve
# ---------------------------------------------------------------------------------------------
def _weights(weights: Any, n: int) -> np.ndarray:
    """(N,) non-negative sequence weights (None, or all zero: every sequence weighs 1)."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {n} finite non-negative numbers, got shape {w.shape}")
    return w if w.sum() > 0 else np.ones(n)


def _curve_points(scores: Any, layers: Any, budgets: Sequence[float] | None = None,
                  method: str = "auto", weights: Any = None) -> list[tuple[float, KnapsackResult]]:
    """(avg_layers, result) per budget, ascending. A solution found for a smaller budget is
    feasible for every larger one, so it is kept when the hull's greedy finds a worse one there:
    the curve is monotone whichever solver ran. The average depth weights sequence i by
    `weights[i]` (its decode steps: then it is the pooled `avg_layers`); the score is the plain mean."""
    v = np.asarray(scores, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"scores must be an (N, K) array, got shape {v.shape}")
    depth = np.asarray(layers, dtype=np.float64)
    if not np.isfinite(depth).all() or (depth < 0).any():
        raise ValueError("layers must be finite and non-negative")
    w = _weights(weights, v.shape[0])
    c = np.rint(np.broadcast_to(depth, v.shape) * w[:, None] * LAYER_RESOLUTION).astype(np.int64)
    v, c = _as_problem(v, c)
    per_layer = float(w.sum()) * LAYER_RESOLUTION  # cost units per layer of average depth
    lo, hi = int(c.min(axis=1).sum()), int(c.max(axis=1).sum())
    if budgets is None:
        q = max(int(round(per_layer * CURVE_STEP)), 1)
        grid = sorted({lo, hi, *range(-(-lo // q) * q, hi + 1, q)})
        units = [(u / per_layer, u) for u in grid]
    else:
        units = []
        for avg in sorted(float(b) for b in budgets):
            u = int(math.floor(avg * per_layer + 1e-9))
            if u < lo:
                raise ValueError(f"average depth {avg} is below the shallowest possible "
                                 f"{lo / per_layer:g} layers")
            units.append((avg, u))
    results = _solve_many(v, c, [u for _, u in units], method)
    points, best = [], None
    for (avg, _), res in zip(units, results):
        if best is not None and best.total > res.total:
            res = KnapsackResult(best.choice, best.total, res.solver,
                                 max(res.upper_bound - best.total, 0.0), res.upper_bound,
                                 best.cost)
        best = res
        points.append((avg, res))
    return points


def oracle_curve(scores: Any, layers: Any, budgets: Sequence[float] | None = None,
                 method: str = "auto", weights: Any = None) -> list[dict]:
    """Best mean score per average-depth budget, when every sequence picks its own config.

    scores: (N, K) per-sequence scores of K configs; layers: (K,) or (N, K) layers used (may be
    fractional: costs are round(layers * weight * 8), i.e. 1/8 layer). weights: (N,) each
    sequence's weight in the average depth (its decode steps, for the unit of `avg_layers`;
    default 1 each). budgets: average depths in layers; by default every 1/4 layer between the
    shallowest and the deepest possible average (both included). Returns [{"avg_layers",
    "score"}] ascending in avg_layers, non-decreasing in score.
    """
    return [{"avg_layers": avg, "score": res.total / len(res.choice)}
            for avg, res in _curve_points(scores, layers, budgets, method, weights)]


def match_depth(curve: Sequence[dict], full_score: float, tol: float = 1e-9) -> float | None:
    """Smallest avg_layers whose oracle score is >= full_score (None if none is).

    `tol` absorbs float summation order: a mix that is the full model everywhere must match it.
    """
    for point in sorted(curve, key=lambda p: p["avg_layers"]):
        if point["score"] >= full_score - tol * max(1.0, abs(full_score)):
            return point["avg_layers"]
    return None


# ---------------------------------------------------------------------------------------------
# Baselines on the same depth axis
# ---------------------------------------------------------------------------------------------
def interpolate(curve: Sequence[dict], avg_layers: float) -> float | None:
    """Score of a curve at an average depth, linear between points (None outside its range)."""
    pts = sorted((p["avg_layers"], p["score"]) for p in curve)
    xs = [x for x, _ in pts]
    if not pts or avg_layers < xs[0] - 1e-9 or avg_layers > xs[-1] + 1e-9:
        return None
    return float(np.interp(avg_layers, xs, [y for _, y in pts]))


def best_fixed_mix(points: Sequence[dict]) -> list[dict]:
    """The best input-blind controller, chosen with hindsight: at each average depth, the best mix
    of fixed routes (the same mix for every sequence), i.e. the upper concave envelope of the routes'
    (avg_layers, score) points, made non-decreasing. An optimistic bound for any controller that
    does not read its input. Returns the envelope's points (other keys kept).

    >>> [p["score"] for p in best_fixed_mix([{"avg_layers": 2, "score": .1}, {"avg_layers": 3, "score": .1},
    ...                                      {"avg_layers": 4, "score": .5}])]
    [0.1, 0.5]
    """
    hull: list[dict] = []
    for p in sorted(points, key=lambda p: (p["avg_layers"], -p["score"])):
        if hull and p["score"] <= hull[-1]["score"]:
            continue  # deeper and no better: never part of a best mix
        while len(hull) >= 2 and _below_chord(hull[-2], hull[-1], p):
            hull.pop()
        hull.append(dict(p))
    return hull


def _below_chord(a: dict, b: dict, c: dict) -> bool:
    """Whether b lies on or below the chord from a to c."""
    return ((b["score"] - a["score"]) * (c["avg_layers"] - a["avg_layers"])
            <= (c["score"] - a["score"]) * (b["avg_layers"] - a["avg_layers"]))


def mix_at(envelope: Sequence[dict], avg_layers: float) -> tuple[dict, dict, float]:
    """(a, b, p): the two envelope points (of `best_fixed_mix`) that bracket `avg_layers`, and the
    weight p of b in the mix (1 - p) a + p b that has exactly that depth (clamped to the envelope)."""
    lo = max((e for e in envelope if e["avg_layers"] <= avg_layers + 1e-9), key=lambda e: e["avg_layers"],
             default=envelope[0])
    hi = min((e for e in envelope if e["avg_layers"] >= avg_layers - 1e-9), key=lambda e: e["avg_layers"],
             default=envelope[-1])
    span = hi["avg_layers"] - lo["avg_layers"]
    return lo, hi, 0.0 if span <= 0 else (avg_layers - lo["avg_layers"]) / span


# ---------------------------------------------------------------------------------------------
# Sweep directory -> oracle.json
# ---------------------------------------------------------------------------------------------
def sweep_identity(sweep_dir: Path, *row_lists: list[tuple[int, dict]]) -> tuple[Any, int | None]:
    """(model, num_layers) that the rows of a sweep record; ValueError when they record more than one
    of either (one directory holding two models' rows would compare unrelated scores)."""
    seen: dict[str, tuple[str, str]] = {}  # field -> (value as JSON, where first seen)
    for name, rows in zip(("sweep.jsonl", "per_sequence.jsonl"), row_lists):
        for lineno, row in rows:
            for key in ("model", "num_layers"):
                if row.get(key) is None or (key == "model" and row.get("strategy") == "adapted"):
                    continue  # an adapted row names the shipped adapter of this model that it ran
                value = json.dumps(row[key], sort_keys=True)
                if key not in seen:
                    seen[key] = (value, f"{name}:{lineno}")
                elif value != seen[key][0]:
                    raise ValueError(f"{sweep_dir}: rows come from different models: {key} {seen[key][0]} "
                                     f"({seen[key][1]}) and {value} ({name}:{lineno}); one sweep directory holds one "
                                     f"model's rows: rerun the sweep into a new --out")
    model, layers = (json.loads(seen[k][0]) if k in seen else None for k in ("model", "num_layers"))
    return model, layers


def check_sweep_model(sweep_dir: str | os.PathLike, model: str) -> None:
    """Refuse a sweep made with another model than `model` (an id, or a directory: compared resolved)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep directory {sweep_dir} does not exist")
    recorded, _ = sweep_identity(sweep_dir, read_jsonl(sweep_dir / "sweep.jsonl", strict=True, numbered=True))
    if recorded is None or recorded == model:
        return
    if isinstance(recorded, str) and Path(recorded).expanduser().is_dir() and Path(model).expanduser().is_dir() \
            and Path(recorded).expanduser().resolve() == Path(model).expanduser().resolve():
        return
    raise ValueError(f"--model: the sweep {sweep_dir} was made with model {recorded!r}, not {model!r}; pass "
                     f"--model {recorded}, or sweep this model first")


def _sample_seed(config_id: Any) -> int:
    """The seed of a `full_sample#<seed>` config id (its place among the null alternatives)."""
    m = re.fullmatch(r"full_sample#(\d+)", str(config_id))
    return int(m.group(1)) if m else 1 << 30


def null_control(full: np.ndarray, samples: Sequence[np.ndarray], k: int) -> dict | None:
    """The per-sequence best of `k` full-depth alternatives: the greedy run (`full`, (N,)) and the
    first k - 1 `samples` (each (N,)). {"k", "score", "full_score"}; None when fewer than k - 1 exist."""
    if k < 1 or len(samples) < k - 1:
        return None
    alternatives = np.stack([full, *samples[:k - 1]], axis=1)  # (N, k)
    return {"k": k, "score": float(alternatives.max(axis=1).mean()), "full_score": float(full.mean())}


def run_oracle(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None,
               strategies: Sequence[str] | None = None, include_full: bool = True,
               budgets: Sequence[float] | None = None, method: str = "auto") -> dict:
    """Per-sequence oracle over a sweep directory; writes and returns the `oracle.json` document.

    Reads `sweep.jsonl` (one row per config) and `per_sequence.jsonl` (one row per config and
    sequence). Only sequences scored under every chosen config enter (`n_excluded` counts the
    rest), so the curve and `full_score` (the `full` config's mean rougeL) are over the same
    sequences. A sequence's cost under a config is its `layers_used` (else the config's
    `avg_layers`), weighted by its decode steps at full depth (`output_tokens` - 1 of its `full`
    row; 1 each when a row lacks `output_tokens`), so depths are in the unit of `avg_layers`.
    `strategies` restricts the candidate configs (default: every config but `full_sample` and
    `sequence` rows); the full model stays a candidate unless `include_full=False`, as in the
    paper's oracle (4, 8, 12 or all 24 layers).

    `null_control`: the same per-sequence best of K over K full-depth alternatives (the greedy full
    model and the `full_sample` rows with seeds 1..K-1), K = the number of candidates; None when the
    sweep has fewer than K - 1 sampled runs over these sequences. `match_avg_layers_null_adjusted`:
    the smallest depth whose oracle score minus the null gain (`score - full_score` of the control)
    reaches `full_score`.
    """
    sweep_dir = Path(sweep_dir)
    if isinstance(strategies, str):
        strategies = [strategies]
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep directory {sweep_dir} does not exist")
    out = check_output_file(Path(out) if out is not None else sweep_dir / "oracle.json", example="oracle.json")
    sweep_path, seq_path = sweep_dir / "sweep.jsonl", sweep_dir / "per_sequence.jsonl"
    sweep_rows, seq_rows = (read_jsonl(p, strict=True, numbered=True) for p in (sweep_path, seq_path))

    model_id, _ = sweep_identity(sweep_dir, sweep_rows, seq_rows)

    configs: dict[Any, dict] = {}
    for lineno, row in sweep_rows:
        where = f"{sweep_path}:{lineno}"
        cid = require_field(row, "config_id", where)
        require_field(row, "strategy", where)
        if cid in configs:
            raise ValueError(f"{where}: duplicate config_id {cid!r}")
        configs[cid] = row
    full_ids = [cid for cid, row in configs.items() if row["strategy"] == "full"]
    if not full_ids:
        raise ValueError(f"{sweep_path} has no config with strategy 'full' (needed for full_score)")
    full_id, full_row = full_ids[0], configs[full_ids[0]]
    if full_row.get("num_layers") is not None:
        num_layers = int(full_row["num_layers"])
    else:
        num_layers = int(round(require_number(full_row, "avg_layers", f"{sweep_path} (full config)")))

    present = sorted({row["strategy"] for row in configs.values()})
    unknown = sorted(set(strategies or []) - set(present))
    if unknown:
        raise ValueError(f"strategies: {', '.join(map(repr, unknown))} not in {sweep_path}; its strategies: "
                         f"{', '.join(present)}")
    chosen = [cid for cid, row in configs.items()
              if (row["strategy"] not in NOT_CANDIDATES if strategies is None else row["strategy"] in strategies)
              or (include_full and cid == full_id)]
    if not chosen:
        raise ValueError(f"no config in {sweep_path} has a strategy in {list(strategies or [])}")
    samples = sorted((cid for cid, row in configs.items() if row["strategy"] == "full_sample"), key=_sample_seed)
    needed = set(chosen) | {full_id}

    score: dict[tuple[Any, Any], float] = {}
    cost: dict[tuple[Any, Any], float] = {}
    steps: dict[Any, float] = {}  # decode steps of each sequence at full depth
    seq_order: dict[Any, None] = {}  # sequence ids in order of first appearance
    for lineno, row in seq_rows:
        where = f"{seq_path}:{lineno}"
        cid, sid = require_field(row, "config_id", where), require_field(row, "id", where)
        if cid not in needed and cid not in samples:
            continue  # another strategy, or a config the sweep never finished
        if (cid, sid) in score:
            raise ValueError(f"{where}: duplicate row for config {cid!r}, sequence {sid!r}")
        score[cid, sid] = require_number(row, "rougeL", where)
        if cid not in needed:
            continue  # a null-control sample: its score is all that is read
        if row.get("layers_used") is not None:
            cost[cid, sid] = require_number(row, "layers_used", where)
        else:
            cost[cid, sid] = require_number(configs[cid], "avg_layers",
                                     f"{sweep_path} (config {cid!r}, no layers_used)")
        if cid == full_id and row.get("output_tokens") is not None:
            steps[sid] = max(require_number(row, "output_tokens", where) - 1, 0.0)
        seq_order.setdefault(sid, None)
    seen_configs = {cid for cid, _ in score}
    for cid in chosen + [full_id]:
        if cid not in seen_configs:
            raise ValueError(f"config {cid!r} has no rows in {seq_path}")
    ids = [sid for sid in seq_order if all((cid, sid) in score for cid in needed)]
    if not ids:
        raise ValueError(f"no sequence in {seq_path} is scored under every config")

    scores = np.array([[score[cid, sid] for cid in chosen] for sid in ids])  # (N, K)
    layers = np.array([[cost[cid, sid] for cid in chosen] for sid in ids])  # (N, K)
    weighted = all(sid in steps for sid in ids)
    weights = np.array([steps[sid] for sid in ids]) if weighted else None
    full = np.array([score[full_id, sid] for sid in ids])
    full_score = float(full.mean())
    points = _curve_points(scores, layers, budgets, method, weights)
    curve = [{"avg_layers": avg, "score": res.total / len(ids)} for avg, res in points]
    match = match_depth(curve, full_score)
    choices = None
    if match is not None:
        res = next(r for avg, r in points if avg == match)
        choices = {str(sid): chosen[k] for sid, k in zip(ids, res.choice.tolist())}
    complete = [cid for cid in samples if all((cid, sid) in score for sid in ids)]
    null = null_control(full, [np.array([score[cid, sid] for sid in ids]) for cid in complete], len(chosen))
    if null is not None:
        null["configs"] = [full_id, *complete[:len(chosen) - 1]]
    adjusted = None if null is None else match_depth(curve, full_score + null["score"] - null["full_score"])
    doc = {
        "curve": curve,
        "full_score": full_score,
        "match_avg_layers": match,
        "match_fraction": None if match is None else match / num_layers,
        "null_control": null,
        "match_avg_layers_null_adjusted": adjusted,
        "solver": points[0][1].solver if points else None,
        "gap": max((res.gap for _, res in points), default=0.0),
        "num_layers": num_layers,
        "n_sequences": len(ids),
        "n_excluded": len(seq_order) - len(ids),
        "n_configs": len(chosen),
        "configs": chosen,
        "strategies": None if strategies is None else list(strategies),
        "depth_weights": "decode steps at full depth" if weighted else "one per sequence",
        "model": model_id,
        "choices_at_match": choices,
    }
    atomic_write_json(out, doc)
    return doc
