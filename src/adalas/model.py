"""AdalasForCausalLM: a Hugging Face causal LM run with a dynamic depth.

Notable:
- One depth loop (`_run_layers`) for every mode and family: the router says which tokens run a
  layer; a family says how a layer computes. Modes never fork the forward.
- Where compute is saved: a layer that no token runs costs only its key/value projection
  (`kv_fill="propagate"` in modes that decide per token) or nothing (`"mask"`, and every mode with one
  route per sequence, where no later token reads them); in a one-token decode step with per-row decisions,
  the layer runs only on the rows that chose it (gather/scatter) and the others get keys/values
  only. In an uncached forward (training, teacher forcing) where only some tokens run a layer (the
  prompt at full depth, `stochastic`, `early_exit` with labels), its queries, attention output and
  MLP run on those tokens' rows only, in forward and backward (`_runner_body`), and keys/values
  come from every token that another one reads. Where it is not: learned controllers in training
  (the straight-through estimator needs every token's layer output), a multi-token cached step with
  per-token decisions (prefill with `skip_prompt=True`, speculative verification), and wherever the
  cost model says gathering does not pay: there the layer runs for every token and the skipping ones
  keep their input.
- Prompt tokens (label -100, or every token of a forward without labels, or the prefill) run every
  layer unless `skip_prompt=True`.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache import KVCache
from .config import DEPTH_FILE, DepthConfig
from .controllers import Router, build_router, make_controllers
from .families import Family, family_for

CONTROLLERS_FILE = "adalas_controllers.safetensors"
# what torch.utils.checkpoint.checkpoint takes besides the function and its inputs
CHECKPOINT_OPTIONS = frozenset({"use_reentrant", "context_fn", "determinism_check", "debug", "early_stop",
                                "preserve_rng_state"})


@dataclass
class AdalasCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `layer_gates` (B, T, L): 1 where a token ran a layer, else 0
    (soft-gradient 0/1 values for learned controllers in training)."""

    layer_gates: torch.Tensor | None = None


@dataclass
class StepContext:
    """What every layer of one forward step shares. `rows()` narrows it to a subset of the batch."""

    family: Family
    position_ids: torch.Tensor  # (B, T)
    input_ids: torch.Tensor  # (B, T)
    row_ids: torch.Tensor  # (B,) row of each sequence in the call (seeds per-sequence randomness)
    rotary: Any
    mask: torch.Tensor | None  # (B, 1, T, T_kv) bool, or None = causal over all keys
    prompt: torch.Tensor | bool  # (B, T) bool, or one bool for every token
    cache: KVCache | None = None
    cache_rows: torch.Tensor | None = None  # rows of the cache this context covers (None = all)
    sequence_state: Any = None
    initial: torch.Tensor | None = None  # decoder input state (controller input "initial")
    windows: tuple = ()  # per layer, a sliding attention window or None (`Family.windows`; () = none)
    real: torch.Tensor | None = None  # (B, T) bool: non-pad tokens of an uncached pass (None = all, or cached)
    _signals: dict = field(default_factory=dict)
    scratch: dict = field(default_factory=dict)  # per-step space for routers (e.g. tokens that exited)

    @property
    def num_tokens(self) -> int:
        return self.position_ids.shape[1]

    def rows(self, idx: torch.Tensor) -> "StepContext":
        rot = None if self.rotary is None else tuple(r[idx] for r in self.rotary)
        parent = self.cache_rows
        return replace(
            self, position_ids=self.position_ids[idx], input_ids=self.input_ids[idx], row_ids=self.row_ids[idx],
            rotary=rot, mask=None if self.mask is None else self.mask[idx],
            prompt=self.prompt if isinstance(self.prompt, bool) else self.prompt[idx],
            cache_rows=idx if parent is None else parent[idx], real=None if self.real is None else self.real[idx],
            initial=None if self.initial is None else self.initial[idx], _signals={}, scratch={})

    def controller_signal(self, kind: str, h: torch.Tensor) -> torch.Tensor:
        """The input a learned controller reads (computed once per step and shared by layers)."""
        if kind == "hidden_states":
            return h
        if kind not in self._signals:
            if kind == "fixed":
                value = h.new_ones(*h.shape[:2], 1)
            elif kind == "position":
                value = self.family.position_signal(self.position_ids).to(h.dtype)
            elif kind == "token":
                value = self.family.token_embedding(self.input_ids)
            else:  # "initial"
                value = self.initial
            self._signals[kind] = value
        return self._signals[kind]


class AdalasForCausalLM(nn.Module):
    """Wraps a Hugging Face causal LM (`self.model`) and runs it with the depth in `self.depth`."""

    def __init__(self, hf_model: nn.Module, depth: DepthConfig | None = None):
        super().__init__()
        self.model = hf_model
        self.family = family_for(hf_model)
        self.controllers = nn.ModuleDict()
        self.sequence_controller: nn.Module | None = None  # mode "sequence" (adalas.sequence)
        self.gradient_checkpointing = False
        # uncached passes where some tokens run a layer: run it on their rows only (True), on every
        # row with the runners' outputs kept (False), or as the cost model says (None)
        self.gather_tokens: bool | None = None
        self._checkpointing: tuple[dict, int, bool] = ({"use_reentrant": False}, 1, False)
        self.reset_usage()
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
        from safetensors.torch import save_file

        from .io import atomic_write_text

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True, **kwargs)
        if self.depth.mode == "learned":
            state = {f"controllers.{k}": v.detach().contiguous().cpu() for k, v in self.controllers.state_dict().items()}
            tmp = out / (CONTROLLERS_FILE + ".tmp")
            save_file(state, str(tmp))
            os.replace(tmp, out / CONTROLLERS_FILE)
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
            from .sequence import ensure_controller
            self.sequence_controller = ensure_controller(depth, self.num_layers, self.sequence_controller).to(self.device)
        self.depth = depth
        self.router: Router = build_router(depth, self.num_layers, self.controllers, self.sequence_controller)

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
        self._usage_runs: list[Any] = []
        self._usage_tokens = 0
        self._usage_head_evals: Any = 0
        self._speculative_stats = None  # adalas.speculative.SpeculativeStats, created by the first use

    def layer_usage(self) -> list[float]:
        """Per layer, the fraction of counted generated tokens that ran it (see DESIGN: counting)."""
        if not self._usage_tokens:
            return [0.0] * self.num_layers
        runs = [float(r) for r in self._usage_runs]
        return [r / self._usage_tokens for r in runs]

    def avg_layers(self) -> float:
        return sum(self.layer_usage())

    def speculative_stats(self) -> dict[str, Any]:
        """Self-speculative decoding since reset_usage(): draft and verify layers per generated token
        (reported separately), acceptance rate, rounds (see `adalas.speculative`)."""
        from .speculative import stats_dict
        return stats_dict(self)

    def head_evaluations(self) -> float:
        """Confidence-check head evaluations per counted generated token (confidence_exit; the final
        head that produces each token is not included). Counted as `layer_usage`."""
        return float(self._usage_head_evals) / self._usage_tokens if self._usage_tokens else 0.0

    def _count(self, layer_idx: int, run, active: torch.Tensor | None, n_active: int) -> None:
        if isinstance(run, bool):
            add = n_active if run else 0
        else:
            r = run[:, -1].bool() if run.dim() == 2 else run.bool()
            add = (r & active).sum() if active is not None else r.sum()
        if len(self._usage_runs) <= layer_idx:
            self._usage_runs += [0] * (layer_idx + 1 - len(self._usage_runs))
        self._usage_runs[layer_idx] = self._usage_runs[layer_idx] + add

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
        self._checkpointing = (kwargs, every_n_layers, bool(offload))
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
                output_hidden_states: bool = False, num_items_in_batch: Any = None,
                **unused: Any) -> AdalasCausalLMOutput:
        """An uncached forward. Prompt tokens: label -100, or every token when there are no labels."""
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        prompt: torch.Tensor | bool = True if labels is None else labels.eq(-100)
        state = self.router.start(B, input_ids.device)
        h, gates, hidden = self._run(input_ids, position_ids, attention_mask, prompt, None, state,
                                     collect=True, output_hidden_states=output_hidden_states)
        logits = self.family.head(self.family.final(h))
        loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return AdalasCausalLMOutput(loss=loss, logits=logits, layer_gates=gates, hidden_states=hidden)

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor,
             prompt: bool, sequence_state: Any = None, active: torch.Tensor | None = None,
             n_active: int | None = None, count: bool = False) -> torch.Tensor:
        """One cached step over new tokens (prefill or decode); returns the last position's final state."""
        cache.append_mask(attention_mask)
        h, _, _ = self._run(input_ids, position_ids, None, prompt, cache, sequence_state,
                            count_active=(active, n_active) if count else None)
        cache.advance(input_ids.shape[1])
        return h

    def logits_from_state(self, h: torch.Tensor) -> torch.Tensor:
        return self.family.head(self.family.final(h))

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Decode with the current depth; Hugging Face semantics (see `generation.generate`)."""
        from .generation import generate

        if input_ids is None:
            raise ValueError("generate: input_ids is required")
        return generate(self, input_ids, attention_mask, **kwargs)

    # -- the depth loop ---------------------------------------------------------------------------
    def _run(self, input_ids, position_ids, attention_mask, prompt, cache, sequence_state, collect=False,
             output_hidden_states=False, count_active=None):
        fam = self.family
        B, T = input_ids.shape
        h = fam.embed(input_ids, position_ids)
        ctx = StepContext(
            family=fam, position_ids=position_ids, input_ids=input_ids,
            row_ids=torch.arange(B, device=input_ids.device), rotary=fam.rotary(h, position_ids),
            mask=self._attention_mask(attention_mask, cache, T), prompt=prompt, cache=cache,
            sequence_state=sequence_state, initial=h, windows=fam.windows,
            real=None if cache is not None or attention_mask is None else attention_mask.bool())
        if self.depth.skip_prompt:
            ctx.prompt = False
        gates: list[torch.Tensor] = []
        hidden = [h] if output_hidden_states else None
        for i, layer in enumerate(fam.layers()):
            if ctx.prompt is True:  # prompt-only step: every layer runs; per-sequence routers read the prompt
                self.router.observe(i, h, ctx)
                run = True
            else:
                run = self._with_prompt(self.router.decide(i, h, ctx), ctx.prompt)
            if count_active is not None:
                self._count(i, run, *count_active)
            h = self._apply_layer(i, layer, h, ctx, run)
            if collect:
                gates.append(_as_gate(run, h))
            if hidden is not None:
                hidden.append(h)
        if count_active is not None and "head_evals" in ctx.scratch:
            evals, (active, _) = ctx.scratch["head_evals"][:, -1], count_active  # (B,)
            self._usage_head_evals = self._usage_head_evals + (evals if active is None else evals * active).sum()
        return h, (torch.stack(gates, dim=-1) if collect else None), (tuple(hidden) if hidden else None)

    @staticmethod
    def _with_prompt(run, prompt):
        """Prompt tokens run every layer (unless skip_prompt, which clears ctx.prompt)."""
        if prompt is False or run is True:
            return run
        if prompt is True:
            return True
        if isinstance(run, bool):
            return prompt if not run else True
        if run.dtype == torch.bool:
            return run | prompt
        return torch.where(prompt, torch.ones_like(run), run)

    def _apply_layer(self, i: int, layer: nn.Module, h: torch.Tensor, ctx: StepContext, run) -> torch.Tensor:
        if run is True:
            return self._layer(i, layer, h, ctx)
        if run is False:
            self._skip(i, layer, h, ctx)
            return h
        if run.dtype != torch.bool:  # straight-through gates (training)
            stored = run.detach() > 0.5 if self.depth.masks_skipped_kv else None
            return h + run.unsqueeze(-1) * (self._layer(i, layer, h, ctx, stored) - h)
        if ctx.cache is not None and ctx.num_tokens == 1:
            return self._gathered(i, layer, h, ctx, run[:, 0])
        if ctx.cache is None:
            return self._gathered_tokens(i, layer, h, ctx, run)
        stored = run if self.depth.masks_skipped_kv else None
        return torch.where(run.unsqueeze(-1), self._layer(i, layer, h, ctx, stored), h)

    def _gathered_tokens(self, i, layer, h, ctx, run: torch.Tensor) -> torch.Tensor:
        """An uncached pass (training, teacher forcing) where some tokens run layer i: its queries,
        attention output and MLP run on the rows of those tokens only (`_runner_body`), in forward and
        backward, where the cost model says that pays; otherwise on every token, the runners' outputs
        kept. Padding runs nothing here (no loss or real token reads a pad's state; its own logits are
        left unspecified, as in transformers). Keys/values, when another token reads them: every token's,
        from the state that reaches the layer (kv_fill="propagate", as a whole layer computes them for
        every token); only the runners' where nothing attends to the others' (kv_fill="mask" in modes
        that decide per token; or no runner follows a token that skips, as when the prompt runs at
        full depth and the response skips)."""
        runs = run if ctx.real is None else run & ctx.real  # (B, T)
        counts = runs.sum(1)  # (B,)
        follows = _runner_follows_skipper(runs, ctx.real)
        n_run, most, follows = torch.stack([counts.sum(), counts.max(), follows]).tolist()  # one host sync
        if n_run == 0:
            return h  # no real token runs layer i, so none reads its keys/values either
        compact = self.depth.masks_skipped_kv or not follows
        rows = runs.numel()
        gather = self.gather_tokens
        if gather is None:
            gather = self._decode_costs().train_gather_pays(n_run, n_run if compact else rows, rows)
        if not gather:
            stored = run if self.depth.masks_skipped_kv else None
            return torch.where(run.unsqueeze(-1), self._layer(i, layer, h, ctx, stored), h)
        return self._layer(i, layer, h, ctx, runs=(runs, counts, most, compact))

    def _gathered(self, i, layer, h, ctx, run_rows: torch.Tensor) -> torch.Tensor:
        """A decode step where some rows run layer i: run it on those rows only (gather/scatter), or,
        where the cost model says gathering does not pay (few rows: reading the weights dominates),
        on every row, keeping the runners' outputs. Both give the same outputs: a full layer computes
        the skippers' keys/values from the state that reaches it, as a skipped layer does under
        propagate; under mask they are marked not stored; and with one route per sequence nothing
        ever reads them."""
        n_run = int(run_rows.sum())
        if n_run == run_rows.numel():
            return self._layer(i, layer, h, ctx)
        if n_run == 0:
            self._skip(i, layer, h, ctx)
            return h
        if not self._decode_costs().gather_pays(n_run, run_rows.numel(), self.depth.stores_skipped_kv):
            stored = run_rows[:, None].expand(h.shape[:2]) if self.depth.masks_skipped_kv else None
            return torch.where(run_rows.view(-1, 1, 1), self._layer(i, layer, h, ctx, stored), h)
        run_idx = run_rows.nonzero().flatten()
        skip_idx = (~run_rows).nonzero().flatten()
        self._skip(i, layer, h[skip_idx], ctx.rows(skip_idx))
        out = self._layer(i, layer, h[run_idx], ctx.rows(run_idx))
        return h.index_copy(0, run_idx, out)

    def _decode_costs(self):
        """The decode cost model of `adalas.cost` for this model's shapes and device (cached)."""
        from .cost import CostModel
        key = (self.device.type, self.num_layers)
        if getattr(self, "_costs", (None,))[0] != key:
            self._costs = (key, CostModel.of(self))
        return self._costs[1]

    def _skip(self, i, layer, h, ctx: StepContext) -> None:
        """A skipped layer: keys/values from the state that reaches it (propagate, in modes that decide
        per token), or nothing (mask, and modes with one route per sequence, where nothing reads them)."""
        if ctx.cache is None:
            return  # no later token in this forward needs them: every token skips this layer
        if not self.depth.stores_skipped_kv:
            # mask: attention ignores them; one route per sequence: no later token of the sequence
            # runs layer i to read them
            ctx.cache.mark_stored(i, False, ctx.num_tokens, ctx.cache_rows)  # a no-op unless masks_skipped_kv
            return
        k, v = self.family.kv(layer, self.family.attn_input(layer, h), ctx.rotary)
        ctx.cache.write(i, k, v, ctx.cache_rows)

    def _layer(self, i, layer, h, ctx: StepContext, stored: torch.Tensor | None = None,
               runs: tuple | None = None) -> torch.Tensor:
        """Layer i, whole (`_layer_body`) or on the runners' rows (`runs`: `_runner_body`), under
        activation checkpointing where it is on."""
        body, args = (self._layer_body, (stored,)) if runs is None else (self._runner_body, runs)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            kwargs, every_n_layers, offload = self._checkpointing
            if i % every_n_layers == 0:
                from torch.utils.checkpoint import checkpoint
                saving = torch.autograd.graph.save_on_cpu(pin_memory=True) if offload and h.device.type != "cpu" \
                    else nullcontext()
                with saving:
                    return checkpoint(body, i, layer, h, ctx, *args, **kwargs)
        return body(i, layer, h, ctx, *args)

    def _layer_body(self, i, layer, h, ctx: StepContext, stored) -> torch.Tensor:
        """One whole layer. `stored` (B, T): where attention hides skipped tokens (`masks_skipped_kv`),
        which tokens keep their keys/values."""
        fam = self.family
        B, T, _ = h.shape
        q, k, v = fam.qkv(layer, fam.attn_input(layer, h), ctx.rotary)  # (B, H, T, Dh)
        mask, causal = ctx.mask, ctx.mask is None and T > 1
        if ctx.cache is not None:
            cache = ctx.cache
            cache.write(i, k, v, ctx.cache_rows)
            end = cache.length + T
            cache.mark_stored(i, True if stored is None else stored, T, ctx.cache_rows)
            k, v = cache.read(i, end, ctx.cache_rows)
            if cache.stored is not None:
                mask = _restrict(ctx, cache.stored_keys(i, end, ctx.cache_rows), T, end)
                causal = False
        elif stored is not None:
            mask = _restrict(ctx, stored, T, T)
            causal = False
        if ctx.windows and ctx.windows[i] is not None and k.shape[2] > ctx.windows[i]:
            mask = _windowed(ctx, mask, ctx.windows[i], T, k.shape[2])
            causal = False
        if causal and k.shape[2] != T:
            raise AssertionError("causal attention without a mask needs an empty cache")
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=fam.attn_scale(layer),
            dropout_p=fam.attn_dropout(layer), enable_gqa=q.shape[1] != k.shape[1])
        o = o.transpose(1, 2).reshape(B, T, -1)  # (B, T, H * Dh)
        h = fam.after_attention(layer, h, fam.attn_output(layer, o))
        return fam.mlp(layer, h)

    def _runner_body(self, i, layer, h, ctx: StepContext, runs: torch.Tensor, counts: torch.Tensor, Tq: int,
                     compact: bool) -> torch.Tensor:
        """Layer i for the tokens in `runs` (B, T) of an uncached pass (`counts` (B,) per row, `Tq` the
        most); the others keep h. Each row's runners are packed to the left (Tq slots; the slots past a
        row's count hold other tokens, whose outputs are dropped) for the queries, attention and output
        projection; the residual and MLP run on the runners' rows alone, then scatter back.
        Keys/values: `compact`, the runners' only (the packed slots); else every token's."""
        fam = self.family
        B, T, D = h.shape
        q_pos = runs.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :Tq]  # (B, Tq) slot -> t
        slot_ok = torch.arange(Tq, device=h.device) < counts[:, None]  # (B, Tq): slot holds a runner
        h_q = h.gather(1, q_pos[..., None].expand(B, Tq, D))  # (B, Tq, D)
        rotary = fam.rotary(h_q, ctx.position_ids.gather(1, q_pos))
        if compact:
            q, k, v = fam.qkv(layer, fam.attn_input(layer, h_q), rotary)  # (B, H, Tq, Dh)
            mask = _rows_mask(ctx, i, q_pos, q_pos, slot_ok)
        else:
            x = fam.attn_input(layer, h)  # (B, T, D)
            k, v = fam.kv(layer, x, ctx.rotary)  # (B, Hkv, T, Dh)
            q = fam.q(layer, x.gather(1, q_pos[..., None].expand(B, Tq, D)), rotary)  # (B, H, Tq, Dh)
            mask = _rows_mask(ctx, i, q_pos, None, None)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=fam.attn_scale(layer), dropout_p=fam.attn_dropout(layer),
            enable_gqa=q.shape[1] != k.shape[1])
        a = fam.attn_output(layer, o.transpose(1, 2).reshape(B, Tq, -1))  # (B, Tq, D)
        keep = slot_ok.flatten().nonzero().squeeze(1)  # (N,) runner slots of the (B * Tq) packed rows
        flat = (q_pos + torch.arange(B, device=h.device)[:, None] * T).flatten()[keep]  # (N,) rows of (B * T)
        h_run = h_q.reshape(B * Tq, D)[keep][None]  # (1, N, D)
        out = fam.mlp(layer, fam.after_attention(layer, h_run, a.reshape(B * Tq, D)[keep][None]))
        return h.reshape(B * T, D).index_copy(0, flat, out[0]).view(B, T, D)

    def _attention_mask(self, attention_mask: torch.Tensor | None, cache: KVCache | None, T: int):
        """(B, 1, T, T_kv) bool: real keys, causal, and each query's own position (so padded rows,
        whose outputs are never used, never attend to nothing). None when no padding exists and
        plain causal attention suffices."""
        if cache is not None:
            valid = cache.key_valid[:, :cache.length + T]
            start = cache.length
        else:
            valid = attention_mask.bool()
            start = 0
        needs_mask = self.depth.masks_skipped_kv or not bool(valid.all()) or (start > 0 and T > 1)
        if not needs_mask:
            return None
        Tk = valid.shape[1]
        q_pos = torch.arange(start, start + T, device=valid.device)[:, None]
        k_pos = torch.arange(Tk, device=valid.device)[None, :]
        causal = k_pos <= q_pos  # (T, T_kv)
        return ((valid[:, None, None, :] & causal) | (k_pos == q_pos))


def _restrict(ctx: StepContext, key_stored: torch.Tensor, T: int, end: int) -> torch.Tensor:
    """Narrow the attention mask to keys this layer stored (kv_fill="mask"); a query keeps itself."""
    base = ctx.mask
    start = end - T
    q_pos = torch.arange(start, end, device=key_stored.device)[:, None]
    k_pos = torch.arange(end, device=key_stored.device)[None, :]
    if base is None:
        base = (k_pos <= q_pos)[None, None]
    return (base & key_stored[:, None, None, :]) | (k_pos == q_pos)


def _runner_follows_skipper(runs: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """() long: 1 where some token in `runs` (B, T) comes after a real token of its row that is not in
    `runs` (then it attends to that token's keys/values at this layer), else 0."""
    skip = ~runs if real is None else real & ~runs
    seen = skip.cummax(dim=1).values  # (B, T): a skipper at or before t
    return (runs[:, 1:] & seen[:, :-1]).any().long()


def _rows_mask(ctx: StepContext, i: int, q_pos: torch.Tensor, k_pos: torch.Tensor | None,
               key_ok: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool: the attention mask of an uncached pass (`ctx.mask`, else causal; layer i's
    window) at query positions `q_pos` (B, Tq) and key positions `k_pos` (B, Tk; None = every
    position), keys also limited to `key_ok` (B, Tk); a query keeps itself, as in `_restrict`."""
    B, Tq = q_pos.shape
    T = ctx.num_tokens
    k_at = torch.arange(T, device=q_pos.device).expand(B, T) if k_pos is None else k_pos  # (B, Tk)
    qq, kk = q_pos[:, :, None], k_at[:, None, :]  # (B, Tq, 1), (B, 1, Tk)
    if ctx.mask is None:
        mask = kk <= qq
    else:
        mask = ctx.mask[:, 0].gather(1, q_pos[..., None].expand(B, Tq, T))  # (B, Tq, T)
        if k_pos is not None:
            mask = mask.gather(2, k_pos[:, None, :].expand(B, Tq, k_pos.shape[1]))
    if key_ok is not None:
        mask = mask & key_ok[:, None, :]
    window = ctx.windows[i] if ctx.windows else None
    if window is not None:
        mask = mask & (kk > qq - window)
    return (mask | (kk == qq))[:, None]


def _windowed(ctx: StepContext, mask: torch.Tensor | None, window: int, T: int, n_keys: int) -> torch.Tensor:
    """The attention mask of a sliding-window layer: `mask` (None = causal; bool; or additive) also
    hiding the keys `window` or more slots before each query (the T queries are the last T of
    `n_keys` slots), as transformers' sliding_window_overlay."""
    key = ("window", window, T, n_keys)
    band = ctx.scratch.get(key)
    if band is None:
        device = ctx.position_ids.device
        q_pos = torch.arange(n_keys - T, n_keys, device=device)[:, None]
        k_pos = torch.arange(n_keys, device=device)[None, :]
        band = ctx.scratch[key] = (k_pos <= q_pos) & (k_pos > q_pos - window)  # (T, n_keys)
    if mask is None:
        return band[None, None]
    if mask.dtype == torch.bool:
        return mask & band
    return mask.masked_fill(~band, float("-inf"))


def _as_gate(run, h: torch.Tensor) -> torch.Tensor:
    B, T = h.shape[:2]
    if isinstance(run, bool):
        return h.new_full((B, T), 1.0 if run else 0.0)
    return run.to(h.dtype) if run.dtype == torch.bool else run


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Next-token cross-entropy, -100 ignored; summed over `num_items_in_batch` when the Trainer
    accumulates gradients (as transformers' ForCausalLMLoss). The labels shift, not the logits: a slice
    of the (B, T, V) logits would be copied, and again in the backward pass."""
    shift_logits = logits.float().reshape(-1, logits.shape[-1])  # (B * T, V)
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1).to(logits.device)  # (B * T,)
    if num_items_in_batch is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
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

