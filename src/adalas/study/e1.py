"""E1: adapted layer skipping against adapted early exit at equal depth, paired over sequences, beside
the same routes off the shelf (the base model's `base@<run>` rows)."""
from __future__ import annotations

from pathlib import Path

from ..paper import PAPER
from ..plots import finish_figure, pyplot
from ..report import read_scores, read_sweep
from ..stats import describe_difference, difference_text, paired_bootstrap
from .common import DEPTH_UNIT, aligned_scores, ci_text, direction, point, yerr
from .plan import Plan


def analyse_e1(plan: Plan, records: dict, adapted: Path) -> dict:
    rows = {r["config_id"]: r for r in read_sweep(adapted)}
    scores = read_scores(adapted)
    full = rows["full"]
    out = {"finding": PAPER["findings"]["E1"], "depth_unit": DEPTH_UNIT, "n": full["n"], "base_full": point(full),
           "comparisons": []}
    for pair in plan.experiments["E1"]["pairs"]:
        skip, exit_ = pair["skip"], pair["exit"]
        ids, (a, b) = aligned_scores(scores, [f"learned:{skip}", f"learned:{exit_}"])
        adapted_diff = paired_bootstrap(a, b)
        _, (c, d) = aligned_scores(scores, [f"base@{skip}", f"base@{exit_}"])
        shelf_diff = paired_bootstrap(c, d)
        sa, ea = rows[f"learned:{skip}"]["avg_layers"], rows[f"learned:{exit_}"]["avg_layers"]
        where = f"at {pair['depth']} layers"
        out["comparisons"].append({
            "depth": pair["depth"], "skip_run": skip, "exit_run": exit_,
            "equal_depth": abs(sa - ea) < 1e-6,
            "skip": point(rows[f"learned:{skip}"]), "exit": point(rows[f"learned:{exit_}"]),
            "skip_minus_exit": adapted_diff,
            "sentence": describe_difference("adapted skipping", "adapted early exit", adapted_diff, where),
            "off_the_shelf": {"skip": point(rows[f"base@{skip}"]), "exit": point(rows[f"base@{exit_}"]),
                              "skip_minus_exit": shelf_diff,
                              "sentence": describe_difference("skipping off the shelf", "early exit off the shelf",
                                                              shelf_diff, where)},
        })
    signs = [direction(c["skip_minus_exit"]["ci95"]) for c in out["comparisons"]]
    if all(s > 0 for s in signs):
        verdict, why = "reproduced", "adapted skipping scores higher than adapted early exit at every depth"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "adapted early exit scores higher than adapted skipping at some depth"
    else:
        verdict, why = "inconclusive", "at some depth the paired interval covers 0"
    out.update(verdict=verdict, reason=why, decided_by=[c["sentence"] for c in out["comparisons"]],
               runs=[records[n] for p in plan.experiments["E1"]["pairs"] for n in (p["skip"], p["exit"])])
    return out


def plot_e1(doc: dict, path: Path) -> Path:
    plt = pyplot()
    e1 = doc["E1"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bars = [("skipping, off the shelf", lambda c: c["off_the_shelf"]["skip"], "lightsteelblue"),
            ("early exit, off the shelf", lambda c: c["off_the_shelf"]["exit"], "mistyrose"),
            ("skipping, adapted", lambda c: c["skip"], "tab:blue"),
            ("early exit, adapted", lambda c: c["exit"], "tab:red")]
    width = 0.2
    for k, (label, get, color) in enumerate(bars):
        xs = [i + (k - 1.5) * width for i in range(len(e1["comparisons"]))]
        pts = [get(c) for c in e1["comparisons"]]
        ys = [p["rougeL"] for p in pts]
        ax.bar(xs, ys, width, yerr=yerr(pts, ys), capsize=3, color=color, label=label)
    ax.axhline(e1["base_full"]["rougeL"], color="black", linestyle=":", linewidth=1, label="base model, full depth")
    ax.set_xticks(range(len(e1["comparisons"])), [f"{c['depth']} layers" for c in e1["comparisons"]])
    return finish_figure(fig, ax, path, "ROUGE-L (95% CI)",
                         f"E1: skipping against early exit at equal depth ({e1['n']} sequences)", xlabel=None, grid="y")


def e1_table(e1: dict) -> list[str]:
    """E1's comparisons, adapted and off the shelf, one row per depth (report.md and the README)."""
    md = ["| depth | skipping, adapted | early exit, adapted | difference | skipping, off the shelf | early exit, off "
          "the shelf | difference |", "|---|---|---|---|---|---|---|"]
    for c in e1["comparisons"]:
        o = c["off_the_shelf"]
        md.append(f"| {c['depth']} | {ci_text(c['skip'])} | {ci_text(c['exit'])} | "
                  f"{difference_text(c['skip_minus_exit'])} | {ci_text(o['skip'])} | {ci_text(o['exit'])} | "
                  f"{difference_text(o['skip_minus_exit'])} |")
    return md


def e1_section(e1: dict) -> list[str]:
    md = ["![E1](e1.png)", ""] + e1_table(e1)
    md += ["", f"Base model at full depth: {ci_text(e1['base_full'])}.", ""]
    md += [f"- {c['sentence']} ({c['skip_run']} against {c['exit_run']}, same data, steps and LoRA.)"
           for c in e1["comparisons"]]
    md += [f"- {c['off_the_shelf']['sentence']}" for c in e1["comparisons"]]
    md += ["", f"Verdict: **{e1['verdict']}**: {e1['reason']}.", ""]
    return md
