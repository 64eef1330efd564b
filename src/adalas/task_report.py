"""The real-task report: every config against full depth on the same rows, per task and pooled.

Notable (definitions in `results/tasks/PROTOCOL.md`):
- Rows come from the committed `results/tasks/<task>/per_sequence.jsonl` (no data text); the
  references are joined back by id after checking the file's sha256, and every stored ROUGE-L is
  recomputed from them, so a report cannot silently score against another file.
- Per config: ROUGE-L F, precision and recall, mean generated tokens and the share of rows that
  stopped before the cap; F and recall as ratios to full depth with paired intervals; against full,
  two one-sided tests at 5% of full's mean and the smallest difference the rows could detect.
- Pooled: the rows of every task that has the config, resampled within their task.
- `targets`: the issue's targets, each a point estimate with its interval and met / missed.
- Writes `report.md`, `summary.json` and `rouge_vs_layers.png` (one panel per task and pooled; each
  strategy its own line style, the shipped adapters marked and named); with `readme`, the tables also
  replace what stands between the README's two markers (README_START, README_END).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .evaluate import rouge
from .io import atomic_write_json, atomic_write_text, read_jsonl, write_between_markers
from .plots import pyplot, save_figure
from .stats import difference_text, equivalence, gap_closed, paired_ratio
from .tasks import REAL_TASKS, join_references, task_file

MARGIN_SHARE = 0.05  # equivalence margin: 5% of full depth's mean on the same rows
ADAPTED = "adapted:smollm2-135m-"
# (config, threshold on the ratio to full, or the name of the config whose ratio minus 0.05 it must reach)
RATIO_TARGETS: list[tuple[str, float | str]] = [
    (ADAPTED + "adapted-24", 0.95), (ADAPTED + "adapted-20", 0.90), (ADAPTED + "dropout", 0.98),
    (ADAPTED + "dropout@smollm2-135m-adapted-24", ADAPTED + "adapted-24"),
    (ADAPTED + "dropout@smollm2-135m-adapted-20", ADAPTED + "adapted-20"),
]
GAP_TARGETS = [(ADAPTED + "adapted-20", "route:smollm2-135m-adapted-20", 2 / 3)]
TASK_FLOOR, LENGTH_TOLERANCE = 0.85, 0.10


def load_task(out_dir: Path, task: str, data_dir: str | Path) -> dict[str, list[dict]]:
    """{config_id: rows in the data file's order} for the configs that have every row."""
    folder = out_dir / task
    settings = json.loads((folder / "settings.json").read_text())["settings"]
    rows = join_references(read_jsonl(folder / "per_sequence.jsonl"), task_file(data_dir, task),
                           settings.get("data_sha256"))
    for r in rows:
        if abs(rouge(r["prediction"], r["reference"])["rougeL"] - r["rougeL"]) > 1e-9:
            raise ValueError(f"{folder}: row {r['id']!r} of {r['config_id']!r} does not score its stored rougeL "
                             f"against the reference; the rows and the data file disagree")
    order = [str(r["id"]) for r in rows if r["config_id"] == "full"]
    by_config: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_config.setdefault(r["config_id"], {})[str(r["id"])] = r
    return {cid: [got[i] for i in order] for cid, got in by_config.items() if all(i in got for i in order)}


def _layers(rows: Sequence[dict]) -> float:
    steps = [max(int(r["output_tokens"]) - 1, 0) for r in rows]
    total = sum(steps)
    return sum(float(r["layers_used"]) * s for r, s in zip(rows, steps)) / total if total else float("nan")


def summarize_config(rows: Sequence[dict], full: Sequence[dict], strata: Sequence | None = None) -> dict:
    """One config against full depth on the same rows."""
    n = len(rows)
    col = lambda rs, k: [float(r[k]) for r in rs]  # noqa: E731
    out = {"n": n, "avg_layers": _layers(rows)}
    for key, name in (("rougeL", "f"), ("rougeL_precision", "precision"), ("rougeL_recall", "recall")):
        out[name] = sum(col(rows, key)) / n
    out["tokens"] = sum(col(rows, "output_tokens")) / n
    out["stop_share"] = sum(bool(r.get("stopped")) for r in rows) / n
    out["f_ratio"] = paired_ratio(col(rows, "rougeL"), col(full, "rougeL"), strata)
    out["recall_ratio"] = paired_ratio(col(rows, "rougeL_recall"), col(full, "rougeL_recall"), strata)
    out["tokens_ratio"] = out["tokens"] / (sum(col(full, "output_tokens")) / n)
    margin = MARGIN_SHARE * sum(col(full, "rougeL")) / n
    out["vs_full"] = equivalence(col(rows, "rougeL"), col(full, "rougeL"), margin, strata)
    return out


def build_summary(out_dir: str | Path, data_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    per_task = {t: load_task(out_dir, t, data_dir) for t in REAL_TASKS if (out_dir / t / "settings.json").is_file()}
    if not per_task:
        raise ValueError(f"{out_dir}: no task results yet (run `adalas tasks run` first)")
    summary: dict = {"tasks": {}, "pooled": {}, "margin_share": MARGIN_SHARE}
    for task, configs in per_task.items():
        full = configs["full"]
        summary["tasks"][task] = {"n": len(full), "max_new_tokens": REAL_TASKS[task].max_new_tokens,
                                  "data_sha256": json.loads((out_dir / task / "settings.json").read_text())
                                  ["settings"].get("data_sha256"),
                                  "configs": {cid: summarize_config(rows, full) for cid, rows in configs.items()}}
    shared = [cid for cid in next(iter(per_task.values())) if all(cid in c for c in per_task.values())]
    if len(per_task) == len(REAL_TASKS):
        strata = [t for t, c in per_task.items() for _ in c["full"]]
        full = [r for c in per_task.values() for r in c["full"]]
        pooled = {cid: [r for c in per_task.values() for r in c[cid]] for cid in shared}
        summary["pooled"] = {"n": len(full), "configs": {cid: summarize_config(rows, full, strata)
                                                         for cid, rows in pooled.items()}}
        summary["gaps"] = {a: gap_closed([float(r["rougeL"]) for r in pooled[a]],
                                         [float(r["rougeL"]) for r in pooled[o]],
                                         [float(r["rougeL"]) for r in full], strata)
                           for a, o, _ in GAP_TARGETS if a in pooled and o in pooled}
    summary["targets"] = targets(summary)
    return summary


def targets(summary: dict) -> list[dict]:
    """The issue's targets on what has been run: each a point estimate, its interval and whether met."""
    out = []
    pooled = summary.get("pooled", {}).get("configs", {})
    for cid, need in RATIO_TARGETS:
        if cid not in pooled:
            continue
        for metric in ("f_ratio", "recall_ratio"):
            if isinstance(need, str):
                if need not in pooled:
                    continue
                threshold = pooled[need][metric]["ratio"] - 0.05
            else:
                threshold = need
            got = pooled[cid][metric]
            out.append({"target": f"{cid} pooled {metric} >= {threshold:.3f}", "value": got["ratio"],
                        "ci95": got["ci95"], "met": got["ratio"] >= threshold})
        for task, t in summary["tasks"].items():
            c = t["configs"].get(cid)
            if c is None:
                continue
            out.append({"target": f"{cid} {task} f_ratio >= {TASK_FLOOR}", "value": c["f_ratio"]["ratio"],
                        "ci95": c["f_ratio"]["ci95"], "met": c["f_ratio"]["ratio"] >= TASK_FLOOR})
            out.append({"target": f"{cid} {task} mean length within {LENGTH_TOLERANCE:.0%} of full",
                        "value": c["tokens_ratio"], "ci95": None,
                        "met": abs(c["tokens_ratio"] - 1) <= LENGTH_TOLERANCE})
    for a, _, need in GAP_TARGETS:
        got = summary.get("gaps", {}).get(a)
        if got is not None:
            out.append({"target": f"{a} closes >= {need:.2f} of its route's gap (pooled)", "value": got["share"],
                        "ci95": got["ci95"], "met": got["share"] >= need})
    return out


def _ci(x: dict, key: str = "ratio") -> str:
    lo, hi = x["ci95"]
    return f"{x[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def _alike(c: dict) -> str:
    e = c["vs_full"]
    if e["equivalent"]:
        return f"alike within ±{e['margin']:.3f} (90% CI {e['ci90'][0]:+.3f}, {e['ci90'][1]:+.3f})"
    lo, hi = e["ci95"]
    if lo > 0 or hi < 0:
        return difference_text(e)
    return f"no measurable difference ({difference_text(e)}; could not detect less than {e['detectable']:.3f})"


def table(configs: dict) -> list[str]:
    lines = ["| config | layers | ROUGE-L F | P | R | F of full [95% CI] | R of full [95% CI] | tokens (of full) | "
             "stopped | against full (F) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cid, c in configs.items():
        lines.append(f"| `{cid}` | {c['avg_layers']:.1f} | {c['f']:.3f} | {c['precision']:.3f} | {c['recall']:.3f} | "
                     f"{_ci(c['f_ratio'])} | {_ci(c['recall_ratio'])} | {c['tokens']:.1f} ({c['tokens_ratio']:.2f}) | "
                     f"{c['stop_share']:.0%} | {'—' if cid == 'full' else _alike(c)} |")
    return lines


def render(summary: dict, targets_table: bool = True) -> str:
    md = ["# Real tasks: every config against full depth on the same rows", "",
          "Made by `adalas tasks report` from the committed rows (`<task>/per_sequence.jsonl`, references joined "
          "back by id after checking each file's sha256). Protocol: `PROTOCOL.md`; looks: `LOOKS.jsonl`. "
          "Ratios are point estimates with paired 95% bootstrap intervals (1,000 resamples); \"alike\" is two "
          f"one-sided tests at {MARGIN_SHARE:.0%} of full depth's mean F.", ""]
    if summary.get("pooled"):
        md += [f"## Pooled ({summary['pooled']['n']} rows, resampled within task)", "", *table(summary["pooled"]["configs"]), ""]
    for task, t in summary["tasks"].items():
        md += [f"## {task} ({t['n']} rows, cap {t['max_new_tokens']} new tokens, sha256 `{(t['data_sha256'] or '')[:12]}`)",
               "", *table(t["configs"]), ""]
    if summary["targets"] and targets_table:
        md += ["## Targets (issue 29)", "", "| target | value [95% CI] | met |", "|---|---|---|"]
        for g in summary["targets"]:
            ci = f" [{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]" if g["ci95"] else ""
            md.append(f"| {g['target']} | {g['value']:.2f}{ci} | {'yes' if g['met'] else '**no**'} |")
        md.append("")
    return "\n".join(md)


STYLES = {"early_exit": ("--", "o", "early exit"), "uniform_skip": ("-", "s", "uniform skipping")}


def plot(summary: dict, path: Path) -> None:
    plt = pyplot()
    panels = [("pooled", summary["pooled"]["configs"])] if summary.get("pooled") else []
    panels += [(t, v["configs"]) for t, v in summary["tasks"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (name, configs) in zip(axes[0], panels):
        for strategy, (ls, marker, label) in STYLES.items():
            pts = sorted((c["avg_layers"], c["f_ratio"]["ratio"]) for cid, c in configs.items()
                         if cid.startswith(strategy + "@"))
            if "full" in configs:
                pts.append((30.0, 1.0))
            if len(pts) > 1:
                ax.plot(*zip(*pts), linestyle=ls, marker=marker, label=label)
        for cid, c in configs.items():
            if cid.startswith("route:"):
                ax.plot(c["avg_layers"], c["f_ratio"]["ratio"], "x", color="gray", ms=8)
                ax.annotate(cid.replace("route:smollm2-135m-", "route of "), (c["avg_layers"], c["f_ratio"]["ratio"]),
                            fontsize=6, color="gray", xytext=(3, -8), textcoords="offset points")
            if cid.startswith(ADAPTED):
                ax.plot(c["avg_layers"], c["f_ratio"]["ratio"], "*", ms=11, color="tab:red")
                ax.annotate(cid.replace(ADAPTED, "").replace("@smollm2-135m-", " on "),
                            (c["avg_layers"], c["f_ratio"]["ratio"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set_title(name)
        ax.set_xlabel("layers run per generated token")
    axes[0][0].set_ylabel("ROUGE-L F, share of full depth")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


README_START, README_END = "<!-- real-task tables: adalas tasks report -->", "<!-- end of real-task tables -->"


def readme_tables(summary: dict, out_dir: Path) -> str:
    """The pooled and per-task tables, and the targets, as the README shows them."""
    body = render(summary, targets_table=False).split("\n", 4)[4].replace("## ", "#### ")  # no title, preamble
    met = sum(t["met"] for t in summary["targets"])
    return (f"_Made by `adalas tasks report` from `{out_dir.as_posix()}/`; its `report.md` checks "
            f"each target of issue 29 ({met} of {len(summary['targets'])} met)._\n\n{body}")


def update_readme(readme: Path, summary: dict, out_dir: Path) -> None:
    write_between_markers(readme, README_START, README_END, readme_tables(summary, out_dir))


def write_task_report(out_dir: str | Path, data_dir: str | Path, readme: str | Path | None = None) -> Path:
    out_dir = Path(out_dir)
    summary = build_summary(out_dir, data_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    plot(summary, out_dir / "rouge_vs_layers.png")
    atomic_write_text(out_dir / "report.md", render(summary) + "\n![ROUGE-L against layers](rouge_vs_layers.png)\n")
    if readme is not None:
        update_readme(Path(readme), summary, out_dir)
    return out_dir / "report.md"
