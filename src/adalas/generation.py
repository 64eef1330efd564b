"""The decoding loop: prefill at full depth (the prompt), then one token per step at the chosen depth.

Hugging Face semantics, option by option as transformers' `generate` resolves them: the caller's
keywords, else `generation_config=` (a `GenerationConfig`), else the model's own generation_config,
else transformers' defaults (20 new tokens when neither `max_new_tokens` nor `max_length` is set). Supported: left-padded batches, greedy or sampling (temperature, top-k, top-p,
repetition penalty through transformers' own logits processors), `max_new_tokens` / `max_length`,
`min_new_tokens` / `min_length`, `eos_token_id` (int or list), finished rows padded with
`pad_token_id`, extra `logits_processor` / `stopping_criteria`, `stop_strings` (with `tokenizer`),
`use_cache` (any value: the output is the same), and `return_dict_in_generate` with `output_scores`
/ `output_logits`, which return transformers' `GenerateDecoderOnlyOutput` (`sequences`, `scores`,
`logits` as transformers gives them; `cache` is None: the key/value cache is adalas' own). Any other
option set to a non-default value (beam search, `no_repeat_ngram_size`, `output_attentions`, ...),
and any unknown keyword, raises ValueError instead of being ignored, as transformers raises for
keywords it does not use. A right-padded batch (a pad after a row's last token) is refused: every
row continues from its last position. The cache is preallocated for prompt + max_new_tokens.

The fast path (always, where it applies) serves every mode whose route is known before a decode
step: static routes (full, static_skip, early_exit, route) and one route per sequence
(random_budget, sequence). The router resolves the route once into a `DecodePlan` (`Router.plan`),
so a decode step asks no router and does no per-layer bookkeeping (usage is counted once, at the
end); a skipped layer computes nothing: with one route per sequence no later token reads the
keys/values it would store, so `kv_fill` "propagate" and "mask" compute the same thing
(`DepthConfig.stores_skipped_kv`). Both go through the engine's one depth loop (`adalas.engine`),
the plan with the family's fused projection weights (`Family.fused_weights`: built for the call and
freed when it returns, unless a `Family.hold_fused` block keeps them across calls). Per-token modes
(stochastic, learned, confidence_exit) ask the router at every layer of every step. `draft_depth=`
switches to self-speculative decoding (`adalas.speculative`).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import (GenerationConfig, LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                          RepetitionPenaltyLogitsProcessor, StoppingCriteriaList, StopStringCriteria,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
from transformers.generation import GenerateDecoderOnlyOutput

from .cache import KVCache
from .engine import cached_step, new_cache, positions_from_mask, prefill
from .prompt_reuse import PromptReuse
from .speculative import generate_speculative

# GenerationConfig fields this loop implements (any value), or that do not change what a decoder-only
# model generates from input ids (token ids used only to start from nothing or for encoders; how
# transformers would cache or compile: adalas has its own cache and does not compile).
_SUPPORTED = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "eos_token_id", "pad_token_id", "stop_strings", "return_dict_in_generate",
    "output_scores", "output_logits",
    "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation", "cache_config", "max_cache_len",
    "compile_config", "disable_compile", "transformers_version"})
# arguments of transformers' generate() that are not GenerationConfig fields: accepted only unset
_UNSET_ONLY = ("prefix_allowed_tokens_fn", "assistant_model", "streamer", "negative_prompt_ids",
               "negative_prompt_attention_mask", "custom_generate", "assistant_tokenizer", "past_key_values")
# the value that switches off an option transformers' defaults leave unset
_OFF = {"guidance_scale": 1.0, "min_p": 0.0}
# transformers' defaults for options neither the caller nor the model's generation_config sets
_HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def _global_defaults() -> dict[str, Any]:
    """transformers' values for generation options nobody set (`max_length=20`, `top_k=50`, ...)."""
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    if defaults is not None:
        return dict(defaults())
    return {"max_length": 20, "min_length": 0, "do_sample": False, "use_cache": True, "num_beams": 1,
            "num_return_sequences": 1, "output_scores": False, "return_dict_in_generate": False, **_HF_DEFAULTS}


def resolve_generation_config(model, generation_config: GenerationConfig | None,
                              options: dict[str, Any]) -> GenerationConfig:
    """The options of one call, as transformers resolves them: `options` (the caller's keywords), else
    `generation_config`, else the model's own generation_config, else transformers' defaults. Raises
    ValueError for an unknown keyword and for an option this loop does not implement."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(f"generation_config: expected a transformers GenerationConfig, got "
                         f"{type(generation_config).__name__}")
    cfg = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    fields = {k for k in vars(cfg) if not k.startswith("_")}
    own = getattr(model.model, "generation_config", None)
    defaults = _global_defaults()
    for name, value in (own.to_dict().items() if own is not None else ()):
        if name in fields and getattr(cfg, name) is None and value is not None:
            setattr(cfg, name, value)
    for name, value in defaults.items():
        if name in fields and getattr(cfg, name) is None:
            setattr(cfg, name, value)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"generate: unknown option(s) {', '.join(unknown)} (not used by the model; check for typos)")
    cfg.update(**given)  # transformers' own checks of the values
    for name in sorted(fields - _SUPPORTED):
        value = getattr(cfg, name)
        if value is None or value is False or value == defaults.get(name, _OFF.get(name)):
            continue
        source = ("the call" if name in given else "generation_config=" if generation_config is not None
                  and getattr(generation_config, name, None) is not None else "the model's generation_config")
        hint = "" if source == "the call" else "; pass a generation_config= that leaves it unset"
        raise ValueError(f"generate: {name}={value!r} (from {source}) is not supported by adalas (greedy and "
                         f"sampling decoding; see adalas.generation){hint}")
    return cfg


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Refuse a mask where a pad follows a row's token (right padding) or a row has no token: every
    row continues from its last position, so only left padding gives each row its own text."""
    m = attention_mask.bool()
    if bool(m.all()):
        return
    right = (m[:, :-1] & ~m[:, 1:]).any(1)  # (B,) a real token followed by a pad
    if bool(right.any()):
        row = int(right.nonzero()[0])
        raise ValueError(f"attention_mask: row {row} is right-padded (a pad follows one of its tokens); generate() "
                         f"continues every row from its last position, so pad prompts on the left "
                         f"(tokenizer.padding_side = \"left\")")
    empty = ~m.any(1)
    if bool(empty.any()):
        raise ValueError(f"attention_mask: row {int(empty.nonzero()[0])} has no token to continue from")


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
    """transformers' processors in transformers' order (options as `resolve_generation_config` gives them)."""
    procs = LogitsProcessorList()
    if repetition_penalty not in (None, 1.0):
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


def resolve_eos_pad(model, eos_token_id, pad_token_id) -> tuple[list[int], int]:
    gen_cfg = getattr(model.model, "generation_config", None)
    eos = _token_list(eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None))
    if pad_token_id is None:
        pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return eos, pad_token_id


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generation_config: GenerationConfig | None = None, logits_processor: LogitsProcessorList | None = None,
             stopping_criteria: StoppingCriteriaList | None = None, tokenizer: Any = None, seed: int | None = None,
             draft_depth: Any = None, num_draft_tokens: int | None = None, _fast_path: bool = True,
             _prompt_reuse: PromptReuse | None = None, synced_gpus: bool | None = None,
             **kwargs: Any) -> torch.Tensor | GenerateDecoderOnlyOutput:
    """Returns (B, T_prompt + n_new) token ids, like transformers' generate, or with
    `return_dict_in_generate=True` a `GenerateDecoderOnlyOutput` (`sequences`; `scores` and `logits`,
    one (B, V) float tensor per new token, when `output_scores` / `output_logits`). Options in
    `**kwargs` are transformers' (`max_new_tokens`, `do_sample`, `temperature`, ...), resolved as in
    `resolve_generation_config`. `stop_strings` needs the `tokenizer` (transformers' StopStringCriteria
    matches them against its vocabulary). `seed`: a torch generator for sampling (else the global one).

    `draft_depth` (a DepthConfig, dict, JSON, or "auto") and `num_draft_tokens` (k, or None to adapt
    it): self-speculative decoding, see `adalas.speculative`. `_fast_path=False` (internal, not
    an option: tests and `adalas bench decode` compare the two) asks the router at every layer of
    every step, with the original weights (no `DecodePlan`, no fused copies). `_prompt_reuse`
    (internal: sweeps) serves a prompt already prefilled at full depth (`adalas.prompt_reuse`)."""
    if synced_gpus:
        raise ValueError("generate: synced_gpus=True is not supported by adalas (each rank decodes on its own)")
    for name in _UNSET_ONLY:
        if kwargs.get(name) is not None:
            raise ValueError(f"generate: {name}={kwargs[name]!r} is not supported by adalas (greedy and sampling "
                             f"decoding; see adalas.generation)")
        kwargs.pop(name, None)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected (batch, length), got shape {tuple(input_ids.shape)}")
    cfg = resolve_generation_config(model, generation_config, kwargs)
    B, T0 = input_ids.shape
    max_new_tokens = _max_new_tokens(model, cfg, generation_config, kwargs, T0)
    min_new_tokens = max(cfg.min_new_tokens or 0, (cfg.min_length or 0) - T0)
    if (cfg.min_new_tokens or 0) < 0:
        raise ValueError(f"min_new_tokens: must be >= 0, got {cfg.min_new_tokens!r}")
    do_sample, temperature, top_k, top_p = bool(cfg.do_sample), cfg.temperature, cfg.top_k, cfg.top_p
    eos, pad_token_id = resolve_eos_pad(model, cfg.eos_token_id, cfg.pad_token_id)
    want_scores, want_logits = cfg.return_dict_in_generate and cfg.output_scores, \
        cfg.return_dict_in_generate and cfg.output_logits

    device = model.device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)} differs from input_ids' "
                         f"{tuple(input_ids.shape)}")
    check_left_padded(attention_mask)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if draft_depth is not None or num_draft_tokens is not None:
        if draft_depth is None:
            raise ValueError("num_draft_tokens: needs draft_depth= (a DepthConfig or \"auto\")")
        if logits_processor or stopping_criteria or cfg.stop_strings is not None:
            raise ValueError("draft_depth: self-speculative decoding does not take logits_processor, "
                             "stopping_criteria or stop_strings (rows accept different numbers of tokens)")
        if want_scores or want_logits:
            raise ValueError("draft_depth: self-speculative decoding does not return scores or logits "
                             "(output_scores, output_logits)")
        if cfg.repetition_penalty != 1.0:
            raise ValueError(f"repetition_penalty: {cfg.repetition_penalty} is not supported with draft_depth "
                             "(self-speculative decoding takes greedy, temperature, top_k and top_p)")
        eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None
        plain_processors = build_processors(model, do_sample, temperature, top_k, top_p, 1.0, None, attention_mask,
                                            min_new_tokens, eos)

        def plain(prefilled):  # "auto" found no draft that pays: the plain loop, from the prefill done
            return _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, plain_processors, None,
                           eos_t, pad_token_id, generator, _fast_path, prefilled=prefilled)[0]

        with model.family.fused_weights(_fast_path):
            ids = generate_speculative(model, input_ids, attention_mask, draft_depth, num_draft_tokens,
                                       max_new_tokens, min_new_tokens, do_sample,
                                       build_warpers(do_sample, temperature, top_k, top_p), eos, pad_token_id,
                                       generator, plain=plain)
        return GenerateDecoderOnlyOutput(sequences=ids) if cfg.return_dict_in_generate else ids
    processors = build_processors(model, do_sample, temperature, top_k, top_p, cfg.repetition_penalty,
                                  logits_processor, attention_mask, min_new_tokens, eos)
    if cfg.stop_strings is not None:
        if tokenizer is None:
            raise ValueError("stop_strings: needs tokenizer= (the model's tokenizer)")
        stop = StopStringCriteria(tokenizer, cfg.stop_strings)
        stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
    eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None
    with model.family.fused_weights(_fast_path):
        ids, scores, logits = _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, processors,
                                      stopping_criteria, eos_t, pad_token_id, generator, _fast_path,
                                      keep_scores=want_scores, keep_logits=want_logits, prompt_reuse=_prompt_reuse)
    if not cfg.return_dict_in_generate:
        return ids
    return GenerateDecoderOnlyOutput(sequences=ids, scores=scores, logits=logits)


def _max_new_tokens(model, cfg: GenerationConfig, generation_config: GenerationConfig | None,
                    options: dict[str, Any], T0: int) -> int:
    """As transformers: `max_new_tokens`; else a `max_length` someone set (the call, generation_config=,
    the model's generation_config) minus the prompt; else transformers' default max_length (20) as new
    tokens, within the model's positions."""
    if cfg.max_new_tokens is not None:
        n = cfg.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_new_tokens: must be a positive integer, got {n!r}")
        return n
    own = getattr(model.model, "generation_config", None)
    if options.get("max_length") is None and getattr(generation_config, "max_length", None) is None \
            and getattr(own, "max_length", None) is None:
        limit = model.family.max_positions
        return max(1, min(cfg.max_length, limit - T0) if limit else cfg.max_length)
    if cfg.max_length <= T0:
        raise ValueError(f"max_length: {cfg.max_length} leaves no room after the {T0}-token prompt; "
                         f"set max_new_tokens instead")
    return cfg.max_length - T0


def _decode(model, input_ids, attention_mask, max_new_tokens, do_sample, processors, stopping_criteria, eos_t,
            pad_token_id, generator, fast_path, prefilled: tuple[KVCache, torch.Tensor] | None = None,
            keep_scores: bool = False, keep_logits: bool = False, prompt_reuse: PromptReuse | None = None):
    """(ids, scores, logits): scores / logits are tuples of one (B, V) float tensor per new token
    when kept (as transformers' output_scores / output_logits), else None. `prefilled`: (cache, last
    states) of a static route's prefill already run (by "auto"); `prompt_reuse`: one kept from an
    earlier call, where the prompt runs at full depth."""
    device = input_ids.device
    B, T0 = input_ids.shape
    positions = positions_from_mask(attention_mask)
    row_ids = torch.arange(B, device=device)
    state = model.router.start(B, device)
    if prefilled is not None:
        cache, h = prefilled
    elif fast_path and model.depth.static_route(model.num_layers) is not None:
        cache = new_cache(model, B, T0 + max_new_tokens, prompt_length=T0)
        if prompt_reuse is not None and prompt_reuse.applies(model, cache):
            h = prompt_reuse.prefill(model, cache, input_ids, positions, attention_mask, row_ids)
        else:
            h = prefill(model, cache, input_ids, positions, attention_mask, row_ids)
    else:
        cache = new_cache(model, B, T0 + max_new_tokens, prompt_length=T0)
        h = cached_step(model, model.router, cache, positions, input_ids, attention_mask, prompt=True, state=state,
                        row_ids=row_ids)
    logits = model.logits_from_state(h[:, -1])
    plan = model.router.plan(state, device) if fast_path else None
    row_steps = torch.zeros(B, dtype=torch.long, device=device)  # decode steps per row while active
    next_pos = positions[:, -1] + 1
    ids = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    ones = torch.ones(B, 1, dtype=attention_mask.dtype, device=device)
    kept_scores: list[torch.Tensor] | None = [] if keep_scores else None
    kept_logits: list[torch.Tensor] | None = [] if keep_logits else None
    for step in range(max_new_tokens):
        raw = logits.to(copy=True, dtype=torch.float32)  # (B, V), as transformers hands its processors
        scores = processors(ids, raw)
        if kept_scores is not None:
            kept_scores.append(scores)
        if kept_logits is not None:
            kept_logits.append(raw)
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
        model.usage.add_tokens(n_active)
        if plan is None:  # the router at every layer; usage counted per layer
            h = cached_step(model, model.router, cache, next_pos[:, None], token[:, None], ones, all_valid=True,
                            state=state, row_ids=row_ids, count_active=(active, n_active))
        else:  # usage counted once, at the end, from the plan's routes
            h = cached_step(model, plan, cache, next_pos[:, None], token[:, None], ones, all_valid=True,
                            row_ids=row_ids)
            row_steps += active
        logits = model.logits_from_state(h[:, -1])
        next_pos = next_pos + 1
    if plan is not None:
        model.usage.add_routes(plan.routes, row_steps)
    model.usage.last_cache_bytes = cache.peak_bytes
    return ids, (tuple(kept_scores) if keep_scores else None), (tuple(kept_logits) if keep_logits else None)
