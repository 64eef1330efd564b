"""The decoding loop: prefill at full depth (the prompt), then one token per step at the chosen depth.

Hugging Face semantics: left-padded batches, greedy or sampling (temperature, top-k, top-p,
repetition penalty through transformers' own logits processors), `max_new_tokens`,
`min_new_tokens`, `eos_token_id` (int or list), finished rows padded with `pad_token_id`, extra
`logits_processor` / `stopping_criteria`. Unsupported options (beam search, ...) raise ValueError
instead of being ignored. The cache is preallocated for prompt + max_new_tokens.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteriaList,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from .cache import KVCache
from .model import positions_from_mask

if TYPE_CHECKING:  # pragma: no cover
    from .model import AdalasForCausalLM

# Options transformers accepts that this loop does not implement: refuse them rather than ignore them.
_UNSUPPORTED = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "assistant_model": None,
                "num_return_sequences": 1, "prompt_lookup_num_tokens": None, "constraints": None,
                "force_words_ids": None, "guidance_scale": None, "assistant_early_exit": None}
_IGNORED = {"use_cache", "output_scores", "output_attentions", "output_hidden_states", "synced_gpus",
            "return_dict_in_generate", "generation_config", "tokenizer"}


def new_cache(model: "AdalasForCausalLM", batch_size: int, max_length: int) -> KVCache:
    fam = model.family
    return KVCache(model.num_layers, batch_size, fam.num_kv_heads, fam.head_dim, max_length,
                   dtype=model.dtype, device=model.device, track_stored=model.depth.kv_fill == "mask")


def build_processors(model, do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                     repetition_penalty: float | None, extra: LogitsProcessorList | None) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if repetition_penalty not in (None, 1.0):
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if extra:
        procs.extend(extra)
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


def _token_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@torch.no_grad()
def generate(model: "AdalasForCausalLM", input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 20, min_new_tokens: int = 0, do_sample: bool = False,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, seed: int | None = None,
             logits_processor: LogitsProcessorList | None = None,
             stopping_criteria: StoppingCriteriaList | None = None, **kwargs: Any) -> torch.Tensor:
    """Returns (B, T_prompt + n_new) token ids, like transformers' generate."""
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
    gen_cfg = getattr(model.model, "generation_config", None)
    eos = _token_list(eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None))
    if pad_token_id is None:
        pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)

    device = model.device
    input_ids = input_ids.to(device)
    B, T0 = input_ids.shape
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    positions = positions_from_mask(attention_mask)
    processors = build_processors(model, do_sample, temperature, top_k, top_p, repetition_penalty, logits_processor)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None

    cache = new_cache(model, B, T0 + max_new_tokens)
    state = model.router.start(B, device)
    h = model.step(input_ids, positions, cache, attention_mask, prompt=True, sequence_state=state)
    logits = model.logits_from_state(h[:, -1])
    next_pos = positions[:, -1] + 1
    ids = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    ones = torch.ones(B, 1, dtype=attention_mask.dtype, device=device)
    for step in range(max_new_tokens):
        scores = processors(ids, logits.float())
        if eos_t is not None and step < min_new_tokens:
            scores = scores.index_fill(1, eos_t, -float("inf"))
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
        h = model.step(token[:, None], next_pos[:, None], cache, ones, prompt=False, sequence_state=state,
                       active=active, n_active=n_active, count=True)
        logits = model.logits_from_state(h[:, -1])
        next_pos = next_pos + 1
    return ids
