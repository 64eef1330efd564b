"""The study's plan: a YAML file (`adalas/studies/<name>.yaml`, or any path) of run templates, each a
recipe plus overrides (the paper's runs as overrides of one recipe), what each experiment compares,
where it is evaluated, and the pre-registered test.

Notable:
- `load_plan` checks everything before anything is written: fields, run names, routes (resolved
  against `layers`), the experiments' specs (`spec.py`), that E3's model was trained on every
  candidate route, and the `adalas train` arguments of every concrete run, parsed as training will.
- Concrete runs come from templates: E1 trains each candidate once per seed (`<template>-s<seed>`);
  E2 trains pilots over the learning-rate grid (`<template>-pilot-lr<lr>`) and then one run per cost
  weight and seed at the rate the pilots chose (`<template>-a<alpha>-s<seed>`); E3 trains its model's
  run as it stands; a template no experiment names is a prerequisite (`--quick`'s base), trained as is.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..io import check_output_dir
from . import routes
from .spec import (E1Spec, E2Spec, E3Spec, E4Spec, Preregistered, parse_e1, parse_e2, parse_e3, parse_e4,
                   parse_preregistered)

EXPERIMENTS = ("E1", "E2", "E3", "E4")

PLAN_KEYS = {"description", "model", "layers", "out", "runs_dir", "store", "shared_rows", "tiny", "eval", "tasks",
             "looks", "heldout", "overrides", "runs", "experiments", "preregistered"}
EVAL_KEYS = {"data", "limit", "max_new_tokens", "batch_size", "prompt_format", "seed"}
EVAL_DEFAULTS = {"data": "builtin", "limit": None, "max_new_tokens": 32, "batch_size": 16, "prompt_format": "auto",
                 "seed": 0}


@dataclass(frozen=True)
class Run:
    """One training run: a recipe (optional) and overrides, in `<runs_dir>/<name>`."""

    name: str
    recipe: str | None
    overrides: dict

    def argv(self, shared: dict, runs_dir: Path) -> list[str]:
        """The `adalas train` arguments: the recipe, the plan's shared overrides, then the run's own."""
        from ..recipes import to_argv

        head = ["--recipe", self.recipe] if self.recipe else []
        return [*head, *to_argv({**shared, **self.overrides}), "--output_dir", str(runs_dir / self.name),
                "--resume_from_checkpoint", "true"]

    def variant(self, suffix: str, **overrides: Any) -> "Run":
        return replace(self, name=f"{self.name}-{suffix}", overrides={**self.overrides, **overrides})


@dataclass(frozen=True)
class TasksSpec:
    """The real test sets: read by path from `data_dir`, caps from the protocol (`tasks.REAL_TASKS`)
    unless a tiny plan overrides them (`caps`)."""

    data_dir: Path
    batch_size: int
    caps: dict[str, int] | None


@dataclass
class Plan:
    name: str
    path: Path
    sha256: str
    description: str
    model: str
    layers: int
    out: Path
    runs_dir: Path
    store: Path  # one sweep directory per (model sha256, evaluation set, cap, batch, dtype)
    shared_rows: Path | None  # the real-task rows (`adalas tasks run`'s, committed) a store starts from
    eval: dict
    tasks: TasksSpec
    looks: Path
    heldout: Path
    overrides: dict
    templates: list[Run]
    e1: E1Spec
    e2: E2Spec
    e3: E3Spec
    e4: E4Spec
    prereg: Preregistered
    prereg_sha256: str
    tiny: dict | None = None
    by_name: dict[str, Run] = field(default_factory=dict)

    @property
    def tiny_dir(self) -> Path:
        return self.runs_dir / "tiny"


def plan_dir() -> Path:
    return Path(str(resources.files("adalas") / "studies"))


def plan_names() -> list[str]:
    return sorted(p.stem for p in plan_dir().glob("*.yaml"))


def plan_path(name_or_path: str | Path) -> Path:
    """An existing YAML file, or a packaged plan's name (`smollm2-135m`, `quick`)."""
    text = str(name_or_path)
    for c in (Path(text).expanduser(), plan_dir() / text, plan_dir() / f"{text}.yaml"):
        if c.is_file():
            return c
    raise ValueError(f"--plan: {text!r}: no such file and no packaged plan of that name; packaged: "
                     f"{', '.join(plan_names())}")


def plan_ref(plan: "Plan") -> str:
    """How `--plan` names it: a packaged plan by name, another by its path."""
    return plan.name if plan.path.parent.resolve() == plan_dir().resolve() else str(plan.path)


def _substitute(value: Any, names: dict[str, str]) -> Any:
    """"{runs}/base" -> "runs/study/base", in every string of a nested value."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    bad = sorted(str(k) for k in keys if k not in allowed)
    if bad:
        raise ValueError(f"{where}: unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def _read(path: Path) -> tuple[bytes, dict]:
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"plan {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    doc = _mapping(doc, f"plan {path}")
    _unknown(doc, PLAN_KEYS, f"plan {path}")
    for key in ("model", "layers", "runs", "experiments", "preregistered", "heldout"):
        if key not in doc:
            raise ValueError(f"plan {path}: missing field {key!r}")
    return raw, doc


def _eval_spec(doc: dict, where: str) -> dict:
    spec = _mapping(doc.get("eval"), f"{where}: eval")
    _unknown(spec, EVAL_KEYS, f"{where}: eval")
    spec = {**EVAL_DEFAULTS, **spec}
    for key in ("max_new_tokens", "batch_size", "limit"):
        if spec[key] is not None and (not isinstance(spec[key], int) or spec[key] < 1):
            raise ValueError(f"{where}: eval.{key}: must be an integer >= 1, got {spec[key]!r}")
    return spec


def _tasks_spec(doc: dict, tiny: bool, where: str) -> TasksSpec:
    from ..tasks import REAL_TASKS

    spec = _mapping(doc.get("tasks"), f"{where}: tasks")
    _unknown(spec, {"data_dir", "batch_size", "caps"}, f"{where}: tasks")
    caps = spec.get("caps")
    if caps is not None and not tiny:
        raise ValueError(f"{where}: tasks.caps: the real tasks' caps are the protocol's (results/tasks/PROTOCOL.md); "
                         f"only a tiny plan may set its own")
    if caps is not None and set(caps) != set(REAL_TASKS):
        raise ValueError(f"{where}: tasks.caps: one cap for each of {', '.join(REAL_TASKS)}")
    return TasksSpec(Path(spec.get("data_dir", "../shared/data")), int(spec.get("batch_size", 16)), caps)


def _templates(doc: dict, layers: int, where: str) -> list[Run]:
    if not isinstance(doc["runs"], list) or not doc["runs"]:
        raise ValueError(f"{where}: runs: expected a non-empty list")
    runs, seen = [], set()
    for k, r in enumerate(doc["runs"]):
        r = _mapping(r, f"{where}: runs[{k}]")
        _unknown(r, {"name", "recipe", "overrides"}, f"{where}: runs[{k}]")
        name = str(r.get("name", ""))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"{where}: runs[{k}].name: {name!r} is not a directory name (letters, digits, . _ -)")
        if name in seen:
            raise ValueError(f"{where}: runs: duplicate name {name!r}")
        seen.add(name)
        overrides = {str(key).replace("-", "_"): v for key, v in _mapping(r.get("overrides"), f"run {name}").items()}
        if "output_dir" in overrides:
            raise ValueError(f"{where}: run {name}: output_dir is the study's; remove it")
        if "depth" in overrides:
            try:
                overrides["depth"] = routes.resolve_depth(overrides["depth"], layers)
            except ValueError as e:
                raise ValueError(f"{where}: run {name}: depth: {e}") from None
        runs.append(Run(name, r.get("recipe"), overrides))
    return runs


def load_plan(name_or_path: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None) -> Plan:
    """Read and check a plan (see the module's notes). Nothing is written."""
    path = plan_path(name_or_path)
    raw, doc = _read(path)
    where = f"plan {path}"
    runs_path = Path(runs_dir if runs_dir is not None else doc.get("runs_dir", "runs/study"))
    out_path = Path(out if out is not None else doc.get("out", "results/study"))
    check_output_dir(out_path, "--out")
    check_output_dir(runs_path, "--runs")
    doc = _substitute(doc, {"runs": str(runs_path), "tiny": str(runs_path / "tiny"), "out": str(out_path)})
    layers = doc["layers"]
    if not isinstance(layers, int) or layers < 2:
        raise ValueError(f"{where}: layers: expected the model's layer count, got {layers!r}")
    templates = _templates(doc, layers, where)
    names = {r.name for r in templates}
    ex = _mapping(doc["experiments"], f"{where}: experiments")
    _unknown(ex, set(EXPERIMENTS), f"{where}: experiments")
    for name in EXPERIMENTS:
        if name not in ex:
            raise ValueError(f"{where}: experiments: missing {name}")
    try:
        e1, e2, e3, e4 = (parse_e1(ex["E1"], names), parse_e2(ex["E2"], names), parse_e3(ex["E3"], names, layers),
                          parse_e4(ex["E4"]))
        prereg = parse_preregistered(doc["preregistered"], layers)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    tiny = _mapping(doc.get("tiny"), f"{where}: tiny") or None
    plan = Plan(name=path.stem, path=path, sha256=hashlib.sha256(raw).hexdigest(),
                description=str(doc.get("description", "")), model=str(doc["model"]), layers=layers, out=out_path,
                runs_dir=runs_path, store=Path(doc.get("store", "runs/rows")),
                shared_rows=None if (shared := doc.get("shared_rows", "results/tasks")) is None else Path(shared),
                eval=_eval_spec(doc, where), tasks=_tasks_spec(doc, tiny is not None, where),
                looks=Path(doc.get("looks", "results/tasks/LOOKS.jsonl")), heldout=Path(doc["heldout"]),
                overrides={str(k).replace("-", "_"): v for k, v in _mapping(doc.get("overrides"),
                                                                             f"{where}: overrides").items()},
                templates=templates, e1=e1, e2=e2, e3=e3, e4=e4, prereg=prereg,
                prereg_sha256=hashlib.sha256(json.dumps(doc["preregistered"], sort_keys=True).encode()).hexdigest(),
                tiny=tiny)
    plan.by_name = {r.name: r for r in templates}
    _check_route_pool(plan, where)
    from ..train_args import parse_args

    lr = plan.e2.lr_grid[0]  # the finals' rate is the pilots' choice; any rate parses alike
    for run in [*prerequisites(plan), *e1_runs(plan), *e2_pilots(plan), *e2_finals(plan, {a: lr for a, _ in plan.e2.arms}),
                *e3_runs(plan)]:
        try:
            parse_args(run.argv(plan.overrides, runs_path))
        except ValueError as e:
            raise ValueError(f"{where}: run {run.name}: {e}") from None
    return plan


def _check_route_pool(plan: Plan, where: str) -> None:
    """E3's model was made for its candidates: a run of the plan, or the recipe of the shipped alias
    of that name, must list every candidate route (other than full depth) in its depth's `route_pool`."""
    from ..recipes import load_recipe, recipe_names

    run = plan.by_name.get(plan.e3.model)
    if run is not None:
        depth = run.overrides.get("depth") or {}
    elif plan.e3.model in recipe_names():
        depth = load_recipe(plan.e3.model).get("depth") or {}
    else:
        return  # a model by path or hub name: its route pool is not known here
    pool = [sorted(s) for s in depth.get("route_pool") or []]
    for c in plan.e3.candidates:
        skips = routes.skip_layers(c, plan.layers)
        if skips and sorted(skips) not in pool:
            raise ValueError(f"{where}: E3.candidates: {c!r} (skips {skips}) is not in the route pool of "
                             f"{plan.e3.model!r}: the model would not be made for it")


# ---------------------------------------------------------------------------------------------
# Concrete runs

def e1_runs(plan: Plan, depths: Sequence[int] | None = None) -> list[Run]:
    """Every E1 candidate once per seed of its depth, named `<template>-s<seed>`."""
    return [plan.by_name[t].variant(f"s{s}", seed=s) for d in plan.e1.depths if depths is None or d.depth in depths
            for t in (*d.skip, *d.exit) for s in d.seeds]


def e2_pilots(plan: Plan) -> list[Run]:
    """Each arm at the middle cost weight, once per rate of the grid, for `pilot_steps` steps."""
    e2 = plan.e2
    return [plan.by_name[t].variant(f"pilot-lr{lr:g}", cost_alpha=e2.pilot_alpha, controller_learning_rate=lr,
                                    max_steps=e2.pilot_steps, seed=e2.pilot_seed)
            for _, t in e2.arms for lr in e2.lr_grid]


def e2_finals(plan: Plan, chosen: dict[str, float]) -> list[Run]:
    """Each arm at each cost weight and seed, at the rate its pilots chose (`chosen`: input -> rate)."""
    return [plan.by_name[t].variant(f"a{alpha:g}-s{s}", cost_alpha=alpha, controller_learning_rate=chosen[arm], seed=s)
            for arm, t in plan.e2.arms for alpha in plan.e2.cost_alphas for s in plan.e2.seeds]


def e3_runs(plan: Plan) -> list[Run]:
    return [plan.by_name[plan.e3.model]] if plan.e3.model in plan.by_name else []


def prerequisites(plan: Plan) -> list[Run]:
    """Templates that no experiment names (trained first, as they stand)."""
    named = {t for d in plan.e1.depths for t in (*d.skip, *d.exit)} | {t for _, t in plan.e2.arms} | {plan.e3.model}
    return [r for r in plan.templates if r.name not in named]
