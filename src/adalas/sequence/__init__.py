"""Per-sequence depth: predict one route per sequence from its prompt, then decode it at that depth.

The paper's oracle shows the headroom (one route per sequence, picked after the fact, matches the
full model with a fraction of its layers); this package learns to pick before the fact. Read in
this order:

- `table.py`: targets from a sweep (`load_sweep`: the (N, K) per-sequence scores of K fixed
  routes); `route_labels`: the cheapest route within `tolerance` of the best (or of full depth);
  `split_ids`: by sequence, by seed.
- `adalas.routers` (inference, not in this package): prompt features, computed once at the prefill
  (`pool_features`: the state entering `feature_layer`, mean over the prompt and at its last token,
  log length); `SequenceController`: one utility per route (predicted score, or log-probability of
  being the cheapest good route); a sequence takes argmax(utility - lam * layers), lam calibrated on
  validation data per average depth, so one controller serves every budget
  (`DepthConfig(mode="sequence", target_avg_layers=...)`); `SequenceRouter` (mode `sequence`) reads
  the features as the prefill passes the feature layer and then runs each row at its route.
- `controller.py`: `prompt_features` (a prompt pass through the layers below the feature layer),
  calibration and fitting.
- `router.py`: `generate_grouped` decodes the rows that share a route as their own batches with a
  static route, so a batch really runs fewer layers.
- `speed.py`: `measure_speed`, full depth against `generate_grouped` on the same prompts.
- `training.py`: `train_router` (fit on training sequences, calibrate on validation ones),
  `evaluate_router` (held-out curve by lookup in the sweep, no generation), `compare_curves` (beside
  uniform skipping, random routes, early exit, the best input-blind mix of fixed routes and the
  oracle, on the same sequences).
- `crossfit.py`: every sequence held out once (`crossfit_curves`), and the cross-fitted choices as
  sweep rows (`crossfit_rows`, strategy `sequence`).
- `pipelines.py`: from a sweep and a model to files: `train_from_sweep` (`adalas train-router`) and
  `add_crossfit_router` (what `adalas reproduce` and `adalas study`'s E4 add to their sweeps).
"""
from __future__ import annotations

from .controller import batches, calibrate, calibration_table, fit_controller, left_pad, prompt_features
from .crossfit import crossfit_choices, crossfit_curves, crossfit_folds, crossfit_rows
from .pipelines import CROSSFIT_FILE, add_crossfit_router, default_feature_layers, train_from_sweep
from .router import GroupedGeneration, generate_grouped, predict_routes
from .speed import measure_speed
from .table import ROUTE_STRATEGIES, TARGETS, SweepTable, load_sweep, route_labels, split_ids
from .training import (baseline_curves, compare_curves, evaluate_router, load_features, paired_vs_fixed_mix,
                       save_features, sweep_prompts, train_router)

__all__ = ["CROSSFIT_FILE", "ROUTE_STRATEGIES", "TARGETS", "GroupedGeneration", "SweepTable", "add_crossfit_router",
           "baseline_curves", "batches", "calibrate", "calibration_table", "compare_curves", "crossfit_choices",
           "crossfit_curves", "crossfit_folds", "crossfit_rows", "default_feature_layers", "evaluate_router",
           "fit_controller", "generate_grouped", "left_pad", "load_features", "load_sweep", "measure_speed",
           "paired_vs_fixed_mix", "predict_routes", "prompt_features", "route_labels", "save_features", "split_ids",
           "sweep_prompts", "train_from_sweep", "train_router"]
