"""Routers: for each layer, which tokens run it; per token or per sequence, one interface.

A router answers `decide(layer_idx, h, ctx)` with an `adalas.actions.Action`: `RUN` / `SKIP` (every
token runs / skips the layer; static modes, no tensor work at all), `run_rows(rows)` (per token:
stochastic, per-sequence routes, learned in eval) or `gated(weight)` (straight-through gates: learned
in training). `start(batch_size, device)` gives the per-sequence state of a forward or a generation,
`observe(layer_idx, h, ctx)` shows a per-sequence router the prompt as a full-depth prefill passes,
and `plan(state, device)` resolves the router ahead of time into a `DecodePlan` where its route is
known before a decode step (static routes; one route per sequence once the prefill chose it).
Modes differ only in the router they build (`build_router`, the one dispatch on mode); the depth
loop (`adalas.engine`) is shared.

Per token: `StaticRouter` (full, static_skip, early_exit, route), `StochasticRouter`,
`LearnedRouter` (per-layer `Controller` MLPs), `ConfidenceExitRouter`. Per sequence:
`PerSequenceRouter` (random_budget) and `SequenceRouter` (mode `sequence`: prompt features from the
prefill, `pool_features`, go through a `SequenceController`, which picks one route per sequence).
Fitting and evaluating a `SequenceController` is `adalas.sequence`'s work, not inference's.

Random draws (`stochastic` skips, `random_budget` routes) belong to the sequence: each row's key is a
hash of (seed, its non-pad prompt token ids), plus the Trainer's `global_step` in training
(`Router.train_step`, set by `adalas.callbacks.RouteKeyCallback`). A row gets the same draws at any
batch size, order, padding or shard, and distinct prompts get independent draws. The key is read
when the router first sees the prompt: the prefill of a generation, or the first layer of a forward.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .actions import RUN, SKIP, Action, DecodePlan, gated, of_route, run_rows
from .config import DepthConfig, route_from_str, route_to_str
from .io import atomic_save_tensors, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from .engine import StepContext


class Router:
    """Base: every layer runs."""

    train_step: int | None = None  # the Trainer's global_step while training (joins the random keys)
    last_state: Any = None  # the state of the last `start` (routes a generation chose, for counting)
    stop: int | None = None  # the depth loop visits every layer (a `DecodePlan` may stop lower)

    def start(self, batch_size: int, device: torch.device) -> Any:
        """Per-sequence state drawn at the start of a forward or a generation (None if none)."""
        return None

    def decide(self, layer_idx: int, h: torch.Tensor, ctx: "StepContext") -> Action:
        return RUN

    def observe(self, layer_idx: int, h: torch.Tensor, ctx: "StepContext") -> None:
        """A prompt-only step (every layer runs): h enters layer `layer_idx` (per-sequence routers read it)."""

    def plan(self, state: Any, device: torch.device) -> DecodePlan | None:
        """The decode steps' actions resolved now, from the state `start` gave and the prefill filled;
        None where they depend on each token (then every step asks `decide`)."""
        return None


class StaticRouter(Router):
    """full, static_skip, early_exit, route: one fixed route for every token."""

    def __init__(self, route: list[bool]):
        self.route = [bool(r) for r in route]
        self.actions = [of_route(r) for r in self.route]

    def decide(self, layer_idx, h, ctx):
        return self.actions[layer_idx]

    def plan(self, state, device):
        return DecodePlan.static(self.route, device)


@dataclass
class RouteState:
    """One forward's or generation's per-row random state, filled when the router first sees the prompt."""

    keys: torch.Tensor | None = None  # (B,) int64: each row's key (seed, prompt token ids[, step])
    routes: torch.Tensor | None = None  # (B, L) bool: random_budget's route per row


class _KeyedRouter(Router):
    """A router whose random draws are keyed on each row's prompt (see the module doc)."""

    seed: int = 0

    def start(self, batch_size, device):
        self.last_state = RouteState()
        return self.last_state

    def observe(self, layer_idx, h, ctx):
        if ctx.sequence_state.keys is None:
            self._read_prompt(ctx)

    def _state(self, ctx) -> RouteState:
        state: RouteState = ctx.sequence_state
        if state.keys is None:
            self._read_prompt(ctx)
        return state

    def _read_prompt(self, ctx) -> None:
        state = ctx.sequence_state
        state.keys = sequence_keys(self.seed, ctx.input_ids, prompt_tokens(ctx), self.train_step).to(
            ctx.input_ids.device)


class StochasticRouter(_KeyedRouter):
    """Each token skips layer i with probability p_i; a share of whole sequences skips nothing, and
    another share runs one of a pool of fixed routes.

    The draw is a hash of (row key, position, layer), not a stream of a generator, so a token gets
    the same decision whether it is processed in a cached decode step or in one uncached forward,
    and whatever else shares its batch. `full_depth_share` keeps layer-dropout training anchored to
    the full model (a LoRA that only ever sees skipped layers learns to compensate for them, and the
    full-depth model it leaves behind is worse). `route_pool_share` trains the fixed routes the
    weights will serve: random per-token skips rarely hit a route's particular set of layers. Which
    rows run at full depth or on a pooled route (and which route) is drawn from the row's key.
    """

    def __init__(self, skip_probs: list[float], seed: int, full_depth_share: float = 0.0,
                 route_pool: list[list[int]] | None = None, route_pool_share: float = 0.0):
        self.skip_probs = list(skip_probs)
        self.seed = seed
        self.full_depth_share = float(full_depth_share)
        self.route_pool_share = float(route_pool_share) if route_pool else 0.0
        self.pool_runs = None  # (R, L) bool: route r runs layer i; moved to the rows' device on first use
        self.pool_skips: set[int] = set()  # layers some pooled route skips (a Python set: no device sync)
        if self.route_pool_share:
            self.pool_runs = torch.ones(len(route_pool), len(self.skip_probs), dtype=torch.bool)
            for r, skips in enumerate(route_pool):
                self.pool_runs[r, list(skips)] = False
                self.pool_skips.update(skips)

    def decide(self, layer_idx, h, ctx):
        p = self.skip_probs[layer_idx]
        pool = self.pool_runs
        if p <= 0.0 and layer_idx not in self.pool_skips:
            return RUN
        if p >= 1.0 and not self.full_depth_share and pool is None:
            return SKIP
        keys = self._state(ctx).keys[ctx.row_ids][:, None]  # (B, 1)
        if pool is not None and pool.device != keys.device:
            self.pool_runs = pool = pool.to(keys.device)  # once, not a copy per layer and step
        run = hash_uniform(keys, ctx.position_ids, layer_idx) >= p  # (B, T)
        if self.full_depth_share or pool is not None:
            # positions and layers below 0 are never drawn for a token: these are the row's own draws
            row_draw = hash_uniform(keys, torch.full_like(keys, -1), -1)  # (B, 1)
            run = run | (row_draw < self.full_depth_share)
        if pool is not None:
            on_pool = (row_draw >= self.full_depth_share) & (row_draw < self.full_depth_share + self.route_pool_share)
            which = (hash_uniform(keys, torch.full_like(keys, -2), -2) * len(pool)).long().clamp(max=len(pool) - 1)
            route_runs = pool[:, layer_idx][which]  # (B, 1)
            run = torch.where(on_pool, route_runs, run)
        return run_rows(run)


class PerSequenceRouter(_KeyedRouter):
    """random_budget: each sequence draws one route with exactly `budget` layers (from its key) and keeps it."""

    def __init__(self, num_layers: int, budget: int, keep_first: bool, seed: int):
        self.num_layers, self.budget, self.keep_first, self.seed = num_layers, budget, keep_first, seed

    def _read_prompt(self, ctx) -> None:
        super()._read_prompt(ctx)
        state = ctx.sequence_state
        state.routes = torch.stack([random_route(self.num_layers, self.budget, self.keep_first, key)
                                    for key in state.keys.tolist()]).to(ctx.input_ids.device)  # (B, L)

    def decide(self, layer_idx, h, ctx):
        run = self._state(ctx).routes[ctx.row_ids, layer_idx]  # (B,)
        return run_rows(run[:, None].expand_as(ctx.position_ids))

    def plan(self, state: RouteState, device):
        return DecodePlan(state.routes) if state.routes is not None else None


def random_route(num_layers: int, budget: int, keep_first: bool, key: int) -> torch.Tensor:
    """A route with exactly `budget` layers, drawn from `key` alone (a row's `sequence_keys`)."""
    g = torch.Generator().manual_seed(int(key))
    route = torch.zeros(num_layers, dtype=torch.bool)
    if keep_first:
        route[0] = True
        rest = torch.randperm(num_layers - 1, generator=g)[: budget - 1] + 1
    else:
        rest = torch.randperm(num_layers, generator=g)[:budget]
    route[rest] = True
    return route


def sequence_keys(seed: int, input_ids: torch.Tensor, use: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """(B,) int64 keys in [0, 2^63): a hash of (seed, step, each row's token ids where `use`).

    input_ids, use: (B, T). `step` None (outside training) and 0 give different keys.
    """
    header = struct.pack("<qq", int(seed), -1 if step is None else int(step))
    ids, use = input_ids.detach().cpu().long().numpy(), use.detach().cpu().bool().numpy()
    keys = [int.from_bytes(hashlib.blake2b(header + row[keep].astype("<i8").tobytes(), digest_size=8,
                                           person=b"adalas-key").digest(), "little") >> 1
            for row, keep in zip(ids, use)]
    return torch.tensor(np.array(keys, dtype=np.int64))


def real_tokens(ctx: "StepContext") -> torch.Tensor:
    """(B, T) bool: positions of this step that are real tokens (not padding).

    Cached steps read the cache's key mask. An uncached forward reads its attention mask: the last
    query sees every real key and itself; whether the last position is itself real follows from the
    mask-derived positions (a right pad repeats the position before it; a row's first real token,
    after left padding, is position 0). The one case this cannot tell apart: a row of a single real
    token followed by two or more pads reads its last pad as real.
    """
    if ctx.cache is not None:
        start = ctx.cache.length
        valid = ctx.cache.key_valid[:, start:start + ctx.num_tokens]
        return valid if ctx.cache_rows is None else valid[ctx.cache_rows]
    if ctx.mask is None:
        return torch.ones_like(ctx.input_ids, dtype=torch.bool)
    valid = ctx.mask[:, 0, -1, :].clone()  # (B, T)
    if valid.shape[1] > 1:
        pos = ctx.position_ids
        valid[:, -1] = (pos[:, -1] > pos[:, -2]) | (~valid[:, -2] & (pos[:, -1] == 0))
    return valid


def prompt_tokens(ctx: "StepContext") -> torch.Tensor:
    """(B, T) bool: the non-pad prompt tokens of a step (every real token of a prefill or of a forward
    without labels; label -100 in a forward with labels), with or without `skip_prompt`."""
    real = real_tokens(ctx)
    return real if isinstance(ctx.prompt, bool) else real & ctx.prompt


def chosen_routes(router: Router) -> torch.Tensor | None:
    """(B, L) bool: the routes the router's last forward or generation gave its rows, when it fixes one
    route per sequence (random_budget, sequence); None otherwise."""
    routes = getattr(router.last_state, "routes", None)
    return routes if isinstance(routes, torch.Tensor) else None


def set_train_step(model: nn.Module, step: int | None) -> None:
    """Set the training step that joins the random keys, on every adalas model inside `model` (a peft
    or DDP wrapper included); None outside training."""
    for m in model.modules():
        router = getattr(m, "router", None)
        if isinstance(router, Router):
            router.train_step = step


class Controller(nn.Module):
    """A per-layer MLP with two logits (skip, run); each hidden layer divides the width by 8."""

    def __init__(self, in_features: int, hidden_layers: int = 0):
        super().__init__()
        dims = [in_features]
        for _ in range(hidden_layers):
            dims.append(max(dims[-1] // 8, 2))
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        blocks.append(nn.Linear(dims[-1], 2))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def start_running(self, run_logit: float) -> None:
        """Output layer to zero weights and logits (skip 0, run `run_logit`): every input runs the layer
        with probability sigmoid(run_logit) under Gumbel-softmax at tau 1, whatever it reads, so
        training starts from (nearly) the full model rather than from a random route."""
        last = self.net[-1]
        last.weight.zero_()
        last.bias.copy_(last.bias.new_tensor([0.0, run_logit]))

    def matches(self, in_features: int, hidden_layers: int) -> bool:
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return linears[0].in_features == in_features and len(linears) == hidden_layers + 1


def make_controllers(cfg: DepthConfig, num_layers: int, input_dim: int) -> nn.ModuleDict:
    layers = cfg.controller_layers if cfg.controller_layers is not None else range(num_layers)
    return nn.ModuleDict({str(i): Controller(input_dim, cfg.hidden_layers) for i in layers})


class LearnedRouter(Router):
    """Per-token Gumbel-softmax controllers.

    Training: straight-through Gumbel-softmax with temperature tau (hard 0/1 forward, soft
    gradients); the loop then computes the layer for every token and mixes, which the estimator
    needs, so training saves no compute. Eval: argmax, deterministic; generation runs a layer only
    on the rows that chose it.
    """

    def __init__(self, controllers: nn.ModuleDict, controller_input: str, tau: float):
        self.controllers, self.controller_input, self.tau = controllers, controller_input, tau

    def decide(self, layer_idx, h, ctx):
        key = str(layer_idx)
        if key not in self.controllers:
            return RUN
        controller = self.controllers[key]
        logits = controller(ctx.controller_signal(self.controller_input, h))  # (B, T, 2): skip, run
        if controller.training:
            return gated(F.gumbel_softmax(logits.float(), tau=self.tau, hard=True)[..., 1].to(h.dtype))
        return run_rows(logits[..., 1] > logits[..., 0])


class ConfidenceExitRouter(Router):
    """confidence_exit (CALM): at each candidate exit k ("exit after k layers"), a token still running
    leaves when the head's confidence on its current state (final norm + head) reaches `threshold`;
    it then skips every layer above, so its final state is its exit state, and under
    kv_fill="propagate" those layers store keys/values computed from it (CALM's state propagation).

    Per-step scratch on `ctx.scratch`: "exited" (B, T) bool and "head_evals" (B, T) int, the
    confidence checks each token cost (the model counts them in decode steps). Prompt tokens never
    exit (they run every layer unless skip_prompt). The check is a hard decision: no gradient.
    """

    def __init__(self, exit_layers: list[int], threshold: float, measure: str):
        self.exit_layers = frozenset(exit_layers)
        self.first = min(exit_layers)
        self.threshold, self.measure = float(threshold), measure

    def decide(self, layer_idx, h, ctx):
        if layer_idx < self.first:
            return RUN
        s = ctx.scratch
        if "exited" not in s:
            s["exited"] = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)  # (B, T)
            s["head_evals"] = torch.zeros(h.shape[:2], dtype=torch.long, device=h.device)  # (B, T)
        exited = s["exited"]
        if layer_idx in self.exit_layers:
            running = ~exited if isinstance(ctx.full, bool) else ~exited & ~ctx.full
            idx = running.nonzero(as_tuple=True)
            if idx[0].numel():
                with torch.no_grad():
                    logits = ctx.family.head(ctx.family.final(h[idx]))  # (N, V)
                    exited[idx] = confidence(logits, self.measure) >= self.threshold
                s["head_evals"][idx] += 1
        return run_rows(~exited)


def confidence(logits: torch.Tensor, measure: str) -> torch.Tensor:
    """(..., V) logits -> (...): the max softmax probability, or top-1 minus top-2 probability."""
    p = logits.float().softmax(-1)
    if measure == "softmax":
        return p.amax(-1)
    top2 = p.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


# -- per sequence: mode `sequence` -------------------------------------------------------------------
ROUTER_WEIGHTS = "adalas_sequence_router.safetensors"
ROUTER_META = "adalas_sequence_router.json"
FORMAT = "adalas-sequence-router"
OBJECTIVES = ("regression", "label")


def pool_features(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 2D + 1) float32: mean state over the valid tokens, last valid token's state, log count.

    h: (B, T, D) the hidden state entering the feature layer; valid: (B, T) bool (real prompt tokens).
    """
    B, T, _ = h.shape
    h = h.float()
    w = valid.to(h.dtype)[..., None]  # (B, T, 1)
    n = w.sum(1).clamp(min=1.0)  # (B, 1)
    mean = (h * w).sum(1) / n  # (B, D)
    last_idx = T - 1 - valid.long().flip(1).argmax(1)  # (B,) last valid position
    last = h[torch.arange(B, device=h.device), last_idx]  # (B, D)
    return torch.cat([mean, last, n.log()], dim=-1)


class SequenceController(nn.Module):
    """Standardized prompt features -> (K,) route utilities; picks argmax(utility - lam * layers).

    `calibration` lists, per average depth, the cost weight `lam` that meets it on validation data.
    """

    def __init__(self, in_features: int, routes: Sequence[Sequence[bool]], feature_layer: int,
                 objective: str = "regression", meta: dict | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.linear = nn.Linear(in_features, len(routes))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_scale", torch.ones(in_features))
        self.register_buffer("routes", torch.tensor([[bool(r) for r in route] for route in routes]))  # (K, L)
        self.register_buffer("costs", self.routes.sum(1).double())  # (K,)
        self.feature_layer = int(feature_layer)
        self.objective = objective
        self.calibration: list[dict] = []  # [{"target_avg_layers", "lam", "val_avg_layers", "val_score"}]
        self.default_target: float | None = None
        self.meta: dict = dict(meta or {})
        self.source: str | None = None  # directory it was loaded from

    @property
    def num_layers(self) -> int:
        return self.routes.shape[1]

    @torch.no_grad()
    def utilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) float64: predicted score (regression) or log-probability (label) of each route."""
        x = (features.to(self.feature_mean) - self.feature_mean) / self.feature_scale
        u = self.linear(x).double()
        return u.log_softmax(-1) if self.objective == "label" else u

    def choose(self, features: torch.Tensor, lam: float) -> torch.Tensor:
        """(B,) index of the route each sequence takes."""
        return pick(self.utilities(features), self.costs, lam)

    def lam_for(self, target_avg_layers: float | None = None) -> float:
        """The cost weight calibrated for this average depth (None: the one chosen at training)."""
        target = self.default_target if target_avg_layers is None else float(target_avg_layers)
        if target is None or not self.calibration:
            return 0.0
        fitting = [c for c in self.calibration if c["target_avg_layers"] <= target + 1e-9]
        if not fitting:
            lowest = min(c["target_avg_layers"] for c in self.calibration)
            raise ValueError(f"target_avg_layers: {target} is below the shallowest calibrated depth {lowest}")
        return max(fitting, key=lambda c: c["target_avg_layers"])["lam"]

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in ("routes", "costs")}
        atomic_save_tensors(out / ROUTER_WEIGHTS, state)
        atomic_write_json(out / ROUTER_META, {
            "format": FORMAT, "version": 1, "in_features": self.linear.in_features,
            "num_layers": self.num_layers, "feature_layer": self.feature_layer, "objective": self.objective,
            "routes": [route_to_str(r) for r in self.routes.tolist()], "calibration": self.calibration,
            "default_target_avg_layers": self.default_target, **{k: v for k, v in self.meta.items()
                                                                 if k not in _META_KEYS}})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SequenceController":
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / ROUTER_META).is_file() or not (d / ROUTER_WEIGHTS).is_file():
            raise ValueError(f"router_path: {str(d)!r} has no sequence router ({ROUTER_META} and {ROUTER_WEIGHTS}); "
                             f"write one with `adalas train-router`")
        meta = json.loads((d / ROUTER_META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"router_path: {d / ROUTER_META} is not an adalas sequence router")
        ctrl = cls(meta["in_features"], [route_from_str(r) for r in meta["routes"]], meta["feature_layer"],
                   meta["objective"], meta={k: v for k, v in meta.items() if k not in _META_KEYS})
        state = load_file(str(d / ROUTER_WEIGHTS))
        ctrl.load_state_dict({**state, "routes": ctrl.routes, "costs": ctrl.costs})
        ctrl.calibration = meta.get("calibration") or []
        ctrl.default_target = meta.get("default_target_avg_layers")
        ctrl.source = str(d.resolve())
        return ctrl


_META_KEYS = {"format", "version", "in_features", "num_layers", "feature_layer", "objective", "routes",
              "calibration", "default_target_avg_layers"}


def pick(utilities: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """(B,) argmax over routes of utility - lam * layers (ties: the first, i.e. the sweep's order)."""
    return (utilities - float(lam) * costs.to(utilities)).argmax(-1)


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
                return of_route(self._common[layer_idx])
            else:
                raise ValueError(f"mode 'sequence': layer {layer_idx} needs a route before the prompt features "
                                 f"(layer {self.controller.feature_layer}) exist, and the candidate routes differ "
                                 f"there; use generate() (the prefill comes first)")
        run = state.routes[ctx.row_ids, layer_idx]  # (B,)
        return run_rows(run[:, None].expand_as(ctx.position_ids))

    def plan(self, state: SequenceState, device):
        return DecodePlan(state.routes) if state.routes is not None else None

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


def build_router(cfg: DepthConfig, num_layers: int, controllers: nn.ModuleDict | None,
                 sequence_controller: nn.Module | None = None) -> Router:
    """The router for a depth config (the one dispatch on mode)."""
    static = cfg.static_route(num_layers)
    if static is not None:
        return StaticRouter(static)
    if cfg.mode == "stochastic":
        return StochasticRouter(cfg.skip_probs, cfg.seed, cfg.full_depth_share, cfg.route_pool, cfg.route_pool_share)
    if cfg.mode == "random_budget":
        return PerSequenceRouter(num_layers, cfg.budget, cfg.keep_first, cfg.seed)
    if cfg.mode == "learned":
        assert controllers is not None
        return LearnedRouter(controllers, cfg.controller_input, cfg.tau)
    if cfg.mode == "confidence_exit":
        return ConfidenceExitRouter(cfg.exit_layers, cfg.threshold, cfg.measure)
    if cfg.mode == "sequence":
        assert sequence_controller is not None
        return SequenceRouter(sequence_controller, cfg.target_avg_layers)
    raise ValueError(f"mode: no router for {cfg.mode!r}")


_MASK64 = (1 << 63) - 1


def hash_uniform(key: torch.Tensor, position: torch.Tensor, layer: int) -> torch.Tensor:
    """Uniform [0, 1) numbers from integer keys (a splitmix-style integer hash, vectorized).

    Written by hand because torch generators give streams, and stochastic skipping needs a value
    that depends only on (row key, position, layer). key: (B, 1) int64; position: (B, T).
    """
    x = (key.long() * 0x9E3779B1 + position.long() * 0x85EBCA77 + (layer + 1) * 0xC2B2AE3D) & _MASK64
    for mult in (0x7FEB352D, 0x846CA68B):
        x = (x ^ (x >> 16)) * mult & _MASK64
    x = x ^ (x >> 16)
    return (x & 0xFFFFFF).double().div(float(1 << 24)).float()
