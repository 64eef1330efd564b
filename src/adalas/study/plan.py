"""The study's plan: a YAML file (`adalas/studies/<name>.yaml`, or any path) of training runs, each a
recipe plus overrides (the paper's runs as overrides of one recipe), and what each experiment
compares.

Notable:
- `load_plan` checks everything before anything is written: fields, run names, the experiments'
  references to runs, and every run's `adalas train` arguments, parsed as training will parse them.
- `runs_for` says which runs some experiments need, so that parts of a long study can run alone.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..io import check_output_dir


EXPERIMENTS = ("E1", "E2", "E3", "E4")


PLAN_KEYS = {"description", "model", "out", "runs_dir", "tiny", "eval", "overrides", "runs", "experiments"}
EVAL_KEYS = {"data", "limit", "max_new_tokens", "batch_size", "prompt_format", "seed"}
EVAL_DEFAULTS = {"data": "builtin", "limit": None, "max_new_tokens": 32, "batch_size": 8, "prompt_format": "auto",
                 "seed": 0}
EXPERIMENT_KEYS = {
    "E1": {"pairs"},
    "E2": {"hidden_states", "fixed", "baseline", "margin"},
    "E3": {"run", "uniform_skip", "early_exit", "random_route", "bootstrap", "goal_fraction", "paper_fraction",
           "off_the_shelf_oracle", "off_the_shelf_fraction", "off_the_shelf_source"},
    "E4": {"targets", "folds", "speed", "feature_layers"},
}


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


@dataclass
class Plan:
    name: str
    path: Path
    sha256: str
    description: str
    model: str
    out: Path
    runs_dir: Path
    eval: dict
    overrides: dict
    runs: list[Run]
    experiments: dict
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


def plan_ref(plan: "Plan") -> str:
    """How `--plan` names it: a packaged plan by name, another by its path."""
    return plan.name if plan.path.parent.resolve() == plan_dir().resolve() else str(plan.path)


def load_plan(name_or_path: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None) -> Plan:
    """Read and check a plan: fields, run names, the experiments' references to runs, and every run's
    `adalas train` arguments (parsed as training would parse them). Nothing is written."""
    path = plan_path(name_or_path)
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"plan {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    where = f"plan {path}"
    doc = _mapping(doc, where)
    _unknown(doc, PLAN_KEYS, where)
    for key in ("model", "runs", "experiments"):
        if key not in doc:
            raise ValueError(f"{where}: missing field {key!r}")
    runs_path = Path(runs_dir if runs_dir is not None else doc.get("runs_dir", "runs/study"))
    out_path = Path(out if out is not None else doc.get("out", "results/study"))
    check_output_dir(out_path, "--out")
    check_output_dir(runs_path, "--runs")
    doc = _substitute(doc, {"runs": str(runs_path), "tiny": str(runs_path / "tiny")})

    eval_spec = _mapping(doc.get("eval"), f"{where}: eval")
    _unknown(eval_spec, EVAL_KEYS, f"{where}: eval")
    eval_spec = {**EVAL_DEFAULTS, **eval_spec}
    for key in ("max_new_tokens", "batch_size", "limit"):
        if eval_spec[key] is not None and (not isinstance(eval_spec[key], int) or eval_spec[key] < 1):
            raise ValueError(f"{where}: eval.{key}: must be an integer >= 1, got {eval_spec[key]!r}")

    runs, seen = [], set()
    if not isinstance(doc["runs"], list) or not doc["runs"]:
        raise ValueError(f"{where}: runs: expected a non-empty list")
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
            raise ValueError(f"{where}: run {name}: output_dir is the study's ({runs_path}/{name}); remove it")
        runs.append(Run(name, r.get("recipe"), overrides))
    shared = {str(k).replace("-", "_"): v for k, v in _mapping(doc.get("overrides"), f"{where}: overrides").items()}

    experiments = _mapping(doc["experiments"], f"{where}: experiments")
    _unknown(experiments, set(EXPERIMENT_KEYS), f"{where}: experiments")
    for name, keys in EXPERIMENT_KEYS.items():
        if name not in experiments:
            raise ValueError(f"{where}: experiments: missing {name}")
        _unknown(_mapping(experiments[name], f"{where}: {name}"), keys, f"{where}: {name}")
    plan = Plan(name=path.stem, path=path, sha256=hashlib.sha256(raw).hexdigest(),
                description=str(doc.get("description", "")), model=str(doc["model"]), out=out_path,
                runs_dir=runs_path, eval=eval_spec, overrides=shared, runs=runs, experiments=experiments,
                tiny=_mapping(doc.get("tiny"), f"{where}: tiny") or None)
    plan.by_name = {r.name: r for r in runs}
    _check_experiments(plan, where)
    from ..train_args import parse_args

    for run in runs:  # every run's arguments, exactly as training will parse them
        try:
            parse_args(run.argv(shared, runs_path))
        except ValueError as e:
            raise ValueError(f"{where}: run {run.name}: {e}") from None
    return plan


def _check_experiments(plan: Plan, where: str) -> None:
    ex = plan.experiments

    def known(name: Any, what: str) -> None:
        if name not in plan.by_name:
            raise ValueError(f"{where}: {what}: no run named {name!r}; runs: {', '.join(plan.by_name)}")

    pairs = ex["E1"].get("pairs") or []
    if not pairs:
        raise ValueError(f"{where}: E1.pairs: expected a list of {{depth, skip, exit}}")
    for p in pairs:
        _unknown(_mapping(p, f"{where}: E1.pairs"), {"depth", "skip", "exit"}, f"{where}: E1.pairs")
        known(p.get("skip"), "E1.pairs.skip")
        known(p.get("exit"), "E1.pairs.exit")
    for key in ("hidden_states", "fixed"):
        names = ex["E2"].get(key) or []
        if len(names) < 2:
            raise ValueError(f"{where}: E2.{key}: needs 2 or more runs (one per cost weight) for a curve")
        for n in names:
            known(n, f"E2.{key}")
    known(ex["E2"].get("baseline"), "E2.baseline")
    known(ex["E3"].get("run"), "E3.run")
    if ex["E2"]["baseline"] != ex["E3"]["run"]:
        raise ValueError(f"{where}: E2.baseline: must be E3.run ({ex['E3']['run']!r}): its uniform skipping comes "
                         f"from E3's sweep")
    for key in ("uniform_skip", "early_exit"):
        if not ex["E3"].get(key):
            raise ValueError(f"{where}: E3.{key}: expected a list of budgets (layers kept)")
    if not ex["E4"].get("targets"):
        raise ValueError(f"{where}: E4.targets: expected a list of average depths")


def null_k(plan: Plan) -> int:
    """K of E3's headline oracle: the full model, uniform skipping and early exit at their budgets."""
    e3 = plan.experiments["E3"]
    return 1 + len(set(e3["uniform_skip"])) + len(set(e3["early_exit"]))


def _compared(plan: Plan, experiments: Sequence[str]) -> set[str]:
    ex, names = plan.experiments, set()
    if "E1" in experiments:
        names |= {n for p in ex["E1"]["pairs"] for n in (p["skip"], p["exit"])}
    if "E2" in experiments:
        names |= {*ex["E2"]["hidden_states"], *ex["E2"]["fixed"], ex["E2"]["baseline"]}
    if {"E2", "E3", "E4"} & set(experiments):
        names.add(ex["E3"]["run"])
    return names


def runs_for(plan: Plan, experiments: Sequence[str]) -> list[str]:
    """The runs the given experiments need, in plan order: those they compare (E2, E3 and E4 all need
    E3's dropout run) and every run that no experiment compares (a prerequisite, such as --quick's base)."""
    names, anywhere = _compared(plan, experiments), _compared(plan, EXPERIMENTS)
    return [r.name for r in plan.runs if r.name in names or r.name not in anywhere]
