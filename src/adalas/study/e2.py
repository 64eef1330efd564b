"""E2: per-token learned controllers reading the hidden state against ones that see a constant
(`fixed`), over several cost weights: two curves (average layers, ROUGE-L) compared at common depths
by interpolation, beside uniform skipping of the layer-dropout model (E3's sweep). "No difference"
counts as reproduced when the paired interval lies within the plan's margin."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paper import PAPER
from ..plots import finish_figure, pyplot
from ..report import read_scores, read_sweep
from ..stats import describe_difference, difference_text, paired_bootstrap
from .common import DEPTH_UNIT, aligned_scores, ci_text, curve_scores, depth_curve, point, yerr
from .plan import Plan


def analyse_e2(plan: Plan, records: dict, adapted: Path, e3_dir: Path) -> dict:
    spec = plan.experiments["E2"]
    margin = float(spec.get("margin", 0.02))
    rows = {r["config_id"]: r for r in read_sweep(adapted)}
    e3_rows = {r["config_id"]: r for r in read_sweep(e3_dir)}
    scores, e3_scores = read_scores(adapted), read_scores(e3_dir)
    inputs = {"hidden_states": spec["hidden_states"], "fixed": spec["fixed"]}
    cids = {k: [f"learned:{n}" for n in v] for k, v in inputs.items()}
    skip_ids = ["full"] + [c for c, r in e3_rows.items() if r["strategy"] == "uniform_skip"]
    ids, _ = aligned_scores({**scores, **{f"E3:{c}": e3_scores[c] for c in skip_ids}},
                      [*cids["hidden_states"], *cids["fixed"], *(f"E3:{c}" for c in skip_ids)])
    curves = {k: depth_curve(rows, scores, v, ids) for k, v in cids.items()}
    baseline = depth_curve(e3_rows, e3_scores, skip_ids, ids)
    out: dict[str, Any] = {"finding": PAPER["findings"]["E2"], "depth_unit": DEPTH_UNIT, "n": len(ids), "margin": margin,
                           "curves": {}, "baseline": f"uniform skipping of the {spec['baseline']} model (E3's sweep)"}
    for k, names in inputs.items():
        out["curves"][k] = sorted(({"run": n, "cost_alpha": records[n].get("cost_alpha"),
                                    **point(rows[f"learned:{n}"])} for n in names), key=lambda p: p["avg_layers"])
    out["curves"]["dropout_uniform_skip"] = [point(e3_rows[c]) for c in
                                             sorted(skip_ids, key=lambda c: e3_rows[c]["avg_layers"])]
    # beside uniform skipping of the dropout model at each controller's own depth
    beside = []
    for k in inputs:
        for p in out["curves"][k]:
            base = curve_scores(baseline, p["avg_layers"])
            if base is not None:
                mine = np.array([scores[p["config_id"]][i] for i in ids])
                diff = paired_bootstrap(mine, base)
                beside.append({"input": k, "run": p["run"], "avg_layers": p["avg_layers"], "minus_uniform_skip": diff,
                               "sentence": describe_difference(f"the {k} controller ({p['run']})",
                                                               "uniform skipping of the dropout model", diff,
                                                               f"at {p['avg_layers']:.2f} layers")})
    out["beside_uniform_skip"] = beside
    h, f = curves["hidden_states"], curves["fixed"]
    lo, hi = max(h[0][0], f[0][0]), min(h[-1][0], f[-1][0])
    out["common_range"] = None if lo > hi + 1e-9 else [lo, hi]
    if out["common_range"] is None:
        out.update(at_common_depths=[], overall=None, verdict="inconclusive",
                   reason="the two curves share no range of depths, so they cannot be compared at equal depth",
                   decided_by=[f"hidden_states spans {h[0][0]:.2f}-{h[-1][0]:.2f} layers, fixed "
                               f"{f[0][0]:.2f}-{f[-1][0]:.2f}"])
    else:
        grid = sorted({round(x, 6) for x, _ in h + f if lo - 1e-9 <= x <= hi + 1e-9} | {round(lo, 6), round(hi, 6)})
        at, hs, fs = [], [], []
        for d in grid:
            a, b = curve_scores(h, d), curve_scores(f, d)
            hs.append(a)
            fs.append(b)
            diff = paired_bootstrap(a, b)
            base = curve_scores(baseline, d)
            at.append({"avg_layers": d, "hidden_states": float(a.mean()), "fixed": float(b.mean()),
                       "dropout_uniform_skip": None if base is None else float(base.mean()),
                       "hidden_minus_fixed": diff})
        overall = paired_bootstrap(np.mean(hs, axis=0), np.mean(fs, axis=0))
        where = (f"averaged over {len(grid)} common depth{'s' if len(grid) != 1 else ''} from {lo:.2f} to {hi:.2f} "
                 f"layers (each curve interpolated per sequence)")
        sentence = describe_difference("the hidden-state curve", "the fixed-input curve", overall, where)
        olo, ohi = overall["ci95"]
        if -margin <= olo and ohi <= margin:
            verdict, why = "reproduced", f"the paired interval lies within +-{margin}: no difference that matters"
        elif olo > 0:
            verdict, why = "not reproduced", "the hidden state helps: the paired interval lies above 0"
        elif ohi < 0:
            verdict, why = "reproduced", "the hidden state does no better; the interval lies below 0, so it scores lower"
        else:
            verdict, why = "inconclusive", f"the paired interval covers 0 but reaches beyond +-{margin}"
        out.update(at_common_depths=at, overall={**overall, "over": [lo, hi], "depths": grid}, verdict=verdict,
                   reason=why, decided_by=[sentence])
    out["runs"] = [records[n] for v in inputs.values() for n in v] + [records[spec["baseline"]]]
    return out


def plot_e2(doc: dict, path: Path) -> Path:
    plt = pyplot()
    e2 = doc["E2"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, color, marker in [("hidden_states", "controllers reading the hidden state", "tab:orange", "D"),
                                      ("fixed", "controllers with a fixed input", "tab:purple", "s"),
                                      ("dropout_uniform_skip", "uniform skipping, layer-dropout model", "tab:blue",
                                       "o")]:
        pts = e2["curves"][key]
        xs, ys = [p["avg_layers"] for p in pts], [p["rougeL"] for p in pts]
        ax.errorbar(xs, ys, yerr=yerr(pts, ys), color=color, marker=marker, capsize=3, label=label)
    if e2.get("common_range"):
        ax.axvspan(*e2["common_range"], color="gray", alpha=0.12, label="common depths (compared)")
    return finish_figure(fig, ax, path, "ROUGE-L (95% CI)", f"E2: per-token controllers ({e2['n']} sequences)")


def e2_section(e2: dict) -> list[str]:
    md = ["![E2](e2.png)", "",
           "| input | run | cost weight | avg layers | ROUGE-L [95% CI] |", "|---|---|---|---|---|"]
    for k in ("hidden_states", "fixed"):
        md += [f"| {k} | {p['run']} | {p['cost_alpha']} | {p['avg_layers']:.2f} | {ci_text(p)} |"
               for p in e2["curves"][k]]
    md += [""]
    if e2["at_common_depths"]:
        md += ["| common depth | hidden state | fixed | difference [95% CI] | uniform skipping (dropout model) |",
               "|---|---|---|---|---|"]
        md += [f"| {a['avg_layers']:.2f} | {a['hidden_states']:.3f} | {a['fixed']:.3f} | "
               f"{difference_text(a['hidden_minus_fixed'])} | "
               f"{'–' if a['dropout_uniform_skip'] is None else format(a['dropout_uniform_skip'], '.3f')} |"
               for a in e2["at_common_depths"]]
        md += [""]
    md += [f"- {x}" for x in e2["decided_by"]]
    md += [f"- {b['sentence']}" for b in e2["beside_uniform_skip"]]
    md += ["", f"Verdict: **{e2['verdict']}**: {e2['reason']} (a \"no difference\" finding counts as reproduced when "
           f"the paired interval lies within ±{e2['margin']}).", ""]
    return md
