"""Mode `sequence`, batched by route.

The router itself (`adalas.routers.SequenceRouter`) reads the prompt features as the full-depth
prefill passes `feature_layer`; every generated token of that row then follows the row's route, and
a decode step runs each layer only on the rows that chose it. `generate_grouped` predicts all routes first (a prompt pass through the feature layer only) and
decodes the rows that share a route as their own batches with a static route, so a batch really
runs fewer layers: on small batches a layer's cost is mostly reading its weights, which per-row
routes in one mixed batch do not save.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..actions import DecodePlan, run_rows
from ..config import DepthConfig, route_to_str
from ..routers import Router, SequenceRouter, SequenceState
from .controller import batches, left_pad, prompt_features


@dataclass
class GroupedGeneration:
    sequences: list[list[int]]  # per prompt, the new tokens (padded after EOS with pad_token_id)
    choices: list[int]  # per prompt, the route index
    routes: list[str]  # the controller's routes, as "1101..." strings
    feature_seconds: float
    generate_seconds: float

    @property
    def avg_layers(self) -> float:
        return float(np.mean([self.routes[c].count("1") for c in self.choices]))


@torch.no_grad()
def predict_routes(model, prompts: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """(N,) the route index the model's sequence router gives each token-id prompt."""
    router = model.router
    if not isinstance(router, SequenceRouter):
        raise ValueError(f"depth: mode must be 'sequence' to predict routes, got {model.depth.mode!r}")
    k = router.controller.feature_layer
    return router.controller.choose(prompt_features(model, prompts, [k], batch_size)[k], router.lam)


def _as_prompt_lists(prompts) -> list[list[int]]:
    if isinstance(prompts, dict) or hasattr(prompts, "keys"):
        ids, mask = prompts["input_ids"], prompts.get("attention_mask")
        ids = torch.as_tensor(ids)
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return [list(p) for p in prompts]


class _FixedRoutes(Router):
    """Routes known per row before the generation (a packed batch of several groups' leftovers)."""

    def __init__(self, routes: torch.Tensor):
        self.routes = routes  # (B, L) bool

    def start(self, batch_size, device):
        return SequenceState(routes=self.routes.to(device))

    def decide(self, layer_idx, h, ctx):
        return run_rows(ctx.sequence_state.routes[ctx.row_ids, layer_idx][:, None].expand_as(ctx.position_ids))

    def plan(self, state, device):
        return DecodePlan(state.routes)


@contextmanager
def _fixed_routes(model, routes: torch.Tensor):
    router = model.router
    model.router = _FixedRoutes(routes)
    try:
        yield model
    finally:
        model.router = router


def plan_groups(choices: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of prompt indices: each route's prompts in full batches of one route (shortest first),
    then the leftovers of every route packed together, by route then length. A batch's decode step
    costs about the same at 2 rows as at 8 when reading weights dominates, so a few mixed batches
    beat one small batch per route.

    >>> plan_groups([0, 0, 0, 1, 1, 2], [5, 4, 3, 2, 1, 9], batch_size=2)
    [[2, 1], [4, 3], [0, 5]]
    """
    full, leftovers = [], []
    for c in sorted(set(choices)):
        rows = sorted((i for i, ci in enumerate(choices) if ci == c), key=lambda i: lengths[i])
        n_full = len(rows) - len(rows) % batch_size
        full += list(batches(rows[:n_full], batch_size))
        leftovers += rows[n_full:]
    return full + list(batches(leftovers, batch_size))


@torch.no_grad()
def generate_grouped(model, prompts, batch_size: int = 8, **generate_kwargs) -> GroupedGeneration:
    """Sequence mode, batched by route: predict each prompt's route (a prompt pass through the
    feature layer only), then decode the prompts that share a route together, `batch_size` at a
    time, with that route as a static depth; the leftovers of all routes share a few mixed batches
    (each row still runs only its own route), see `plan_groups`. Greedy outputs equal those of
    `model.generate` in sequence mode (up to fp32 rounding across batch companions).

    prompts: token-id lists, or a tokenizer's batch (`input_ids`, `attention_mask`; padding removed).
    `model.layer_usage()` counts the decode steps of every batch, as for one `generate`.
    """
    prompts = _as_prompt_lists(prompts)
    router = model.router
    t0 = time.perf_counter()
    choices = predict_routes(model, prompts, batch_size=max(batch_size, 16)).tolist()
    t1 = time.perf_counter()
    routes = router.controller.routes  # (K, L)
    sequences: list[list[int] | None] = [None] * len(prompts)
    with model.family.hold_fused():  # fused weight copies built once for every group's call
        for idx in plan_groups(choices, [len(p) for p in prompts], batch_size):
            ids, mask = left_pad([prompts[i] for i in idx])
            kinds = sorted({choices[i] for i in idx})
            if len(kinds) == 1:
                depth = DepthConfig(mode="route", route=routes[kinds[0]].tolist(), kv_fill=model.depth.kv_fill)
                run = model.temporary_depth(depth)
            else:
                run = _fixed_routes(model, routes[[choices[i] for i in idx]])
            with run:
                out = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)
            for r, i in enumerate(idx):
                sequences[i] = out[r, ids.shape[1]:].tolist()
    t2 = time.perf_counter()
    return GroupedGeneration(sequences, choices, [route_to_str(r) for r in routes.tolist()], t1 - t0, t2 - t1)
