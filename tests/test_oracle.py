"""Routes, the multiple-choice knapsack (against brute force) and the sweep oracle."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adalas.config import route_from_str, route_to_str
from adalas.oracle import (
    early_exit_route,
    knapsack,
    match_depth,
    oracle_curve,
    random_routes,
    route_to_skip_layers,
    run_oracle,
    sweep_identity,
    uniform_skip_route,
)
from adalas.knapsack import solve_knapsack
from adalas.io import read_jsonl


def brute_force(values, costs, budget):
    """Best total over all K**N choices (None if nothing fits)."""
    values, costs = np.asarray(values, float), np.broadcast_to(costs, np.shape(values))
    n, k = values.shape
    best = None
    for choice in itertools.product(range(k), repeat=n):
        if sum(costs[i, c] for i, c in enumerate(choice)) <= budget:
            total = sum(values[i, c] for i, c in enumerate(choice))
            best = total if best is None else max(best, total)
    return best


def check_feasible(res, costs, budget):
    costs = np.broadcast_to(costs, (len(res.choice), np.shape(costs)[-1]))
    spent = costs[np.arange(len(res.choice)), res.choice].sum()
    assert spent <= budget and spent == res.cost


# -- routes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("L", list(range(1, 33)))
def test_uniform_skip_exact_budget_and_even_spread(L):
    for budget in range(1, L + 1):
        route = uniform_skip_route(L, budget)
        assert len(route) == L and sum(route) == budget
        skipped = route_to_skip_layers(route)
        kept = [i for i in range(L) if route[i]]
        placed = skipped if 2 * len(skipped) <= L else kept  # the smaller set is spread evenly
        gaps = np.diff(placed)
        assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1
        if 2 * len(skipped) <= L:
            assert route[0]  # the first layer is kept when at least half are
        if 1 < budget and 2 * len(skipped) != L:
            assert route[-1]  # ... and the last too, except for exactly every other layer


@pytest.mark.parametrize("L", [2, 4, 12, 24, 30])
def test_uniform_skip_half_is_every_other_layer(L):
    assert uniform_skip_route(L, L // 2) == [i % 2 == 0 for i in range(L)]


def test_uniform_skip_examples():
    assert route_to_skip_layers(uniform_skip_route(30, 27)) == [5, 15, 25]
    assert [i for i, k in enumerate(uniform_skip_route(24, 4)) if k] == [0, 8, 15, 23]
    assert uniform_skip_route(6, 6) == [True] * 6
    assert uniform_skip_route(5, 1) == [True, False, False, False, False]


def test_early_exit_route():
    assert early_exit_route(5, 2) == [True, True, False, False, False]
    assert early_exit_route(3, 3) == [True] * 3


@pytest.mark.parametrize("call", [
    lambda: uniform_skip_route(4, 0), lambda: uniform_skip_route(4, 5),
    lambda: uniform_skip_route(0, 0), lambda: early_exit_route(4, 0),
    lambda: random_routes(4, 5, 1, 0), lambda: random_routes(4, 2, -1, 0),
    lambda: random_routes(4, 2, 1, -3), lambda: uniform_skip_route(4, 2.5),
])
def test_route_arguments_are_checked(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("keep_first", [False, True])
@pytest.mark.parametrize("L,budget,n", [(8, 3, 10), (30, 15, 40), (12, 6, 200)])
def test_random_routes_reproducible_distinct_exact(L, budget, n, keep_first):
    routes = random_routes(L, budget, n, seed=7, keep_first=keep_first)
    assert routes == random_routes(L, budget, n, seed=7, keep_first=keep_first)
    assert len(routes) == n
    assert len({route_to_str(r) for r in routes}) == n
    assert all(len(r) == L and sum(r) == budget for r in routes)
    if keep_first:
        assert all(r[0] for r in routes)
    assert random_routes(L, budget, 3, seed=7, keep_first=keep_first) == routes[:3]
    assert random_routes(L, budget, n, seed=8, keep_first=keep_first) != routes


def test_random_routes_exhaust_small_spaces():
    routes = random_routes(5, 2, 100, seed=0)
    assert len(routes) == math.comb(5, 2) == len({route_to_str(r) for r in routes})
    assert len(random_routes(5, 2, 100, seed=0, keep_first=True)) == 4
    assert random_routes(5, 1, 5, seed=0, keep_first=True) == [[True] + [False] * 4]
    assert random_routes(5, 2, 0, seed=0) == []


def test_route_string_round_trip():
    route = [True, True, False, True, False]
    assert route_to_str(route) == "11010"
    assert route_from_str("11010") == route
    assert route_to_skip_layers(route) == [2, 4]
    for bad in ["", "10a1", "1 0"]:
        with pytest.raises(ValueError):
            route_from_str(bad)


# -- knapsack ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(60))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = rng.integers(1, 6), rng.integers(1, 5)
    values = rng.normal(size=(n, k)).round(2)
    costs = rng.integers(0, 7, size=(n, k))
    lo, hi = costs.min(1).sum(), costs.max(1).sum()
    budget = int(rng.integers(lo, hi + 3))
    best = brute_force(values, costs, budget)
    choice, total = knapsack(values, costs, budget)
    assert total == pytest.approx(best, abs=1e-9)
    assert total == pytest.approx(values[np.arange(n), choice].sum())
    dp = solve_knapsack(values, costs, budget, method="dp")
    assert dp.solver == "dp" and dp.gap == 0.0 and dp.total == pytest.approx(best, abs=1e-9)
    check_feasible(dp, costs, budget)
    hull = solve_knapsack(values, costs, budget, method="hull")
    check_feasible(hull, costs, budget)
    assert hull.solver == "hull" and hull.gap >= 0.0
    assert hull.total <= best + 1e-9 <= hull.total + hull.gap + 2e-9
    assert hull.upper_bound == pytest.approx(hull.total + hull.gap)


@settings(max_examples=150, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    data=st.data(),
)
def test_knapsack_optimal_property(shape, data):
    n, k = shape
    values = np.array(data.draw(st.lists(
        st.floats(-10, 10, allow_nan=False, width=32), min_size=n * k, max_size=n * k))).reshape(n, k)
    costs = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n * k, max_size=n * k))).reshape(n, k)
    budget = int(costs.min(1).sum()) + data.draw(st.integers(0, 14))
    best = brute_force(values, costs, budget)
    for method in ("auto", "dp"):
        res = solve_knapsack(values, costs, budget, method=method)
        check_feasible(res, costs, budget)
        assert res.total == pytest.approx(best, abs=1e-6)
    hull = solve_knapsack(values, costs, budget, method="hull")
    check_feasible(hull, costs, budget)
    assert hull.total - 1e-6 <= best <= hull.upper_bound + 1e-6


def test_hull_is_exact_on_convex_instances():
    # unit cost steps and concave values: the LP optimum is integral, so the greedy is optimal
    rng = np.random.default_rng(0)
    n, k = 300, 6
    steps = np.sort(rng.uniform(0, 1, size=(n, k - 1)), axis=1)[:, ::-1]  # decreasing gains
    values = np.concatenate([rng.uniform(0, 1, (n, 1)), steps], axis=1).cumsum(axis=1)
    costs = np.arange(k)
    for budget in [0, 17, 400, 1499, 5 * n]:
        hull = solve_knapsack(values, costs, budget, method="hull")
        dp = solve_knapsack(values, costs, budget, method="dp")
        assert hull.gap == 0.0
        assert hull.total == pytest.approx(dp.total, abs=1e-9)
        check_feasible(hull, np.broadcast_to(costs, (n, k)), budget)


def test_dp_and_hull_agree_within_gap_midsize():
    rng = np.random.default_rng(1)
    n, k = 200, 8
    costs = rng.integers(8, 8 * 24, size=(n, k))
    values = np.sqrt(costs) / 10 + rng.normal(0, 0.1, size=(n, k))
    budget = int(costs.min(1).sum() + 0.5 * (costs.max(1).sum() - costs.min(1).sum()))
    dp = solve_knapsack(values, costs, budget, method="dp")
    hull = solve_knapsack(values, costs, budget, method="hull")
    assert hull.total - 1e-9 <= dp.total <= hull.upper_bound + 1e-9
    assert solve_knapsack(values, costs, budget).solver == "dp"  # small enough for exact


def test_large_instance_uses_hull_with_small_gap():
    rng = np.random.default_rng(2)
    n, k = 20000, 8
    costs = rng.integers(8, 8 * 24, size=(n, k))
    values = np.sqrt(costs) / 10 + rng.normal(0, 0.1, size=(n, k))
    budget = int(costs.mean() * n)
    res = solve_knapsack(values, costs, budget)
    assert res.solver == "hull"
    check_feasible(res, costs, budget)
    assert 0.0 <= res.gap <= 1e-4 * abs(res.total)


def test_knapsack_inputs():
    values = np.array([[1.0, 2.0], [0.5, 3.0]])
    # a cost row broadcasts; integral floats are accepted
    assert knapsack(values, [1, 2], 3)[1] == knapsack(values, [[1.0, 2.0], [1.0, 2.0]], 3)[1] == 4.0
    assert solve_knapsack(values, [1, 2], 100).total == 5.0
    with pytest.raises(ValueError, match=r"budget 1 .*minimum total cost 2"):
        knapsack(values, [1, 2], 1)
    for costs in ([1.5, 2], [-1, 2], [1, 2, 3], [[1, 2]] * 3):
        with pytest.raises(ValueError):
            knapsack(values, costs, 3)
    with pytest.raises(ValueError):
        knapsack([[np.nan, 1.0]], [0, 1], 1)
    with pytest.raises(ValueError):
        solve_knapsack(values, [1, 2], 3, method="greedy")


def test_single_option_and_zero_costs():
    values = np.array([[0.3], [0.4]])
    for method in ("dp", "hull"):
        res = solve_knapsack(values, [2], 4, method=method)
        assert res.choice.tolist() == [0, 0] and res.total == pytest.approx(0.7)
        res = solve_knapsack([[0.1, 0.9]], [0, 0], 0, method=method)
        assert res.choice.tolist() == [1]


# -- oracle curve -----------------------------------------------------------------------------
def test_oracle_curve_monotone_and_exact():
    rng = np.random.default_rng(3)
    n, k = 5, 3
    scores = rng.uniform(size=(n, k))
    layers = rng.uniform(1, 6, size=(n, k)).round(3)  # fractional: costed at 1/8 layer
    curve = oracle_curve(scores, layers)
    avgs = [p["avg_layers"] for p in curve]
    assert avgs == sorted(avgs)
    costs = np.rint(layers * 8)
    assert avgs[0] == pytest.approx(costs.min(1).sum() / (8 * n))
    assert avgs[-1] == pytest.approx(costs.max(1).sum() / (8 * n))
    assert all(b - a <= 0.25 + 1e-12 for a, b in zip(avgs, avgs[1:]))
    assert all(math.isclose(4 * a, round(4 * a)) for a in avgs[1:-1])  # quarter-layer grid
    s = [p["score"] for p in curve]
    assert all(b >= a for a, b in zip(s, s[1:]))
    for p in curve:
        best = brute_force(scores, costs, math.floor(p["avg_layers"] * 8 * n + 1e-9))
        assert p["score"] == pytest.approx(best / n)
    assert s[-1] == pytest.approx(scores.max(1).mean())


def test_oracle_curve_hull_is_monotone():
    rng = np.random.default_rng(4)
    scores = rng.uniform(size=(3000, 6))
    layers = rng.uniform(2, 24, size=(3000, 6))
    s = [p["score"] for p in oracle_curve(scores, layers, method="hull")]
    assert all(b >= a for a, b in zip(s, s[1:]))


def test_oracle_curve_budgets_and_match():
    scores = [[0.1, 0.5], [0.2, 0.4]]
    curve = oracle_curve(scores, [2, 4], budgets=[4, 3, 2])
    assert [p["avg_layers"] for p in curve] == [2.0, 3.0, 4.0]
    assert [p["score"] for p in curve] == pytest.approx([0.15, 0.35, 0.45])
    assert match_depth(curve, 0.35) == 3.0
    assert match_depth(curve, 0.45) == 4.0
    assert match_depth(curve, 0.5) is None
    with pytest.raises(ValueError, match="below the shallowest"):
        oracle_curve(scores, [2, 4], budgets=[1.5])


# -- run_oracle -------------------------------------------------------------------------------
# configs on a 4-layer model; sequence "e" is missing under exit1, so it is excluded
CONFIGS = [
    {"config_id": "full", "strategy": "full", "budget": 4, "route": "1111", "avg_layers": 4.0},
    {"config_id": "skip2", "strategy": "uniform_skip", "budget": 2, "route": "1010", "avg_layers": 2.0},
    {"config_id": "exit1", "strategy": "early_exit", "budget": 1, "route": "1000", "avg_layers": 1.0},
]
SCORES = {  # sequence -> {config: rougeL}
    "a": {"full": 0.5, "skip2": 0.5, "exit1": 0.5},
    "b": {"full": 0.6, "skip2": 0.6, "exit1": 0.2},
    "c": {"full": 0.4, "skip2": 0.1, "exit1": 0.1},
    "d": {"full": 0.3, "skip2": 0.4, "exit1": 0.0},
    "e": {"full": 0.9, "skip2": 0.9},
}
DEPTH = {"full": 4, "skip2": 2, "exit1": 1}


def write_sweep(d, configs=CONFIGS, scores=SCORES, model="tiny-opt"):
    d.mkdir(exist_ok=True)
    with open(d / "sweep.jsonl", "w") as f:
        for c in configs:
            f.write(json.dumps({**c, "model": model, "rougeL": 0.0}) + "\n")
    with open(d / "per_sequence.jsonl", "w") as f:
        for sid, row in scores.items():
            for cid, score in row.items():
                rec = {"config_id": cid, "id": sid, "rougeL": score, "model": model}
                if cid != "exit1":  # exit1 rows fall back to the config's avg_layers
                    rec["layers_used"] = float(DEPTH[cid])
                f.write(json.dumps(rec) + "\n")
    return d


def test_run_oracle_hand_written_sweep(tmp_path):
    d = write_sweep(tmp_path / "sweep")
    doc = run_oracle(d)
    assert json.loads((d / "oracle.json").read_text()) == doc
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert doc["n_sequences"] == 4 and doc["n_excluded"] == 1
    assert doc["configs"] == ["full", "skip2", "exit1"] and doc["n_configs"] == 3
    assert doc["full_score"] == pytest.approx(0.45)
    assert doc["solver"] == "dp" and doc["gap"] == 0.0
    assert doc["model"] == "tiny-opt" and doc["num_layers"] == 4
    # a: exit1 (1 layer), b: skip2 (2), c: full (4), d: skip2 (2) -> 9 layers for 1.9 >= 1.8
    assert doc["match_avg_layers"] == 2.25
    assert doc["match_fraction"] == pytest.approx(2.25 / 4)
    assert doc["choices_at_match"] == {"a": "exit1", "b": "skip2", "c": "full", "d": "skip2"}
    curve = doc["curve"]
    assert [p["avg_layers"] for p in curve] == [1 + 0.25 * i for i in range(13)]
    names = ["full", "skip2", "exit1"]
    values = np.array([[SCORES[s][c] for c in names] for s in "abcd"])
    costs = np.array([[8 * DEPTH[c] for c in names]] * 4)
    for p in curve:
        assert p["score"] == pytest.approx(brute_force(values, costs, p["avg_layers"] * 32) / 4)
    assert curve[0]["score"] == pytest.approx(0.2) and curve[-1]["score"] == pytest.approx(0.475)


def test_run_oracle_strategies_and_out(tmp_path):
    d = write_sweep(tmp_path / "sweep")
    out = tmp_path / "elsewhere" / "o.json"
    doc = run_oracle(d, out=out, strategies=["early_exit"])
    assert out.exists() and not (d / "oracle.json").exists()
    assert doc["configs"] == ["full", "exit1"]  # the full model stays a candidate
    assert doc["match_avg_layers"] == 3.25  # a: exit1, b, c, d: full
    assert run_oracle(d, out=out, strategies=["early_exit"], include_full=False)["configs"] == ["exit1"]


def test_run_oracle_no_match(tmp_path):
    d = write_sweep(tmp_path / "sweep", configs=CONFIGS[:2],
                    scores={"a": {"full": 0.5, "skip2": 0.1}})
    doc = run_oracle(d, strategies=["uniform_skip"], include_full=False)
    assert doc["match_avg_layers"] is None and doc["match_fraction"] is None
    assert doc["choices_at_match"] is None


def test_run_oracle_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_oracle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="sweep.jsonl not found"):
        run_oracle(tmp_path / "empty")

    d = write_sweep(tmp_path / "blank")
    (d / "per_sequence.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="per_sequence.jsonl is empty"):
        run_oracle(d)

    d = write_sweep(tmp_path / "bad")
    lines = (d / "per_sequence.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-3]
    (d / "per_sequence.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"per_sequence.jsonl:3: malformed JSON"):
        run_oracle(d)

    d = write_sweep(tmp_path / "models")
    with open(d / "sweep.jsonl", "a") as f:
        f.write(json.dumps({"config_id": "x", "strategy": "learned", "model": "other"}) + "\n")
    with pytest.raises(ValueError, match="different models"):
        run_oracle(d)

    d = write_sweep(tmp_path / "adapted")  # a shipped adapter of the sweep's model names itself: not another model
    with open(d / "sweep.jsonl", "a") as f:
        f.write(json.dumps({"config_id": "adapted:m-adapted", "strategy": "adapted", "model": "m-adapted"}) + "\n")
    model, _ = sweep_identity(d, read_jsonl(d / "sweep.jsonl", strict=True, numbered=True))
    assert model == "tiny-opt"

    d = write_sweep(tmp_path / "nofull", configs=CONFIGS[1:])
    with pytest.raises(ValueError, match="no config with strategy 'full'"):
        run_oracle(d)

    d = write_sweep(tmp_path / "norows", configs=CONFIGS + [
        {"config_id": "r", "strategy": "random_route", "budget": 2, "avg_layers": 2.0}])
    with pytest.raises(ValueError, match="'r' has no rows"):
        run_oracle(d)

    d = write_sweep(tmp_path / "noscore")
    with open(d / "per_sequence.jsonl", "a") as f:
        f.write(json.dumps({"config_id": "full", "id": "z", "rougeL": None}) + "\n")
    with pytest.raises(ValueError, match="missing field 'rougeL'"):
        run_oracle(d)


# -- depth in decode steps, the null control ----------------------------------------------------
def test_oracle_depth_weights_sequences_by_their_decode_steps():
    """Two sequences: a long one (9 decode steps) and a short one (1). Taking the shallow config on
    the long sequence saves 9x the layers it saves on the short one."""
    scores = [[0.5, 0.4], [0.5, 0.1]]  # columns: full (4 layers), skip (2 layers)
    layers = [4, 2]
    plain = oracle_curve(scores, layers)
    weighted = oracle_curve(scores, layers, weights=[9, 1])
    # unweighted: skipping on the long row alone is an average of 3 layers
    assert max(p["score"] for p in plain if p["avg_layers"] <= 3.0) == pytest.approx(0.45)
    # in decode steps it is (9 * 2 + 1 * 4) / 10 = 2.2 layers
    assert max(p["score"] for p in weighted if p["avg_layers"] <= 2.25) == pytest.approx(0.45)
    assert max(p["score"] for p in weighted if p["avg_layers"] <= 3.75) == pytest.approx(0.45)  # the other way: 3.8
    with pytest.raises(ValueError, match="weights"):
        oracle_curve(scores, layers, weights=[1, -1])


def _with_samples(d, samples, output_tokens=None, extra_configs=()):
    """Add full_sample#s configs ({seed: {sequence: score}}) and output_tokens to the full rows."""
    with open(d / "sweep.jsonl", "a") as f:
        for seed in samples:
            f.write(json.dumps({"config_id": f"full_sample#{seed}", "strategy": "full_sample", "budget": 4,
                                "route": "1111", "avg_layers": 4.0, "model": "tiny-opt", "rougeL": 0.0}) + "\n")
        for c in extra_configs:
            f.write(json.dumps({**c, "model": "tiny-opt", "rougeL": 0.0}) + "\n")
    rows = [json.loads(x) for x in (d / "per_sequence.jsonl").read_text().splitlines()]
    for r in rows:
        if output_tokens and r["config_id"] == "full":
            r["output_tokens"] = output_tokens[r["id"]]
    for seed, by_seq in samples.items():
        rows += [{"config_id": f"full_sample#{seed}", "id": sid, "rougeL": s, "layers_used": 4.0, "model": "tiny-opt"}
                 for sid, s in by_seq.items()]
    (d / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_null_control_is_the_same_best_of_k_over_full_depth_runs(tmp_path):
    d = write_sweep(tmp_path / "sweep")
    assert run_oracle(d)["null_control"] is None  # no sampled runs: no control
    assert run_oracle(d)["match_avg_layers_null_adjusted"] is None
    samples = {1: {"a": 0.6, "b": 0.2, "c": 0.5, "d": 0.3, "e": 0.1}, 2: {"a": 0.1, "b": 0.7, "c": 0.4, "d": 0.2},
               3: {"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9}}  # seed 3 is not among K - 1 = 2 alternatives
    d = _with_samples(d, samples, extra_configs=[{"config_id": "seq", "strategy": "sequence", "avg_layers": 2.0}])
    doc = run_oracle(d)
    assert doc["configs"] == ["full", "skip2", "exit1"]  # samples and router rows are not candidates
    null = doc["null_control"]
    assert null["k"] == 3 and null["configs"] == ["full", "full_sample#1", "full_sample#2"]
    best = {"a": 0.6, "b": 0.7, "c": 0.5, "d": 0.3}  # per sequence, max(full, #1, #2); "e" is excluded
    assert null["score"] == pytest.approx(np.mean(list(best.values())))
    assert null["full_score"] == pytest.approx(doc["full_score"]) == pytest.approx(0.45)
    gain = null["score"] - null["full_score"]  # 0.075
    assert doc["match_avg_layers"] == 2.25
    # the curve less the null gain reaches 0.45 where the curve reaches 0.525: a full, b full/skip2, c full,
    # d skip2 = 0.5 + 0.6 + 0.4 + 0.4 = 1.9 / 4 = 0.475 at most: never
    assert max(p["score"] for p in doc["curve"]) < doc["full_score"] + gain
    assert doc["match_avg_layers_null_adjusted"] is None
    assert run_oracle(d, strategies=["uniform_skip"])["null_control"]["k"] == 2  # K follows the candidates
    # a smaller null gain leaves part of the saving
    configs = [{"config_id": "full", "strategy": "full", "budget": 4, "avg_layers": 4.0},
               {"config_id": "mid", "strategy": "uniform_skip", "budget": 3, "avg_layers": 3.0},
               {"config_id": "skip2", "strategy": "uniform_skip", "budget": 2, "avg_layers": 2.0}]
    global DEPTH
    depth, DEPTH = DEPTH, {"full": 4, "mid": 3, "skip2": 2}
    try:
        d2 = write_sweep(tmp_path / "sweep2", configs, {"a": {"full": 0.5, "mid": 0.7, "skip2": 0.5},
                                                        "b": {"full": 0.5, "mid": 0.5, "skip2": 0.45}})
    finally:
        DEPTH = depth
    _with_samples(d2, {1: {"a": 0.68, "b": 0.5}, 2: {"a": 0.0, "b": 0.0}})
    doc2 = run_oracle(d2)
    assert doc2["null_control"]["score"] - doc2["full_score"] == pytest.approx(0.09)
    assert doc2["match_avg_layers"] == 2.5  # a mid, b skip2: 0.575
    assert doc2["match_avg_layers_null_adjusted"] == 3.0  # needs 0.59: a mid, b mid or full (0.6)


def test_run_oracle_depth_is_in_decode_steps(tmp_path):
    d = write_sweep(tmp_path / "sweep")
    _with_samples(d, {}, output_tokens={"a": 11, "b": 2, "c": 2, "d": 2, "e": 2})  # a: 10 steps, others 1
    doc = run_oracle(d)
    assert doc["depth_weights"] == "decode steps at full depth"
    # cheapest match: a exit1 (10 steps x 1 layer, same score), b skip2, c full, d skip2: 18 layer-steps / 13
    assert 18 / 13 <= doc["match_avg_layers"] <= 18 / 13 + 0.25  # unweighted, 9 layers / 4 sequences = 2.25
    assert write_sweep(tmp_path / "plain") and run_oracle(tmp_path / "plain")["match_avg_layers"] == 2.25
