"""The study end to end: build (quick), train, choose on held-out rows, evaluate, analyse and report
(`run_study`), and study.json from files alone (`analyse`), so that it can be redrawn from a copied
results directory (the published rows, the choices and the run records)."""
from __future__ import annotations

import time
from typing import Sequence

from ..io import atomic_write_json
from ..paper import PAPER
from .common import DEPTH_UNIT
from .e1 import analyse_e1, run_e1
from .e2 import analyse_e2, lr_choice, run_e2
from .e3 import analyse_e3, candidate_configs, model_not_shipped, model_path, run_e3, sample_configs
from .e4 import analyse_e4, run_e4
from .plan import EXPERIMENTS, Plan, e1_runs, e2_finals, e2_pilots, e3_runs, plan_ref, prerequisites
from .report import write_report
from .rows import POOLED, REAL, read_rows
from .runs import Stages, check_training_data, ensure_weights, read_records, train_runs
from .sweeps import Evaluator, eval_sets
from .tiny import build_tiny


def known_runs(plan: Plan) -> list:
    """Every concrete run whose command is known now (E2's finals once the pilots chose their rates)."""
    choice = lr_choice(plan)
    return [*prerequisites(plan), *e1_runs(plan), *e2_pilots(plan),
            *(e2_finals(plan, choice["chosen"]) if choice else []), *e3_runs(plan)]


def run_study(plan: Plan, device: str = "cpu", progress: bool = False,
              experiments: Sequence[str] = EXPERIMENTS) -> dict:
    """Train, choose, evaluate, analyse and report what `experiments` need (E4 needs E3's sweeps, so it
    runs them); the analysis covers every experiment whose files are complete, from this invocation or
    an earlier one. Returns the study.json document."""
    from ..sweep import checkpoint_num_layers
    from ..hub import resolve

    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"--experiments: expected some of {', '.join(EXPERIMENTS)}, got {', '.join(experiments)}")
    t_start = time.perf_counter()
    if plan.tiny:
        build_tiny(plan.tiny_dir, layers=int(plan.tiny.get("layers", 8)))
    if {"E3", "E4"} & set(experiments) and (why := model_not_shipped(plan)):
        raise ValueError(why)
    wanted = {"E1": e1_runs(plan), "E2": e2_pilots(plan), "E3": e3_runs(plan), "E4": e3_runs(plan)}
    check_training_data(plan, [*prerequisites(plan), *(r for e in experiments for r in wanted[e])])
    plan.out.mkdir(parents=True, exist_ok=True)
    stages = Stages(plan.out)
    train_runs(plan, stages, prerequisites(plan))
    ensure_weights(plan, stages, prerequisites(plan))  # e.g. the quick plan's base model: everything loads it
    local = resolve(plan.model)[1]
    layers = checkpoint_num_layers(local) if local else None
    if layers is not None and layers != plan.layers:
        raise ValueError(f"plan {plan.path}: layers is {plan.layers}, the model {plan.model!r} has {layers}")
    ev = Evaluator(plan, device, progress,
                   retrain=lambda names: ensure_weights(plan, stages, [r for r in known_runs(plan) if r.name in names]))
    if "E1" in experiments:
        run_e1(plan, ev, stages)
    if "E2" in experiments:
        run_e2(plan, ev, stages)
    if {"E3", "E4"} & set(experiments):
        train_runs(plan, stages, e3_runs(plan))
        run_e3(plan, ev, stages)
    if "E4" in experiments:
        run_e4(plan, ev, stages)
    doc = analyse(plan, Stages(plan.out).totals)  # with what other invocations have added since
    doc["study"]["wall_s_this_invocation"] = round(time.perf_counter() - t_start, 1)
    doc["study"]["experiments_this_invocation"] = list(experiments)
    atomic_write_json(plan.out / "study.json", doc)
    write_report(plan.out, doc)
    return doc


def _rows_missing(ev: Evaluator, path: str, cids: Sequence[str]) -> str | None:
    for es in eval_sets(ev.plan):
        d = ev.published(path, es)
        if not (d / "per_sequence.jsonl").is_file():
            return f"not evaluated yet: {es.name}"
        rows = read_rows({es.name: d})
        lacking = [c for c in cids if not rows.has(c, [es.name])]
        if lacking:
            return f"not evaluated yet on {es.name}: {', '.join(lacking)}"
    return None


def missing(plan: Plan, records: dict, name: str, ev: Evaluator) -> str | None:
    """What experiment `name` still lacks (runs, choices, rows), or None when it can be analysed."""
    from ..report import read_json

    if name == "E1":
        runs = [r.name for r in e1_runs(plan) if r.name not in records]
        if runs:
            return f"runs not trained yet: {', '.join(runs)}"
        choice = read_json(plan.out / "E1" / "choice.json")
        if choice is None:
            return "no held-out choice yet (E1/choice.json)"
        return _rows_missing(ev, plan.model, [f"learned:{c['run']}" for c in choice["chosen"]])
    if name == "E2":
        choice = lr_choice(plan)
        if choice is None:
            return f"pilots not chosen yet: {', '.join(r.name for r in e2_pilots(plan) if r.name not in records) or 'scoring'}"
        runs = [r.name for r in e2_finals(plan, choice["chosen"]) if r.name not in records]
        if runs:
            return f"runs not trained yet: {', '.join(runs)}"
        return _rows_missing(ev, plan.model, [f"learned:{r.name}" for r in e2_finals(plan, choice["chosen"])])
    runs = [r.name for r in e3_runs(plan) if r.name not in records]
    if runs:
        return f"runs not trained yet: {', '.join(runs)}"
    if why := model_not_shipped(plan):
        return why
    why = _rows_missing(ev, model_path(plan), [c.config_id for c in candidate_configs(plan) + sample_configs(plan)])
    if why or name == "E3":
        return why
    return None if read_json(plan.out / "E4" / "choices.json") else "the router has not routed the sets yet"


def not_run(name: str, why: str) -> dict:
    """An experiment's place in study.json before its runs and evaluations exist."""
    return {"finding": PAPER["findings"][name], "depth_unit": DEPTH_UNIT, "verdict": "not run", "reason": why,
            "decided_by": ["–"], "runs": []}


def task_identities(plan: Plan) -> dict:
    """{set: {"sha256", "n", "max_new_tokens"}}: the three real test sets and the built-in set."""
    from ..data import data_sha256, load_examples

    return {es.name: {"sha256": data_sha256(es.data), "n": len(load_examples(es.data)), "max_new_tokens": es.max_new_tokens,
                      "test_set": es.test} for es in eval_sets(plan)}


def rests_on(plan: Plan, name: str, e: dict, tasks: dict) -> dict:
    """What a verdict rests on: the model and its hash, the rows, the seeds and the test."""
    from ..hub import model_sha256

    on_e3 = name in ("E3", "E4")
    seeds = {"E1": {str(d.depth): list(d.seeds) for d in plan.e1.depths},
             "E2": {arm: list(plan.e2.seeds) for arm, _ in plan.e2.arms}}.get(name, {})
    test = {"E1": "paired 95% interval of skipping minus early exit (seeds averaged per row), resampled within task",
            "E2": "one-sided 95% test: hidden-state curve minus fixed-input curve below +m over common depths",
            "E3": "; ".join(f"{t.test} ({t.role}): {plan.prereg.rule}" for t in plan.prereg.tests),
            "E4": "router minus the best fixed mix re-chosen in each resample, paired 95% interval"}[name]
    return {"model": model_path(plan) if on_e3 else plan.model,
            "model_sha256": e.get("model_sha256") if on_e3 else model_sha256(plan.model),
            "place": POOLED, "tasks": {t: tasks[t] for t in REAL}, "rows": e.get("n"), "seeds": seeds, "test": test,
            "secondary": "each task alone and the built-in set"}


def analyse(plan: Plan, stages: dict) -> dict:
    """study.json: E1-E4 (numbers, 95% intervals, n, the runs, a verdict, what it rests on), the tasks,
    and the study's settings. An experiment whose runs or rows are not all there is marked `not run`."""
    from ..data import data_sha256
    from ..run_settings import versions

    ev = Evaluator(plan)
    records = read_records(plan, known_runs(plan))
    tasks = task_identities(plan)
    analysers = {"E1": analyse_e1, "E2": analyse_e2, "E3": analyse_e3, "E4": analyse_e4}
    doc = {}
    for name, analyse_one in analysers.items():
        why = missing(plan, records, name, ev)
        doc[name] = not_run(name, why) if why else analyse_one(plan, records, ev)
        if not why:
            doc[name].update(tasks=tasks, rests_on=rests_on(plan, name, doc[name], tasks))
            doc[name]["runs"] = doc[name]["runs"] + [
                {"name": stage, "command": f"adalas study --plan {plan_ref(plan)} --experiments {name}",
                 "data": next(es.data for es in eval_sets(plan) if stage.endswith(":" + es.name)),
                 "data_sha256": data_sha256(next(es.data for es in eval_sets(plan) if stage.endswith(":" + es.name))),
                 "wall_s": wall} for stage, wall in stages.items()
                if stage.startswith(f"sweep:{name}:") and not stage.endswith(":heldout")]
    doc["tasks"] = tasks
    doc["preregistered"] = doc["E3"].get("preregistered") or [
        {"test": t.test, "budget_layers": t.budget_layers, "difference": None, "ci95": None, "resamples": plan.prereg.resamples,
         "role": t.role} for t in plan.prereg.tests]
    doc["runs"] = list(records.values())
    doc["study"] = {"plan": plan_ref(plan), "plan_sha256": plan.sha256, "preregistered_sha256": plan.prereg_sha256,
                    "description": plan.description, "model": plan.model, "layers": plan.layers, "eval": plan.eval,
                    "heldout": str(plan.heldout), "heldout_sha256": data_sha256(str(plan.heldout)),
                    "k": plan.e3.k, "depth_unit": DEPTH_UNIT, "stages_s": stages,
                    "train_wall_s": round(sum(r.get("wall_s") or 0.0 for r in records.values()), 1),
                    "versions": versions()}
    return doc
