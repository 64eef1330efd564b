"""E2: per-token controllers that read the hidden state against ones that see a constant, two fair arms.

Both arms (the same recipe, steps and cost weights; they differ in the controllers' input) choose
their controller learning rate from the same grid by pilots at the middle cost weight, scored on the
held-out self-written rows by the loss they train on (KD + cost, `heldout.py`); then every cost
weight trains with two or more seeds. Evaluation uses the argmax gates that ship; per-layer usage in
training (Gumbel) and in evaluation (argmax) is reported on the held-out rows. The curves (average
layers, ROUGE-L F) are compared at common depths by interpolation per row, seeds averaged per row.
The verdict in the paper's words: "no better" holds when a one-sided test (95%) says the hidden-state
curve is not above the fixed-input curve by more than m (5% of full depth's mean); "worse" is stated
separately.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from ..paper import PAPER
from ..plots import finish_figure, pyplot
from ..report import read_json
from ..stats import paired_difference
from .common import DEPTH_UNIT, curve_scores
from .heldout import heldout_sha256, score_runs
from .plan import Plan, e2_finals, e2_pilots
from .rows import POOLED, Rows, read_rows, summary
from .runs import ensure_weights, learned_config, log, train_runs
from .sweeps import Evaluator, eval_sets


def lr_choice(plan: Plan) -> dict | None:
    """The pilots' choice made earlier, None before; one made on another grid or other rows is refused."""
    path = plan.out / "E2" / "lr_choice.json"
    doc = read_json(path)
    if doc is not None and (doc["grid"] != list(plan.e2.lr_grid) or doc["heldout_sha256"] != heldout_sha256(plan)):
        raise ValueError(f"{path}: E2's rates were chosen on another grid or other held-out rows; a new choice is a "
                         f"new study: use another --out")
    return doc


def choose_rates(plan: Plan, stages) -> dict:
    """Each arm's learning rate: the grid point whose pilot has the lowest held-out KD + cost loss."""
    doc = lr_choice(plan)
    if doc is not None:
        return doc
    e2, pilots = plan.e2, e2_pilots(plan)
    train_runs(plan, stages, pilots)
    ensure_weights(plan, stages, pilots)  # trained by an earlier checkout that stopped before scoring them
    t0 = time.perf_counter()
    scores = score_runs(plan, pilots, alphas={r.name: e2.pilot_alpha for r in pilots})
    stages.add("E2:pilots-heldout", time.perf_counter() - t0)
    chosen = {}
    for arm, template in e2.arms:
        mine = {lr: scores[f"{template}-pilot-lr{lr:g}"]["loss"] for lr in e2.lr_grid}
        chosen[arm] = min(mine, key=mine.get)
        log(f"E2 {arm}: controller learning rate {chosen[arm]:g} (held-out loss {mine[chosen[arm]]:.4f})")
    doc = {"grid": list(e2.lr_grid), "pilot_alpha": e2.pilot_alpha, "pilot_steps": e2.pilot_steps,
           "pilot_seed": e2.pilot_seed, "heldout_sha256": heldout_sha256(plan), "scores": scores, "chosen": chosen}
    atomic_write_json(plan.out / "E2" / "lr_choice.json", doc)
    return doc


def final_configs(plan: Plan, chosen: dict, records: dict) -> list:
    from ..config import DepthConfig
    from ..sweep import SweepConfig

    return [SweepConfig("full", "full", plan.layers, DepthConfig()),
            *(learned_config(plan, records[r.name]) for r in e2_finals(plan, chosen))]


def run_e2(plan: Plan, ev: Evaluator, stages) -> None:
    chosen = choose_rates(plan, stages)["chosen"]
    finals = e2_finals(plan, chosen)
    records = train_runs(plan, stages, finals)
    usage_path = plan.out / "E2" / "heldout.json"
    if read_json(usage_path) is None:
        ensure_weights(plan, stages, finals)
        t0 = time.perf_counter()
        usage = score_runs(plan, finals, alphas={r.name: r.overrides["cost_alpha"] for r in finals}, usage=True)
        atomic_write_json(usage_path, usage)
        stages.add("E2:heldout", time.perf_counter() - t0)
    configs = final_configs(plan, chosen, records)
    why = f"adalas study {plan.name}: E2's controllers (both arms, every cost weight and seed), argmax gates"
    for es in eval_sets(plan):
        ev.timed(stages, f"sweep:E2:{es.name}", plan.model, configs, es, why)


def _curves(plan: Plan, rows: Rows, chosen: dict, where: str) -> dict[str, dict[int, list]]:
    """{arm: {seed: [(avg_layers, (N,) scores)] sorted by depth}}."""
    out: dict[str, dict[int, list]] = {}
    for arm, template in plan.e2.arms:
        for s in plan.e2.seeds:
            pts = []
            for alpha in plan.e2.cost_alphas:
                cid = f"learned:{template}-a{alpha:g}-s{s}"
                pts.append((summary(rows, cid, where)["avg_layers"], rows.column(cid, where)))
            out.setdefault(arm, {})[s] = sorted(pts, key=lambda p: p[0])
    return out


def compare(plan: Plan, rows: Rows, chosen: dict, where: str) -> dict:
    """Hidden minus fixed over their common depths, with the one-sided tests and the seeds' spread."""
    curves = _curves(plan, rows, chosen, where)
    every = [c for arm in curves.values() for c in arm.values()]
    lo, hi = max(c[0][0] for c in every), min(c[-1][0] for c in every)
    margin = plan.prereg.margin_share * float(rows.column("full", where).mean())
    if lo > hi + 1e-9:
        return {"common_range": None, "margin": margin}
    xs = sorted({min(max(x, lo), hi) for c in every for x, _ in c if lo - 1e-9 <= x <= hi + 1e-9} | {lo, hi})
    grid = [x for k, x in enumerate(xs) if k == 0 or x - xs[k - 1] > 1e-9]

    def arm_scores(arm: str, seeds) -> np.ndarray:  # (N,): per row, over the grid and the seeds
        return np.mean([curve_scores(curves[arm][s], d) for s in seeds for d in grid], axis=0)

    pre = plan.prereg
    d = paired_difference(arm_scores("hidden_states", plan.e2.seeds), arm_scores("fixed", plan.e2.seeds),
                          rows.strata(where), pre.resamples, pre.seed)
    upper, lower = d["ci90"][1], d["ci90"][0]  # one-sided 95% bounds
    per_seed = [float((arm_scores("hidden_states", [s]) - arm_scores("fixed", [s])).mean()) for s in plan.e2.seeds]
    return {"common_range": [lo, hi], "depths": grid, "margin": margin, "hidden_minus_fixed": d,
            "no_better": upper < margin, "worse": upper < 0, "better": lower > 0,
            "upper_one_sided_95": upper, "lower_one_sided_95": lower, "per_seed": per_seed,
            "seed_spread": float(max(per_seed) - min(per_seed))}


def analyse_e2(plan: Plan, records: dict, ev: Evaluator) -> dict:
    choice = lr_choice(plan)
    chosen = choice["chosen"]
    finals = e2_finals(plan, chosen)
    rows = read_rows({es.name: ev.published(plan.model, es) for es in eval_sets(plan)})
    usage = read_json(plan.out / "E2" / "heldout.json") or {}
    places = {}
    for where in rows.places():
        points = []
        for r in finals:
            s = summary(rows, f"learned:{r.name}", where)
            points.append({"run": r.name, "arm": next(a for a, t in plan.e2.arms if r.name.startswith(t + "-")),
                           "cost_alpha": r.overrides["cost_alpha"], "seed": r.overrides["seed"],
                           "avg_layers": s["avg_layers"], "rougeL": s["f"], "precision": s["precision"],
                           "recall": s["recall"], "tokens": s["tokens"], "stop_share": s["stop_share"],
                           "vs_full": s["vs_full"]})
        places[where] = {"points": points, "full": summary(rows, "full", where)["f"],
                         "compare": compare(plan, rows, chosen, where)}
    basis_name = POOLED if POOLED in places else next(iter(places))
    c = places[basis_name]["compare"]
    if c["common_range"] is None:
        verdict, why = "inconclusive", "the two arms' curves share no range of depths"
    elif c["no_better"]:
        verdict, why = "reproduced", (f"one-sided: the hidden-state curve is not above the fixed-input curve by more "
                                      f"than m = {c['margin']:.3f} (upper 95% bound {c['upper_one_sided_95']:+.3f})")
    elif c["better"]:
        verdict, why = "not reproduced", "the hidden-state curve lies above the fixed-input curve (lower bound > 0)"
    else:
        verdict, why = "inconclusive", f"the upper bound {c['upper_one_sided_95']:+.3f} reaches m = {c['margin']:.3f}"
    decided = [] if c["common_range"] is None else [
        f"{basis_name}: hidden minus fixed {c['hidden_minus_fixed']['diff']:+.3f} over {len(c['depths'])} common depths "
        f"{c['common_range'][0]:.2f}-{c['common_range'][1]:.2f} (seeds averaged per row; one-sided 95% bounds "
        f"{c['lower_one_sided_95']:+.3f}, {c['upper_one_sided_95']:+.3f}; m = {c['margin']:.3f}; per seed "
        + ", ".join(f"{x:+.3f}" for x in c["per_seed"]) + "); worse: " + ("yes" if c["worse"] else "not shown")]
    return {"finding": PAPER["findings"]["E2"], "depth_unit": DEPTH_UNIT, "n": len(rows.rows("full", basis_name)),
            "lr_grid": choice["grid"], "lr_chosen": chosen, "pilots": {"cost_alpha": choice["pilot_alpha"],
                                                                      "steps": choice["pilot_steps"],
                                                                      "heldout_loss": choice["scores"]},
            "seeds": {arm: list(plan.e2.seeds) for arm, _ in plan.e2.arms}, "cost_alphas": list(plan.e2.cost_alphas),
            "layer_usage": {name: {"training_gumbel": u.get("usage_train"), "evaluation_argmax": u.get("usage_eval")}
                            for name, u in usage.items()},
            "places": places, "verdict": verdict, "reason": why, "decided_by": decided or [why],
            "runs": [records[r.name] for r in finals if r.name in records]}


def plot_e2(doc: dict, path: Path) -> None:
    plt = pyplot()
    e2 = doc["E2"]
    where = POOLED if POOLED in e2["places"] else next(iter(e2["places"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, color, marker in (("hidden_states", "tab:orange", "D"), ("fixed", "tab:purple", "s")):
        for s in sorted({p["seed"] for p in e2["places"][where]["points"]}):
            pts = sorted((p["avg_layers"], p["rougeL"]) for p in e2["places"][where]["points"]
                         if p["arm"] == arm and p["seed"] == s)
            ax.plot(*zip(*pts), marker=marker, color=color, linestyle="-" if s == 0 else "--",
                    label=f"{arm}, seed {s}")
    rng = e2["places"][where]["compare"].get("common_range")
    if rng:
        ax.axvspan(*rng, color="gray", alpha=0.12, label="common depths (compared)")
    finish_figure(fig, ax, path, "ROUGE-L F", f"E2: per-token controllers ({where}, {e2['n']} rows)")


def e2_section(e2: dict) -> list[str]:
    md = [f"Learning rates from the grid {e2['lr_grid']} by {e2['pilots']['steps']}-step pilots at cost weight "
          f"{e2['pilots']['cost_alpha']:g} (held-out KD + cost loss): " + ", ".join(f"{a} {lr:g}" for a, lr in
                                                                                   e2["lr_chosen"].items())
          + f"; seeds {e2['seeds']}; argmax gates in evaluation.", "",
          "| place | arm | cost weight | seed | layers | ROUGE-L F | R | tokens | stopped |", "|---|---|---|---|---|---|---|---|---|"]
    for where, p in e2["places"].items():
        md += [f"| {where} | {q['arm']} | {q['cost_alpha']:g} | {q['seed']} | {q['avg_layers']:.2f} | {q['rougeL']:.3f} | "
               f"{q['recall']:.3f} | {q['tokens']:.1f} | {q['stop_share']:.0%} |" for q in p["points"]]
    md += ["", "Per-layer usage on the held-out rows, training (Gumbel) against evaluation (argmax), first and last "
           "layers:", ""]
    for name, u in e2["layer_usage"].items():
        if u["training_gumbel"]:
            g, a = u["training_gumbel"], u["evaluation_argmax"]
            md.append(f"- {name}: training {', '.join(f'{x:.2f}' for x in g[:3])} ... {g[-1]:.2f} (mean {np.mean(g):.2f}); "
                      f"evaluation {', '.join(f'{x:.2f}' for x in a[:3])} ... {a[-1]:.2f} (mean {np.mean(a):.2f})")
    md += [""] + [f"- {s}" for s in e2["decided_by"]] + ["", f"Verdict: **{e2['verdict']}**: {e2['reason']}.", ""]
    return md
