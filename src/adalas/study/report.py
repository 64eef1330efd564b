"""The study's report: report.md (the findings, what each verdict rests on, one section per
experiment, the runs), its plots (e1.png, e2.png, e4.png) and the README's table (`readme_study`)."""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from .e1 import e1_section, e1_table, plot_e1
from .e2 import e2_section, plot_e2
from .e3 import e3_section
from .e4 import e4_section, plot_e4
from .plan import EXPERIMENTS


def findings_table(doc: dict) -> str:
    """One line per experiment: the paper's finding, the interval that decides ours, the verdict."""
    lines = ["| experiment | the paper's finding | what decides it here (95% CI) | verdict |", "|---|---|---|---|"]
    for name in EXPERIMENTS:
        e = doc[name]
        lines.append(f"| {name} | {e['finding']} | {' '.join(e['decided_by'])} | **{e['verdict']}** ({e['reason']}) |")
    return "\n".join(lines)


def rests_on_table(doc: dict) -> list[str]:
    """What each verdict rests on: model and hash, rows, seeds, the test (item 6 of issue 28)."""
    md = ["| experiment | model (sha256) | rows | seeds | test |", "|---|---|---|---|---|"]
    for name in EXPERIMENTS:
        r = doc[name].get("rests_on")
        if r:
            seeds = "; ".join(f"{k}: {v}" for k, v in r["seeds"].items()) or "–"
            md.append(f"| {name} | `{r['model']}` (`{(r['model_sha256'] or '–')[:12]}`) | {r['rows']} ({r['place']}: "
                      f"{', '.join(r['tasks'])}) | {seeds} | {r['test']} |")
    return md


def tasks_table(doc: dict) -> list[str]:
    md = ["| set | rows | cap | sha256 | role |", "|---|---|---|---|---|"]
    md += [f"| {k} | {t['n']} | {t['max_new_tokens']} | `{(t['sha256'] or '–')[:12]}` | "
           f"{'real test set (verdicts, pooled)' if t['test_set'] else 'the quick set (secondary)'} |"
           for k, t in doc["tasks"].items()]
    return md


def readme_study(doc: dict) -> str:
    """The README's "Training study" results from study.json: the findings with the intervals that
    decide them, what they rest on, and E1's table (report.md has the rest)."""
    s = doc["study"]
    md = [f"From `adalas study` (plan `{s['plan']}`, `results/study/report.md`; ROUGE-L F on the three real test sets "
          "pooled, per task and the built-in set secondary; paired 95% intervals over the same rows, resampled "
          "within task):", "", findings_table(doc), "", *rests_on_table(doc), ""]
    if doc["E1"]["verdict"] != "not run":
        md += e1_table(doc["E1"]) + [""]
    return "\n".join(md).rstrip() + "\n"


def write_report(out: Path, doc: dict) -> Path:
    out = Path(out)
    s = doc["study"]
    ran = {k for k in EXPERIMENTS if doc[k]["verdict"] != "not run"}
    for name, plot in (("E1", plot_e1), ("E2", plot_e2), ("E4", plot_e4)):
        if name in ran:
            plot(doc, out / f"{name.lower()}.png")
    md = ["# adalas study: the paper's training experiments", "",
          f"Plan `{s['plan']}` ({s['description']}; sha256 `{s['plan_sha256'][:12]}`, pre-registered test "
          f"`{s['preregistered_sha256'][:12]}`); model `{s['model']}` ({s['layers']} layers); choices on the held-out "
          f"rows `{s['heldout']}` (`{s['heldout_sha256'][:12]}`); training wall time {s['train_wall_s'] / 60:.1f} min "
          f"over {len(doc['runs'])} runs. Depth: {s['depth_unit']}. Verdicts rest on the three real tasks pooled; "
          "per task and the built-in set are secondary.", "", *tasks_table(doc), "", "## Findings", "",
          findings_table(doc), "", "What each verdict rests on:", "", *rests_on_table(doc), ""]
    for name, (title, section) in SECTIONS.items():
        e = doc[name]
        md += [title, ""] + ([f"Not run yet: {e['reason']}.", ""] if e["verdict"] == "not run" else section(e))
    md += ["## Runs", "", "| run | steps | seed | wall | data sha256 | command |", "|---|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['steps']} | {r.get('seed')} | {(r['wall_s'] or 0) / 60:.1f} min | "
           f"`{(r['data_sha256'] or '–')[:12]}` | `{r['command']}`"
           + (f" (trained by `{r['adopted_from']}`, which trains alike)" if r.get("adopted_from") else "") + " |"
           for r in doc["runs"]]
    md += ["", "Stages (wall seconds, summed over invocations): "
           + ", ".join(f"{k} {v:.0f}" for k, v in s["stages_s"].items()) + ".", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


# report.md's sections: title, and the body of an experiment that ran
SECTIONS = {"E1": ("## E1: layer skipping against early exit, after adaptation, with equal effort", e1_section),
            "E2": ("## E2: does the controller's input matter? (two fair arms)", e2_section),
            "E3": ("## E3: the per-sequence oracle on a model made for its candidates (pre-registered)", e3_section),
            "E4": ("## E4: a per-sequence router fit on held-out rows", e4_section)}
