"""E3: the per-sequence oracle on the layer-dropout model over full + uniform skipping + early exit,
with its null control (K - 1 sampled full-depth runs), and a bootstrap interval of its null-adjusted
match. Its figure and its own report are `adalas.report`'s, drawn from the sweep directory `<out>/E3`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..oracle import match_depth, oracle_curve
from ..paper import PAPER
from ..report import read_json, read_scores, read_sweep
from .common import DEPTH_UNIT, point
from .plan import Plan, null_k

FULL_SAMPLE_NOTE = "temperature 0.7, top-p 0.9, seeds 1..K-1"


def e3_configs(plan: Plan, num_layers: int) -> list:
    """Full, uniform skipping, early exit, random routes (keeping layer 0) and K - 1 `full_sample` runs."""
    from ..sweep import build_configs

    e3, L = plan.experiments["E3"], num_layers
    rnd = e3.get("random_route") or {}
    configs = build_configs(L, ["uniform_skip"], e3["uniform_skip"])
    configs += build_configs(L, ["early_exit"], e3["early_exit"])[1:]
    if rnd.get("budgets") and rnd.get("per_budget"):
        configs += build_configs(L, ["random_route"], rnd["budgets"], rnd["per_budget"], plan.eval["seed"],
                                 keep_first=True)[1:]
    configs += build_configs(L, [], [], null_k=null_k(plan))[1:]
    return configs


def _match_interval(e3_dir: Path, oracle: dict, resamples: int, seed: int) -> dict:
    """Percentile-bootstrap interval (over sequences) of the oracle's match fraction after the null
    gain: each resample recomputes the oracle curve, the full score and the null control's gain."""
    from ..sequence import load_sweep

    table = load_sweep(e3_dir, ["full", "uniform_skip", "early_exit"])
    cols = table.columns(oracle["configs"])
    full_col = table.config_ids.index("full")
    scores = read_scores(e3_dir)
    null = oracle.get("null_control")
    if not null:
        return {"ci95": None, "resamples": 0, "never_matched": None}
    alts = np.array([[scores[c][s] for c in null["configs"]] for s in table.ids])  # (N, K) full + samples
    L, N = table.num_layers, len(table.ids)
    w = table.weights if table.weights is not None else np.ones(N)
    rng = np.random.default_rng(seed)
    fractions, never = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, N, size=N)
        s = table.scores[idx][:, cols]
        full = float(table.scores[idx, full_col].mean())
        gain = float(alts[idx].max(axis=1).mean()) - full
        curve = oracle_curve(s, table.layers[idx][:, cols], weights=w[idx])
        m = match_depth(curve, full + gain)
        never += m is None
        fractions.append((L if m is None else m) / L)
    lo, hi = np.percentile(fractions, [2.5, 97.5])
    return {"ci95": [float(lo), float(hi)], "resamples": resamples, "never_matched": never,
            "note": "a resample whose null-adjusted oracle never reaches full depth counts as 100% of the layers"}


def analyse_e3(plan: Plan, records: dict, e3_dir: Path) -> dict:
    spec = plan.experiments["E3"]
    rows = read_sweep(e3_dir)
    by = {r["config_id"]: r for r in rows}
    oracle = read_json(e3_dir / "oracle.json")
    L = oracle["num_layers"]
    null = oracle.get("null_control")
    gain = None if not null else null["score"] - null["full_score"]
    top = oracle["curve"][-1]["score"] if oracle["curve"] else oracle["full_score"]
    rnd: dict[int, list[float]] = {}
    for r in rows:
        if r["strategy"] == "random_route":
            rnd.setdefault(int(r["budget"]), []).append(r["rougeL"])
    interval = _match_interval(e3_dir, oracle, int(spec.get("bootstrap", 200)), plan.eval["seed"])
    adj, goal = oracle.get("match_avg_layers_null_adjusted"), float(spec.get("goal_fraction", 0.6))
    floor = min(r["avg_layers"] for r in rows if r["config_id"] in oracle["configs"]) / L
    out = {
        "finding": PAPER["findings"]["E3"], "depth_unit": DEPTH_UNIT, "n": oracle["n_sequences"], "model": spec["run"],
        "k": oracle["n_configs"], "configs": oracle["configs"],
        "full": point(by["full"]),
        "uniform_skip": [point(r) for r in rows if r["strategy"] == "uniform_skip"],
        "early_exit": [point(r) for r in rows if r["strategy"] == "early_exit"],
        "random_routes": [{"budget": b, "mean": float(np.mean(v)), "n_routes": len(v),
                           "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                          for b, v in sorted(rnd.items(), reverse=True)],
        "oracle": {"full_score": oracle["full_score"], "score_with_every_layer": top,
                   "gain_at_full_depth": top - oracle["full_score"], "null_control": null, "null_gain": gain,
                   "match_avg_layers": oracle["match_avg_layers"], "match_fraction": oracle["match_fraction"],
                   "match_avg_layers_null_adjusted": adj,
                   "match_fraction_null_adjusted": None if adj is None else adj / L,
                   "match_fraction_null_adjusted_ci95": interval["ci95"], "bootstrap": interval,
                   "shallowest_candidate_fraction": floor},
        "paper_fraction": spec.get("paper_fraction", 0.233), **base_model_oracle(spec), "goal_fraction": goal,
        "differences": [
            f"model: {plan.model} ({L} layers), adapted by LoRA + self-distillation with layer dropout "
            f"(run {spec['run']}), against OPT-IML-1.3B (24 layers) fine-tuned on each task",
            f"candidates: the full model, uniform skipping to {', '.join(map(str, sorted(spec['uniform_skip'])))} and "
            f"early exit at {', '.join(map(str, sorted(spec['early_exit'])))} layers (the shallowest at "
            f"{100 * floor:.0f}% of the depth: the oracle cannot go below it), against uniform skipping to 4, 8, 12 "
            f"of 24 layers (17-50%)",
            f"data: {plan.eval['data']}, {oracle['n_sequences']} sequences, {plan.eval['max_new_tokens']} new tokens "
            f"(greedy), against the Alpaca test split",
            "a null control (the same best-of-K over K full-depth runs) is subtracted here; the paper has none",
        ],
    }
    ci = interval["ci95"]
    interval_of = "the interval of the null-adjusted match"
    if not null or ci is None:
        verdict, why = "inconclusive", "no null control (full_sample rows) to subtract"
    elif ci[1] <= goal:
        verdict, why = "reproduced", f"{interval_of} lies at or below {100 * goal:.0f}% of the layers"
    elif ci[0] > goal:
        verdict, why = "not reproduced", (f"{interval_of} lies above {100 * goal:.0f}% of the layers (a resample that "
                                          f"never matches counts as 100%)")
    else:
        verdict, why = "inconclusive", f"{interval_of} straddles {100 * goal:.0f}% of the layers"
    out["decided_by"] = [_e3_sentence(out, L)]
    out.update(verdict=verdict, reason=why, runs=[records[spec["run"]]])
    return out


def base_model_oracle(spec: dict) -> dict:
    """The base model's oracle: read from `off_the_shelf_oracle` (an oracle.json, e.g. adalas reproduce's)
    when that file exists, else the plan's `off_the_shelf_fraction` and `off_the_shelf_source`."""
    path = spec.get("off_the_shelf_oracle")
    doc = read_json(Path(path)) if path else None
    if doc is None:
        return {"off_the_shelf_fraction": spec.get("off_the_shelf_fraction"),
                "off_the_shelf_fraction_null_adjusted": None, "off_the_shelf_source": spec.get("off_the_shelf_source")}
    adj = doc.get("match_avg_layers_null_adjusted")
    return {"off_the_shelf_fraction": doc.get("match_fraction"),
            "off_the_shelf_fraction_null_adjusted": None if adj is None else adj / doc["num_layers"],
            "off_the_shelf_source": f"{path}: {doc['n_sequences']} sequences, K = {doc['n_configs']}"
                                    + ("" if doc.get("null_control") else ", no null control")}


def _e3_sentence(e3: dict, L: int) -> str:
    """The oracle's match before and after the null gain, with the interval, beside the paper's."""
    o = e3["oracle"]
    pct = lambda x: f"{x:.2f} of {L} layers ({100 * x / L:.1f}%)"  # noqa: E731
    raw = "never" if o["match_avg_layers"] is None else f"with {pct(o['match_avg_layers'])}"
    shelf = e3["off_the_shelf_fraction"]
    shelf_adj = e3.get("off_the_shelf_fraction_null_adjusted")
    tail = (f" The paper: {100 * e3['paper_fraction']:.1f}%"
            + (f"; the base model off the shelf: {100 * shelf:.1f}%" if shelf else "")
            + (f" ({100 * shelf_adj:.1f}% with its null gain subtracted)" if shelf_adj is not None else "") + ".")
    if not o["null_control"]:
        return f"The oracle matches full depth {raw}, with no null control (no full_sample rows): uncontrolled.{tail}"
    adj, b = o["match_avg_layers_null_adjusted"], o["bootstrap"]
    text = (f"With the null gain ({o['null_gain']:+.3f}) taken off, the oracle "
            + ("never reaches full depth" if adj is None else f"matches full depth with {pct(adj)}"))
    if b["ci95"] is not None:
        text += (f" (95% CI {100 * b['ci95'][0]:.1f}% to {100 * b['ci95'][1]:.1f}% of the layers over "
                 f"{b['resamples']} resamples of the sequences"
                 + (f"; {b['never_matched']} of them never match" if b["never_matched"] else "") + ")")
    return text + f"; without it, it matches {raw}.{tail}"


def e3_section(e3: dict) -> list[str]:
    o = e3["oracle"]
    md = ["![E3](E3/rouge_vs_layers.png)", "",
           f"The oracle chooses, for each of {e3['n']} sequences, among K = {e3['k']} configs "
           f"({', '.join(e3['configs'])}), after the fact: an in-sample upper bound, not a method "
           "(details: [E3/report.md](E3/report.md)).", "",
           "| | layers | % of the depth |", "|---|---|---|"]
    L = e3["full"]["avg_layers"]

    def row(label, x):
        return f"| {label} | {'never' if x is None else f'{x:.2f}'} | {'–' if x is None else f'{100 * x / L:.1f}%'} |"
    md += [row("oracle matches full depth", o["match_avg_layers"]),
           row("... with the null gain subtracted", o["match_avg_layers_null_adjusted"])]
    ci = o["match_fraction_null_adjusted_ci95"]
    md += [f"| ... its 95% CI ({o['bootstrap']['resamples']} resamples of the sequences) | | "
           + ("–" if ci is None else f"{100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%") + " |",
           f"| the paper (OPT-IML-1.3B, Alpaca) | | {100 * e3['paper_fraction']:.1f}% |",
           "| off the shelf (the base model) | | "
           + ("–" if not e3["off_the_shelf_fraction"] else f"{100 * e3['off_the_shelf_fraction']:.1f}%")
           + ("" if e3["off_the_shelf_fraction_null_adjusted"] is None
              else f"; {100 * e3['off_the_shelf_fraction_null_adjusted']:.1f}% with its null gain subtracted")
           + (f" ({e3['off_the_shelf_source']})" if e3["off_the_shelf_source"] else "") + " |",
           f"| the goal | | at most {100 * e3['goal_fraction']:.0f}% |", ""]
    if o["null_control"]:
        md += [f"With every layer allowed the oracle scores {o['score_with_every_layer']:.3f}, "
               f"{o['gain_at_full_depth']:+.3f} over the full model's {o['full_score']:.3f}; choosing each sequence's "
               f"best of {o['null_control']['k']} full-depth runs ({FULL_SAMPLE_NOTE}) gains {o['null_gain']:+.3f} "
               "by selection alone (the null control).", ""]
    if e3["random_routes"]:
        md += ["Random routes (mean ± SD over routes): " + "; ".join(
            f"{r['budget']} layers {r['mean']:.3f} ± {r['sd']:.3f} ({r['n_routes']} routes)"
            for r in e3["random_routes"]) + ".", ""]
    md += ["What differs from the paper:", ""] + [f"- {d}" for d in e3["differences"]]
    md += ["", f"- {e3['decided_by'][0]}", "", f"Verdict: **{e3['verdict']}**: {e3['reason']}.", ""]
    return md
