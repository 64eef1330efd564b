"""Routes per budget, and the per-sequence oracle.

The paper's oracle asks: if each sequence could pick its own depth configuration after the fact,
how few layers would the model need on average to match the full model? Picking one
configuration per sequence under a total layer budget is a multiple-choice knapsack (MCKP):
rows are sequences, options are configurations, values are scores, costs are layers used. The
solver is `adalas.knapsack`; `knapsack` is imported here too, as the public `adalas.oracle.knapsack`.

Notable:
- Routes are plain `list[bool]` (True = the layer runs), with a compact string form "1101...".
  `uniform_skip_route` spreads the smaller of {skipped, kept} layers evenly; `random_routes`
  draws distinct routes once from a seed, so a sweep can evaluate each as a fixed route.
- A whole oracle curve is one knapsack instance solved at every budget (`solve_at_budgets`: one DP
  table or one hull for all of them), about the cost of one solve.
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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_json, check_output_file, read_jsonl, require_field, require_number
from .knapsack import KnapsackResult, knapsack_problem, solve_at_budgets
from .knapsack import knapsack  # noqa: F401  (the public name `adalas.oracle.knapsack`)

LAYER_RESOLUTION = 8  # cost units per layer: fractional depths are rounded to 1/8 layer
CURVE_STEP = 0.25  # default spacing of the oracle curve, in layers
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
    v, c = knapsack_problem(v, c)
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
    results = solve_at_budgets(v, c, [u for _, u in units], method)
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
