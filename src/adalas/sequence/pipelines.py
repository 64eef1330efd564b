"""From a finished sweep and a model to results on disk: the two pipelines that fit per-sequence routers.

- `train_from_sweep`: `adalas train-router` (one router fit on a training split, calibrated on a
  validation split, compared on the held-out rest; cross-fitted curves beside it).
- `add_crossfit_router`: what `adalas reproduce` and `adalas study` (E4) add to their sweeps: every
  sequence routed by a router fit on the other folds, its rows added to the sweep by lookup
  (`sequence@<target>`, strategy `sequence`) and the curves in `router_crossfit.json`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..config import DepthConfig
from ..io import atomic_write_json
from ..sweep import SweepConfig, add_configs
from .controller import prompt_features
from .crossfit import crossfit_curves, crossfit_rows
from .table import SweepTable, load_sweep
from .training import compare_curves, save_features, sweep_prompts, train_router

CROSSFIT_FILE = "router_crossfit.json"


def default_feature_layers(num_layers: int) -> list[int]:
    """Where prompt features are read by default: the states entering layers 0, L/8, L/4 and L/2."""
    L = num_layers
    return sorted({0, L // 8, L // 4, L // 2})


def train_from_sweep(sweep_dir: str | os.PathLike, model, tokenizer, out: str | os.PathLike, *,
                     strategies: Sequence[str] | None = None, data: str | None = None, prompt_format: str = "auto",
                     feature_layers: Sequence[int] | None = None, folds: int = 5, batch_size: int = 16,
                     **train_kwargs) -> dict:
    """The whole of `adalas train-router` but the speed check: prompt features from the model,
    `train_router`, the router and feature cache written to `out`, and the held-out comparison
    (`compare_curves`, plus `crossfit_curves` when folds >= 2). Returns the `router_eval.json`
    document (the caller writes it). feature_layers: default 0, L/8, L/4, L/2."""
    table = load_sweep(sweep_dir, strategies)
    L = model.num_layers
    if L != table.num_layers:
        raise ValueError(f"model: has {L} layers; the sweep's routes have {table.num_layers}")
    layers = default_feature_layers(L) if feature_layers is None else sorted(set(feature_layers))
    prompts = sweep_prompts(table, tokenizer, data, prompt_format)
    t0 = time.perf_counter()
    features = prompt_features(model, [prompts[s] for s in table.ids], layers, batch_size=batch_size)
    feature_seconds = time.perf_counter() - t0
    ctrl, info = train_router(table, features, **train_kwargs)
    ctrl.save(out)
    save_features(out, table.ids, features)
    doc = {"sweep": str(sweep_dir), "n_sequences": len(table.ids), "n_routes": len(table.config_ids),
           "configs": list(table.config_ids), "feature_layers_tried": layers, "feature_seconds": feature_seconds,
           "settings": {k: v for k, v in train_kwargs.items()}, "train": info, **compare_curves(sweep_dir, out)}
    if folds:
        kw = {k: v for k, v in train_kwargs.items() if k not in ("target_avg_layers", "val_fraction", "test_fraction",
                                                                  "split", "seed")}
        doc["crossfit"] = crossfit_curves(table, features, folds=folds, seed=train_kwargs.get("seed", 0), **kw)
    return doc


def add_crossfit_router(table: SweepTable, sweep_dir: str | os.PathLike, model, items: Sequence[Any],
                        configs: Sequence[SweepConfig], targets: Sequence[float], *, folds: int, seed: int,
                        model_id: Any, data_id: Any, feature_layers: Sequence[int] | None = None,
                        batch_size: int = 16, out: str | os.PathLike | None = None) -> tuple[dict, list[dict]]:
    """Add the cross-fitted per-sequence router to a finished sweep of `configs` (`sweep_dir`).

    `table`: the sweep's candidate routes (`load_sweep`); `items`: its evaluation items (`id`,
    `input_ids`). Prompt features at `feature_layers` (default `default_feature_layers`) come from
    `model` (the features' pass sets its own route); `crossfit_curves` routes every sequence at each
    target depth, over `folds` folds; each target's choices become rows of config
    `sequence@<target>` (strategy `sequence`, by lookup: nothing is generated), added to the sweep;
    the curves, the choices and the settings go to `out` (default `<sweep_dir>/router_crossfit.json`),
    with `targets` as given. Returns (features {layer: (N, F)} in `table.ids` order, the sweep.jsonl
    rows)."""
    layers = default_feature_layers(table.num_layers) if feature_layers is None else list(feature_layers)
    prompts = {it.id: list(it.input_ids) for it in items}
    features = prompt_features(model, [prompts[s] for s in table.ids], layers, batch_size=batch_size)
    crossfit = crossfit_curves(table, features, folds=folds, seed=seed, targets=[float(t) for t in targets])
    routed = [(SweepConfig(f"sequence@{float(t):g}", "sequence", None,
                           DepthConfig(mode="sequence", target_avg_layers=float(t))),
               crossfit_rows(sweep_dir, table, crossfit["choices"][f"{float(t):g}"], f"sequence@{float(t):g}"))
              for t in targets]
    rows = add_configs(sweep_dir, items, configs, routed, num_layers=table.num_layers, model_id=model_id,
                       data_id=data_id)
    atomic_write_json(Path(out) if out is not None else Path(sweep_dir) / CROSSFIT_FILE, {
        "folds": folds, "seed": seed, "candidates": list(table.config_ids), "feature_layers": layers,
        "targets": list(targets), **crossfit})
    return features, rows
