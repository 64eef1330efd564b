"""The study end to end: build (quick), train, evaluate, analyse and report (`run_study`), and
study.json from files alone (`analyse`), so that it can be redrawn from a copied results directory."""
from __future__ import annotations

import time
from typing import Sequence

from ..io import atomic_write_json
from ..paper import PAPER
from ..report import read_sweep
from .common import DEPTH_UNIT
from .e1 import analyse_e1
from .e2 import analyse_e2
from .e3 import analyse_e3, e3_configs
from .e4 import analyse_e4, run_e4
from .plan import EXPERIMENTS, Plan, null_k, plan_ref, runs_for
from .report import write_report
from .runs import Stages, check_training_data, log, read_records, train_runs
from .sweeps import Evaluator, adapted_configs, model_layers, rows_complete, sweep_complete, with_budgets
from .tiny import build_tiny


def run_study(plan: Plan, device: str = "cpu", progress: bool = False,
              experiments: Sequence[str] = EXPERIMENTS) -> dict:
    """Build (quick), train, evaluate, analyse and report; returns the study.json document.

    `experiments` limits the work (training and evaluation) to what those experiments need, so that
    parts of a long study can run, and land, on their own; the analysis covers every experiment whose
    files are complete, from this invocation or an earlier one."""
    from ..oracle import run_oracle

    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"--experiments: expected some of {', '.join(EXPERIMENTS)}, got {', '.join(experiments)}")
    t_start = time.perf_counter()
    if plan.tiny:
        build_tiny(plan.tiny_dir, layers=int(plan.tiny.get("layers", 8)))
    names = runs_for(plan, experiments)
    check_training_data(plan, names)
    plan.out.mkdir(parents=True, exist_ok=True)
    stages = Stages(plan.out)
    train_runs(plan, stages, names)
    records = read_records(plan)

    ev = Evaluator(plan, device, progress)
    L = model_layers(plan.model)
    if {"E1", "E2"} & set(experiments):
        n = len(ev.items)
        adapted = plan.out / "adapted"
        # the runs asked for, and those an earlier invocation evaluated here: the sweep's summary is
        # rewritten from the configs it is given, so leaving those out would drop their lines
        kept = rows_complete(adapted, n)
        runs = {k: v for k, v in records.items() if k in names or f"learned:{k}" in kept}
        configs = with_budgets(adapted_configs(plan, runs), L)
        if not sweep_complete(adapted, [c.config_id for c in configs], n):
            log(f"sweep {adapted}: {len(configs)} configs x {n} sequences")
            t0 = time.perf_counter()
            ev.sweep(plan.model, configs, adapted)
            stages.add("sweep:adapted", time.perf_counter() - t0)

    if {"E2", "E3", "E4"} & set(experiments):
        dropout = str(plan.runs_dir / plan.experiments["E3"]["run"])
        e3 = e3_configs(plan, L)
        e3_dir = plan.out / "E3"
        if not sweep_complete(e3_dir, [c.config_id for c in e3], len(ev.items)):
            log(f"sweep {e3_dir}: {len(e3)} configs x {len(ev.items)} sequences (K = {null_k(plan)})")
            t0 = time.perf_counter()
            ev.sweep(dropout, e3, e3_dir)
            stages.add("sweep:E3", time.perf_counter() - t0)
        run_oracle(e3_dir, strategies=["uniform_skip", "early_exit"])
        run_oracle(e3_dir, out=e3_dir / "oracle_all_routes.json",
                   strategies=["uniform_skip", "early_exit", "random_route"])
        if "E4" in experiments:
            run_e4(plan, ev, e3, stages)

    doc = analyse(plan, read_records(plan), Stages(plan.out).totals)  # and those another invocation has adopted since
    doc["study"]["wall_s_this_invocation"] = round(time.perf_counter() - t_start, 1)
    doc["study"]["experiments_this_invocation"] = list(experiments)
    atomic_write_json(plan.out / "study.json", doc)
    write_report(plan.out, doc)
    return doc


def missing(plan: Plan, records: dict, name: str) -> str | None:
    """What experiment `name` still lacks (runs, sweep configs, files), or None when it can be analysed."""
    ex, adapted, e3_dir = plan.experiments, plan.out / "adapted", plan.out / "E3"
    runs = [n for n in runs_for(plan, [name]) if n not in records]
    if runs:
        return f"runs not trained yet: {', '.join(runs)}"
    done = {r["config_id"] for r in read_sweep(adapted)} if (adapted / "sweep.jsonl").is_file() else set()
    if name == "E1":
        e1 = [n for p in ex["E1"]["pairs"] for n in (p["skip"], p["exit"])]
        want = ["full"] + [f"base@{n}" for n in e1] + [f"learned:{n}" for n in e1]
    elif name == "E2":
        want = [f"learned:{n}" for n in [*ex["E2"]["hidden_states"], *ex["E2"]["fixed"]]]
    else:
        want = []
    if [c for c in want if c not in done]:
        return f"not evaluated yet: {', '.join(c for c in want if c not in done)} (in {adapted})"
    files = {"E2": e3_dir / "oracle.json", "E3": e3_dir / "oracle.json", "E4": plan.out / "E4" / "router_crossfit.json"}
    if name in files and not files[name].is_file():
        return f"not evaluated yet: {files[name]} is missing"
    return None


def not_run(name: str, why: str) -> dict:
    """An experiment's place in study.json before its runs and evaluations exist."""
    return {"finding": PAPER["findings"][name], "depth_unit": DEPTH_UNIT, "verdict": "not run", "reason": why,
            "decided_by": ["–"], "runs": []}


def analyse(plan: Plan, records: dict, stages: dict) -> dict:
    """study.json: E1-E4 (numbers, 95% intervals, n, the depth unit, the runs, a verdict) and the study's
    settings. An experiment whose runs or evaluations are not all there is marked `not run`, with what
    it lacks."""
    from ..run_settings import versions

    adapted, e3_dir = plan.out / "adapted", plan.out / "E3"
    from ..data import data_sha256

    eval_sha = data_sha256(plan.eval["data"])
    analysers = {"E1": lambda: analyse_e1(plan, records, adapted), "E2": lambda: analyse_e2(plan, records, adapted, e3_dir),
                 "E3": lambda: analyse_e3(plan, records, e3_dir), "E4": lambda: analyse_e4(plan, records, e3_dir)}
    doc = {}
    for name, analyse_one in analysers.items():
        why = missing(plan, records, name)
        doc[name] = not_run(name, why) if why else analyse_one()
    evals = {"E1": [("sweep:adapted", adapted)], "E2": [("sweep:adapted", adapted), ("sweep:E3", e3_dir)],
             "E3": [("sweep:E3", e3_dir)], "E4": [("sweep:E3", e3_dir), ("E4:router", None), ("E4:speed", None)]}
    for name, stage_list in evals.items():
        if doc[name]["verdict"] == "not run":
            continue
        for stage, _ in stage_list:
            doc[name]["runs"].append({"name": stage, "command": f"adalas study --plan {plan_ref(plan)} (stage {stage})",
                                      "data": plan.eval["data"], "data_sha256": eval_sha,
                                      "wall_s": stages.get(stage, 0.0)})
    doc["runs"] = list(records.values())
    doc["study"] = {"plan": plan_ref(plan), "plan_sha256": plan.sha256,
                    "description": plan.description, "model": plan.model, "eval": plan.eval,
                    "eval_data_sha256": eval_sha, "k": null_k(plan), "depth_unit": DEPTH_UNIT,
                    "stages_s": stages, "train_wall_s": round(sum(r["wall_s"] or 0.0 for r in records.values()), 1),
                    "versions": versions()}
    return doc
