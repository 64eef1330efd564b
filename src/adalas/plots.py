"""Figures, in one house style: the strategies' colours and markers (`STYLE`), the Agg backend, PNGs
written atomically with no timestamps (`save_figure`), and the finish every figure shares
(`finish_figure`). The sweep report's figures live here (`adalas.report` places them); the study's
draw their own data with the same pieces (`adalas.study`).
"""
from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .io import atomic_write_bytes

DEPTH_AXIS = "average layers run per generated token"
STYLE = {  # strategy -> (label, colour, marker)
    "full": ("full model", "black", "*"),
    "early_exit": ("early exit", "tab:red", "o"),
    "uniform_skip": ("uniform skipping", "tab:blue", "s"),
    "random_route": ("random routes", "tab:green", "."),
    "route": ("explicit routes", "tab:purple", "x"),
    "learned": ("learned controllers", "tab:orange", "D"),
    "sequence": ("per-sequence router (cross-fitted)", "tab:brown", "P"),
    "full_sample": ("full model, sampled (null control)", "gray", "*"),
    "adapted": ("adapted (LoRA + self-distillation)", "tab:cyan", "^"),
}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """PNG into memory, then an atomic write; no timestamps in the file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def finish_figure(fig, ax, path: str | Path, ylabel: str, title: str | None = None, xlabel: str | None = DEPTH_AXIS,
                  grid: str = "both") -> Path:
    """Every figure's finish: axis labels, a small title and legend, a light grid; then `save_figure`."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis=grid, alpha=0.3)
    return save_figure(fig, path)


def plot_rouge_vs_layers(rows: Sequence[dict], path: str | Path, oracle: dict | None = None,
                         extra_oracles: dict[str, dict] | None = None, metric: str = "rougeL") -> Path:
    """One line per strategy (score against average layers), random routes as points with their mean,
    learned controllers and explicit routes as points, the oracle curve(s)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    full = next((r for r in rows if r["strategy"] == "full"), None)
    for strategy in ("early_exit", "uniform_skip"):
        pts = sorted((r["avg_layers"], r[metric]) for r in rows if r["strategy"] == strategy)
        if full and pts:
            pts.append((full["avg_layers"], full[metric]))
        if pts:
            label, color, marker = STYLE[strategy]
            ax.plot(*zip(*pts), marker=marker, color=color, label=label)
    rnd = [r for r in rows if r["strategy"] == "random_route"]
    if rnd:
        label, color, marker = STYLE["random_route"]
        ax.scatter([r["avg_layers"] for r in rnd], [r[metric] for r in rnd], color=color, s=18, alpha=0.6)
        by: dict[int, list[dict]] = defaultdict(list)
        for r in rnd:
            by[r["budget"]].append(r)
        means = sorted((sum(x["avg_layers"] for x in v) / len(v), sum(x[metric] for x in v) / len(v))
                       for v in by.values())
        if full:
            means.append((full["avg_layers"], full[metric]))
        ax.plot(*zip(*means), color=color, linestyle="--", marker="^", label=f"{label} (mean per budget)")
    for strategy in ("route", "learned", "sequence"):
        pts = [r for r in rows if r["strategy"] == strategy]
        if pts:
            label, color, marker = STYLE[strategy]
            ax.scatter([r["avg_layers"] for r in pts], [r[metric] for r in pts], color=color, marker=marker,
                       label=label, zorder=3)
    lo = min(r["avg_layers"] for r in rows)
    for name, doc, style in [("per-sequence oracle (in-sample upper bound)", oracle, "-"),
                             *[(k, v, ":") for k, v in (extra_oracles or {}).items()]]:
        if doc:
            curve = [p for p in doc["curve"] if p["avg_layers"] >= lo - 1e-9]
            ax.plot([p["avg_layers"] for p in curve], [p["score"] for p in curve], color="black",
                    linestyle=style, linewidth=1.6, label=name)
    null = (oracle or {}).get("null_control")
    if null:  # the oracle's curve less what best-of-K selection gains at full depth
        gain = null["score"] - null["full_score"]
        curve = [p for p in oracle["curve"] if p["avg_layers"] >= lo - 1e-9]
        ax.plot([p["avg_layers"] for p in curve], [p["score"] - gain for p in curve], color="gray",
                linestyle="--", linewidth=1.2, label=f"oracle less its null gain ({gain:+.3f})")
    if full:
        ax.scatter([full["avg_layers"]], [full[metric]], color="black", marker="*", s=140, zorder=4,
                   label=STYLE["full"][0])
        ax.axhline(full[metric], color="gray", linewidth=0.8, linestyle=":")
    name = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}.get(metric, metric)
    return finish_figure(fig, ax, path, name,
                         f"{name} against depth ({full['model'] if full else ''}, {rows[0]['n']} sequences)")


def plot_skip_rates(rows: Sequence[dict], path: str | Path) -> Path | None:
    """Per-layer skip rate (1 - usage) of each learned controller, as bars; None when there are none."""
    learned = [r for r in rows if r["strategy"] == "learned"]
    if not learned:
        return None
    plt = pyplot()
    L = len(learned[0]["layer_usage"])
    fig, ax = plt.subplots(figsize=(max(6, L * 0.3), 3.8))
    width = 0.8 / len(learned)
    for k, r in enumerate(learned):
        ax.bar([i + (k - (len(learned) - 1) / 2) * width for i in range(L)], [1 - u for u in r["layer_usage"]],
               width=width, label=f"{r['config_id']} ({r['avg_layers']:.1f} layers)")
    ax.set_ylim(0, 1)
    return finish_figure(fig, ax, path, "skip rate (generated tokens)", xlabel="layer", grid="y")


def plot_similarity(doc: dict, path: str | Path) -> Path:
    """Left: cosine similarity to the full model at each depth, per config. Middle: at the last
    depth, against the budget, per strategy. Right: the full model's consecutive-layer similarity."""
    plt = pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    layers = doc["layers"]
    budgets = sorted({x["budget"] for x in doc["configs"] if x.get("budget") is not None})
    shade = {bud: 0.35 + 0.65 * (k + 1) / len(budgets) for k, bud in enumerate(budgets)}
    seen = set()
    for x in doc["configs"]:
        label, color, _ = STYLE.get(x["strategy"], (x["strategy"], "gray", "o"))
        a.plot(layers, x["per_layer"], color=color, alpha=shade.get(x["budget"], 1.0), linewidth=1.2,
               label=label if x["strategy"] not in seen else None)
        seen.add(x["strategy"])
    a.set_xlabel("depth (layers applied)")
    a.set_ylabel("cosine similarity to the full model")
    a.set_title("per depth (darker = more layers kept)", fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for x in doc["configs"]:
        if x.get("budget") is not None:
            by[x["strategy"]][x["budget"]].append(x["final"])
    for strategy, pts in by.items():
        label, color, marker = STYLE.get(strategy, (strategy, "gray", "o"))
        xs = sorted(pts)
        b.plot(xs, [sum(pts[k]) / len(pts[k]) for k in xs], marker=marker, color=color, label=label)
    b.set_xlabel("layers kept")
    b.set_ylabel("final-state cosine similarity")
    b.set_title("final state (before the final norm)", fontsize=10)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    c.plot(range(len(doc["full"]["consecutive"])), doc["full"]["consecutive"], color="black", marker=".")
    c.set_xlabel("layer l")
    c.set_ylabel("cos(h_l, h_(l+1))")
    c.set_title("full model: change made by each layer", fontsize=10)
    c.grid(alpha=0.3)
    fig.suptitle(f"hidden-state similarity ({doc.get('model', '')}, {doc['n_sequences']} sequences, "
                 f"{doc['n_tokens']} reference tokens, teacher-forced)", fontsize=10)
    return save_figure(fig, path)
