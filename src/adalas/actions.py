"""Per-layer actions: what one layer does in one step, the one thing a router tells the depth loop.

- `RUN`: every token runs the whole layer; `SKIP`: every token skips it.
- `run_rows(rows)`: the tokens in `rows` (B, T) bool run it, the others skip it.
- `gated(weight)`: straight-through 0/1 gates (B, T) carrying gradients (learned controllers in
  training): the layer runs for every token and each keeps `h + weight * (layer(h) - h)`.
- `DecodePlan`: a router resolved ahead of time, for routes known before a decode step (static
  routes, one route per sequence): one action per layer, fixed for a whole generation, so a decode
  step asks no router.

How a skipped token's keys/values are stored, and how the runners of a layer are gathered, is the
engine's work (`adalas.engine`); an action only says who runs.
"""
from __future__ import annotations

from enum import Enum

import torch


class Kind(Enum):
    RUN = "run"
    SKIP = "skip"
    ROWS = "rows"
    GATED = "gated"


class Action:
    """One layer's action in one step. `rows`: (B, T) bool for ROWS, (B, T) float gates for GATED."""

    __slots__ = ("kind", "rows")

    def __init__(self, kind: Kind, rows: torch.Tensor | None = None):
        self.kind, self.rows = kind, rows

    def __repr__(self) -> str:
        return self.kind.name if self.rows is None else f"{self.kind.name}({tuple(self.rows.shape)})"

    def with_full(self, full: torch.Tensor | bool) -> "Action":
        """The action once the tokens in `full` ((B, T) bool, or one bool for all: the prompt unless
        skip_prompt) run every layer whatever the router said."""
        if full is False or self.kind is Kind.RUN:
            return self
        if full is True:
            return RUN
        if self.kind is Kind.SKIP:
            return Action(Kind.ROWS, full)
        if self.kind is Kind.ROWS:
            return Action(Kind.ROWS, self.rows | full)
        return Action(Kind.GATED, torch.where(full, torch.ones_like(self.rows), self.rows))

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T) in h's dtype: 1 where a token ran the layer, 0 where it skipped (the gates a forward
        returns as `layer_gates`); a GATED action's own gates, with their gradients."""
        if self.kind is Kind.GATED:
            return self.rows
        if self.rows is not None:
            return self.rows.to(h.dtype)
        return h.new_full(h.shape[:2], 1.0 if self.kind is Kind.RUN else 0.0)

    def count(self, active: torch.Tensor | None, n_active: int):
        """Rows of a decode step that ran the whole layer at the step's last position, among `active`
        (B,) rows (None: all `n_active` rows): an int, or a 0-d tensor (no host sync)."""
        if self.kind is Kind.RUN:
            return n_active
        if self.kind is Kind.SKIP:
            return 0
        ran = self.rows[:, -1].bool()  # (B,)
        return (ran & active).sum() if active is not None else ran.sum()


RUN = Action(Kind.RUN)
SKIP = Action(Kind.SKIP)


def run_rows(rows: torch.Tensor) -> Action:
    """The tokens in `rows` (B, T) bool run the layer; the others skip it."""
    return Action(Kind.ROWS, rows)


def gated(weight: torch.Tensor) -> Action:
    """Straight-through gates (B, T), 0/1 in the forward pass, with gradients."""
    return Action(Kind.GATED, weight)


def of_route(run: bool) -> Action:
    return RUN if run else SKIP


class DecodePlan:
    """A router resolved ahead of time: per layer, the action of every cached step of a generation.
    `routes` (B or 1, L) bool: which rows run which layer (usage counting). Only for routes fixed per
    sequence: then a skipped (token, layer) stores no keys/values whatever `kv_fill` says, since no
    later token of that sequence runs the layer to read them. Answers `decide` / `observe` as a
    router does; `stop`: layers from here up do nothing for any row and are not visited."""

    def __init__(self, routes: torch.Tensor):
        self.routes = routes
        self.actions: list[Action] = []
        for column in routes.unbind(1):  # (B,) per layer
            n_run = int(column.sum())
            self.actions.append(RUN if n_run == column.numel() else SKIP if n_run == 0 else run_rows(column[:, None]))
        self.stop = _stop(self.actions)

    @classmethod
    def static(cls, route: list[bool], device=None) -> "DecodePlan":
        return cls(torch.tensor([route], dtype=torch.bool, device=device))

    def with_actions(self, actions: list[Action]) -> "DecodePlan":
        """A copy with other actions (RUN or SKIP) for a static plan (a self-speculative draft)."""
        plan = DecodePlan.__new__(DecodePlan)
        plan.routes = torch.tensor([[a is RUN for a in actions]], dtype=torch.bool, device=self.routes.device)
        plan.actions, plan.stop = list(actions), _stop(actions)
        return plan

    def decide(self, layer_idx: int, h: torch.Tensor, ctx) -> Action:
        return self.actions[layer_idx]

    def observe(self, layer_idx: int, h: torch.Tensor, ctx) -> None:
        """Nothing to read: the plan was resolved before the step."""


def _stop(actions: list[Action]) -> int:
    return max((i + 1 for i, a in enumerate(actions) if a is not SKIP), default=0)
