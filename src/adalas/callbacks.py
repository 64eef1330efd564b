"""Trainer callbacks. `RouteKeyCallback` tells the model the optimizer step, which joins the key of
every random draw (`stochastic` skips, `random_budget` routes) in training, so each step draws
anew while a sequence's draws stay independent of its batch companions (see `adalas.routers`).
Outside a step (evaluation during training, after training) the key is the sequence's alone."""
from __future__ import annotations

from transformers import TrainerCallback

from .routers import set_train_step


class RouteKeyCallback(TrainerCallback):
    """Sets `Router.train_step` to the Trainer's `global_step` for the length of each optimizer step
    (every micro-batch of a gradient-accumulation step shares it)."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_train_step(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_train_step(model, None)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_train_step(model, None)
