"""Fitting the per-sequence controller: prompt features, calibration, fitting.

The controller itself (`SequenceController`: standardized features -> one utility per candidate
route, predicted score for objective `regression`, log-probability of being the cheapest good route
for `label`; a sequence takes argmax(utility - lam * layers)), its files and the features it reads
(`pool_features`) are inference, in `adalas.routers`.

- `prompt_features` computes the features with a prompt pass through the layers below the feature
  layer only (the engine's depth loop, `depth_pass`).
- `calibrate` finds lam on validation data for an average depth; `calibration_table` does it every
  quarter layer, so one controller serves every budget.
- Fitting (`fit_controller`): ridge in dual form with leave-one-out selection, or logistic
  regression by Nesterov descent with 5-fold selection; both pick the feature layer too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..config import DepthConfig
from ..engine import depth_pass, positions_from_mask
from ..routers import OBJECTIVES, SequenceController, pick, pool_features
from .table import route_labels

CALIBRATION_STEP = 0.25  # layers between calibrated average depths


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("prompts: an empty prompt has no features")
        ids[r, T - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[r, T - len(p):] = 1
    return ids, mask


def batches(order: Sequence[int], batch_size: int):
    for s in range(0, len(order), batch_size):
        yield list(order[s:s + batch_size])


@torch.no_grad()
def prompt_features(model, prompts: Sequence[Sequence[int]], layers: Sequence[int],
                    batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: (N, F) features} for token-id prompts, running only layers 0..max(layers)-1.

    The same numbers the router computes in a full-depth prefill (up to fp32 rounding of padding).
    """
    L = model.num_layers
    layers = sorted(set(int(k) for k in layers))
    if not layers or layers[0] < 0 or layers[-1] >= L:
        raise ValueError(f"feature_layer: must be in 0..{L - 1}, got {layers}")
    top = layers[-1]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = {k: [None] * len(prompts) for k in layers}
    depth = DepthConfig(mode="route", route=[i < max(top, 1) for i in range(L)], skip_prompt=True)
    with model.temporary_depth(depth):
        for idx in batches(order, batch_size):
            ids, mask = left_pad([prompts[i] for i in idx])
            ids, mask = ids.to(model.device), mask.to(model.device)
            pos = positions_from_mask(mask)
            if top == 0:
                hidden = (model.family.embed(ids, pos),)
            else:  # layers >= top are skipped with no cache: they cost nothing
                hidden = depth_pass(model, model.router, pos, ids, attention_mask=mask, prompt=True,
                                    output_hidden_states=True).hidden
            for k in layers:
                feats = pool_features(hidden[k], mask.bool()).cpu()
                for r, i in enumerate(idx):
                    out[k][i] = feats[r]
    return {k: torch.stack(v) for k, v in out.items()}


def calibrate(utilities: torch.Tensor, costs: torch.Tensor, target: float, iters: int = 60) -> float:
    """The smallest cost weight lam whose choices average at most `target` layers on these sequences.

    The average depth of argmax(u - lam * c) does not increase with lam, so bisection finds the
    step where it crosses the target; the result is within one sequence's switch of it.
    """
    c = costs.double()
    if float(target) < float(c.min()) - 1e-9:
        raise ValueError(f"target_avg_layers: {target} is below the cheapest route ({float(c.min()):g} layers)")

    def avg(lam: float) -> float:
        return float(c[pick(utilities, c, lam)].mean())

    spread = float(utilities.max() - utilities.min()) + 1.0
    step = float((c.unique().diff().min() if c.unique().numel() > 1 else torch.tensor(1.0)))
    lo, hi = -spread / step - 1.0, spread / step + 1.0  # avg(lo) = deepest pick, avg(hi) = cheapest
    if avg(lo) <= target:
        return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if avg(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def calibration_table(controller: SequenceController, features: torch.Tensor, scores: np.ndarray,
                      step: float = CALIBRATION_STEP) -> list[dict]:
    """Per average depth (every `step` layers from the cheapest route to full), lam calibrated on
    these (validation) sequences, with the depth and mean score it gives there."""
    u = controller.utilities(features)
    c = controller.costs
    lo, hi = float(c.min()), float(c.max())
    targets = np.unique(np.round(np.append(np.arange(math.ceil(lo / step) * step, hi + 1e-9, step), [lo, hi]), 6))
    table = []
    for t in targets:
        lam = calibrate(u, c, float(t))
        choice = pick(u, c, lam).numpy()
        table.append({"target_avg_layers": float(t), "lam": float(lam),
                      "val_avg_layers": float(c.numpy()[choice].mean()),
                      "val_score": float(scores[np.arange(len(choice)), choice].mean())})
    return table


# -- fitting -------------------------------------------------------------------------------------
def _standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    return mean, torch.where(scale > 1e-6, scale, torch.ones_like(scale))


def ridge_loo(z: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> list[tuple[float, float, np.ndarray]]:
    """[(alpha, leave-one-out MSE, W (F, K))] for ridge on centered features z (N, F), targets y (N, K).

    Dual form (N << F): W = z^T (z z^T + a I)^-1 (y - mean y); LOO residuals (y_i - yhat_i) / (1 - H_ii)
    with H = z z^T (z z^T + a I)^-1 + 1/N (the intercept).
    """
    N = len(z)
    gram = z @ z.T  # (N, N)
    r = y - y.mean(0)
    out = []
    for a in alphas:
        inv = np.linalg.inv(gram + a * np.eye(N))
        coef = inv @ r  # (N, K)
        hat = gram @ inv + 1.0 / N
        resid = (y - (y.mean(0) + gram @ coef)) / (1.0 - np.diag(hat))[:, None]
        out.append((float(a), float((resid ** 2).mean()), z.T @ coef))
    return out


def _fit_logistic(z: np.ndarray, labels: np.ndarray, K: int, weight_decay: float,
                  iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(W (F, K), b (K,)) minimizing mean cross-entropy + weight_decay * |W|^2 / N (convex):
    Nesterov gradient descent with the step of the loss's Lipschitz bound, in numpy (no autograd),
    so a cross-validation grid costs well under a second."""
    N, nf = z.shape
    y = np.eye(K)[labels]  # (N, K)
    lipschitz = 0.5 * (np.linalg.norm(z, 2) ** 2 + N) / N + 2 * weight_decay / N
    step = 1.0 / lipschitz
    W, b = np.zeros((nf, K)), np.zeros(K)
    Wm, bm = W, b
    for t in range(iters):
        logits = z @ Wm + bm
        p = np.exp(logits - logits.max(1, keepdims=True))
        g = (p / p.sum(1, keepdims=True) - y) / N  # (N, K)
        W_next = Wm - step * (z.T @ g + 2 * weight_decay / N * Wm)
        b_next = bm - step * g.sum(0)
        Wm = W_next + t / (t + 3) * (W_next - W)
        bm = b_next + t / (t + 3) * (b_next - b)
        W, b = W_next, b_next
    return W, b


def _cross_entropy(z: np.ndarray, W: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    logits = z @ W + b
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].sum())


def _logistic_cv(z: np.ndarray, labels: np.ndarray, K: int, decays: Sequence[float], seed: int,
                 folds: int = 5) -> list[tuple[float, float]]:
    """[(weight_decay, cross-validated log loss)]."""
    g = np.random.default_rng(seed).permutation(len(z)) % folds
    out = []
    for wd in decays:
        losses = []
        for f in range(folds):
            tr, te = g != f, g == f
            if not te.any() or not tr.any():
                continue
            W, b = _fit_logistic(z[tr], labels[tr], K, wd)
            losses.append(_cross_entropy(z[te], W, b, labels[te]))
        out.append((float(wd), sum(losses) / len(z)))
    return out


@dataclass
class FitReport:
    feature_layer: int
    objective: str
    alpha: float  # ridge alpha, or logistic weight decay
    selection: list[dict] = field(default_factory=list)  # every (layer, alpha) tried, with its CV loss
    baseline_loss: float = float("nan")  # the same loss with no features (intercept only)


def fit_controller(features: dict[int, torch.Tensor], scores: np.ndarray, routes: Sequence[Sequence[bool]], *,
                   objective: str = "regression", tolerance: float = 0.02, reference: str = "best",
                   full_index: int | None = None, alphas: Sequence[float] = (0.03, 0.1, 0.3, 1, 3, 10, 30),
                   layer_slack: float = 0.01, seed: int = 0) -> tuple[SequenceController, FitReport]:
    """Fit on training sequences; choose the feature layer and regularization by cross-validation.

    features: {layer: (N, F)}; scores: (N, K). `regression`: ridge on each sequence's scores
    centered on its own mean (decisions only need differences between routes), alpha and layer by
    leave-one-out MSE. `label`: logistic regression on `route_labels(tolerance, reference)`,
    weight decay and layer by 5-fold log loss. alphas are relative to the feature count; the
    shallowest layer whose loss is within `layer_slack` (relative) of the best one wins.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    y = np.asarray(scores, dtype=np.float64)
    K = y.shape[1]
    costs = np.array([sum(r) for r in routes], dtype=np.float64)
    labels = route_labels(y, costs, tolerance, reference, full_index)
    per_layer: dict[int, tuple] = {}  # layer -> its best (loss, layer, alpha, W, mean, scale, baseline)
    selection = []
    for layer, x in sorted(features.items()):
        mean, scale = _standardize(x.double())
        z = ((x.double() - mean) / scale)
        nf = z.shape[1]
        if objective == "regression":
            yc = y - y.mean(1, keepdims=True)
            tried = [(a, loss, w) for a, loss, w in ridge_loo(z.numpy(), yc, [a * nf for a in alphas])]
            baseline = float((((yc - yc.mean(0)) * len(yc) / (len(yc) - 1)) ** 2).mean())  # intercept-only LOO
        else:
            cv = _logistic_cv(z.numpy(), labels, K, [a * nf for a in alphas], seed)
            tried = [(wd, loss, None) for wd, loss in cv]
            p = np.bincount(labels, minlength=K) + 0.5
            baseline = float(-np.log(p / p.sum())[labels].mean())
        for a, loss, w in tried:
            selection.append({"feature_layer": layer, "alpha": a, "loss": loss})
            if layer not in per_layer or loss < per_layer[layer][0]:
                per_layer[layer] = (loss, layer, a, w, mean, scale, baseline)
    # the shallowest layer within `layer_slack` of the best loss: generate_grouped reruns the layers
    # below the feature layer, so a deeper one must earn its cost
    best_loss = min(v[0] for v in per_layer.values())
    loss, layer, a, w, mean, scale, baseline = per_layer[min(k for k, v in per_layer.items()
                                                             if v[0] <= best_loss * (1 + layer_slack))]
    ctrl = SequenceController(features[layer].shape[1], routes, layer, objective)
    ctrl.feature_mean.copy_(mean.float())
    ctrl.feature_scale.copy_(scale.float())
    z = (features[layer].double() - mean) / scale
    with torch.no_grad():
        if objective == "regression":
            yc = y - y.mean(1, keepdims=True)
            ctrl.linear.weight.copy_(torch.from_numpy(w.T))
            ctrl.linear.bias.copy_(torch.from_numpy(yc.mean(0)))
        else:
            W, b = _fit_logistic(z.numpy(), labels, K, a)
            ctrl.linear.weight.copy_(torch.from_numpy(W.T))
            ctrl.linear.bias.copy_(torch.from_numpy(b))
    return ctrl, FitReport(layer, objective, a, selection, baseline)
