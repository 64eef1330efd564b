"""The study's report: report.md (the findings, one section per experiment, the runs), its plots
(e1.png, e2.png, e4.png; E3's come from `adalas.report`) and the README's table (`readme_study`)."""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from .e1 import e1_section, e1_table, plot_e1
from .e2 import e2_section, plot_e2
from .e3 import e3_section
from .e4 import e4_section, plot_e4
from .common import ci_text
from .plan import EXPERIMENTS


def findings_table(doc: dict) -> str:
    """One line per experiment: the paper's finding, the interval that decides ours, the verdict."""
    lines = ["| experiment | the paper's finding | what decides it here (95% CI) | verdict |", "|---|---|---|---|"]
    for name in ("E1", "E2", "E3", "E4"):
        e = doc[name]
        lines.append(f"| {name} | {e['finding']} | {' '.join(e['decided_by'])} | **{e['verdict']}** ({e['reason']}) |")
    return "\n".join(lines)


def readme_study(doc: dict) -> str:
    """The README's "Training study" results from study.json: the findings with the intervals that
    decide them, E1's table, and each other experiment's deciding sentence (report.md has the rest)."""
    s = doc["study"]
    md = [f"From `adalas study` (plan `{s['plan']}`, `results/study/report.md`; ROUGE-L on `{s['eval']['data']}`, "
          f"{s['eval']['max_new_tokens']} new tokens, greedy; paired 95% intervals over the same sequences):", "",
          findings_table(doc), ""]
    e1 = doc["E1"]
    if e1["verdict"] != "not run":
        md += e1_table(e1) + ["", f"Base model at full depth: {ci_text(e1['base_full'])} ({e1['n']} sequences).", ""]
    for name in ("E2", "E3", "E4"):
        if doc[name]["verdict"] != "not run":
            md += [f"- {name}: " + " ".join(doc[name]["decided_by"])]
    return "\n".join(md).rstrip() + "\n"


def write_report(out: Path, doc: dict) -> Path:
    """report.md and e1.png, e2.png, e4.png (E3's figure and its own report come from `adalas.report`)."""
    from ..report import write_report as sweep_report

    out = Path(out)
    s = doc["study"]
    ran = {k for k in EXPERIMENTS if doc[k]["verdict"] != "not run"}
    for name, plot in (("E1", plot_e1), ("E2", plot_e2)):
        if name in ran:
            plot(doc, out / f"{name.lower()}.png")
    if "E4" in ran:
        plot_e4(out, doc, out / "e4.png")
    if "E3" in ran:
        sweep_report(out / "E3", meta={"data": {"name": s["eval"]["data"]}, "max_new_tokens": s["eval"]["max_new_tokens"],
                                       "batch_size": s["eval"]["batch_size"], "null_k": s["k"]})
    n = next((doc[k]["n"] for k in EXPERIMENTS if k in ran), None)
    md = ["# adalas study: the paper's training experiments", "",
          f"Plan `{s['plan']}` ({s['description']}); model `{s['model']}`; evaluation on `{s['eval']['data']}` "
          f"({n or 'all its'} sequences, {s['eval']['max_new_tokens']} new tokens, greedy, batch {s['eval']['batch_size']}); "
          f"training wall time {s['train_wall_s'] / 60:.1f} min over {len(doc['runs'])} runs. "
          f"Depth: {s['depth_unit']}. "
          "Every comparison is a paired bootstrap over the same sequences (1,000 resamples); an interval that "
          "covers 0 is no measurable difference.", "",
          "## Findings", "", findings_table(doc), ""]

    for name, (title, section) in SECTIONS.items():
        e = doc[name]
        md += [title, ""] + ([f"Not run yet: {e['reason']}.", ""] if e["verdict"] == "not run" else section(e))
    md += ["## Runs", "", "| run | steps | wall | data sha256 | command |", "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['steps']} | {(r['wall_s'] or 0) / 60:.1f} min | `{(r['data_sha256'] or '–')[:12]}` | "
           f"`{r['command']}`" + (f" (trained by `{r['adopted_from']}`, which trains alike)" if r.get("adopted_from")
                                  else "") + " |" for r in doc["runs"]]
    md += ["", "Stages (wall seconds, summed over invocations): "
           + ", ".join(f"{k} {v:.0f}" for k, v in s["stages_s"].items()) + ".", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


# report.md's sections: title, and the body of an experiment that ran
SECTIONS = {"E1": ("## E1: layer skipping against early exit, after adaptation", e1_section),
            "E2": ("## E2: does the controller's input matter?", e2_section),
            "E3": ("## E3: the per-sequence oracle on the layer-dropout model", e3_section),
            "E4": ("## E4: the learned per-sequence router", e4_section)}
