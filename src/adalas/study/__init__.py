"""`adalas study`: the paper's training experiments (E1-E4), described as data and run end to end.

A plan (`adalas/studies/<name>.yaml`, or any YAML path) lists training runs, each a recipe plus
overrides (the paper's runs as overrides of one recipe), and what each experiment compares:
- E1: adapted layer skipping against adapted early exit at equal depth (paired over sequences).
- E2: per-token learned controllers reading the hidden state against ones that see a constant
  (`fixed`), over several cost weights: two curves (average layers, ROUGE-L) compared at common
  depths by interpolation, beside uniform skipping of the layer-dropout model.
- E3: the per-sequence oracle on the layer-dropout model over full + uniform skipping + early exit,
  with its null control (K - 1 sampled full-depth runs), and the interval of its null-adjusted match.
- E4: the cross-fitted per-sequence router on E3's sweep against uniform skipping, the best fixed mix
  (hindsight) and the oracle at matched depth, with its real decode speed.

Read in this order: `plan.py` (the plan and its checks), `tiny.py` (--quick's model), `runs.py`
(training), `sweeps.py` (evaluation), `common.py` (what the analyses share), `e1.py` ... `e4.py`
(one experiment each: its evaluation where it has its own, its analysis, plot and report section),
`report.py` (report.md and the README table), `pipeline.py` (`run_study` and `analyse`).

Notable:
- Everything resumes. A run trains into `<runs_dir>/<name>` through `adalas.train.run` with
  `--resume_from_checkpoint true`, and is done once `<out>/train/<name>.json` (its command, data
  hash, steps, wall time) exists; a changed plan is refused rather than mixed. Evaluations are
  sweeps (`adalas.sweep.run_sweep`, rows appended and skipped when present): `<out>/adapted` (the
  base model at full depth and at the E1 routes, and every E1/E2 checkpoint) and `<out>/E3` (the
  dropout model). A stage whose rows are all there loads no model.
- The analysis reads files only (`analyse`), so `study.json`, `report.md` and the plots can be
  redrawn from a copied results directory. Every comparison is a paired bootstrap over the same
  sequences (`adalas.stats`); a verdict names the interval that decides it.
- `--quick` builds a tiny random Llama and its own rows (`build_tiny`) and runs the same pipeline.
"""
from __future__ import annotations

from .common import DEPTH_UNIT, VERDICTS
from .pipeline import analyse, run_study
from .plan import EXPERIMENTS, Plan, Run, load_plan, null_k, plan_names, plan_path, plan_ref, runs_for
from .report import findings_table, readme_study, write_report
from .runs import same_training, train_runs
from .tiny import build_tiny, tiny_rows

__all__ = ["DEPTH_UNIT", "EXPERIMENTS", "VERDICTS", "Plan", "Run", "analyse", "build_tiny", "findings_table",
           "load_plan", "null_k", "plan_names", "plan_path", "plan_ref", "readme_study", "run_study", "runs_for",
           "same_training", "tiny_rows", "train_runs", "write_report"]
