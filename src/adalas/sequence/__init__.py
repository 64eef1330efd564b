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
  `evaluate_router` (held-out curve by lookup in the sweep, no generation), `compare_curves` and
  `crossfit_curves` (beside uniform skipping, random routes, early exit, the best input-blind mix
  of fixed routes and the oracle, on the same sequences), `crossfit_rows` (the cross-fitted
  choices as sweep rows, strategy `sequence`, for `adalas reproduce`).
"""
from __future__ import annotations

from ..routers import (OBJECTIVES, ROUTER_META, ROUTER_WEIGHTS, SequenceController, SequenceRouter, SequenceState,
                       ensure_controller, pick, pool_features)
from .controller import batches, calibrate, calibration_table, fit_controller, left_pad, prompt_features, temporary_depth
from .router import GroupedGeneration, generate_grouped, predict_routes
from .speed import measure_speed
from .table import ROUTE_STRATEGIES, TARGETS, SweepTable, load_sweep, route_labels, split_ids
from .training import (baseline_curves, best_fixed_mix, compare_curves, crossfit_choices, crossfit_curves,
                       crossfit_rows, evaluate_router, interpolate, load_features, save_features, sweep_prompts,
                       train_from_sweep, train_router)

__all__ = ["OBJECTIVES", "ROUTER_META", "ROUTER_WEIGHTS", "ROUTE_STRATEGIES", "TARGETS", "GroupedGeneration",
           "SequenceController", "SequenceRouter", "SequenceState", "SweepTable", "baseline_curves", "batches",
           "best_fixed_mix", "calibrate", "calibration_table", "compare_curves", "crossfit_choices", "crossfit_curves",
           "crossfit_rows", "left_pad",
           "ensure_controller", "evaluate_router", "fit_controller", "generate_grouped", "interpolate",
           "load_features", "load_sweep", "measure_speed", "pick", "pool_features", "predict_routes", "prompt_features",
           "route_labels", "save_features", "split_ids", "sweep_prompts", "temporary_depth", "train_from_sweep",
           "train_router"]
