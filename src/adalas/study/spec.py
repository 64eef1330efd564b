"""What each experiment of a plan asks for, read and checked into typed specs (no settings dicts).

- E1: per depth, the seeds and the candidate runs of each arm (the same number for both: equal
  effort); each candidate is trained once per seed and each arm chooses on held-out rows.
- E2: the two arms' run templates, the cost weights, the shared learning-rate grid, the pilots'
  steps and seed, and the seeds of the final runs.
- E3: the model (a run of the plan or a shipped alias) and its candidate routes (K of them).
- E4: the router's target depths, folds and speed measurement.
- The pre-registered test: written in the plan before any sweep runs, checked here, computed by
  `prereg.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import routes


def _ints(value: Any, where: str, minimum: int = 0, at_least: int = 1) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) < at_least or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ValueError(f"{where}: expected a list of {at_least} or more integers >= {minimum}, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: duplicate values in {value!r}")
    return tuple(value)


def _numbers(value: Any, where: str, at_least: int = 1) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < at_least or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{where}: expected a list of {at_least} or more positive numbers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: duplicate values in {value!r}")
    return tuple(float(v) for v in value)


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of run names, got {value!r}")
    return tuple(value)


def _fields(doc: Any, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(doc).__name__}")
    bad = sorted(str(k) for k in doc if k not in allowed)
    if bad:
        raise ValueError(f"{where}: unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(doc))
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    return doc


@dataclass(frozen=True)
class E1Depth:
    depth: int
    seeds: tuple[int, ...]
    skip: tuple[str, ...]  # run templates: the skipping arm's candidates (routes)
    exit: tuple[str, ...]  # the early-exit arm's candidates (ways to adapt an exit)


@dataclass(frozen=True)
class E1Spec:
    depths: tuple[E1Depth, ...]


@dataclass(frozen=True)
class E2Spec:
    arms: tuple[tuple[str, str], ...]  # (controller input, run template): hidden_states first, then fixed
    cost_alphas: tuple[float, ...]
    lr_grid: tuple[float, ...]
    pilot_steps: int
    pilot_seed: int
    seeds: tuple[int, ...]

    @property
    def pilot_alpha(self) -> float:
        """The middle cost weight, where the pilots choose each arm's learning rate."""
        return sorted(self.cost_alphas)[len(self.cost_alphas) // 2]


@dataclass(frozen=True)
class E3Spec:
    model: str  # a run of the plan (trained by the study) or a shipped adapted alias
    candidates: tuple[Any, ...]  # route names (`routes.resolve`)
    paper_fraction: float

    @property
    def k(self) -> int:
        return len(self.candidates)


@dataclass(frozen=True)
class E4Spec:
    targets: tuple[float, ...]
    folds: int
    speed_target: float | None
    speed_n: int
    speed_repeats: int


@dataclass(frozen=True)
class PreTest:
    test: str
    budget_layers: float
    role: str  # primary | secondary


@dataclass(frozen=True)
class Preregistered:
    statistic: str
    rule: str
    margin_share: float
    resamples: int
    seed: int
    tests: tuple[PreTest, ...]


def parse_e1(doc: Any, runs: set[str], where: str = "E1") -> E1Spec:
    doc = _fields(doc, {"depths"}, {"depths"}, where)
    if not isinstance(doc["depths"], list) or not doc["depths"]:
        raise ValueError(f"{where}.depths: expected a list of {{depth, seeds, skip, exit}}")
    out = []
    for k, d in enumerate(doc["depths"]):
        w = f"{where}.depths[{k}]"
        d = _fields(d, {"depth", "seeds", "skip", "exit"}, {"depth", "seeds", "skip", "exit"}, w)
        skip, exit_ = _names(d["skip"], f"{w}.skip"), _names(d["exit"], f"{w}.exit")
        if len(skip) != len(exit_):
            raise ValueError(f"{w}: the arms need the same number of candidates (equal effort), got {len(skip)} "
                             f"skipping and {len(exit_)} early-exit runs")
        for n in (*skip, *exit_):
            if n not in runs:
                raise ValueError(f"{w}: no run named {n!r}")
        out.append(E1Depth(int(d["depth"]), _ints(d["seeds"], f"{w}.seeds"), skip, exit_))
    return E1Spec(tuple(out))


def parse_e2(doc: Any, runs: set[str], where: str = "E2") -> E2Spec:
    keys = {"arms", "cost_alphas", "lr_grid", "pilot_steps", "pilot_seed", "seeds"}
    doc = _fields(doc, keys, keys, where)
    arms = _fields(doc["arms"], {"hidden_states", "fixed"}, {"hidden_states", "fixed"}, f"{where}.arms")
    for n in arms.values():
        if n not in runs:
            raise ValueError(f"{where}.arms: no run named {n!r}")
    if not isinstance(doc["pilot_steps"], int) or doc["pilot_steps"] < 1:
        raise ValueError(f"{where}.pilot_steps: expected an integer >= 1, got {doc['pilot_steps']!r}")
    seeds = _ints(doc["seeds"], f"{where}.seeds", at_least=2)  # two or more seeds per cost weight
    return E2Spec(tuple((k, arms[k]) for k in ("hidden_states", "fixed")),
                  _numbers(doc["cost_alphas"], f"{where}.cost_alphas", at_least=2),
                  _numbers(doc["lr_grid"], f"{where}.lr_grid", at_least=2), doc["pilot_steps"],
                  int(doc["pilot_seed"]), seeds)


def parse_e3(doc: Any, runs: set[str], num_layers: int, where: str = "E3") -> E3Spec:
    doc = _fields(doc, {"model", "candidates", "paper_fraction"}, {"model", "candidates"}, where)
    model = str(doc["model"])
    if model not in runs:
        from ..hub import adapter_dir
        from ..recipes import recipe_names
        if adapter_dir(model) is None and model not in recipe_names():  # an alias to come names its recipe
            raise ValueError(f"{where}.model: {model!r} is neither a run of this plan, a shipped adapted alias "
                             f"nor the recipe of one")
    cands = doc["candidates"]
    if not isinstance(cands, list) or len(cands) < 2:
        raise ValueError(f"{where}.candidates: expected a list of 2 or more routes")
    ids = [routes.config_id(c, num_layers) for c in cands]  # each resolves, or says why not
    for c in cands:
        routes.resolve(c, num_layers)
    if "full" not in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{where}.candidates: need full depth once and no route twice, got {ids}")
    return E3Spec(model, tuple(cands), float(doc.get("paper_fraction", 0.233)))


def parse_e4(doc: Any, where: str = "E4") -> E4Spec:
    doc = _fields(doc, {"targets", "folds", "speed"}, {"targets"}, where)
    speed = _fields(doc.get("speed") or {}, {"target", "n", "repeats"}, set(), f"{where}.speed")
    return E4Spec(_numbers(doc["targets"], f"{where}.targets"), int(doc.get("folds", 5)),
                  None if speed.get("target") is None else float(speed["target"]), int(speed.get("n", 0)),
                  int(speed.get("repeats", 2)))


def parse_preregistered(doc: Any, num_layers: int, where: str = "preregistered") -> Preregistered:
    keys = {"statistic", "rule", "margin_share", "resamples", "seed", "tests"}
    doc = _fields(doc, keys, keys, where)
    if not 0 < float(doc["margin_share"]) < 1:
        raise ValueError(f"{where}.margin_share: expected a share in (0, 1), got {doc['margin_share']!r}")
    if not isinstance(doc["resamples"], int) or doc["resamples"] < 10:
        raise ValueError(f"{where}.resamples: expected an integer >= 10, got {doc['resamples']!r}")
    tests = []
    for k, t in enumerate(doc["tests"] or []):
        t = _fields(t, {"test", "budget_layers", "role"}, {"test", "budget_layers", "role"}, f"{where}.tests[{k}]")
        if not 1 <= float(t["budget_layers"]) <= num_layers or t["role"] not in ("primary", "secondary"):
            raise ValueError(f"{where}.tests[{k}]: budget_layers in 1..{num_layers} and role primary or secondary")
        tests.append(PreTest(str(t["test"]), float(t["budget_layers"]), t["role"]))
    if [t.role for t in tests].count("primary") != 1:
        raise ValueError(f"{where}.tests: exactly one primary test")
    return Preregistered(str(doc["statistic"]), str(doc["rule"]), float(doc["margin_share"]), doc["resamples"],
                         int(doc["seed"]), tuple(tests))
