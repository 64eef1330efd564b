"""Plots and the markdown report of a sweep directory.

Notable:
- Everything renders from files (sweep.jsonl, oracle.json, hidden_similarity.json, reproduce.json),
  so a report can be redrawn from a copied directory, or from a hand-made one in tests.
- PNGs go through the Agg backend into memory, then `io.atomic_write_bytes` (never half a file).
- `results_table` is the table the README's "Results" section quotes: ROUGE-L per budget for each
  strategy, and the oracle at the same average depth.
"""
from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .evaluate import read_jsonl
from .io import atomic_write_bytes, atomic_write_text

STYLE = {  # strategy -> (label, colour, marker)
    "full": ("full model", "black", "*"),
    "early_exit": ("early exit", "tab:red", "o"),
    "uniform_skip": ("uniform skipping", "tab:blue", "s"),
    "random_route": ("random routes", "tab:green", "."),
    "route": ("explicit routes", "tab:purple", "x"),
    "learned": ("learned controllers", "tab:orange", "D"),
    "sequence": ("per-sequence router", "tab:brown", "P"),
}


# ---------------------------------------------------------------------------------------------
# Reading

def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_sweep(sweep_dir: str | Path) -> list[dict]:
    rows = read_jsonl(Path(sweep_dir) / "sweep.jsonl")
    if not rows:
        raise ValueError(f"{sweep_dir}: no sweep.jsonl rows (run `adalas sweep` first)")
    return rows


def oracle_score_at(oracle: dict | None, layers: float) -> float | None:
    """The oracle's best mean score with at most `layers` layers on average (None: out of range)."""
    if not oracle:
        return None
    pts = [p["score"] for p in oracle["curve"] if p["avg_layers"] <= layers + 1e-9]
    return max(pts) if pts else None


# ---------------------------------------------------------------------------------------------
# Tables

def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def results_table(rows: Sequence[dict], oracle: dict | None = None, metric: str = "rougeL") -> str:
    """Markdown: one line per budget (layers kept), ROUGE-L of each strategy there, and the
    oracle's score at that average depth. Random routes: mean over routes (best in brackets)."""
    full = next((r for r in rows if r["strategy"] == "full"), None)
    L = full["num_layers"] if full else max(r.get("budget") or 0 for r in rows)
    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["strategy"] in ("early_exit", "uniform_skip", "random_route") and r.get("budget") is not None:
            by[r["strategy"], int(r["budget"])].append(r[metric])
    budgets = sorted({b for _, b in by}, reverse=True)
    head = ["layers kept", "early exit", "uniform skipping", "random routes: mean (best)", "per-sequence oracle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if full:
        lines.append(f"| {L} (full model) | {_f(full[metric])} | {_f(full[metric])} | {_f(full[metric])} | "
                     f"{_f(oracle_score_at(oracle, L))} |")
    for b in budgets:
        rnd = by.get(("random_route", b))
        rnd_s = f"{_f(sum(rnd) / len(rnd))} ({_f(max(rnd))})" if rnd else "–"
        ee, us = by.get(("early_exit", b)), by.get(("uniform_skip", b))
        lines.append(f"| {b} | {_f(ee[0] if ee else None)} | {_f(us[0] if us else None)} | {rnd_s} | "
                     f"{_f(oracle_score_at(oracle, b))} |")
    return "\n".join(lines)


def configs_table(rows: Sequence[dict]) -> str:
    """Markdown: every config with its layers and ROUGE-1/2/L."""
    lines = ["| config | strategy | avg layers | ROUGE-1 | ROUGE-2 | ROUGE-L | route |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        route = f"`{r['route']}`" if r.get("route") else "per token"
        lines.append(f"| {r['config_id']} | {r['strategy']} | {r['avg_layers']:.2f} | {_f(r['rouge1'])} | "
                     f"{_f(r['rouge2'])} | {_f(r['rougeL'])} | {route} |")
    return "\n".join(lines)


def oracle_sentence(oracle: dict | None, label: str = "the per-sequence oracle") -> str:
    if not oracle:
        return ""
    if oracle.get("match_avg_layers") is None:
        return (f"{label[0].upper() + label[1:]} never reaches the full model's ROUGE-L "
                f"({oracle['full_score']:.3f}) with these configs.")
    return (f"{label[0].upper() + label[1:]} matches the full model's ROUGE-L ({oracle['full_score']:.3f}) with "
            f"{oracle['match_avg_layers']:.2f} of {oracle['num_layers']} layers on average "
            f"({100 * oracle['match_fraction']:.1f}%), choosing among {oracle['n_configs']} configs "
            f"for each of {oracle['n_sequences']} sequences.")


def settings_line(rows: Sequence[dict], meta: dict | None) -> str:
    full = next((r for r in rows if r["strategy"] == "full"), rows[0])
    meta = meta or {}
    parts = [f"model `{full.get('model')}`", f"{full['n']} sequences"]
    if meta.get("data"):
        d = meta["data"]
        parts.append(f"data `{d.get('name', d) if isinstance(d, dict) else d}`")
    if meta.get("max_new_tokens"):
        parts.append(f"{meta['max_new_tokens']} new tokens (greedy)")
    parts.append(f"{len(rows)} configs")
    if meta.get("wall_s") is not None:
        runs = meta.get("runs_wall_s") or [meta["wall_s"]]
        minutes, seconds = divmod(int(round(sum(runs))), 60)
        parts.append(f"wall time {minutes} min {seconds:02d} s" + (f" over {len(runs)} runs" if len(runs) > 1 else ""))
    return "Settings: " + ", ".join(parts) + "."


def readme_results(sweep_dir: str | Path) -> str:
    """The README "Results" section for a sweep directory (with its oracle.json and reproduce.json)."""
    d = Path(sweep_dir)
    rows = read_sweep(d)
    oracle = read_json(d / "oracle.json")
    meta = read_json(d / "reproduce.json") or read_json(d / "sweep_meta.json")
    text = ["## Results", "",
            "ROUGE-L on the built-in evaluation set against the number of layers run per generated token, "
            "from `make run` (`adalas reproduce`, " + str(d) + "/report.md):", "",
            results_table(rows, oracle), ""]
    if oracle:
        text += [oracle_sentence(oracle), ""]
    uniform = read_json(d / "oracle_uniform_skip.json")
    if uniform:  # the paper's choice set: uniform skipping at each budget, and the full model
        text += [oracle_sentence(uniform, "an oracle over uniform skipping only (the paper's choice set)"), ""]
    text += [settings_line(rows, meta), ""]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# Plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """PNG into memory, then an atomic write; no timestamps in the file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_rouge_vs_layers(rows: Sequence[dict], path: str | Path, oracle: dict | None = None,
                         extra_oracles: dict[str, dict] | None = None, metric: str = "rougeL") -> Path:
    """One line per strategy (score against average layers), random routes as points with their mean,
    learned controllers and explicit routes as points, the oracle curve(s)."""
    plt = _plt()
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
    for name, doc, style in [("per-sequence oracle (all configs)", oracle, "-"),
                             *[(k, v, ":") for k, v in (extra_oracles or {}).items()]]:
        if doc:
            curve = [p for p in doc["curve"] if p["avg_layers"] >= lo - 1e-9]
            ax.plot([p["avg_layers"] for p in curve], [p["score"] for p in curve], color="black",
                    linestyle=style, linewidth=1.6, label=name)
    if full:
        ax.scatter([full["avg_layers"]], [full[metric]], color="black", marker="*", s=140, zorder=4,
                   label=STYLE["full"][0])
        ax.axhline(full[metric], color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("average layers run per generated token")
    name = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}.get(metric, metric)
    ax.set_ylabel(name)
    ax.set_title(f"{name} against depth ({full['model'] if full else ''}, {rows[0]['n']} sequences)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_skip_rates(rows: Sequence[dict], path: str | Path) -> Path | None:
    """Per-layer skip rate (1 - usage) of each learned controller, as bars; None when there are none."""
    learned = [r for r in rows if r["strategy"] == "learned"]
    if not learned:
        return None
    plt = _plt()
    L = len(learned[0]["layer_usage"])
    fig, ax = plt.subplots(figsize=(max(6, L * 0.3), 3.8))
    width = 0.8 / len(learned)
    for k, r in enumerate(learned):
        ax.bar([i + (k - (len(learned) - 1) / 2) * width for i in range(L)], [1 - u for u in r["layer_usage"]],
               width=width, label=f"{r['config_id']} ({r['avg_layers']:.1f} layers)")
    ax.set_xlabel("layer")
    ax.set_ylabel("skip rate (generated tokens)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_similarity(doc: dict, path: str | Path) -> Path:
    """Left: cosine similarity to the full model at each depth, per config. Middle: at the last
    depth, against the budget, per strategy. Right: the full model's consecutive-layer similarity."""
    plt = _plt()
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


# ---------------------------------------------------------------------------------------------
# The report

def write_report(sweep_dir: str | Path, analysis: dict | None = None, meta: dict | None = None) -> Path:
    """Render the PNGs and report.md of a sweep directory; returns the report's path.

    Reads sweep.jsonl, oracle.json and oracle_*.json (restricted oracles) when present,
    hidden_similarity.json when `analysis` is not given, and reproduce.json / sweep_meta.json for the settings.
    """
    d = Path(sweep_dir)
    rows = read_sweep(d)
    oracle = read_json(d / "oracle.json")
    extra = {f"oracle over {p.stem.removeprefix('oracle_').replace('_', ' ')} only": read_json(p)
             for p in sorted(d.glob("oracle_*.json"))}
    analysis = analysis if analysis is not None else read_json(d / "hidden_similarity.json")
    meta = meta or read_json(d / "reproduce.json") or read_json(d / "sweep_meta.json") or {}
    plot_rouge_vs_layers(rows, d / "rouge_vs_layers.png", oracle, extra)
    skip_png = plot_skip_rates(rows, d / "skip_rates.png")
    if analysis:
        plot_similarity(analysis, d / "hidden_similarity.png")
    full = next((r for r in rows if r["strategy"] == "full"), rows[0])
    md = ["# adalas report", "", settings_line(rows, meta), ""]
    md += _settings_block(full, meta)
    md += ["## ROUGE-L against depth", "", "![ROUGE-L against average layers](rouge_vs_layers.png)", "",
           results_table(rows, oracle), ""]
    if oracle:
        md += [oracle_sentence(oracle)]
        for label, doc in extra.items():
            if doc:
                md += ["", oracle_sentence(doc, "the " + label.replace("oracle over", "oracle over the"))]
        md += ["", f"Oracle solver: {oracle['solver']} (gap {oracle['gap']:.2g}); sequences scored under every "
                   f"config: {oracle['n_sequences']} (excluded: {oracle.get('n_excluded', 0)}).", ""]
    md += ["## Every config", "", configs_table(rows), ""]
    if skip_png:
        md += ["## Learned controllers: per-layer skip rates", "", "![skip rates](skip_rates.png)", ""]
    if analysis:
        md += ["## Hidden-state similarity", "", "![hidden-state similarity](hidden_similarity.png)", "",
               f"Teacher-forced on prompt + reference ({analysis['n_sequences']} sequences, {analysis['n_tokens']} "
               "reference tokens); cosine similarity to the full model's state at the same depth, before the "
               "final norm.", "", "| config | final state | mean over depths |", "|---|---|---|"]
        md += [f"| {x['config_id']} | {x['final']:.3f} | {x['mean']:.3f} |" for x in analysis["configs"]]
        md += [""]
    path = d / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _wall(meta: dict) -> str | None:
    if meta.get("wall_s") is None:
        return None
    runs = meta.get("runs_wall_s") or []
    if len(runs) > 1:
        return f"{meta['wall_s']:.0f} s (this run; {sum(runs):.0f} s over {len(runs)} runs, resumed)"
    return f"{meta['wall_s']:.0f} s"


def _settings_block(full: dict, meta: dict) -> list[str]:
    keys = [("model", full.get("model")), ("layers", full.get("num_layers")), ("sequences", full.get("n")),
            ("data", meta.get("data")), ("max new tokens", meta.get("max_new_tokens")),
            ("batch size", meta.get("batch_size")), ("reference", full.get("reference")),
            ("configs", meta.get("n_configs")), ("seed", meta.get("seed")),
            ("wall time", _wall(meta)),
            ("stages", ", ".join(f"{k} {v:.0f} s" for k, v in meta.get("stages_s", {}).items()) or None),
            ("versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) or None)]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in keys if v is not None]
    return lines + [""]
