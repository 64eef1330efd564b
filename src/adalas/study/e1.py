"""E1: adapted layer skipping against adapted early exit at equal depth, with equal effort.

Each arm trains the same number of candidates (the skipping arm: routes; the early-exit arm: ways to
adapt an exit, the head included) with the same recipe and steps, once per seed, and chooses, per
seed, the candidate with the lowest distillation loss on the held-out self-written rows
(`heldout.py`). Only the chosen candidates (and their routes off the shelf) are evaluated. The
comparison is paired per row with the seeds averaged per row, pooled over the real tasks (per task
and built-in secondary), with recall and length beside F and the seeds' spread.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..config import DepthConfig
from ..io import atomic_write_json
from ..paper import PAPER
from ..plots import finish_figure, pyplot
from ..report import read_json
from ..stats import describe_difference, difference_text, paired_difference
from . import routes
from .common import DEPTH_UNIT, direction
from .heldout import heldout_sha256, score_runs
from .plan import Plan, e1_runs
from .rows import POOLED, read_rows, summary
from .runs import ensure_weights, learned_config, log, train_runs
from .sweeps import Evaluator, eval_sets

ARMS = ("skip", "exit")


def choose(plan: Plan, stages) -> dict:
    """`<out>/E1/choice.json`: per depth, arm and seed, each candidate's held-out KD and the one chosen."""
    path = plan.out / "E1" / "choice.json"
    doc = read_json(path) or {"heldout_sha256": heldout_sha256(plan), "scores": {}, "chosen": []}
    if doc["heldout_sha256"] != heldout_sha256(plan):
        raise ValueError(f"{path}: E1 chose on other held-out rows (sha256 {doc['heldout_sha256'][:12]}) than "
                         f"{plan.heldout}; a new choice is a new study: use another --out")
    runs = {r.name: r for r in e1_runs(plan)}
    todo = [r for name, r in runs.items() if name not in doc["scores"]]
    if todo:
        ensure_weights(plan, stages, todo)
        t0 = time.perf_counter()
        for d in plan.e1.depths:  # one recipe (tokenization) per depth
            mine = [r for r in todo if any(r.name.startswith(t + "-") for t in (*d.skip, *d.exit))]
            if mine:
                doc["scores"].update(score_runs(plan, mine))
        stages.add("E1:heldout", time.perf_counter() - t0)
    doc["chosen"] = []
    for d in plan.e1.depths:
        for arm in ARMS:
            for s in d.seeds:
                names = [f"{t}-s{s}" for t in getattr(d, arm)]
                best = min(names, key=lambda n: doc["scores"][n]["kd"])
                doc["chosen"].append({"depth": d.depth, "arm": arm, "seed": s, "run": best,
                                      "candidates": {n: doc["scores"][n]["kd"] for n in names}})
                log(f"E1 {d.depth} layers, {arm}, seed {s}: {best} (held-out KD {doc['scores'][best]['kd']:.4f})")
    atomic_write_json(path, doc)
    return doc


def shelf_config(plan: Plan, record: dict):
    """The chosen run's own route on the base model off the shelf, with the id the real-task sweeps use."""
    route = DepthConfig.parse(json.dumps(record["depth"])).static_route(plan.layers)
    return routes.sweep_config(routes.spec_of(route, plan.layers), plan.layers)


def configs(plan: Plan, choice: dict, records: dict) -> list:
    chosen = list(dict.fromkeys(c["run"] for c in choice["chosen"]))
    shelf = {c.config_id: c for c in (shelf_config(plan, records[n]) for n in chosen)}
    learned = [learned_config(plan, records[n]) for n in chosen]
    return [routes.sweep_config("full", plan.layers), *(c for k, c in shelf.items() if k != "full"), *learned]


def run_e1(plan: Plan, ev: Evaluator, stages) -> None:
    records = train_runs(plan, stages, e1_runs(plan))
    choice = choose(plan, stages)
    why = f"adalas study {plan.name}: E1's chosen candidates (per arm and seed, chosen on held-out rows)"
    for es in eval_sets(plan):
        ev.timed(stages, f"sweep:E1:{es.name}", plan.model, configs(plan, choice, records), es, why)


def analyse_e1(plan: Plan, records: dict, ev: Evaluator) -> dict:
    choice = read_json(plan.out / "E1" / "choice.json")
    rows = read_rows({es.name: ev.published(plan.model, es) for es in eval_sets(plan)})
    comparisons = []
    for d in plan.e1.depths:
        picks = {arm: [c["run"] for c in choice["chosen"] if c["depth"] == d.depth and c["arm"] == arm] for arm in ARMS}
        shelf = {arm: [shelf_config(plan, records[n]).config_id for n in picks[arm]] for arm in ARMS}
        places = {}
        for where in rows.places():
            strata, pre = rows.strata(where), plan.prereg
            a = rows.mean_of([f"learned:{n}" for n in picks["skip"]], where)
            b = rows.mean_of([f"learned:{n}" for n in picks["exit"]], where)
            per_seed = [float(rows.column(f"learned:{x}", where).mean() - rows.column(f"learned:{y}", where).mean())
                        for x, y in zip(picks["skip"], picks["exit"])]
            places[where] = {
                "skip_minus_exit": paired_difference(a, b, strata, pre.resamples, pre.seed),
                "recall_skip_minus_exit": paired_difference(rows.mean_of([f"learned:{n}" for n in picks["skip"]], where,
                                                                         "rougeL_recall"),
                                                            rows.mean_of([f"learned:{n}" for n in picks["exit"]], where,
                                                                         "rougeL_recall"), strata, pre.resamples, pre.seed),
                "off_the_shelf_skip_minus_exit": paired_difference(rows.mean_of(shelf["skip"], where),
                                                                   rows.mean_of(shelf["exit"], where), strata,
                                                                   pre.resamples, pre.seed),
                "per_seed": per_seed, "seed_spread": float(max(per_seed) - min(per_seed)),
                "configs": {cid: summary(rows, cid, where) for cid in
                            ["full", *dict.fromkeys(shelf["skip"] + shelf["exit"]),
                             *(f"learned:{n}" for n in picks["skip"] + picks["exit"])]}}
        comparisons.append({"depth": d.depth, "seeds": list(d.seeds), "chosen": picks, "off_the_shelf": shelf,
                            "candidates": {arm: list(getattr(d, arm)) for arm in ARMS}, "places": places})
    basis = POOLED if POOLED in rows.places() else rows.places()[0]
    signs = [direction(c["places"][basis]["skip_minus_exit"]["ci95"]) for c in comparisons]
    if all(s > 0 for s in signs):
        verdict, why = "reproduced", "adapted skipping scores higher than adapted early exit at every depth"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "adapted early exit scores higher than adapted skipping at some depth"
    else:
        verdict, why = "inconclusive", "at some depth the paired interval covers 0"
    decided = [describe_difference("adapted skipping", "adapted early exit",
                                   c["places"][basis]["skip_minus_exit"],
                                   f"{basis}, at {c['depth']} layers (seeds {c['seeds']} averaged per row; per seed "
                                   + ", ".join(f"{x:+.3f}" for x in c["places"][basis]["per_seed"]) + ")")
               for c in comparisons]
    return {"finding": PAPER["findings"]["E1"], "depth_unit": DEPTH_UNIT,
            "n": len(rows.rows("full", basis)), "comparisons": comparisons,
            "heldout_kd": {n: s["kd"] for n, s in choice["scores"].items()},
            "seeds": {str(d.depth): list(d.seeds) for d in plan.e1.depths}, "verdict": verdict, "reason": why,
            "decided_by": decided, "runs": [records[r.name] for r in e1_runs(plan) if r.name in records]}


def plot_e1(doc: dict, path: Path) -> None:
    plt = pyplot()
    e1 = doc["E1"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    places = list(e1["comparisons"][0]["places"])
    width = 0.8 / max(len(places), 1)
    for k, where in enumerate(places):
        xs = [i + (k - (len(places) - 1) / 2) * width for i in range(len(e1["comparisons"]))]
        ds = [c["places"][where]["skip_minus_exit"] for c in e1["comparisons"]]
        ys = [x["diff"] for x in ds]
        err = np.clip(np.array([[y - x["ci95"][0], x["ci95"][1] - y] for x, y in zip(ds, ys)]).T, 0, None)
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=where, alpha=1.0 if where == POOLED else 0.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(e1["comparisons"])), [f"{c['depth']} layers" for c in e1["comparisons"]])
    finish_figure(fig, ax, path, "skipping minus early exit, ROUGE-L F (95% CI)",
                  "E1: adapted skipping against adapted early exit, chosen on held-out rows", xlabel=None, grid="y")


def e1_table(e1: dict) -> list[str]:
    md = ["| depth | place | skipping minus early exit, adapted | recall | per seed | off the shelf |",
          "|---|---|---|---|---|---|"]
    for c in e1["comparisons"]:
        for where, p in c["places"].items():
            md.append(f"| {c['depth']} | {where} | {difference_text(p['skip_minus_exit'])} | "
                      f"{difference_text(p['recall_skip_minus_exit'])} | "
                      + ", ".join(f"{x:+.3f}" for x in p["per_seed"]) + f" | "
                      f"{difference_text(p['off_the_shelf_skip_minus_exit'])} |")
    return md


def e1_section(e1: dict) -> list[str]:
    md = ["![E1](e1.png)", ""]
    for c in e1["comparisons"]:
        md.append(f"- {c['depth']} layers: candidates {c['candidates']}; chosen on held-out rows per seed: "
                  f"{c['chosen']} (off the shelf: {c['off_the_shelf']}).")
    md += [""] + e1_table(e1) + ["", "Each chosen config against the base model at full depth (pooled):", "",
                                 "| depth | config | layers | F | P | R | tokens | stopped |", "|---|---|---|---|---|---|---|---|"]
    for c in e1["comparisons"]:
        where = POOLED if POOLED in c["places"] else next(iter(c["places"]))
        md += [f"| {c['depth']} | `{cid}` | {s['avg_layers']:.1f} | {s['f']:.3f} | {s['precision']:.3f} | "
               f"{s['recall']:.3f} | {s['tokens']:.1f} | {s['stop_share']:.0%} |" for cid, s in c["places"][where]["configs"].items()]
    md += [""] + [f"- {s}" for s in e1["decided_by"]] + ["", f"Verdict: **{e1['verdict']}**: {e1['reason']}.", ""]
    return md
