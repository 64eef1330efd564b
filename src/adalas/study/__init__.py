"""`adalas study`: the paper's training experiments (E1-E4), described as data and run end to end.

A plan (`adalas/studies/<name>.yaml`, or any YAML path) lists run templates (a recipe plus
overrides), what each experiment compares, where it is evaluated and the pre-registered test:
- E1: adapted layer skipping against adapted early exit at equal depth, each arm choosing among the
  same number of candidates on held-out self-written rows, two seeds where the plan says so.
- E2: per-token controllers reading the hidden state against ones that see a constant, each arm's
  learning rate chosen from one grid by held-out pilots, two or more seeds per cost weight.
- E3: the per-sequence oracle on a model made for its K candidates, against the null control's
  best of K full-depth runs, decided by the test written in the plan before any sweep ran.
- E4: a per-sequence router fit on held-out rows against uniform skipping and the best fixed mix
  (re-chosen in every resample) at matched depth, with its real decode speed.
Every experiment is evaluated on the three real test sets (verdicts rest on them pooled) and on the
built-in set; each look at a test set is logged in `LOOKS.jsonl` before it runs.

Read in this order: `spec.py` and `plan.py` (the plan, its checks and its concrete runs),
`routes.py` (routes by name), `tiny.py` (--quick's model), `runs.py` (training), `heldout.py` (the
choices), `sweeps.py` (stores of rows, looks), `rows.py` (rows per set and pooled), `prereg.py` (E3's
test), `common.py`, `e1.py` ... `e4.py` (one experiment each), `report.py`, `pipeline.py`, and
`compute.py` (the compute plan: thread-hours per experiment).

Notable:
- Everything resumes: a run is done once `<out>/train/<name>.json` records it (a changed plan is
  refused rather than mixed); choices are files (`E1/choice.json`, `E2/lr_choice.json`); rows are
  appended to stores and skipped when present.
- The analysis reads files only (`analyse`), so `study.json`, `report.md` and the plots can be
  redrawn from a copied results directory (the rows published there carry no data text).
- `--quick` builds a tiny random Llama and its own rows (`build_tiny`) and runs the same pipeline.
"""
from __future__ import annotations

from .common import DEPTH_UNIT, VERDICTS
from .pipeline import analyse, run_study
from .plan import EXPERIMENTS, Plan, Run, load_plan, plan_names, plan_path, plan_ref
from .report import findings_table, readme_study, write_report
from .runs import same_training, train_runs
from .tiny import build_tiny, tiny_rows

__all__ = ["DEPTH_UNIT", "EXPERIMENTS", "VERDICTS", "Plan", "Run", "analyse", "build_tiny", "findings_table",
           "load_plan", "plan_names", "plan_path", "plan_ref", "readme_study", "run_study", "same_training",
           "tiny_rows", "train_runs", "write_report"]
