"""From a sweep to a trained router, and its curves on held-out sequences by lookup.

`train_router` fits on the training sequences and calibrates on the validation ones;
`evaluate_router` scores a saved router on held-out sequences by looking up each one's chosen route
in the sweep (no generation); `compare_curves` puts it beside uniform skipping, random routes, early
exit, the best input-blind mix of fixed routes and the oracle, over the same sequences
(`baseline_curves`, `paired_vs_fixed_mix`; cross-fitting, where every sequence is held out once, is
`crossfit.py`'s). Average depths are in the unit of `avg_layers` (each sequence weighs its decode
steps at full depth).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..io import atomic_save_tensors
from ..oracle import best_fixed_mix, interpolate, mix_at, oracle_curve
from ..routers import SequenceController, pick
from ..stats import paired_bootstrap
from .controller import calibration_table, fit_controller
from .table import SweepTable, load_sweep, split_ids

FEATURES_FILE = "features.safetensors"


def sweep_prompts(table: SweepTable, tokenizer, data: str | None = None, prompt_format: str = "auto",
                  max_prompt_tokens: int | None = None) -> dict[str, list[int]]:
    """Token ids of each sweep sequence's prompt: rebuilt from `data` by id (the evaluation's own
    tokenization), else the sweep's `prompt` text tokenized as it is (special tokens included)."""
    if data is not None:
        from ..data import load_examples, tokenize_prompt

        by_id = {str(e.id): e for e in load_examples(data)}
        missing = [s for s in table.ids if s not in by_id]
        if missing:
            raise ValueError(f"data: sequence id(s) of the sweep not in {data!r}: {missing[:5]}")
        return {s: tokenize_prompt(by_id[s], tokenizer, prompt_format, max_prompt_tokens)["input_ids"]
                for s in table.ids}
    missing = [s for s in table.ids if s not in table.prompts]
    if missing:
        raise ValueError(f"sweep: per_sequence rows without a `prompt` for {missing[:5]}; pass --data")
    return {s: tokenizer(table.prompts[s], add_special_tokens=False)["input_ids"] for s in table.ids}


def save_features(directory: str | os.PathLike, ids: Sequence[str], features: dict[int, torch.Tensor]) -> None:
    atomic_save_tensors(Path(directory) / FEATURES_FILE, {f"layer_{k}": v.contiguous() for k, v in features.items()},
                        metadata={"ids": json.dumps(list(ids))})


def load_features(directory: str | os.PathLike) -> tuple[list[str], dict[int, torch.Tensor]]:
    from safetensors import safe_open

    path = Path(directory) / FEATURES_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no feature cache; `adalas train-router` writes it")
    with safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        feats = {int(k.removeprefix("layer_")): f.get_tensor(k) for k in f.keys()}
    return ids, feats


def train_router(table: SweepTable, features: dict[int, torch.Tensor], *, target_avg_layers: float | None = None,
                 tolerance: float = 0.02, reference: str = "best", objective: str = "regression",
                 target: str = "score", seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.3,
                 split: dict[str, list[str]] | None = None) -> tuple[SequenceController, dict]:
    """Fit on the training sequences, calibrate on the validation ones; the test ones stay unseen.

    features: {layer: (N, F)} in `table.ids` order. target: what the controller predicts per route,
    `score` (ROUGE-L against the reference) or `agreement` (against the full-depth output; less
    noisy). Without `target_avg_layers`, the default depth is the shallowest calibrated one whose
    validation score (against the reference) is within `tolerance` of full depth's.
    """
    split = split or split_ids(table.ids, seed, val_fraction, test_fraction)
    if not split["train"] or not split["val"]:
        raise ValueError(f"split: needs training and validation sequences, got {len(split['train'])} and "
                         f"{len(split['val'])} of {len(table.ids)}")
    tr, va = table.rows(split["train"]), table.rows(split["val"])
    ctrl, report = fit_controller({k: v[tr] for k, v in features.items()}, table.target(target)[tr], table.routes,
                                  objective=objective, tolerance=tolerance, reference=reference,
                                  full_index=table.full_index, seed=seed)
    val_feats = features[ctrl.feature_layer][va]
    ctrl.calibration = calibration_table(ctrl, val_feats, table.scores[va])
    full_val = float(table.scores[va, table.full_index].mean())
    if target_avg_layers is None:
        good = [c for c in ctrl.calibration if c["val_score"] >= full_val - tolerance]
        target_avg_layers = min(c["target_avg_layers"] for c in good) if good else float(table.num_layers)
    ctrl.lam_for(target_avg_layers)  # in range
    ctrl.default_target = float(target_avg_layers)
    ctrl.meta = {"config_ids": list(table.config_ids), "strategies": list(table.strategies), "split": split,
                 "tolerance": tolerance, "reference": reference, "target": target, "seed": seed,
                 "model": table.model,
                 "fit": {"feature_layer": report.feature_layer, "alpha": report.alpha,
                         "cv_loss": min(s["loss"] for s in report.selection),
                         "cv_loss_without_features": report.baseline_loss, "selection": report.selection}}
    info = {"split_sizes": {k: len(v) for k, v in split.items()}, "val_full_score": full_val,
            "default_target_avg_layers": ctrl.default_target, **ctrl.meta["fit"]}
    return ctrl, info


def curve_from_choices(table: SweepTable, rows: np.ndarray, cols: np.ndarray, choice: np.ndarray) -> dict:
    return {"avg_layers": table.avg_depth(rows, cols[choice]), "score": float(table.scores[rows, cols[choice]].mean())}


def evaluate_router(sweep_dir: str | os.PathLike, router_dir: str | os.PathLike,
                    heldout_ids: Sequence[str] | None = None, features=None) -> list[dict]:
    """The learned controller's curve on held-out sequences, by lookup in the sweep (no generation).

    For every calibrated average depth (lam chosen on validation data), each held-out sequence
    takes its predicted route and scores what that route scored in the sweep. Returns
    [{"avg_layers", "score", "target_avg_layers", "lam", "n"}] ascending in avg_layers, one per distinct point.
    heldout_ids: default, the router's test split. features: default, the router's feature cache.
    """
    ctrl = SequenceController.load(router_dir)
    table = load_sweep(sweep_dir)
    ids = list(heldout_ids) if heldout_ids is not None else ctrl.meta.get("split", {}).get("test")
    if not ids:
        raise ValueError("heldout_ids: none given and the router records no test split")
    seen = set(ctrl.meta.get("split", {}).get("train", [])) | set(ctrl.meta.get("split", {}).get("val", []))
    leaked = [s for s in ids if s in seen]
    if leaked:
        raise ValueError(f"heldout_ids: {leaked[:5]} were used to train or calibrate the router")
    cache_ids, feats = features if features is not None else load_features(router_dir)
    pos = {s: i for i, s in enumerate(cache_ids)}
    if any(s not in pos for s in ids):
        raise ValueError(f"features: no cached features for {[s for s in ids if s not in pos][:5]}")
    x = feats[ctrl.feature_layer][[pos[s] for s in ids]]
    rows, cols = table.rows(ids), table.columns(ctrl.meta["config_ids"])
    u = ctrl.utilities(x)
    points = []
    for c in ctrl.calibration:
        choice = pick(u, ctrl.costs, c["lam"]).numpy()
        points.append({**curve_from_choices(table, rows, cols, choice), "target_avg_layers": c["target_avg_layers"],
                       "lam": c["lam"], "n": len(ids)})
    points.sort(key=lambda p: (p["avg_layers"], p["target_avg_layers"]))
    # targets that lead to the same choices give the same point: keep the shallowest target's
    return [p for i, p in enumerate(points)
            if i == 0 or (p["avg_layers"], p["score"]) != (points[i - 1]["avg_layers"], points[i - 1]["score"])]


def baseline_curves(table: SweepTable, ids: Sequence[str], candidates: Sequence[Any] | None = None) -> dict:
    """Over the same sequences: the mean score of each strategy per budget (uniform skipping, random
    routes averaged per budget, early exit; each with the full model at L) and the oracle over the
    candidate routes."""
    rows = table.rows(ids)
    L = table.num_layers
    full = float(table.scores[rows, table.full_index].mean())
    curves: dict[str, list[dict]] = {}
    for strategy in ("uniform_skip", "random_route", "early_exit"):
        by_budget: dict[float, list[float]] = {}
        for k, s in enumerate(table.strategies):
            if s == strategy:
                depth, score = table.avg_depth(rows, k), float(table.scores[rows, k].mean())
                by_budget.setdefault(depth, []).append(score)
        if by_budget:
            by_budget.setdefault(float(L), [full])
            curves[strategy] = [{"avg_layers": b, "score": float(np.mean(v))} for b, v in sorted(by_budget.items())]
    cols = table.columns(candidates) if candidates is not None else np.arange(len(table.config_ids))
    curves["best_fixed_mix"] = best_fixed_mix([{"avg_layers": table.avg_depth(rows, k),
                                                "score": float(table.scores[rows, k].mean())} for k in cols])
    curves["oracle"] = oracle_curve(table.scores[rows][:, cols], table.layers[rows][:, cols],
                                    weights=None if table.weights is None else table.weights[rows])
    return {"full_score": full, "curves": curves}


def paired_vs_fixed_mix(table: SweepTable, rows: np.ndarray, chosen_cols: np.ndarray) -> dict:
    """A controller's per-sequence scores against the best fixed mix at exactly its average depth:
    every sequence scores the mix's expectation (1 - p) s_a + p s_b, where routes a and b bracket
    the depth on the envelope. Paired, so the standard error and the bootstrap interval (`ci95`)
    are the difference's."""
    K = len(table.config_ids)
    env = best_fixed_mix([{"avg_layers": table.avg_depth(rows, k),
                           "score": float(table.scores[rows, k].mean()), "k": k} for k in range(K)])
    ours = table.scores[rows, chosen_cols]  # (n,)
    depth = table.avg_depth(rows, chosen_cols)
    lo, hi, p = mix_at(env, depth)
    base = (1 - p) * table.scores[rows, lo["k"]] + p * table.scores[rows, hi["k"]]  # (n,)
    diff = ours - base
    return {"avg_layers": depth, "diff": float(diff.mean()),
            "se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan"),
            "ci95": paired_bootstrap(ours, base)["ci95"],
            "mix": [table.config_ids[lo["k"]], table.config_ids[hi["k"]], p]}


def compare_curves(sweep_dir: str | os.PathLike, router_dir: str | os.PathLike,
                   heldout_ids: Sequence[str] | None = None) -> dict:
    """The learned controller's held-out curve beside uniform skipping, random routes, early exit and
    the oracle (over the router's candidate routes), on the same held-out sequences; `matched`
    compares at the controller's own average depths."""
    ctrl = SequenceController.load(router_dir)
    ids = list(heldout_ids) if heldout_ids is not None else ctrl.meta["split"]["test"]
    table = load_sweep(sweep_dir)
    seq = evaluate_router(sweep_dir, router_dir, ids)
    base = baseline_curves(table, ids, ctrl.meta["config_ids"])
    matched = []
    for p in seq:
        row = {"avg_layers": p["avg_layers"], "sequence": p["score"]}
        for name, curve in base["curves"].items():
            row[name] = interpolate(curve, p["avg_layers"])
        matched.append(row)
    return {"n": len(ids), "heldout_ids": ids, "full_score": base["full_score"],
            "curves": {"sequence": seq, **base["curves"]}, "matched": matched}
