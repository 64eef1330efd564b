"""AdalasForCausalLM: the Hugging Face-facing nn.Module of a causal LM run with a dynamic depth.

Notable:
- This is the face, not the loop: loading and saving (safetensors, the depth config, controllers,
  the sequence router), switching the depth (`set_depth`), usage counters (read from `usage.Usage`),
  the Trainer's and peft's hooks (activation checkpointing, embeddings), `forward` and `generate`.
- The depth loop is `adalas.engine` (`depth_pass`, asking the router, for `forward`); decisions come from
  `adalas.routers`; the sampling loop is `adalas.generation`.
- Prompt tokens (label -100, or every token of a forward without labels, or the prefill) run every
  layer unless `skip_prompt=True`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import DEPTH_FILE, DepthConfig
from .engine import depth_pass, positions_from_mask
from .families import family_for
from .generation import generate
from .io import atomic_save_tensors, atomic_write_text
from .routers import Router, build_router, ensure_controller, make_controllers
from .usage import Usage

CONTROLLERS_FILE = "adalas_controllers.safetensors"
# what torch.utils.checkpoint.checkpoint takes besides the function and its inputs
CHECKPOINT_OPTIONS = frozenset({"use_reentrant", "context_fn", "determinism_check", "debug", "early_stop",
                                "preserve_rng_state"})
# forward keywords that change nothing at these values (peft passes None placeholders; `use_cache`:
# an uncached forward whatever it says); any other keyword or value is refused, not dropped
FORWARD_NO_OPS = {"return_dict": (None, True), "output_attentions": (None, False)}


@dataclass
class AdalasCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `layer_gates` (B, T, L): 1 where a token ran a layer, else 0
    (soft-gradient 0/1 values for learned controllers in training)."""

    layer_gates: torch.Tensor | None = None


class AdalasForCausalLM(nn.Module):
    """Wraps a Hugging Face causal LM (`self.model`) and runs it with the depth in `self.depth`."""

    def __init__(self, hf_model: nn.Module, depth: DepthConfig | None = None):
        super().__init__()
        self.model = hf_model
        self.family = family_for(hf_model)
        self.controllers = nn.ModuleDict()
        self.sequence_controller: nn.Module | None = None  # mode "sequence" (adalas.routers.SequenceController)
        self.gradient_checkpointing = False
        # uncached passes where some tokens run a layer: run it on their rows only (True), on every
        # row with the runners' outputs kept (False), or as the cost model says (None)
        self.gather_tokens: bool | None = None
        # activation checkpointing: (torch.utils.checkpoint options, every_n_layers, offload)
        self.checkpointing: tuple[dict, int, bool] = ({"use_reentrant": False}, 1, False)
        self.usage = Usage(self.family.num_layers)
        self.set_depth(depth or DepthConfig())

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: nn.Module, depth: DepthConfig | dict | str | None = None) -> "AdalasForCausalLM":
        """Wrap an in-memory Hugging Face causal LM (no copy of its weights)."""
        return cls(hf_model, DepthConfig.parse(depth))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, depth: DepthConfig | dict | str | None = None,
                        **load_kwargs) -> "AdalasForCausalLM":
        """A hub id, a local directory (ours or a plain transformers one), or the alias `smollm2-135m`.

        A directory saved by `save_pretrained` restores its depth config and controllers; `depth`
        overrides the saved config (controllers are kept when the override is the same learned setup).
        """
        from .hub import load_hf_model

        depth = DepthConfig.parse(depth) if depth is not None else None
        check_depth_before_loading(str(name_or_path), depth, load_kwargs.get("trust_remote_code", False))
        hf, path = load_hf_model(str(name_or_path), **load_kwargs)
        saved = DepthConfig.from_dir(path) if path is not None else None
        if saved is not None and saved.mode == "sequence" and saved.router_path is None:
            saved = replace(saved, router_path=str(path))  # its sequence router was saved with the model
        m = cls(hf, saved or DepthConfig())
        if path is not None and (path / CONTROLLERS_FILE).is_file():
            from safetensors.torch import load_file
            state = load_file(str(path / CONTROLLERS_FILE))
            m.controllers.load_state_dict({k.removeprefix("controllers."): v for k, v in state.items()})
        if depth is not None:
            m.set_depth(depth)
        return m

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The wrapped model in safetensors, plus the depth config (JSON) and controllers (safetensors)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True, **kwargs)
        if self.depth.mode == "learned":
            state = {f"controllers.{k}": v.detach().contiguous().cpu() for k, v in self.controllers.state_dict().items()}
            atomic_save_tensors(out / CONTROLLERS_FILE, state)
        elif (out / CONTROLLERS_FILE).exists():
            (out / CONTROLLERS_FILE).unlink()
        depth = self.depth
        if depth.mode == "sequence":  # the sequence router goes with the model (adalas.sequence)
            self.sequence_controller.save(out)
            depth = replace(depth, router_path=None)
        atomic_write_text(out / DEPTH_FILE, json.dumps(depth.to_dict(), indent=2, sort_keys=True) + "\n")

    # -- depth ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.family.num_layers

    @property
    def config(self):
        """The wrapped model's config (the Trainer and peft read it)."""
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_depth(self, depth: DepthConfig) -> None:
        """Switch the depth without reloading (validated against this model's layer count)."""
        depth = DepthConfig.parse(depth)
        depth.check_layers(self.num_layers)
        if depth.mode == "learned":
            self._ensure_controllers(depth)
        if depth.mode == "sequence":
            self.sequence_controller = ensure_controller(depth, self.num_layers, self.sequence_controller).to(self.device)
        self.depth = depth
        self.router: Router = build_router(depth, self.num_layers, self.controllers, self.sequence_controller)

    @contextmanager
    def temporary_depth(self, depth: DepthConfig) -> Iterator["AdalasForCausalLM"]:
        """Run the block at `depth` (a teacher at full depth, a candidate route), then restore the model's
        own depth, even on an error."""
        previous = self.depth
        self.set_depth(depth)
        try:
            yield self
        finally:
            self.set_depth(previous)

    def _ensure_controllers(self, depth: DepthConfig) -> None:
        """Keep the current controllers when they fit the learned setup; otherwise make new ones."""
        layers = depth.controller_layers if depth.controller_layers is not None else range(self.num_layers)
        dim = self._controller_in_dim(depth)
        if set(self.controllers) == {str(i) for i in layers} and all(
                c.matches(dim, depth.hidden_layers) for c in self.controllers.values()):
            return
        self.controllers = make_controllers(depth, self.num_layers, dim).to(device=self.device, dtype=self.dtype)

    def _controller_in_dim(self, depth: DepthConfig) -> int:
        if depth.controller_input == "fixed":
            return 1
        if depth.controller_input == "token":
            return self.family.token_embedding(torch.zeros(1, 1, dtype=torch.long, device=self.device)).shape[-1]
        return self.family.hidden_size

    # -- usage counting -------------------------------------------------------------------------
    def reset_usage(self) -> None:
        self.usage.reset()

    def layer_usage(self) -> list[float]:
        """Per layer, the fraction of counted generated tokens that ran it (what counts: `adalas.usage`)."""
        return self.usage.layer_usage()

    def avg_layers(self) -> float:
        return sum(self.layer_usage())

    def speculative_stats(self) -> dict[str, Any]:
        """Self-speculative decoding since reset_usage(): draft and verify layers per generated token
        (reported separately), acceptance rate, rounds (see `adalas.speculative`)."""
        return self.usage.speculative_dict()

    def head_evaluations(self) -> float:
        """Confidence-check head evaluations per counted generated token (confidence_exit; the final
        head that produces each token is not included). Counted as `layer_usage`."""
        return self.usage.head_evaluations()

    # -- training helpers (Trainer / peft hooks) --------------------------------------------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Recompute layers in the backward pass instead of keeping their activations, as transformers'
        method of this name (the Trainer calls it for `activation_checkpointing` / `gradient_checkpointing`):
        `activation_checkpointing_kwargs` go to `torch.utils.checkpoint.checkpoint` (default
        `use_reentrant=False`, as transformers; with `use_reentrant=True` the input embeddings are made
        to require grad, as there), `every_n_layers` checkpoints layers 0, n, 2n, ..., and `offload`
        keeps the saved inputs in host memory (a no-op on a CPU)."""
        kwargs = {"use_reentrant": False} if activation_checkpointing_kwargs is None else dict(activation_checkpointing_kwargs)
        unknown = sorted(set(kwargs) - CHECKPOINT_OPTIONS)
        if unknown:
            raise ValueError(f"gradient_checkpointing_kwargs: unknown option(s) {', '.join(unknown)}; "
                             f"torch.utils.checkpoint.checkpoint takes {', '.join(sorted(CHECKPOINT_OPTIONS))}")
        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers: must be an integer >= 1, got {every_n_layers!r}")
        self.checkpointing = (kwargs, every_n_layers, bool(offload))
        self.gradient_checkpointing = True
        if kwargs.get("use_reentrant", True):  # torch's reentrant variant needs an input that requires grad
            self.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      every_n_layers: int = 1, offload: bool = False) -> None:
        """The older name of `activation_checkpointing_enable` (peft and older Trainers call it)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    is_gradient_checkpointing = is_activation_checkpointing

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        """The head (peft reads it when an adapter targets the embeddings or the head)."""
        return self.model.get_output_embeddings()

    def enable_input_require_grads(self) -> None:
        self.model.enable_input_require_grads()

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, num_items_in_batch: Any = None, use_cache: Any = None,
                response_logits: bool = False, **kwargs: Any) -> AdalasCausalLMOutput:
        """An uncached forward. Prompt tokens: label -100, or every token when there are no labels.
        `response_logits=True` (training; needs labels) computes the logits only at the positions a label
        follows, packed (N, V) as the rows of `logits[:, :-1][labels[:, 1:] != -100]`, and the loss from
        them: at a long prompt's positions, which no loss reads, the head over a 49k vocabulary and its
        softmax took about a third of a training step. `**kwargs` (kept so the Trainer passes
        `num_items_in_batch`): None placeholders and the no-ops of FORWARD_NO_OPS; anything else (a cache,
        `inputs_embeds`, `token_type_ids`) is refused, since the result would silently not reflect it."""
        for name, value in kwargs.items():
            if value is not None and not any(value is ok for ok in FORWARD_NO_OPS.get(name, ())):
                raise ValueError(f"forward: {name}={_short(value)} is not supported by adalas (an uncached forward "
                                 f"from input_ids; it would be ignored)")
        if response_logits and labels is None:
            raise ValueError("forward: response_logits=True needs labels (it keeps the positions a label follows)")
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        prompt: torch.Tensor | bool = True if labels is None else labels.eq(-100)
        state = self.router.start(B, input_ids.device)
        h, gates, hidden = depth_pass(self, self.router, position_ids, input_ids, attention_mask=attention_mask,
                                      prompt=prompt, state=state, collect=True,
                                      output_hidden_states=output_hidden_states)
        if response_logits:
            targets = labels[:, 1:].to(h.device)                   # (B, T - 1): what each position predicts
            follows = targets.ne(-100)
            logits = self.family.head(self.family.final(h[:, :-1][follows]))  # (N, V)
            loss = token_mean_loss(logits.float(), targets[follows], num_items_in_batch)
        else:
            logits = self.family.head(self.family.final(h))
            loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return AdalasCausalLMOutput(loss=loss, logits=logits, layer_gates=gates, hidden_states=hidden)

    def logits_from_state(self, h: torch.Tensor) -> torch.Tensor:
        return self.family.head(self.family.final(h))

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Decode with the current depth; Hugging Face semantics (see `generation.generate`)."""
        if input_ids is None:
            raise ValueError("generate: input_ids is required")
        return generate(self, input_ids, attention_mask, **kwargs)


def _short(value: Any) -> str:
    return f"<tensor {tuple(value.shape)}>" if torch.is_tensor(value) else repr(value)[:40]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Next-token cross-entropy, -100 ignored; summed over `num_items_in_batch` when the Trainer
    accumulates gradients (as transformers' ForCausalLMLoss). The labels shift, not the logits: a slice
    of the (B, T, V) logits would be copied, and again in the backward pass."""
    shift_logits = logits.float().reshape(-1, logits.shape[-1])  # (B * T, V)
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1).to(logits.device)  # (B * T,)
    return token_mean_loss(shift_logits, shift_labels, num_items_in_batch)


def token_mean_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy of (N, V) logits against (N,) targets (-100 ignored): the mean over this batch's
    targets, or their sum over `num_items_in_batch`."""
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=-100)
    loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def check_depth_before_loading(name: str, depth: DepthConfig | None, trust_remote_code: bool = False) -> None:
    """Check the depth config (`depth`, and the one a model directory saved) against the model's layer
    count from its config alone, so a bad config fails in a second, before the weights load. A config
    that cannot be read here is left to the loader, which reports it."""
    from transformers import AutoConfig

    from .hub import resolve

    try:
        source, local = resolve(name)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return
    L = getattr(config, "num_hidden_layers", None)
    if not isinstance(L, int):
        return
    saved = DepthConfig.from_dir(local) if local is not None else None
    for cfg in (saved, depth):
        if cfg is not None:
            cfg.check_layers(L)

