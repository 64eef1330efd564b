"""Cross-fitting: every sequence of a sweep routed by a router fit on the other folds alone.

`crossfit_choices` deals the sequences into folds (by a hash of the seed and id) and routes each
fold with a controller fit and calibrated on the others; `crossfit_curves` puts those choices beside
the same pipeline without features (`input_blind`), the fixed-route baselines, the best fixed mix
(paired, at the router's own depth) and the oracle, over the same sequences; `crossfit_rows` turns
the choices at one target depth into sweep rows (strategy `sequence`) by lookup: nothing is
generated. More held-out sequences than one test split, so a tighter comparison.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..io import read_jsonl
from ..oracle import interpolate
from ..routers import pick
from .table import SweepTable, split_ids
from .training import baseline_curves, curve_from_choices, paired_vs_fixed_mix, train_router


def crossfit_folds(ids: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """{id: fold}: ids ordered by a hash of (seed, id), as `split_ids` orders them, dealt round robin."""
    if folds < 2:
        raise ValueError(f"folds: must be >= 2, got {folds}")
    ranked = sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return {s: i % folds for i, s in enumerate(ranked)}


def crossfit_choices(table: SweepTable, features: dict[int, torch.Tensor], targets: Sequence[float],
                     folds: int = 5, seed: int = 0, val_fraction: float = 0.25,
                     **train_kwargs) -> dict[float, np.ndarray]:
    """{target depth: (N,) column chosen for each sequence of `table.ids`}: each fold routed by a
    controller fit and calibrated (split into training and validation) on the other folds alone."""
    fold = crossfit_folds(table.ids, folds, seed)
    chosen = {float(t): np.zeros(len(table.ids), dtype=np.int64) for t in targets}
    for f in range(folds):
        test = [s for s in table.ids if fold[s] == f]
        inner = split_ids([s for s in table.ids if fold[s] != f], seed, val_fraction, 0.0)
        ctrl, _ = train_router(table, features, seed=seed, split={**inner, "test": test}, **train_kwargs)
        rows = table.rows(test)
        u = ctrl.utilities(features[ctrl.feature_layer][rows])
        cols = table.columns(ctrl.meta["config_ids"])
        for t in chosen:
            chosen[t][rows] = cols[pick(u, ctrl.costs, ctrl.lam_for(t)).numpy()]
    return chosen


def crossfit_curves(table: SweepTable, features: dict[int, torch.Tensor], folds: int = 5, seed: int = 0,
                    val_fraction: float = 0.25, targets: Sequence[float] | None = None, **train_kwargs) -> dict:
    """Every sequence held out once: the sequences fall into `folds` folds (by a hash of the seed and
    id); each fold is routed by a controller fit and calibrated on the other folds alone (split
    into training and validation). More held-out sequences than one test split, so a tighter
    comparison. Beside it, over the same sequences: the same pipeline without features
    (`input_blind`: it can only learn which fixed route to take), the baselines of
    `baseline_curves`, and per target depth the paired difference to the best fixed mix at the
    same depth with its standard error and bootstrap interval (`paired`, see
    `paired_vs_fixed_mix`). targets: average depths (default every 0.5 layer from the cheapest
    route to full)."""
    costs = table.costs
    if targets is None:
        targets = list(np.arange(math.ceil(costs.min() * 2) / 2, costs.max() + 1e-9, 0.5))
    N = len(table.ids)
    blind = {0: torch.zeros(N, 1)}  # the same pipeline without reading the prompt
    chosen = {name: crossfit_choices(table, feats, targets, folds, seed, val_fraction, **train_kwargs)
              for name, feats in (("sequence", features), ("input_blind", blind))}
    rows = np.arange(N)
    cols = np.arange(len(table.config_ids))
    curves = {name: sorted(({**curve_from_choices(table, rows, cols, c), "target_avg_layers": t, "n": N}
                            for t, c in by_target.items()), key=lambda p: (p["avg_layers"], p["target_avg_layers"]))
              for name, by_target in chosen.items()}
    base = baseline_curves(table, table.ids)
    curves.update(base["curves"])
    matched = [{"avg_layers": p["avg_layers"], "sequence": p["score"],
                **{name: interpolate(c, p["avg_layers"]) for name, c in curves.items() if name != "sequence"}}
               for p in curves["sequence"]]
    paired = [{"target_avg_layers": t, **paired_vs_fixed_mix(table, rows, c)} for t, c in chosen["sequence"].items()]
    choices = {f"{t:g}": [table.config_ids[k] for k in c.tolist()] for t, c in chosen["sequence"].items()}
    return {"n": N, "folds": folds, "full_score": base["full_score"], "curves": curves, "matched": matched,
            "paired": paired, "ids": list(table.ids), "choices": choices}


def crossfit_rows(sweep_dir: str | os.PathLike, table: SweepTable, chosen: Sequence[Any],
                  config_id: str) -> list[dict]:
    """Per-sequence rows of a router's choices (`crossfit_curves`' `choices` at one target: a config
    id per sequence of `table.ids`): a copy of the sweep's row of the config each sequence chose
    (prediction, scores, layers), under `config_id`, with `chosen_config`, `route` and `layer_runs`
    (route x decode steps). A lookup: greedy decoding of that route gives that row (up to fp32
    near-ties across batch companions), so nothing is generated."""
    if len(chosen) != len(table.ids):
        raise ValueError(f"chosen: {len(chosen)} choices for {len(table.ids)} sequences")
    wanted = set(zip(chosen, table.ids))
    by_key = {}
    for row in read_jsonl(Path(sweep_dir) / "per_sequence.jsonl", strict=True):
        key = (row.get("config_id"), str(row.get("id")))
        if key in wanted:
            by_key.setdefault(key, row)
    out = []
    for sid, cid in zip(table.ids, chosen):
        row = dict(by_key[cid, sid])
        steps = max(int(row["output_tokens"]) - 1, 0)
        route = table.routes[table.config_ids.index(cid)]
        row.update(config_id=config_id, chosen_config=cid, route="".join("1" if r else "0" for r in route),
                   layer_runs=[steps if r else 0 for r in route])
        out.append(row)
    return out
