"""E3: the per-sequence oracle on a model made for its candidates, decided by the pre-registered test.

The model (a run of the plan whose route pool holds every candidate route, or a shipped alias) runs
its K candidates and K - 1 sampled full-depth runs (the null control) on the built-in set and the
three real tasks, and its candidates on the held-out rows (E4's router learns there). The analysis
gives each candidate's own score (one below half of full depth's is a budget the model was never made
for), the pre-registered D(b) tests on the real tasks pooled (`prereg.py`; per task and built-in are
secondary), the budget-matched null and the crossing depth with its censored resamples.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from ..paper import PAPER
from ..report import read_json
from . import routes
from .common import DEPTH_UNIT
from .plan import Plan, e3_runs
from .prereg import Pooled, crossing, preregistered_test
from .rows import POOLED, Rows, read_rows, summary
from .sweeps import Evaluator, eval_sets, heldout_set

NEVER_MADE_FOR = 0.5  # a candidate whose own score is below this share of full depth's


def model_path(plan: Plan) -> str:
    return str(plan.runs_dir / plan.e3.model) if e3_runs(plan) else plan.e3.model


def model_not_shipped(plan: Plan) -> str | None:
    """Why E3 cannot run yet when its model is a shipped alias that is not there (trained by its recipe,
    then shipped), else None."""
    from ..hub import adapter_dir
    from ..recipes import recipe_names

    name = plan.e3.model
    if e3_runs(plan) or name not in recipe_names() or adapter_dir(name) is not None:
        return None
    return (f"E3's model {name!r} is not shipped yet: `adalas train --recipe {name}`, then copy "
            f"runs/{name}/adapter/ to src/adalas/adapters/{name}/ (docs/adapters.md)")


def candidate_configs(plan: Plan) -> list:
    """The K candidates as sweep configs, full depth first."""
    configs = [routes.sweep_config(c, plan.layers) for c in plan.e3.candidates]
    return sorted(configs, key=lambda c: c.config_id != "full")


def sample_configs(plan: Plan) -> list:
    from ..sweep import build_configs

    return build_configs(plan.layers, [], [], null_k=plan.e3.k)[1:]


def record_preregistration(plan: Plan) -> dict:
    """`<out>/E3/preregistered.json`, written before E3's first sweep; a changed test is refused."""
    path = plan.out / "E3" / "preregistered.json"
    doc = read_json(path)
    if doc is not None:
        if doc["sha256"] != plan.prereg_sha256:
            raise ValueError(f"{path}: the plan's pre-registered test changed since E3's sweeps started (sha256 "
                             f"{doc['sha256'][:12]}, now {plan.prereg_sha256[:12]}); restore it")
        return doc
    p = plan.prereg
    doc = {"sha256": plan.prereg_sha256, "plan_sha256": plan.sha256,
           "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "statistic": p.statistic, "rule": p.rule, "margin_share": p.margin_share, "resamples": p.resamples,
           "seed": p.seed, "tests": [{"test": t.test, "budget_layers": t.budget_layers, "role": t.role} for t in p.tests]}
    atomic_write_json(path, doc)
    return doc


def run_e3(plan: Plan, ev: Evaluator, stages) -> None:
    path = model_path(plan)
    record_preregistration(plan)
    cands, samples = candidate_configs(plan), sample_configs(plan)
    why = f"adalas study {plan.name}: E3's K = {plan.e3.k} candidates and null control on {path}"
    ev.timed(stages, "sweep:E3:heldout", path, cands, heldout_set(plan), why)  # each candidate seen there first
    for es in eval_sets(plan):
        ev.timed(stages, f"sweep:E3:{es.name}", path, cands + samples, es, why)


def e3_rows(plan: Plan, ev: Evaluator, sets=None) -> Rows:
    path = model_path(plan)
    return read_rows({es.name: ev.published(path, es) for es in (sets or eval_sets(plan))})


def pooled_table(plan: Plan, rows: Rows, where: str) -> Pooled:
    cids = [c.config_id for c in candidate_configs(plan)]
    alts = ["full", *(c.config_id for c in sample_configs(plan))]
    full = rows.rows("full", where)
    weights = np.array([max(int(r["output_tokens"]) - 1, 0) for r in full], dtype=float)
    strata = rows.strata(where) or [where] * len(full)
    return Pooled(np.stack([rows.column(c, where) for c in cids], axis=1),
                  np.stack([rows.column(c, where, "layers_used") for c in cids], axis=1),
                  weights if weights.sum() > 0 else np.ones(len(full)),
                  np.stack([rows.column(c, where) for c in alts], axis=1), np.array(strata), 0)


def analyse_e3(plan: Plan, records: dict, ev: Evaluator) -> dict:
    rows = e3_rows(plan, ev)
    cids = [c.config_id for c in candidate_configs(plan)]
    pre = plan.prereg
    places = {}
    for where in rows.places():
        table = pooled_table(plan, rows, where)
        margin = pre.margin_share * table.full_mean
        own = {c: summary(rows, c, where) for c in cids}
        places[where] = {
            "n": len(table.weights), "full": own["full"]["f"], "margin": margin,
            "null_best_of_k": float(table.alternatives.max(axis=1).mean()),
            "candidates": [{"config_id": c, "avg_layers": s["avg_layers"], "rougeL": s["f"],
                            "precision": s["precision"], "recall": s["recall"], "tokens": s["tokens"],
                            "stop_share": s["stop_share"], "f_ratio": s["f_ratio"],
                            "never_made_for": s["f_ratio"]["ratio"] < NEVER_MADE_FOR} for c, s in own.items()],
            "tests": [{"test": t.test, "role": t.role, **preregistered_test(table, t.budget_layers, margin,
                                                                          pre.resamples, pre.seed)}
                      for t in pre.tests],
        }
    pooled = places.get(POOLED)
    basis = pooled or places[next(iter(places))]
    primary = next(t for t in basis["tests"] if t["role"] == "primary")
    cross = crossing(pooled_table(plan, rows, POOLED if pooled else next(iter(places))), pre.resamples, pre.seed)
    out = {
        "finding": PAPER["findings"]["E3"], "depth_unit": DEPTH_UNIT, "n": basis["n"], "k": plan.e3.k,
        "model": model_path(plan), "model_sha256": e3_model_sha256(plan, records),
        "weights_sha256": ev.sha(model_path(plan)), "candidates": cids, "null_control": {
            "k": plan.e3.k, "configs": ["full", *(c.config_id for c in sample_configs(plan))],
            "sampling": "temperature 0.7, top-p 0.9, seeds 1..K-1"},
        "places": places, "crossing": cross, "paper_fraction": plan.e3.paper_fraction,
        "preregistered": [{"test": t["test"], "budget_layers": t["budget_layers"], "difference": t["difference"],
                           "ci95": t["ci95"], "resamples": t["resamples"], "verdict": t["verdict"], "role": t["role"]}
                          for t in basis["tests"]],
        "verdict": primary["verdict"],
        "reason": f"pre-registered: D({primary['budget_layers']:g}) 95% CI [{primary['ci95'][0]:+.3f}, "
                  f"{primary['ci95'][1]:+.3f}] against -m = {-primary['margin']:+.3f}",
        "decided_by": [sentence(primary, POOLED if pooled else next(iter(places)))],
        "runs": [records[n] for n in (plan.e3.model,) if n in records],
    }
    return out


def sentence(t: dict, where: str) -> str:
    return (f"{where}: the oracle at {t['budget_layers']:g} layers scores {t['oracle']:.3f} against the null's best "
            f"of K {t['null_best']:.3f}: D = {t['difference']:+.3f} (95% CI {t['ci95'][0]:+.3f} to {t['ci95'][1]:+.3f}, "
            f"{t['resamples']} resamples within task, n = {t['n']}); m = {t['margin']:.3f}: {t['verdict']}")


def e3_model_sha256(plan: Plan, records: dict) -> str | None:
    """The sha256 of E3's model's adapter_model.safetensors (a study run's, or the shipped alias')."""
    from ..data import file_sha256
    from ..hub import adapter_dir

    if plan.e3.model in records:
        return records[plan.e3.model].get("adapter_sha256")
    d = adapter_dir(plan.e3.model)
    return file_sha256(Path(d) / "adapter_model.safetensors") if d else None


def e3_section(e3: dict) -> list[str]:
    md = [f"Model `{e3['model']}` (adapter sha256 `{(e3['model_sha256'] or '–')[:12]}`), K = {e3['k']} candidates "
          f"({', '.join(e3['candidates'])}); the null control is each row's best of the greedy full-depth run and "
          f"{e3['k'] - 1} sampled ones ({e3['null_control']['sampling']}). The oracle chooses after the fact: an "
          "upper bound, not a method.", "", "Pre-registered (written in the plan before any sweep ran):", ""]
    md += ["| place | test | D = oracle - null best of K [95% CI] | budget-matched null: D [95% CI] | m | verdict |",
           "|---|---|---|---|---|---|"]
    for where, p in e3["places"].items():
        for t in p["tests"]:
            md.append(f"| {where} | {t['test']} ({t['role']}) | {t['difference']:+.3f} [{t['ci95'][0]:+.3f}, "
                      f"{t['ci95'][1]:+.3f}] | {t['difference_budget_matched']:+.3f} [{t['ci95_budget_matched'][0]:+.3f}, "
                      f"{t['ci95_budget_matched'][1]:+.3f}] | {t['margin']:.3f} | {t['verdict']} |")
    c = e3["crossing"]
    ci = ["not reached" if x is None else f"{x:.2f}" for x in c["ci95"]]
    md += ["", f"Crossing depth (secondary): {'never' if c['point'] is None else format(c['point'], '.2f')} layers "
           f"(95% CI {ci[0]} to {ci[1]}); {c['censored']} of {c['resamples']} resamples never cross (censored, not "
           "counted as full depth).", "", "Each candidate's own score (ROUGE-L F; * = below half of full depth's: a "
           "budget the model was never made for):", ""]
    places = list(e3["places"])
    md += ["| candidate | " + " | ".join(places) + " |", "|---|" + "---|" * len(places)]
    for k, cid in enumerate(e3["candidates"]):
        cells = []
        for where in places:
            c = e3["places"][where]["candidates"][k]
            cells.append(f"{c['rougeL']:.3f} R {c['recall']:.3f}, {c['tokens']:.0f} tok, {c['avg_layers']:.1f} layers"
                         + (" *" if c["never_made_for"] else ""))
        md.append(f"| `{cid}` | " + " | ".join(cells) + " |")
    md += ["", f"- {e3['decided_by'][0]}", "", f"Verdict: **{e3['verdict']}**: {e3['reason']}.", ""]
    return md
