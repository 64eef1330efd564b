"""E4: a per-sequence router on E3's model, fit on held-out rows, against input-blind choices.

The router (`adalas.sequence.train_router`: prompt features at the full-depth prefill, one utility
per candidate route) is fit and calibrated on E3's sweep of the held-out self-written rows, never on
a test set, then routes every row of the built-in set and the real tasks; its scores are looked up in
E3's rows (no generation). At each target depth it is compared with uniform skipping at the same
depth (interpolated per row) and with the best fixed mix of candidates (hindsight), the mix chosen
again inside every bootstrap resample so that the interval covers the choice (`mix_difference`).
"""
from __future__ import annotations

import time

import numpy as np

from ..io import atomic_write_json
from ..oracle import best_fixed_mix, mix_at
from ..paper import PAPER
from ..plots import finish_figure, pyplot
from ..report import read_json
from ..stats import paired_difference, resample_indices
from .common import DEPTH_UNIT, curve_scores, direction
from .e3 import candidate_configs, e3_rows, model_path
from .plan import Plan
from .rows import POOLED, REAL, Rows
from .sweeps import Evaluator, eval_sets, heldout_set


def _weighted(x: np.ndarray, w: np.ndarray) -> float:
    return float(np.average(x, weights=w)) if w.sum() > 0 else float(x.mean())


def mix_at_depth(scores: np.ndarray, layers: np.ndarray, weights: np.ndarray, depth: float) -> tuple[np.ndarray, tuple]:
    """(per-row scores of the best fixed mix at `depth` on these rows, (config a, config b, p))."""
    pts = [{"avg_layers": _weighted(layers[:, k], weights), "score": float(scores[:, k].mean()), "k": k}
           for k in range(scores.shape[1])]
    lo, hi, p = mix_at(best_fixed_mix(pts), depth)
    return (1 - p) * scores[:, lo["k"]] + p * scores[:, hi["k"]], (lo["k"], hi["k"], p)


def mix_difference(scores: np.ndarray, layers: np.ndarray, weights: np.ndarray, chosen: np.ndarray,
                   strata=None, resamples: int = 1000, seed: int = 0) -> dict:
    """The router (its per-row column `chosen`) minus the best fixed mix at the router's depth, the mix
    chosen again in every resample of the rows (drawn within strata); `mixes` counts the pairs chosen."""
    def diff(idx: np.ndarray) -> tuple[float, tuple]:
        s, lay, w, c = scores[idx], layers[idx], weights[idx], chosen[idx]
        mine = s[np.arange(len(idx)), c]
        depth = _weighted(lay[np.arange(len(idx)), c], w)
        base, mix = mix_at_depth(s, lay, w, depth)
        return float(mine.mean() - base.mean()), mix

    point, mix = diff(np.arange(len(chosen)))
    draws = [diff(i) for i in resample_indices(len(chosen), strata, resamples, seed)]
    counts: dict[str, int] = {}
    for _, (a, b, _p) in draws:
        counts[f"{a},{b}"] = counts.get(f"{a},{b}", 0) + 1
    lo, hi = np.percentile([d for d, _ in draws], [2.5, 97.5])
    return {"diff": point, "ci95": [float(lo), float(hi)], "n": len(chosen), "mix": list(mix), "resamples": resamples,
            "mixes": counts}


# ---------------------------------------------------------------------------------------------
# The router: fit on the held-out rows, choices on every set

def heldout_table(plan: Plan, ev: Evaluator):
    from ..sequence import SweepTable

    rows = e3_rows(plan, ev, [heldout_set(plan)])
    cands = candidate_configs(plan)
    cids = [c.config_id for c in cands]
    full = rows.rows("full", "heldout")
    return SweepTable(ids=rows.order["heldout"], config_ids=cids, strategies=[c.strategy for c in cands],
                      routes=[c.depth.static_route(plan.layers) for c in cands],
                      scores=np.stack([rows.column(c, "heldout") for c in cids], axis=1),
                      layers=np.stack([rows.column(c, "heldout", "layers_used") for c in cids], axis=1),
                      prompts={}, num_layers=plan.layers, model=model_path(plan),
                      weights=np.array([max(int(r["output_tokens"]) - 1, 0) for r in full], dtype=float))


def run_e4(plan: Plan, ev: Evaluator, stages) -> None:
    """Fit the router on the held-out rows, route every evaluation set (`E4/choices.json`), and measure
    the real decode speed of the router at one depth (`E4/speed.json`)."""
    from ..config import DepthConfig
    from ..routers import pick
    from ..sequence import default_feature_layers, measure_speed, prompt_features, split_ids, train_router

    out = plan.out / "E4"
    if read_json(out / "choices.json") is not None and (not plan.e4.speed_n or read_json(out / "speed.json")):
        return
    t0 = time.perf_counter()
    path, e4 = model_path(plan), plan.e4
    ev.ensure([path])
    model = ev.model(path)
    model.set_depth(DepthConfig())
    layers = default_feature_layers(plan.layers)
    table = heldout_table(plan, ev)
    items = {es.name: {it.id: list(it.input_ids) for it in ev.items(es)} for es in [heldout_set(plan), *eval_sets(plan)]}
    feats = {name: prompt_features(model, list(p.values()), layers) for name, p in items.items()}
    order = {name: {str(i): k for k, i in enumerate(p)} for name, p in items.items()}
    hold = [order["heldout"][i] for i in table.ids]
    ctrl, info = train_router(table, {k: v[hold] for k, v in feats["heldout"].items()}, seed=plan.eval["seed"],
                              split=split_ids(table.ids, plan.eval["seed"], 0.25, 0.0))
    ctrl.save(out / "router")
    choices = {}
    for name in items:
        if name == "heldout":
            continue
        ids = list(order[name])
        u = ctrl.utilities(feats[name][ctrl.feature_layer][[order[name][i] for i in ids]])
        choices[name] = {f"{t:g}": dict(zip(ids, (table.config_ids[int(k)] for k in pick(u, ctrl.costs, ctrl.lam_for(t)))))
                         for t in e4.targets}
    atomic_write_json(out / "choices.json", {"fit": info, "feature_layers": layers, "targets": list(e4.targets),
                                             "config_ids": table.config_ids, "sets": choices})
    stages.add("E4:router", time.perf_counter() - t0)
    if e4.speed_n and read_json(out / "speed.json") is None:
        t0 = time.perf_counter()
        builtin = eval_sets(plan)[0]
        prompts = list(items[builtin.name].values())[:e4.speed_n]
        model.set_depth(DepthConfig(mode="sequence", router_path=str(out / "router"), target_avg_layers=e4.speed_target))
        tok = ev.tokenizer
        result = measure_speed(model, prompts, builtin.batch_size, builtin.max_new_tokens, e4.speed_repeats,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model.set_depth(DepthConfig())
        for key in ("routes", "sequences", "full_sequences"):
            result.pop(key, None)
        atomic_write_json(out / "speed.json", {"target_avg_layers": e4.speed_target, "set": builtin.name, **result})
        stages.add("E4:speed", time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# The analysis

def _router_columns(rows: Rows, choices: dict, where: str, cids: list[str], target: str) -> np.ndarray:
    sets = REAL if where == POOLED else (where,)
    pos = {c: k for k, c in enumerate(cids)}
    return np.array([pos[choices[s][target][i]] for s in sets for i in rows.order[s]])


def analyse_place(plan: Plan, rows: Rows, choices: dict, where: str) -> dict:
    cands = candidate_configs(plan)
    cids = [c.config_id for c in cands]
    scores = np.stack([rows.column(c, where) for c in cids], axis=1)  # (N, K)
    layers = np.stack([rows.column(c, where, "layers_used") for c in cids], axis=1)
    w = np.array([max(int(r["output_tokens"]) - 1, 0) for r in rows.rows("full", where)], dtype=float)
    w = w if w.sum() > 0 else np.ones(len(w))
    strata, pre = rows.strata(where), plan.prereg
    uniform = sorted((_weighted(layers[:, k], w), scores[:, k]) for k, c in enumerate(cands)
                     if c.strategy in ("full", "uniform_skip"))
    margin = pre.margin_share * float(scores[:, 0].mean())
    out = []
    for t in choices["targets"]:
        col = _router_columns(rows, choices["sets"], where, cids, f"{t:g}")
        mine = scores[np.arange(len(col)), col]
        depth = _weighted(layers[np.arange(len(col)), col], w)
        base = curve_scores(uniform, depth)
        out.append({"target": t, "avg_layers": depth, "rougeL": float(mine.mean()),
                    "minus_uniform_skip": None if base is None else paired_difference(mine, base, strata,
                                                                                       pre.resamples, pre.seed),
                    "minus_best_fixed_mix": mix_difference(scores, layers, w, col, strata, pre.resamples, pre.seed)})
    return {"n": len(w), "margin": margin, "targets": out}


def analyse_e4(plan: Plan, records: dict, ev: Evaluator) -> dict:
    choices = read_json(plan.out / "E4" / "choices.json")
    speed = read_json(plan.out / "E4" / "speed.json")
    rows = e3_rows(plan, ev)
    places = {where: analyse_place(plan, rows, choices, where) for where in rows.places()}
    basis_name = POOLED if POOLED in places else next(iter(places))
    basis = places[basis_name]
    signs = [direction(t["minus_best_fixed_mix"]["ci95"]) for t in basis["targets"]]
    m = basis["margin"]
    within = all(-m <= t["minus_best_fixed_mix"]["ci95"][0] and t["minus_best_fixed_mix"]["ci95"][1] <= m
                 for t in basis["targets"])
    if any(s > 0 for s in signs) and not any(s < 0 for s in signs):
        verdict, why = "reproduced", "the router beats the best fixed mix (hindsight) at some depth and loses at none"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "the best fixed mix beats the router at some depth"
    elif within:
        verdict, why = "not reproduced", f"every interval lies within +-m ({m:.3f}): the prompt buys nothing measurable"
    else:
        verdict, why = "inconclusive", "the paired intervals cover 0"
    from .e3 import e3_model_sha256

    return {"finding": PAPER["findings"]["E4"], "depth_unit": DEPTH_UNIT, "n": basis["n"], "model": model_path(plan),
            "model_sha256": e3_model_sha256(plan, records),
            "fit": choices["fit"], "feature_layers": choices["feature_layers"], "places": places,
            "speed": speed, "verdict": verdict, "reason": why,
            "decided_by": [f"{basis_name}, aiming at {t['target']:g} layers ({t['avg_layers']:.2f} run): router minus "
                           f"the best fixed mix {t['minus_best_fixed_mix']['diff']:+.3f} (95% CI "
                           f"{t['minus_best_fixed_mix']['ci95'][0]:+.3f} to {t['minus_best_fixed_mix']['ci95'][1]:+.3f}, "
                           "mix re-chosen in each resample)" for t in basis["targets"]],
            "runs": [records[n] for n in (plan.e3.model,) if n in records]}


def plot_e4(doc: dict, path) -> None:
    plt = pyplot()
    e4 = doc["E4"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for where, p in e4["places"].items():
        xs = [t["avg_layers"] for t in p["targets"]]
        ax.plot(xs, [t["rougeL"] for t in p["targets"]], "-o", label=f"router, {where}",
                linewidth=2.5 if where == POOLED else 1)
    finish_figure(fig, ax, path, "ROUGE-L F", f"E4: the per-sequence router, fit on held-out rows ({e4['n']} rows pooled)")


def e4_section(e4: dict) -> list[str]:
    md = [f"Router fit and calibrated on E3's held-out rows (feature layers {e4['feature_layers']}), then applied to "
          "every set; scores looked up in E3's rows.", "",
          "| place | target | layers run | ROUGE-L F | minus uniform skipping [95% CI] | minus best fixed mix, "
          "re-chosen per resample [95% CI] |", "|---|---|---|---|---|---|"]
    for where, p in e4["places"].items():
        for t in p["targets"]:
            u, x = t["minus_uniform_skip"], t["minus_best_fixed_mix"]
            md.append(f"| {where} | {t['target']:g} | {t['avg_layers']:.2f} | {t['rougeL']:.3f} | "
                      + ("–" if u is None else f"{u['diff']:+.3f} [{u['ci95'][0]:+.3f}, {u['ci95'][1]:+.3f}]")
                      + f" | {x['diff']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}] |")
    sp = e4["speed"]
    if sp:
        md += ["", f"Real decode speed ({sp['set']}, aiming at {sp['target_avg_layers']:g} layers): "
               f"{sp['sequence']['tokens_per_s']:.1f} tokens/s against {sp['full']['tokens_per_s']:.1f} at full depth "
               f"({sp['speedup_tokens_per_s']:.2f}x)."]
    md += [""] + [f"- {s}" for s in e4["decided_by"]] + ["", f"Verdict: **{e4['verdict']}**: {e4['reason']}.", ""]
    return md

