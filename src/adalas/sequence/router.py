"""Mode `sequence`: the router that applies a row's predicted route, and generation batched by route.

`SequenceRouter` reads the prompt features as the full-depth prefill passes `feature_layer` (the
depth loop calls `observe` on prompt-only steps); every generated token of that row then follows
the row's route, and a decode step runs each layer only on the rows that chose it.
`generate_grouped` predicts all routes first (a prompt pass through the feature layer only) and
decodes the rows that share a route as their own batches with a static route, so a batch really
runs fewer layers: on small batches a layer's cost is mostly reading its weights, which per-row
routes in one mixed batch do not save.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import DepthConfig
from ..controllers import Router, prompt_tokens, real_tokens
from ..oracle import route_to_str
from .controller import SequenceController, batches, left_pad, pool_features, prompt_features, temporary_depth


@dataclass
class SequenceState:
    """One forward's or generation's per-row routes, set when the prefill passes the feature layer."""

    routes: torch.Tensor | None = None  # (B, L) bool
    choice: torch.Tensor | None = None  # (B,) route index


class SequenceRouter(Router):
    """Each row's route is predicted from its prompt at `feature_layer`, then fixed for that row.

    In generation the prefill (prompt tokens, every layer) passes the feature layer before any
    generated token needs a route. In a forward with labels, response tokens need a decision at
    layers below the feature layer before the features exist: that works only where every
    candidate route agrees on those layers (else ValueError); `generate` has no such limit.
    """

    def __init__(self, controller: SequenceController, target_avg_layers: float | None = None):
        self.controller = controller
        self.lam = controller.lam_for(target_avg_layers)
        routes = controller.routes
        self._common = [bool(routes[0, i]) if bool((routes[:, i] == routes[0, i]).all()) else None
                        for i in range(routes.shape[1])]
        self.last_state: SequenceState | None = None

    def start(self, batch_size, device):
        self.last_state = SequenceState()
        return self.last_state

    def observe(self, layer_idx, h, ctx):
        if layer_idx == self.controller.feature_layer and ctx.sequence_state.routes is None:
            self._predict(h, ctx, real_tokens(ctx))

    def decide(self, layer_idx, h, ctx):
        state: SequenceState = ctx.sequence_state
        if state.routes is None:
            if layer_idx == self.controller.feature_layer:
                self._predict(h, ctx, prompt_tokens(ctx))
            elif self._common[layer_idx] is not None:
                return self._common[layer_idx]
            else:
                raise ValueError(f"mode 'sequence': layer {layer_idx} needs a route before the prompt features "
                                 f"(layer {self.controller.feature_layer}) exist, and the candidate routes differ "
                                 f"there; use generate() (the prefill comes first)")
        run = state.routes[ctx.row_ids, layer_idx]  # (B,)
        return run[:, None].expand_as(ctx.position_ids)

    def _predict(self, h, ctx, valid):
        state: SequenceState = ctx.sequence_state
        state.choice = self.controller.choose(pool_features(h, valid), self.lam).to(h.device)  # (B,)
        state.routes = self.controller.routes.to(h.device)[state.choice]  # (B, L)


def ensure_controller(depth: DepthConfig, num_layers: int,
                      current: SequenceController | None) -> SequenceController:
    """The controller a `sequence` depth config asks for: from `router_path`, else the one the model has."""
    if depth.router_path is not None:
        path = str(Path(depth.router_path).expanduser().resolve())
        ctrl = current if current is not None and current.source == path else SequenceController.load(path)
    elif current is not None:
        ctrl = current
    else:
        raise ValueError("router_path: required for mode 'sequence' (a directory written by `adalas train-router`), "
                         "unless the model was saved with its sequence router")
    if ctrl.num_layers != num_layers:
        raise ValueError(f"router_path: the sequence router has routes over {ctrl.num_layers} layers; "
                         f"the model has {num_layers}")
    if depth.target_avg_layers is not None:
        ctrl.lam_for(depth.target_avg_layers)  # raises ValueError when out of the calibrated range
    return ctrl


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
        return ctx.sequence_state.routes[ctx.row_ids, layer_idx][:, None].expand_as(ctx.position_ids)


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
    for idx in plan_groups(choices, [len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in idx])
        kinds = sorted({choices[i] for i in idx})
        if len(kinds) == 1:
            depth = DepthConfig(mode="route", route=routes[kinds[0]].tolist(), kv_fill=model.depth.kv_fill)
            run = temporary_depth(model, depth)
        else:
            run = _fixed_routes(model, routes[[choices[i] for i in idx]])
        with run:
            out = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)
        for r, i in enumerate(idx):
            sequences[i] = out[r, ids.shape[1]:].tolist()
    t2 = time.perf_counter()
    return GroupedGeneration(sequences, choices, [route_to_str(r) for r in routes.tolist()], t1 - t0, t2 - t1)


def measure_speed(model, prompts: Sequence[Sequence[int]], batch_size: int, max_new_tokens: int, repeats: int = 2,
                  eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    """Greedy generation of the same prompts at full depth (batched, shortest first) and with
    `generate_grouped` (the model in sequence mode). The two alternate `repeats` times and each keeps
    its fastest run (the machine may be shared). Tokens count up to each row's EOS; `speedup_wall`
    compares the seconds for the same prompts, `speedup_tokens_per_s` the rates."""
    prompts = [list(p) for p in prompts]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

    def upto_eos(seq: list[int]) -> list[int]:
        return seq[:seq.index(eos_token_id) + 1] if eos_token_id in seq else seq

    def full_depth() -> tuple[float, list[list[int]]]:
        out_rows: list[list[int]] = [[] for _ in prompts]
        with temporary_depth(model, DepthConfig(kv_fill=model.depth.kv_fill)):
            t0 = time.perf_counter()
            for idx in batches(order, batch_size):
                ids, mask = left_pad([prompts[i] for i in idx])
                out = model.generate(input_ids=ids, attention_mask=mask, **kw)
                for r, i in enumerate(idx):
                    out_rows[i] = upto_eos(out[r, ids.shape[1]:].tolist())
            return time.perf_counter() - t0, out_rows

    full_s, grouped_s = float("inf"), float("inf")
    for _ in range(repeats):
        s, full_out = full_depth()
        full_s = min(full_s, s)
        model.reset_usage()
        g = generate_grouped(model, prompts, batch_size=batch_size, **kw)
        if g.feature_seconds + g.generate_seconds < grouped_s:
            grouped_s, grouped, usage = g.feature_seconds + g.generate_seconds, g, model.avg_layers()
    seqs = [upto_eos(s) for s in grouped.sequences]
    full_tokens, seq_tokens = sum(map(len, full_out)), sum(map(len, seqs))
    groups: dict[str, int] = {}
    for c in grouped.choices:
        groups[grouped.routes[c]] = groups.get(grouped.routes[c], 0) + 1
    return {
        "n": len(prompts), "batch_size": batch_size, "max_new_tokens": max_new_tokens, "repeats": repeats,
        "full": {"seconds": full_s, "tokens": full_tokens, "tokens_per_s": full_tokens / full_s},
        "sequence": {"seconds": grouped_s, "feature_seconds": grouped.feature_seconds,
                     "generate_seconds": grouped.generate_seconds, "tokens": seq_tokens,
                     "tokens_per_s": seq_tokens / grouped_s, "avg_layers": grouped.avg_layers,
                     "measured_avg_layers": usage, "groups": groups},
        "speedup_tokens_per_s": (seq_tokens / grouped_s) / (full_tokens / full_s),
        "speedup_wall": full_s / grouped_s,
        "routes": [grouped.routes[c] for c in grouped.choices], "sequences": seqs, "full_sequences": full_out,
    }
