"""The decoding loop: prefill at full depth (the prompt), then one token per step at the chosen depth.

Hugging Face semantics: left-padded batches, greedy or sampling (temperature, top-k, top-p,
repetition penalty through transformers' own logits processors), `max_new_tokens`,
`min_new_tokens`, `eos_token_id` (int or list), finished rows padded with `pad_token_id`, extra
`logits_processor` / `stopping_criteria`, `stop_strings` (with `tokenizer`); options left unset take
the model's generation_config, then transformers' defaults. Unsupported options (beam search, ...) raise ValueError
instead of being ignored. The cache is preallocated for prompt + max_new_tokens.

The fast path (`fast_path=True`, the default) serves every mode whose route is known before a decode
step: static routes (full, static_skip, early_exit, route) and one route per sequence
(random_budget, sequence). It resolves the route once into a `DecodePlan`, so a decode step is a
plain loop over layers with no router call and no per-layer bookkeeping (usage is counted once, at
the end); a skipped layer costs one branch plus its key/value projection under `kv_fill="propagate"`.
It runs the same layer body as the depth loop in `model.py`, with the family's fused projection
weights (`Family.fused_weights`). Per-token modes (stochastic, learned, confidence_exit) use the
depth loop itself. `draft_depth=` switches to self-speculative decoding (`adalas.speculative`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                          StoppingCriteriaList, StopStringCriteria, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from .cache import KVCache
from .model import StepContext, positions_from_mask

if TYPE_CHECKING:  # pragma: no cover
    from .model import AdalasForCausalLM

# Options transformers accepts that this loop does not implement: refuse them rather than ignore them.
_UNSUPPORTED = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "assistant_model": None,
                "num_return_sequences": 1, "prompt_lookup_num_tokens": None, "constraints": None,
                "force_words_ids": None, "guidance_scale": None, "assistant_early_exit": None}
_IGNORED = {"use_cache", "output_scores", "output_attentions", "output_hidden_states", "synced_gpus",
            "return_dict_in_generate", "generation_config"}
# transformers' defaults for options neither the caller nor the model's generation_config sets
_HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def effective_options(model, temperature: float | None, top_k: int | None, top_p: float | None,
                      repetition_penalty: float | None) -> tuple:
    """(temperature, top_k, top_p, repetition_penalty): an option left None takes the model's
    generation_config value, else transformers' default (so sampling keeps top_k=50, as there)."""
    gen_cfg = getattr(model.model, "generation_config", None)

    def default(value, name):
        value = value if value is not None else getattr(gen_cfg, name, None)
        return value if value is not None else _HF_DEFAULTS[name]

    return (default(temperature, "temperature"), default(top_k, "top_k"), default(top_p, "top_p"),
            default(repetition_penalty, "repetition_penalty"))


def build_warpers(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """The sampling warpers (temperature, top-k, top-p), in transformers' order; none for greedy."""
    procs = LogitsProcessorList()
    if do_sample:
        if temperature not in (None, 1.0):
            if temperature <= 0:
                raise ValueError(f"temperature: must be > 0 when sampling, got {temperature}")
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k not in (None, 0):
            procs.append(TopKLogitsWarper(top_k))
        if top_p not in (None, 1.0):
            procs.append(TopPLogitsWarper(top_p))
    return procs


def build_processors(model, do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                     repetition_penalty: float | None, extra: LogitsProcessorList | None,
                     attention_mask: torch.Tensor | None = None, min_new_tokens: int = 0,
                     eos: list[int] | None = None) -> LogitsProcessorList:
    """transformers' processors in transformers' order (options defaulted by `effective_options`)."""
    temperature, top_k, top_p, repetition_penalty = effective_options(model, temperature, top_k, top_p,
                                                                      repetition_penalty)
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        pad = (attention_mask != 0).int().argmax(dim=1) if attention_mask is not None else None  # left padding
        procs.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_ignore_length=pad))
    if min_new_tokens > 0 and eos and attention_mask is not None:
        procs.append(MinNewTokensLengthLogitsProcessor(attention_mask.shape[1], min_new_tokens, eos,
                                                       device=attention_mask.device))
    if extra:
        procs.extend(extra)
    procs.extend(build_warpers(do_sample, temperature, top_k, top_p))
    return procs


def _token_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


# Layer actions of a DecodePlan.
RUN = 0  # the whole layer
KV = 1  # skipped: store keys/values computed from the state that reaches it (kv_fill="propagate")
NOKV = 2  # skipped: store nothing (kv_fill="mask"; a self-speculative draft's skipped upper layers)
MIXED = 3  # some rows run it, the others skip it (one route per sequence)


class DecodePlan:
    """Per layer, what a cached step does, fixed for a whole generation (resolved once, so a decode
    step needs no router). `routes` (B or 1, L) bool: which rows run which layer (usage counting)."""

    def __init__(self, routes: torch.Tensor, skip_action: int):
        self.routes = routes
        self._index: dict[tuple, torch.Tensor] = {}
        self.actions: list[int] = []
        self.run_rows: list[torch.Tensor | None] = []
        for column in routes.unbind(1):  # (B,) per layer
            n_run = int(column.sum())
            action = RUN if n_run == column.numel() else skip_action if n_run == 0 else MIXED
            self.actions.append(action)
            self.run_rows.append(column if action == MIXED else None)
        # layers above the last one that does anything are not visited at all
        self.stop = max((i + 1 for i, a in enumerate(self.actions) if a != NOKV), default=0)

    @classmethod
    def static(cls, route: list[bool], kv_fill: str, device=None) -> "DecodePlan":
        return cls(torch.tensor([route], dtype=torch.bool, device=device), KV if kv_fill == "propagate" else NOKV)

    def layer_index(self, layers: list[int]) -> torch.Tensor:
        """The long tensor of these layer indices (cached: a decode step asks for the same ones)."""
        key = tuple(layers)
        if key not in self._index:
            self._index[key] = torch.tensor(layers, dtype=torch.long, device=self.routes.device)
        return self._index[key]

    def with_actions(self, actions: list[int]) -> "DecodePlan":
        """A copy with other actions for a static plan (a self-speculative draft)."""
        plan = DecodePlan.__new__(DecodePlan)
        plan.routes = torch.tensor([[a == RUN for a in actions]], dtype=torch.bool, device=self.routes.device)
        plan.actions, plan.run_rows, plan._index = list(actions), [None] * len(actions), {}
        plan.stop = max((i + 1 for i, a in enumerate(actions) if a != NOKV), default=0)
        return plan


def decode_plan(model: "AdalasForCausalLM", sequence_state: Any, batch_size: int) -> DecodePlan | None:
    """The plan of the model's depth for decode steps, or None for modes that decide per token."""
    L, depth = model.num_layers, model.depth
    skip = KV if depth.kv_fill == "propagate" else NOKV
    static = depth.static_route(L)
    if static is not None:
        return DecodePlan.static(static, depth.kv_fill, model.device)
    routes = _sequence_routes(sequence_state, batch_size, L)
    return DecodePlan(routes, skip) if routes is not None else None


def _sequence_routes(state: Any, batch_size: int, num_layers: int) -> torch.Tensor | None:
    """(B, L) bool when the router fixed one route per sequence: a per-sequence router's state is
    its routes (random_budget) or holds them as `.routes` (sequence, after the prefill)."""
    routes = getattr(state, "routes", state)
    if isinstance(routes, torch.Tensor) and routes.dtype == torch.bool and routes.shape == (batch_size, num_layers):
        return routes
    return None


def new_cache(model: "AdalasForCausalLM", batch_size: int, max_length: int, prompt_length: int | None = None) -> KVCache:
    """A cache for prompt + new tokens. Under kv_fill="mask" a static route's skipped layers never
    store a generated token: they get room for the prompt only (none with skip_prompt)."""
    fam, depth = model.family, model.depth
    lengths = None
    route = depth.static_route(model.num_layers)
    if depth.kv_fill == "mask" and route is not None and prompt_length is not None:
        prompt_slots = 0 if depth.skip_prompt else prompt_length
        lengths = [max_length if run else prompt_slots for run in route]
    return KVCache(model.num_layers, batch_size, fam.num_kv_heads, fam.head_dim, max_length,
                   dtype=model.dtype, device=model.device, track_stored=depth.kv_fill == "mask",
                   layer_lengths=lengths)


def _step_mask(model: "AdalasForCausalLM", cache: KVCache, T: int) -> torch.Tensor | None:
    """The step's attention mask, built once and shared by every layer: None for one token over a
    cache without holes; else additive (0 / -inf) unless kv_fill="mask" needs the bool form (the
    layers narrow it to the keys they stored). SDPA would convert a bool mask in every layer."""
    if T == 1 and not cache.has_holes and cache.stored is None:
        return None
    mask = model._attention_mask(None, cache, T)  # (B, 1, T, T_kv) bool, or None
    if mask is None or cache.stored is not None:
        return mask
    return torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def lean_step(model: "AdalasForCausalLM", cache: KVCache, positions: torch.Tensor, plan: DecodePlan,
              row_ids: torch.Tensor, tokens: torch.Tensor | None = None, h: torch.Tensor | None = None,
              start: int = 0, stop: int | None = None, capture: dict[int, Any] | None = None) -> torch.Tensor:
    """Layers start..stop-1 of one cached step over (B, T) new tokens, writing cache slots from
    `cache.length` (the caller appends the mask and advances). Starts from the token embeddings, or
    from `h` (B, T, D), the state entering layer `start`. `capture`: {k: None} gets the state after k
    layers. Returns the last state (B, T, D)."""
    fam = model.family
    if h is None:
        h = fam.embed(tokens, positions)  # (B, T, D)
    T = positions.shape[1]
    ctx = StepContext(family=fam, position_ids=positions, input_ids=tokens if tokens is not None else positions,
                      row_ids=row_ids, rotary=fam.rotary(h, positions), mask=_step_mask(model, cache, T),
                      prompt=False, cache=cache)
    layers = fam.layers()
    end = plan.stop if stop is None else min(stop, plan.stop)
    deferred, states = [], []  # skipped layers that store keys/values, and the state reaching each
    for i in range(start, end):
        if capture is not None and i in capture:
            capture[i] = h
        action = plan.actions[i]
        if action == RUN:
            h = model._layer_body(i, layers[i], h, ctx, None)
        elif action == KV:
            deferred.append(i)
            states.append(h)
        elif action == MIXED:
            h = model._gathered(i, layers[i], h, ctx, plan.run_rows[i])
    if deferred:  # no token of this step attends at a skipped layer: its keys/values can come last, batched
        k, v = fam.kv_many([layers[i] for i in deferred], torch.stack(states), ctx.rotary)
        cache.write_layers(plan.layer_index(deferred), k, v)
    if capture is not None:
        for layer_idx in capture:
            if layer_idx >= end and capture[layer_idx] is None:
                capture[layer_idx] = h  # layers above `end` leave the state unchanged
    return h


def prefill(model: "AdalasForCausalLM", cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
            attention_mask: torch.Tensor, row_ids: torch.Tensor, capture: dict[int, Any] | None = None) -> torch.Tensor:
    """The prompt through a static route's model: every layer (or the route, with skip_prompt)."""
    depth, L = model.depth, model.num_layers
    route = depth.static_route(L) if depth.skip_prompt else [True] * L
    plan = DecodePlan.static(route, depth.kv_fill, input_ids.device)
    cache.append_mask(attention_mask)
    h = lean_step(model, cache, positions, plan, row_ids, tokens=input_ids, capture=capture)
    cache.advance(input_ids.shape[1])
    return h


def add_usage(model: "AdalasForCausalLM", plan: DecodePlan, row_steps: torch.Tensor) -> None:
    """Count the decode steps of a fast-path generation: `row_steps` (B,) steps each row ran while
    active (the tokens themselves were counted step by step in `model._usage_tokens`)."""
    runs = (row_steps[:, None] * plan.routes).sum(0).tolist()  # (L,) with routes (B or 1, L)
    if len(model._usage_runs) < len(runs):
        model._usage_runs += [0] * (len(runs) - len(model._usage_runs))
    for i, r in enumerate(runs):
        model._usage_runs[i] = model._usage_runs[i] + r


def resolve_eos_pad(model, eos_token_id, pad_token_id) -> tuple[list[int], int]:
    gen_cfg = getattr(model.model, "generation_config", None)
    eos = _token_list(eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None))
    if pad_token_id is None:
        pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return eos, pad_token_id


@torch.no_grad()
def generate(model: "AdalasForCausalLM", input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 20, min_new_tokens: int = 0, do_sample: bool = False,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, seed: int | None = None,
             logits_processor: LogitsProcessorList | None = None,
             stopping_criteria: StoppingCriteriaList | None = None, stop_strings: str | list[str] | None = None,
             tokenizer: Any = None, draft_depth: Any = None, num_draft_tokens: int | None = None,
             fast_path: bool = True, **kwargs: Any) -> torch.Tensor:
    """Returns (B, T_prompt + n_new) token ids, like transformers' generate. `stop_strings` needs the
    `tokenizer` (transformers' StopStringCriteria matches them against its vocabulary).

    `draft_depth` (a DepthConfig, dict, JSON, or "auto") and `num_draft_tokens` (k, or None to adapt
    it): self-speculative decoding, see `adalas.speculative`. `fast_path=False` runs every step
    through the depth loop of `model.py` with the original weights (tests compare the two)."""
    for name, value in kwargs.items():
        if name in _UNSUPPORTED and value != _UNSUPPORTED[name]:
            raise ValueError(f"generate: {name}={value!r} is not supported by adalas (greedy and sampling only)")
        if name not in _UNSUPPORTED and name not in _IGNORED:
            raise ValueError(f"generate: unknown option {name!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected (batch, length), got shape {tuple(input_ids.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens: must be >= 0, got {min_new_tokens!r}")
    eos, pad_token_id = resolve_eos_pad(model, eos_token_id, pad_token_id)

    device = model.device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if draft_depth is not None or num_draft_tokens is not None:
        from .speculative import generate_speculative
        if draft_depth is None:
            raise ValueError("num_draft_tokens: needs draft_depth= (a DepthConfig or \"auto\")")
        if logits_processor or stopping_criteria or stop_strings is not None:
            raise ValueError("draft_depth: self-speculative decoding does not take logits_processor, "
                             "stopping_criteria or stop_strings (rows accept different numbers of tokens)")
        temperature, top_k, top_p, penalty = effective_options(model, temperature, top_k, top_p, repetition_penalty)
        if penalty != 1.0:
            raise ValueError(f"repetition_penalty: {penalty} is not supported with draft_depth "
                             "(self-speculative decoding takes greedy, temperature, top_k and top_p)")
        eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None
        plain_processors = build_processors(model, do_sample, temperature, top_k, top_p, 1.0, None, attention_mask,
                                            min_new_tokens, eos)

        def plain(prefilled):  # "auto" found no draft that pays: the plain loop, from the prefill done
            return _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, plain_processors, None,
                           eos_t, pad_token_id, generator, fast_path, prefilled=prefilled)

        with model.family.fused_weights(fast_path):
            return generate_speculative(model, input_ids, attention_mask, draft_depth, num_draft_tokens,
                                        max_new_tokens, min_new_tokens, do_sample,
                                        build_warpers(do_sample, temperature, top_k, top_p), eos, pad_token_id,
                                        generator, plain=plain)
    processors = build_processors(model, do_sample, temperature, top_k, top_p, repetition_penalty, logits_processor,
                                  attention_mask, min_new_tokens, eos)
    if stop_strings is not None:
        if tokenizer is None:
            raise ValueError("stop_strings: needs tokenizer= (the model's tokenizer)")
        stop = StopStringCriteria(tokenizer, stop_strings)
        stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
    eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None
    with model.family.fused_weights(fast_path):
        return _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, processors, stopping_criteria,
                       eos_t, pad_token_id, generator, fast_path)


def _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, processors, stopping_criteria, eos_t,
            pad_token_id, generator, fast_path, prefilled: tuple[KVCache, torch.Tensor] | None = None) -> torch.Tensor:
    """`prefilled`: (cache, last states) of a static route's prefill already run (by "auto")."""
    device = input_ids.device
    B, T0 = input_ids.shape
    positions = positions_from_mask(attention_mask)
    row_ids = torch.arange(B, device=device)
    state = model.router.start(B, device)
    if prefilled is not None:
        cache, h = prefilled
    elif fast_path and model.depth.static_route(model.num_layers) is not None:
        cache = new_cache(model, B, T0 + max_new_tokens, prompt_length=T0)
        h = prefill(model, cache, input_ids, positions, attention_mask, row_ids)
    else:
        cache = new_cache(model, B, T0 + max_new_tokens, prompt_length=T0)
        h = model.step(input_ids, positions, cache, attention_mask, prompt=True, sequence_state=state)
    logits = model.logits_from_state(h[:, -1])
    plan = decode_plan(model, state, B) if fast_path else None
    row_steps = torch.zeros(B, dtype=torch.long, device=device)  # decode steps per row while active
    next_pos = positions[:, -1] + 1
    ids = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    ones = torch.ones(B, 1, dtype=attention_mask.dtype, device=device)
    for step in range(max_new_tokens):
        scores = processors(ids, logits.float())
        if do_sample:
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        if eos_t is not None:
            finished = finished | torch.isin(token, eos_t)
        if stopping_criteria:
            finished = finished | stopping_criteria(ids, scores).to(device)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        active = ~finished
        n_active = int(active.sum())
        model._usage_tokens += n_active
        if plan is None:
            h = model.step(token[:, None], next_pos[:, None], cache, ones, prompt=False, sequence_state=state,
                           active=active, n_active=n_active, count=True)
        else:
            cache.append_mask(ones, all_valid=True)
            h = lean_step(model, cache, next_pos[:, None], plan, row_ids, tokens=token[:, None])
            cache.advance(1)
            row_steps += active
        logits = model.logits_from_state(h[:, -1])
        next_pos = next_pos + 1
    if plan is not None:
        add_usage(model, plan, row_steps)
    model._last_cache_bytes = cache.peak_bytes
    return ids
