"""The study's arithmetic on constructed numbers: E3's pre-registered decision rule (reproduced, not
reproduced, inconclusive), its budget-matched null and censored crossing, E4's best fixed mix chosen
again in every resample, routes by name, a store that starts from the real-task rows, and the
compute plan."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adalas.study import routes
from adalas.study.e4 import mix_difference
from adalas.study.prereg import Pooled, crossing, decide, preregistered_test

TASKS = np.array(["a"] * 40 + ["b"] * 40 + ["c"] * 40)


def _pooled(deep: float, shallow: float, noise: float, seed: int = 0) -> Pooled:
    """Two candidates (full depth 10 layers scoring `deep`, 2 layers scoring `shallow`) and a null of
    two full-depth runs that score alike; each row its own noise."""
    rng = np.random.default_rng(seed)
    n = len(TASKS)
    full = deep + rng.normal(0, noise, n)
    scores = np.stack([full, shallow + rng.normal(0, noise, n)], axis=1)
    alts = np.stack([full, deep + rng.normal(0, noise, n)], axis=1)
    layers = np.broadcast_to([10.0, 2.0], (n, 2)).copy()
    return Pooled(scores, layers, np.ones(n), alts, TASKS, 0)


@pytest.mark.parametrize("ci, verdict", [([-0.01, 0.02], "reproduced"), ([-0.09, -0.06], "not reproduced"),
                                         ([-0.08, 0.01], "inconclusive"), ([-0.05, 0.0], "inconclusive")])
def test_the_decision_rule_reads_the_interval_against_minus_m(ci, verdict):
    assert decide(ci, margin=0.05) == verdict  # a bound exactly at -m decides nothing


def test_the_preregistered_test_on_constructed_rows_gives_each_verdict():
    # the shallow candidate is as good as full depth: the oracle at 2 layers loses nothing beyond the noise
    same = preregistered_test(_pooled(0.5, 0.5, 0.0), budget=2.0, margin=0.025, resamples=200)
    assert same["verdict"] == "reproduced" and same["difference"] == pytest.approx(0.0)
    assert same["ci95"] == [pytest.approx(0.0), pytest.approx(0.0)] and same["resamples"] == 200 and same["n"] == 120
    # far worse: at 2 layers every row must take the shallow candidate, 0.3 below
    worse = preregistered_test(_pooled(0.5, 0.2, 0.01), budget=2.0, margin=0.025, resamples=200)
    assert worse["verdict"] == "not reproduced" and worse["ci95"][1] < -0.025
    assert worse["oracle"] == pytest.approx(0.2, abs=0.01) and worse["null_best"] > 0.5
    # noisy rows losing about m, and a null with nothing to select: the interval straddles -m
    rng = np.random.default_rng(1)
    full = 0.5 + rng.normal(0, 0.1, 120)
    shallow = full - 0.025 + rng.normal(0, 0.15, 120)
    p = Pooled(np.stack([full, shallow], 1), np.broadcast_to([10.0, 2.0], (120, 2)).copy(), np.ones(120),
               np.stack([full, full], 1), TASKS, 0)
    noisy = preregistered_test(p, budget=2.0, margin=0.025, resamples=200)
    assert noisy["verdict"] == "inconclusive" and noisy["ci95"][0] < -0.025 < noisy["ci95"][1]


def test_the_budget_matched_null_goes_through_the_same_knapsack():
    p = _pooled(0.5, 0.2, 0.01)
    t = preregistered_test(p, budget=6.0, margin=0.025, resamples=50)
    # at 6 layers on average half the rows may run full depth: the oracle and the budget-matched null
    # (the same costs, full-depth scores) each buy depth where it gains most, so the null's best at full
    # cost is out of reach for the budget-matched one
    assert t["budget_matched_null"] < t["null_best"]
    assert t["difference_budget_matched"] == pytest.approx(t["oracle"] - t["budget_matched_null"])
    assert len(t["ci95_budget_matched"]) == 2


def test_resamples_that_never_cross_are_censored_not_counted_as_full_depth():
    never = crossing(_pooled(0.5, 0.2, 0.01), resamples=100)
    assert never["point"] is None and never["censored"] == 100 and never["ci95"] == [None, None]
    always = crossing(_pooled(0.5, 0.5, 0.0), resamples=100)
    assert always["censored"] == 0 and always["point"] == pytest.approx(2.0) and always["ci95"][1] is not None


def test_the_best_fixed_mix_is_chosen_again_in_every_resample():
    rng = np.random.default_rng(0)
    n = 300
    # two shallow configs that tie on average: which one the hindsight mix takes depends on the rows
    scores = np.stack([0.6 + rng.normal(0, 0.05, n), 0.4 + rng.normal(0, 0.2, n), 0.4 + rng.normal(0, 0.2, n)], 1)
    layers = np.broadcast_to([10.0, 4.0, 4.0], (n, 3)).copy()
    router = np.where(np.arange(n) % 2 == 0, 0, 1)  # half at full depth, half on config 1: 7 layers
    got = mix_difference(scores, layers, np.ones(n), router, resamples=300)
    assert {"0,1", "0,2"} <= {k for k in got["mixes"]} or {"1,0", "2,0"} <= {k for k in got["mixes"]}
    assert sum(got["mixes"].values()) == 300 and got["ci95"][0] <= got["diff"] <= got["ci95"][1]
    # one config only: the mix at the router's depth is the router itself, in every resample
    one = mix_difference(scores[:, :1], layers[:, :1], np.ones(n), np.zeros(n, dtype=int), resamples=50)
    assert one["diff"] == pytest.approx(0.0) and one["ci95"] == [pytest.approx(0.0), pytest.approx(0.0)]


def test_a_curve_is_interpolated_per_sequence_between_its_two_neighbours():
    from adalas.study.common import curve_scores

    curve = [(2.0, np.array([0.0, 1.0])), (4.0, np.array([1.0, 0.0])), (8.0, np.array([1.0, 1.0]))]
    np.testing.assert_allclose(curve_scores(curve, 3.0), [0.5, 0.5])  # half of each config
    np.testing.assert_allclose(curve_scores(curve, 7.0), [1.0, 0.75])
    assert curve_scores(curve, 1.9) is None and curve_scores(curve, 8.1) is None


def test_routes_by_name_get_the_ids_the_real_task_sweeps_use():
    L = 30
    assert routes.config_id("uniform@24", L) == "uniform_skip@24" and routes.config_id("exit@20", L) == "early_exit@20"
    assert routes.config_id("full", L) == "full" and routes.config_id("uniform@30", L) == "full"
    assert routes.config_id([3, 1], L) == "route:skip-1-3"
    assert sum(routes.resolve("uniform@5", L)) == 5 and routes.skip_layers("uniform@27", L) == [5, 15, 25]
    for spec in ("uniform@7", "exit@12", [2, 9]):
        assert routes.spec_of(routes.resolve(spec, L), L) == spec
    from adalas.sweep import build_configs

    ours = routes.sweep_config("uniform@24", L)
    theirs = next(c for c in build_configs(L, ["uniform_skip"], [24]) if c.config_id == "uniform_skip@24")
    assert ours.definition() == theirs.definition()
    with pytest.raises(ValueError, match="uniform@B"):
        routes.resolve("uniform@31", L)
    with pytest.raises(ValueError, match="not a shipped adapter"):
        routes.resolve("shipped:nope", L)


def test_a_store_starts_from_the_real_task_rows_made_alike(tmp_path):
    from adalas.config import DepthConfig
    from adalas.study.sweeps import seed_store
    from adalas.sweep import SweepConfig

    full = SweepConfig("full", "full", 8, DepthConfig())
    skip = routes.sweep_config("uniform@6", 8)
    other = SweepConfig("early_exit@6", "early_exit", 6, DepthConfig(mode="early_exit", exit_after=5))  # not alike
    src = tmp_path / "tasks" / "samsum"
    src.mkdir(parents=True)
    settings = {"model": "m", "max_new_tokens": 48, "batch_size": 16, "dtype": "float32"}
    defs = {c.config_id: c.definition() for c in (full, skip)}
    defs["early_exit@6"] = SweepConfig("early_exit@6", "early_exit", 6,
                                       DepthConfig(mode="early_exit", exit_after=6)).definition()
    (src / "settings.json").write_text(json.dumps({"settings": settings, "configs": defs}))
    (src / "batches.json").write_text("[]")
    rows = [{"config_id": c, "id": i, "rougeL": 0.5, "prompt": "x"} for c in defs for i in ("a", "b")]
    (src / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert seed_store(src, tmp_path / "other", {**settings, "batch_size": 8}, [full, skip]) == []  # other settings
    store = tmp_path / "store"
    assert seed_store(src, store, settings, [full, skip, other]) == ["full", "uniform_skip@6"]
    kept = [json.loads(line) for line in (store / "per_sequence.jsonl").read_text().splitlines()]
    assert {r["config_id"] for r in kept} == {"full", "uniform_skip@6"} and len(kept) == 4
    assert seed_store(src, store, settings, [full, skip]) == []  # a store that exists is never overwritten


def test_the_compute_plan_covers_every_experiment_of_the_packaged_plan(tmp_path):
    from adalas.study import load_plan
    from adalas.study.compute import estimate, render

    plan = load_plan("smollm2-135m", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    est = estimate(plan)
    assert set(est) == {"E1", "E2", "E3", "E4"} and all(x > 0 for v in est.values() for _, x in v)
    total = sum(x for v in est.values() for _, x in v)
    assert 20 < total < 100  # thread-hours: two lanes of a 2-core machine, a few days at most
    assert "Whole study" in render(plan) and not (tmp_path / "out").exists()
