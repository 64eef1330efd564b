"""The engine: the depth loop, for every mode and family, in one place.

A router (`adalas.routers`) says what each layer does for the tokens of a step (an
`adalas.actions.Action`: run, skip, run some tokens, or run under straight-through gates); a family
(`adalas.families`) says how a layer computes; this module runs the layers. It never imports the
model: its functions take the model as their first argument and read only `family`, `depth`,
`router`, `usage`, `gather_tokens`, `gradient_checkpointing`, `checkpointing`, `training`, `device`,
`dtype` and `num_layers` from it.

- `StepContext`: what every layer of one step shares (positions, rotary tables, mask, cache, ...).
- `depth_pass`: the one depth loop, over per-layer actions. Its policy is a router, asked at every
  layer (`forward`: training, teacher forcing; the prefill and decode steps of per-token modes), or a
  `DecodePlan`, a router resolved ahead of time where the route is known before a decode step
  (static routes, one route per sequence): the sampling loop (`adalas.generation`) and
  self-speculative decoding (`adalas.speculative`) then ask no router. `cached_step` wraps it with
  the cache's bookkeeping; `prefill` runs a static route's prompt. One layer body (`_layer_body`)
  serves every action.
- Cache setup (`new_cache`) and the step's attention mask (`build_attention_mask`, `step_mask`).

Where compute is saved: a layer that no token runs costs only its key/value projection
(`kv_fill="propagate"` in modes that decide per token) or nothing (`"mask"`, and every mode with one
route per sequence, where no later token reads them); in a one-token decode step with per-row
decisions, the layer runs only on the rows that chose it (gather/scatter, `_gathered`) and the
others get keys/values only. In an uncached forward (training, teacher forcing) where only some
tokens run a layer (the prompt at full depth, `stochastic`, `early_exit` with labels), its queries,
attention output and MLP run on those tokens' rows only, in forward and backward (`_runner_body`),
and keys/values come from every token that another one reads. Where it is not: learned controllers
in training (the straight-through estimator needs every token's layer output), a multi-token cached
step with per-token decisions (prefill with `skip_prompt=True`, speculative verification), and
wherever the cost model says gathering does not pay: there the layer runs for every token and the
skipping ones keep their input.

Prompt tokens (label -100, or every token of a forward without labels, or the prefill) run every
layer unless `skip_prompt=True`.
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .actions import RUN, Action, DecodePlan, Kind
from .cache import KVCache
from .cost import CostModel
from .families import Family


@dataclass
class StepContext:
    """What every layer of one forward step shares. `rows()` narrows it to a subset of the batch."""

    family: Family
    position_ids: torch.Tensor  # (B, T)
    input_ids: torch.Tensor  # (B, T)
    row_ids: torch.Tensor  # (B,) row of each sequence in the call (seeds per-sequence randomness)
    rotary: Any
    mask: torch.Tensor | None  # (B, 1, T, T_kv) bool, or None = causal over all keys
    prompt: torch.Tensor | bool  # (B, T) bool, or one bool for every token: what random keys read
    full: torch.Tensor | bool = False  # (B, T) bool or one bool: tokens that run every layer (the prompt,
    # unless skip_prompt); a separate fact from `prompt`, so skip_prompt leaves the keys as they are
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
            full=self.full if isinstance(self.full, bool) else self.full[idx],
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


_COSTS: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()  # model -> (key, CostModel)


def decode_costs(model) -> CostModel:
    """The decode cost model of `adalas.cost` for this model's shapes and device (cached per model)."""
    key = (model.device.type, model.num_layers)
    cached = _COSTS.get(model)
    if cached is None or cached[0] != key:
        cached = _COSTS[model] = (key, CostModel.of(model))
    return cached[1]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# -- the depth loop -------------------------------------------------------------------------------
class LayerPass(NamedTuple):
    h: torch.Tensor  # (B, T, D) the last state
    gates: torch.Tensor | None  # (B, T, L) layer gates, when collected
    hidden: tuple | None  # the states entering each layer, plus the last, when asked for


def depth_pass(model, policy, positions: torch.Tensor, tokens: torch.Tensor | None = None, *,
               h: torch.Tensor | None = None, cache: KVCache | None = None, attention_mask: torch.Tensor | None = None,
               prompt: torch.Tensor | bool = False, state: Any = None, row_ids: torch.Tensor | None = None,
               start: int = 0, stop: int | None = None, capture: dict[int, Any] | None = None, collect: bool = False,
               output_hidden_states: bool = False, count_active: tuple | None = None) -> LayerPass:
    """The depth loop: layers start..stop-1 of one step over (B, T) tokens at `positions`, each doing
    the action `policy` gives it (a router, asked at every layer; or a `DecodePlan`, a router resolved
    ahead of time, which also stops above its last layer that does anything).

    Starts from the embeddings of `tokens`, or from `h` (B, T, D), the state entering layer `start`.
    `cache`: None for an uncached pass (`attention_mask` then gives the padding), else the step
    writes slots from `cache.length` (the caller appends the mask and advances: `cached_step`).
    `prompt`: True (every token is a prompt token), or (B, T) bool; prompt tokens run every layer
    unless skip_prompt. `state`: the router's per-sequence state. `capture`: {k: None} gets the
    state after k layers. `collect`: the layer gates (B, T, L); `output_hidden_states`: the states.
    `count_active` (active (B,), n_active): count this decode step in `model.usage`."""
    fam = model.family
    if h is None:
        h = fam.embed(tokens, positions)  # (B, T, D)
    B, T = positions.shape
    ctx = StepContext(
        family=fam, position_ids=positions, input_ids=tokens if tokens is not None else positions,
        row_ids=torch.arange(B, device=positions.device) if row_ids is None else row_ids,
        rotary=fam.rotary(h, positions),
        mask=build_attention_mask(model, attention_mask, None, T) if cache is None else step_mask(model, cache, T),
        prompt=prompt, full=False if model.depth.skip_prompt else prompt, cache=cache, sequence_state=state,
        initial=h, windows=fam.windows,
        real=None if cache is not None or attention_mask is None else attention_mask.bool())
    layers = list(fam.layers())
    end = len(layers) if policy.stop is None else policy.stop
    end = end if stop is None else min(stop, end)
    full = ctx.full
    gates: list[torch.Tensor] | None = [] if collect else None
    hidden = [h] if output_hidden_states else None
    for i in range(start, end):
        if capture is not None and i in capture:
            capture[i] = h
        if full is True:  # prompt-only step: every layer runs; per-sequence routers read the prompt
            policy.observe(i, h, ctx)
            action = RUN
        else:
            action = policy.decide(i, h, ctx)
            if full is not False:
                action = action.with_full(full)
        if count_active is not None:
            model.usage.count_layer(i, action.count(*count_active))
        h = _apply(model, i, layers[i], h, ctx, action)
        if gates is not None:
            gates.append(action.gate(h))
        if hidden is not None:
            hidden.append(h)
    if capture is not None:
        for layer_idx in capture:
            if layer_idx >= end and capture[layer_idx] is None:
                capture[layer_idx] = h  # layers above `end` leave the state unchanged
    if count_active is not None and "head_evals" in ctx.scratch:
        evals, (active, _) = ctx.scratch["head_evals"][:, -1], count_active  # (B,)
        model.usage.add_head_evals((evals if active is None else evals * active).sum())
    return LayerPass(h, torch.stack(gates, dim=-1) if gates is not None else None,
                     tuple(hidden) if hidden is not None else None)


def cached_step(model, policy, cache: KVCache, positions: torch.Tensor, tokens: torch.Tensor,
                attention_mask: torch.Tensor, all_valid: bool | None = None, **kwargs: Any) -> torch.Tensor:
    """One cached step over new tokens (prefill or decode): records their mask (`all_valid=True`: it
    has no zero), runs `depth_pass`, advances the cache. Returns the final states (B, T, D)."""
    cache.append_mask(attention_mask, all_valid=all_valid)
    h = depth_pass(model, policy, positions, tokens, cache=cache, **kwargs).h
    cache.advance(tokens.shape[1])
    return h


def _apply(model, i: int, layer: nn.Module, h: torch.Tensor, ctx: StepContext, action: Action) -> torch.Tensor:
    """Layer i under `action`: whole; skipped (`_skip`); on the runners' rows or tokens (`_gathered`,
    `_gathered_tokens`); or mixed by straight-through gates."""
    kind = action.kind
    if kind is Kind.RUN:
        return _layer(model, i, layer, h, ctx)
    if kind is Kind.SKIP:
        _skip(model, i, layer, h, ctx)
        return h
    run = action.rows  # (B, T)
    if kind is Kind.GATED:  # straight-through gates (training)
        stored = run.detach() > 0.5 if model.depth.masks_skipped_kv else None
        return h + run.unsqueeze(-1) * (_layer(model, i, layer, h, ctx, stored) - h)
    if ctx.cache is not None and ctx.num_tokens == 1:
        return _gathered(model, i, layer, h, ctx, run[:, 0])
    if ctx.cache is None:
        return _gathered_tokens(model, i, layer, h, ctx, run)
    stored = run if model.depth.masks_skipped_kv else None
    return torch.where(run.unsqueeze(-1), _layer(model, i, layer, h, ctx, stored), h)


def _gathered_tokens(model, i, layer, h, ctx, run: torch.Tensor) -> torch.Tensor:
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
    compact = model.depth.masks_skipped_kv or not follows
    rows = runs.numel()
    gather = model.gather_tokens
    if gather is None:
        gather = decode_costs(model).train_gather_pays(n_run, n_run if compact else rows, rows)
    if not gather:
        stored = run if model.depth.masks_skipped_kv else None
        return torch.where(run.unsqueeze(-1), _layer(model, i, layer, h, ctx, stored), h)
    return _layer(model, i, layer, h, ctx, runs=(runs, counts, most, compact))


def _gathered(model, i, layer, h, ctx, run_rows: torch.Tensor) -> torch.Tensor:
    """A decode step where some rows run layer i: run it on those rows only (gather/scatter), or,
    where the cost model says gathering does not pay (few rows: reading the weights dominates),
    on every row, keeping the runners' outputs. Both give the same outputs: a full layer computes
    the skippers' keys/values from the state that reaches it, as a skipped layer does under
    propagate; under mask they are marked not stored; and with one route per sequence nothing
    ever reads them."""
    n_run = int(run_rows.sum())
    if n_run == run_rows.numel():
        return _layer(model, i, layer, h, ctx)
    if n_run == 0:
        _skip(model, i, layer, h, ctx)
        return h
    if not decode_costs(model).gather_pays(n_run, run_rows.numel(), model.depth.stores_skipped_kv):
        stored = run_rows[:, None].expand(h.shape[:2]) if model.depth.masks_skipped_kv else None
        return torch.where(run_rows.view(-1, 1, 1), _layer(model, i, layer, h, ctx, stored), h)
    run_idx = run_rows.nonzero().flatten()
    skip_idx = (~run_rows).nonzero().flatten()
    _skip(model, i, layer, h[skip_idx], ctx.rows(skip_idx))
    out = _layer(model, i, layer, h[run_idx], ctx.rows(run_idx))
    return h.index_copy(0, run_idx, out)


def _skip(model, i, layer, h, ctx: StepContext) -> None:
    """A skipped layer: keys/values from the state that reaches it (propagate, in modes that decide
    per token), or nothing (mask, and modes with one route per sequence, where nothing reads them)."""
    if ctx.cache is None:
        return  # no later token in this forward needs them: every token skips this layer
    if not model.depth.stores_skipped_kv:
        # mask: attention ignores them; one route per sequence: no later token of the sequence
        # runs layer i to read them
        ctx.cache.mark_stored(i, False, ctx.num_tokens, ctx.cache_rows)  # a no-op unless masks_skipped_kv
        return
    k, v = model.family.kv(layer, model.family.attn_input(layer, h), ctx.rotary)
    ctx.cache.write(i, k, v, ctx.cache_rows)


def _layer(model, i, layer, h, ctx: StepContext, stored: torch.Tensor | None = None,
           runs: tuple | None = None) -> torch.Tensor:
    """Layer i, whole (`_layer_body`) or on the runners' rows (`runs`: `_runner_body`), under
    activation checkpointing where it is on."""
    body, args = (_layer_body, (stored,)) if runs is None else (_runner_body, runs)
    if model.gradient_checkpointing and model.training and torch.is_grad_enabled():
        kwargs, every_n_layers, offload = model.checkpointing
        if i % every_n_layers == 0:
            from torch.utils.checkpoint import checkpoint
            saving = torch.autograd.graph.save_on_cpu(pin_memory=True) if offload and h.device.type != "cpu" \
                else nullcontext()
            with saving:
                return checkpoint(partial(body, model), i, layer, h, ctx, *args, **kwargs)
    return body(model, i, layer, h, ctx, *args)


def _layer_body(model, i, layer, h, ctx: StepContext, stored) -> torch.Tensor:
    """One whole layer. `stored` (B, T): where attention hides skipped tokens (`masks_skipped_kv`),
    which tokens keep their keys/values."""
    fam = model.family
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


def _runner_body(model, i, layer, h, ctx: StepContext, runs: torch.Tensor, counts: torch.Tensor, Tq: int,
                 compact: bool) -> torch.Tensor:
    """Layer i for the tokens in `runs` (B, T) of an uncached pass (`counts` (B,) per row, `Tq` the
    most); the others keep h. Each row's runners are packed to the left (Tq slots; the slots past a
    row's count hold other tokens, whose outputs are dropped) for the queries, attention and output
    projection; the residual and MLP run on the runners' rows alone, then scatter back.
    Keys/values: `compact`, the runners' only (the packed slots); else every token's."""
    fam = model.family
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


def build_attention_mask(model, attention_mask: torch.Tensor | None, cache: KVCache | None, T: int):
    """(B, 1, T, T_kv) bool: real keys, causal, and each query's own position (so padded rows,
    whose outputs are never used, never attend to nothing). None when no padding exists and
    plain causal attention suffices."""
    if cache is not None:
        valid = cache.key_valid[:, :cache.length + T]
        start = cache.length
    else:
        valid = attention_mask.bool()
        start = 0
    needs_mask = model.depth.masks_skipped_kv or not bool(valid.all()) or (start > 0 and T > 1)
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


# -- the cache and the step's mask ---------------------------------------------------------------
def new_cache(model, batch_size: int, max_length: int, prompt_length: int | None = None) -> KVCache:
    """A cache for prompt + new tokens. A static route's skipped layers never store a generated token
    (under either kv_fill): they get room for the prompt only (none with skip_prompt)."""
    fam, depth = model.family, model.depth
    lengths = None
    route = depth.static_route(model.num_layers)
    if route is not None and prompt_length is not None:
        prompt_slots = 0 if depth.skip_prompt else prompt_length
        lengths = [max_length if run else prompt_slots for run in route]
    return KVCache(model.num_layers, batch_size, fam.num_kv_heads, fam.head_dim, max_length,
                   dtype=model.dtype, device=model.device, track_stored=depth.masks_skipped_kv,
                   layer_lengths=lengths)


def step_mask(model, cache: KVCache, T: int) -> torch.Tensor | None:
    """The step's attention mask, built once and shared by every layer: None for one token over a
    cache without holes; else additive (0 / -inf) unless `masks_skipped_kv` needs the bool form (the
    layers narrow it to the keys they stored). SDPA would convert a bool mask in every layer."""
    if T == 1 and not cache.has_holes and cache.stored is None:
        return None
    mask = build_attention_mask(model, None, cache, T)  # (B, 1, T, T_kv) bool, or None
    if mask is None or cache.stored is not None:
        return mask
    return torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def prefill(model, cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
            attention_mask: torch.Tensor, row_ids: torch.Tensor, capture: dict[int, Any] | None = None) -> torch.Tensor:
    """The prompt through a static route's model: every layer (or the route, with skip_prompt)."""
    depth, L = model.depth, model.num_layers
    route = depth.static_route(L) if depth.skip_prompt else [True] * L
    return cached_step(model, DecodePlan.static(route, input_ids.device), cache, positions, input_ids, attention_mask,
                       row_ids=row_ids, capture=capture)
