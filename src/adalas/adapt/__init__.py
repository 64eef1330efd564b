"""`adalas adapt`: from a model to a faster one that keeps as much of its quality as it can, exported
for the tools people serve with. Five stages, each resumable, recorded in `DIR/adapt.json`.

Notable:
- Stages, in order: `data` (the model's own instructions and answers, or `--data FILE`, split into
  training and held-out rows), `route` (the N layers to keep, `adalas.route_search` on the first
  held-out rows), `train` (LoRA plus self-distillation on that route, `adalas.train`), `evaluate`
  (full depth, the route off the shelf and the adapted route on the held-out rows the search did not
  use and on each `--test` file, paired intervals; tokens/s of the export against full depth in
  transformers, side by side) and `export` (a plain transformers checkpoint, adapter merged, skipped
  layers deleted, with a model card; a GGUF for llama.cpp with `--format gguf`).
- `adapt.json` holds, per stage, `status` (pending, running, done), `inputs` and their sha256
  (`inputs_sha256`: the settings the stage reads and the sha256 of what earlier stages made),
  `wall_s` and `outputs` (paths relative to DIR, with their sha256). A stage that is done with the
  same inputs is skipped; one left `running` with the same inputs resumes its own work (synth rows,
  Trainer checkpoints, sweep rows); otherwise its work directory is cleared and it runs from the
  start. A later stage's inputs hold the sha256 of what the earlier ones made, so a change reaches
  every stage it affects and no other: a new `--test` file re-filters the data (the same rows: route
  and training are kept) and redoes the evaluation and the export; new `--steps` redo training on.
- The prompt follows the route by default (`skip_prompt=true`): the export, which has the skipped
  layers deleted, is then exactly the model that was trained and evaluated. `--prompt-depth full`
  trains and evaluates with the prompt at full depth (the paper's setting); the card then says that
  the export is a different model.
- Data without `--data`: `adalas synth` rows, written once per model and settings and reused by every
  later run (the repository's committed rows where they were made with the same settings, else a file
  under the cache directory keyed on the model's weights and the settings). Rows sharing a word 8-gram
  with a `--test` file are dropped (counted) before the split, so the test files can change without
  writing the data again. The first `--heldout` rows are held out (at most half), as
  data/synth/README.md splits the committed rows; the route search reads the first `--route-rows`
  of them and the held-out evaluation the rest.
- Library code: `run_adapt(AdaptSettings)` raises ValueError on bad input before anything is written
  (`check_settings`); the command turns it into one line and exit code 2.

One file per stage or concern: `settings` (what was asked, the shared constants), `run` (the record
and the loaded model), `checks` (before anything is written), `data_stage`, `route_stage`,
`train_stage`, `evaluate_stage`, `export_stage`, `report` (report.md and the model card) and
`pipeline` (the stages in order, `run_adapt`). This package's names are importable from `adalas.adapt`.
"""
from __future__ import annotations

from .checks import check_settings
from .data_stage import data_inputs, shape_settings, stage_data, synth_location, synth_settings
from .evaluate_stage import adapted_hf, compare, evaluate_inputs, measure_speed, stage_evaluate
from .export_stage import export_inputs, source_gguf, stage_export
from .pipeline import STAGES, WORK_DIRS, command_line, run_adapt
from .report import render_card, render_report, write_report
from .route_stage import route_inputs, stage_route
from .run import Checked, Run
from .settings import (FORMATS, PROMPT_DEPTHS, RECIPE, RECORD_FILE, RECORD_VERSION, SELF_WRITTEN_ROWS, STAGE_NAMES,
                       AdaptSettings, sha256_json)
from .train_stage import lora_targets, stage_train, train_argv, train_inputs

__all__ = [
    "AdaptSettings", "Checked", "FORMATS", "PROMPT_DEPTHS", "RECIPE", "RECORD_FILE", "RECORD_VERSION", "Run",
    "SELF_WRITTEN_ROWS", "STAGES", "STAGE_NAMES", "WORK_DIRS", "adapted_hf", "check_settings", "command_line",
    "compare", "data_inputs", "evaluate_inputs", "export_inputs", "lora_targets", "measure_speed", "render_card",
    "render_report", "route_inputs", "run_adapt", "sha256_json", "shape_settings", "source_gguf", "stage_data", "stage_evaluate",
    "stage_export", "stage_route", "stage_train", "synth_location", "synth_settings", "train_argv", "train_inputs",
    "write_report",
]
