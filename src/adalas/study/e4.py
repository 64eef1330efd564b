"""E4: the cross-fitted per-sequence router on E3's sweep (`adalas.sequence.add_crossfit_router`, the
pipeline `adalas reproduce` runs too) against uniform skipping, the best fixed mix (hindsight) and
the oracle at matched depth, with its real decode speed (a router fit once, `E4/speed.json`)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from ..paper import PAPER
from ..plots import STYLE, finish_figure, pyplot
from ..report import oracle_score_at, read_json, read_scores, read_sweep
from ..stats import describe_difference, difference_text, paired_bootstrap
from .common import DEPTH_UNIT, ci_text, curve_scores, depth_curve, direction, point, yerr
from .plan import Plan
from .runs import Stages
from .sweeps import Evaluator, sweep_complete


def run_e4(plan: Plan, ev: Evaluator, configs: list, stages: Stages) -> None:
    """The cross-fitted router's rows (strategy `sequence`, by lookup) added to E3's sweep, its curves
    (`E4/router_crossfit.json`), and a router fit once for the real decode speed (`E4/speed.json`)."""
    from ..config import DepthConfig
    from ..sequence import (add_crossfit_router, default_feature_layers, load_sweep, measure_speed, prompt_features,
                            save_features, train_router)

    e4, e3_dir, out = plan.experiments["E4"], plan.out / "E3", plan.out / "E4"
    dropout = str(plan.runs_dir / plan.experiments["E3"]["run"])
    targets = [float(t) for t in e4["targets"]]
    ids_needed = [f"sequence@{t:g}" for t in targets]
    crossfit_path = out / "router_crossfit.json"
    table = load_sweep(e3_dir, ["full", "uniform_skip", "early_exit"])
    L = table.num_layers
    layers = sorted(set(e4.get("feature_layers") or default_feature_layers(L)))
    folds = min(int(e4.get("folds", 5)), len(table.ids) // 3)
    features = None
    if read_json(crossfit_path) is None or not sweep_complete(e3_dir, [c.config_id for c in configs] + ids_needed,
                                                               len(ev.items)):
        t0 = time.perf_counter()
        model = ev.model(dropout)
        model.set_depth(DepthConfig())
        features, _ = add_crossfit_router(table, e3_dir, model, ev.items, configs, targets, folds=folds,
                                          seed=plan.eval["seed"], model_id=dropout, data_id=ev.data_id,
                                          feature_layers=layers, out=crossfit_path)
        stages.add("E4:router", time.perf_counter() - t0)
    speed = e4.get("speed") or {}
    speed_path = out / "speed.json"
    if speed.get("n") and read_json(speed_path) is None:
        t0 = time.perf_counter()
        model = ev.model(dropout)
        model.set_depth(DepthConfig())
        prompts = {it.id: list(it.input_ids) for it in ev.items}
        if features is None:
            features = prompt_features(model, [prompts[s] for s in table.ids], layers, batch_size=16)
        target = float(speed.get("target", targets[len(targets) // 2]))
        ctrl, info = train_router(table, features, target_avg_layers=target, seed=plan.eval["seed"])
        router_dir = out / "router"
        ctrl.save(router_dir)
        save_features(router_dir, table.ids, features)
        heldout = ctrl.meta["split"]["test"][:int(speed["n"])]
        model.set_depth(DepthConfig(mode="sequence", router_path=str(router_dir), target_avg_layers=target))
        tok = ev.tokenizer
        result = measure_speed(model, [prompts[s] for s in heldout], plan.eval["batch_size"],
                               plan.eval["max_new_tokens"], int(speed.get("repeats", 2)),
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model.set_depth(DepthConfig())
        for key in ("routes", "sequences", "full_sequences"):
            result.pop(key, None)
        atomic_write_json(speed_path, {"target_avg_layers": target, "heldout_ids": heldout, "router": str(router_dir),
                                       "fit": info, **result})
        stages.add("E4:speed", time.perf_counter() - t0)


def analyse_e4(plan: Plan, records: dict, e3_dir: Path) -> dict:
    crossfit = read_json(plan.out / "E4" / "router_crossfit.json")
    speed = read_json(plan.out / "E4" / "speed.json")
    oracle = read_json(e3_dir / "oracle.json")
    rows = {r["config_id"]: r for r in read_sweep(e3_dir)}
    scores = read_scores(e3_dir)
    ids = crossfit["ids"]
    skip = depth_curve(rows, scores, ["full"] + [c for c, r in rows.items() if r["strategy"] == "uniform_skip"], ids)
    paired_mix = {float(p["target_avg_layers"]): p for p in crossfit["paired"]}
    targets = []
    for t in crossfit["targets"]:
        cid = f"sequence@{t:g}"
        router = rows[cid]
        mine = np.array([scores[cid][i] for i in ids])
        base = curve_scores(skip, router["avg_layers"])
        vs_skip = None if base is None else paired_bootstrap(mine, base)
        mix = paired_mix[float(t)]
        vs_mix = {"diff": mix["diff"], "ci95": mix["ci95"], "n": len(ids), "mix": mix["mix"]}
        where = f"aiming at {t:g} layers ({router['avg_layers']:.2f} run)"
        targets.append({
            "target": t, "router": point(router), "minus_uniform_skip": vs_skip, "minus_best_fixed_mix": vs_mix,
            "oracle_at_depth": oracle_score_at(oracle, router["avg_layers"]),
            "input_blind": next((p["score"] for p in crossfit["curves"]["input_blind"]
                                 if float(p["target_avg_layers"]) == float(t)), None),
            "sentences": [s for s in (
                vs_skip and describe_difference("the cross-fitted router", "uniform skipping at the same depth",
                                                vs_skip, where),
                describe_difference("the cross-fitted router", "the best fixed mix at the same depth (hindsight)",
                                    vs_mix, where)) if s]})
    signs = [direction(t["minus_best_fixed_mix"]["ci95"]) for t in targets]
    within = all(-0.02 <= t["minus_best_fixed_mix"]["ci95"][0] and t["minus_best_fixed_mix"]["ci95"][1] <= 0.02
                 for t in targets)
    if any(s > 0 for s in signs) and not any(s < 0 for s in signs):
        verdict, why = "reproduced", "the router beats the best fixed mix (hindsight) at some depth and loses at none"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "the best fixed mix beats the router at some depth"
    elif within:
        verdict, why = "not reproduced", "every paired interval lies within +-0.02: the prompt buys nothing measurable"
    else:
        verdict, why = "inconclusive", "the paired intervals cover 0"
    out = {"finding": PAPER["findings"]["E4"], "depth_unit": DEPTH_UNIT, "n": len(ids), "folds": crossfit["folds"],
           "candidates": crossfit["candidates"], "feature_layers": crossfit["feature_layers"], "targets": targets,
           "speed": None if speed is None else {
               "target_avg_layers": speed["target_avg_layers"], "n": speed["n"], "batch_size": speed["batch_size"],
               "max_new_tokens": speed["max_new_tokens"], "full_tokens_per_s": speed["full"]["tokens_per_s"],
               "router_tokens_per_s": speed["sequence"]["tokens_per_s"], "speedup_tokens_per_s":
               speed["speedup_tokens_per_s"], "speedup_wall": speed["speedup_wall"],
               "avg_layers": speed["sequence"]["measured_avg_layers"]},
           "verdict": verdict, "reason": why,
           "decided_by": [t["sentences"][-1] for t in targets], "runs": [records[plan.experiments["E3"]["run"]]]}
    return out


def plot_e4(out: Path, doc: dict, path: Path) -> Path:
    plt = pyplot()
    crossfit = read_json(out / "E4" / "router_crossfit.json")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = crossfit["curves"]
    for key, label, color, style in [("uniform_skip", "uniform skipping", STYLE["uniform_skip"][1], "-o"),
                                     ("early_exit", "early exit", STYLE["early_exit"][1], "-o"),
                                     ("best_fixed_mix", "best fixed mix (hindsight)", "gray", "--"),
                                     ("oracle", "oracle (in-sample upper bound)", "black", "-"),
                                     ("input_blind", "same router without the prompt", "tab:green", ":^")]:
        pts = sorted(curves.get(key) or [], key=lambda p: p["avg_layers"])
        if pts:
            ax.plot([p["avg_layers"] for p in pts], [p["score"] for p in pts], style, color=color, label=label,
                    markersize=4)
    pts = [t["router"] for t in doc["E4"]["targets"]]
    xs, ys = [p["avg_layers"] for p in pts], [p["rougeL"] for p in pts]
    label, color, marker = STYLE["sequence"]
    ax.errorbar(xs, ys, yerr=yerr(pts, ys), fmt=marker, color=color, capsize=3, label=label)
    return finish_figure(fig, ax, path, "ROUGE-L",
                         f"E4: the per-sequence router on the layer-dropout model ({doc['E4']['n']} sequences)")


def e4_section(e4: dict) -> list[str]:
    md = ["![E4](e4.png)", "",
           f"Cross-fitted over {e4['folds']} folds (every sequence routed by a router fit on the other folds) among "
           f"{', '.join(e4['candidates'])}.", "",
           "| target | router: avg layers | ROUGE-L [95% CI] | minus uniform skipping | minus best fixed mix "
           "(hindsight) | oracle there (upper bound) | without the prompt |", "|---|---|---|---|---|---|---|"]
    for t in e4["targets"]:
        r = t["router"]
        md.append(f"| {t['target']:g} | {r['avg_layers']:.2f} | {ci_text(r)} | {difference_text(t['minus_uniform_skip'])} "
                  f"| {difference_text(t['minus_best_fixed_mix'])} | "
                  f"{'–' if t['oracle_at_depth'] is None else format(t['oracle_at_depth'], '.3f')} | "
                  f"{'–' if t['input_blind'] is None else format(t['input_blind'], '.3f')} |")
    md += [""] + [f"- {x}" for t in e4["targets"] for x in t["sentences"]]
    sp = e4["speed"]
    if sp:
        md += ["", f"Real decode speed (a router fit once, aiming at {sp['target_avg_layers']:g} layers; {sp['n']} "
               f"held-out sequences, batch {sp['batch_size']}, {sp['max_new_tokens']} new tokens, rows sharing a route "
               f"decoded together): {sp['router_tokens_per_s']:.1f} tokens/s against {sp['full_tokens_per_s']:.1f} at "
               f"full depth ({sp['speedup_tokens_per_s']:.2f}x; {sp['avg_layers']:.2f} layers per token)."]
    md += ["", f"Verdict: **{e4['verdict']}**: {e4['reason']}.", ""]
    return md
