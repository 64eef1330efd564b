"""Usage counters: one owner for what a model's generations ran since `reset_usage()`.

- `Usage`: layer runs per layer, counted tokens, confidence-check head evaluations, the
  self-speculative statistics and the key/value cache's peak size of the last generation. The model
  holds one (`model.usage`); the engine, the sampling loop and self-speculative decoding write it
  through its methods, and the model's `layer_usage()`, `avg_layers()`, `head_evaluations()` and
  `speculative_stats()` read it.
- `SpeculativeStats`: draft and verify layer runs per generated token (reported separately),
  acceptance, rounds (`adalas.speculative`).

Counting: decode steps of `generate()` only; a layer run only for
its keys/values does not count; the first new token (from the prefill) is not counted; rows that
finished are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SpeculativeStats:
    """Counts since `reset_usage()`. Layer runs count (token, layer) pairs that ran the whole layer,
    per row while it was active; the lower layers of the last draft of a round count as draft work."""

    num_layers: int
    rounds: int = 0
    ragged_rounds: int = 0  # rounds where the rows of a batch accepted different numbers of drafts
    drafted: int = 0
    accepted: int = 0
    round_tokens: int = 0  # tokens produced by rounds (accepted drafts + the target's own token)
    plain_tokens: int = 0  # tokens from plain decode steps (no draft pays, or the last token)
    draft_runs: list[float] = field(default_factory=list)
    verify_runs: list[float] = field(default_factory=list)
    draft_lengths: list[int] = field(default_factory=list)  # k of each round
    choices: list[dict] = field(default_factory=list)  # per generate call: draft, calibration, fallback

    def __post_init__(self):
        self.draft_runs = self.draft_runs or [0.0] * self.num_layers
        self.verify_runs = self.verify_runs or [0.0] * self.num_layers

    def as_dict(self) -> dict[str, Any]:
        n = self.round_tokens
        draft = [r / n if n else 0.0 for r in self.draft_runs]
        verify = [r / n if n else 0.0 for r in self.verify_runs]
        return {
            "rounds": self.rounds, "ragged_rounds": self.ragged_rounds, "drafted": self.drafted, "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "tokens_per_round": n / self.rounds if self.rounds else 0.0,
            "mean_draft_length": sum(self.draft_lengths) / len(self.draft_lengths) if self.draft_lengths else 0.0,
            "round_tokens": n, "plain_tokens": self.plain_tokens,
            "draft_layer_usage": draft, "verify_layer_usage": verify,
            "draft_avg_layers": sum(draft), "verify_avg_layers": sum(verify),
            "choices": list(self.choices),
        }


class Usage:
    """What generations ran since the last `reset()`. Counts may be 0-d tensors until read (adding
    them up on the device saves a host sync per decode step)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        self.runs: list[Any] = []  # per layer, (token, layer) pairs that ran the whole layer
        self.tokens = 0  # counted generated tokens (decode steps of active rows)
        self.head_evals: Any = 0  # confidence checks (confidence_exit)
        self.speculative: SpeculativeStats | None = None  # created by the first self-speculative generation
        self.last_cache_bytes: int | None = None  # the key/value cache's peak bytes in the last generation

    # -- writing ------------------------------------------------------------------------------------
    def add_tokens(self, n: int) -> None:
        self.tokens += n

    def count_layer(self, layer_idx: int, add: Any) -> None:
        """One decode step at layer `layer_idx`: `add` active rows ran it (an int, or a 0-d tensor:
        `adalas.actions.Action.count`)."""
        self._grow(layer_idx + 1)
        self.runs[layer_idx] = self.runs[layer_idx] + add

    def add_routes(self, routes: torch.Tensor, row_steps: torch.Tensor) -> None:
        """Decode steps of a planned (fast-path) generation: `routes` (B or 1, L) bool, `row_steps`
        (B,) steps each row ran while active (the tokens themselves were counted step by step)."""
        runs = (row_steps[:, None] * routes).sum(0).tolist()  # (L,)
        self._grow(len(runs))
        for i, r in enumerate(runs):
            self.runs[i] = self.runs[i] + r

    def add_head_evals(self, evals: Any) -> None:
        self.head_evals = self.head_evals + evals

    def speculative_stats(self) -> SpeculativeStats:
        """The self-speculative counters (created on first use)."""
        if self.speculative is None:
            self.speculative = SpeculativeStats(self.num_layers)
        return self.speculative

    def _grow(self, n: int) -> None:
        if len(self.runs) < n:
            self.runs += [0] * (n - len(self.runs))

    # -- reading ------------------------------------------------------------------------------------
    def layer_usage(self) -> list[float]:
        """Per layer, the fraction of counted generated tokens that ran it."""
        if not self.tokens:
            return [0.0] * self.num_layers
        runs = [float(r) for r in self.runs]
        return [r / self.tokens for r in runs]

    def head_evaluations(self) -> float:
        return float(self.head_evals) / self.tokens if self.tokens else 0.0

    def speculative_dict(self) -> dict[str, Any]:
        return (self.speculative or SpeculativeStats(self.num_layers)).as_dict()
