"""Prefill once, decode at many depths (`adalas.prompt_reuse`): a prompt kept from one config and served to
the next gives bitwise the tokens that config's own prefill gives, greedy or sampled, in every family; it
is served only where the prompt runs at full depth, for the same model and the same tokens."""
from __future__ import annotations

import pytest
import torch

from adalas import AdalasForCausalLM, DepthConfig
from adalas.prompt_reuse import PromptReuse

from conftest import BUILDERS, LAYERS, batch

SHARED = [DepthConfig(), DepthConfig(mode="static_skip", skip_layers=[1, 2]),
          DepthConfig(mode="early_exit", exit_after=2), DepthConfig(mode="static_skip", skip_layers=[3])]
NOT_SHARED = [DepthConfig(mode="static_skip", skip_layers=[1, 2], skip_prompt=True),
              DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.3] * (LAYERS - 1), seed=3)]
OPTIONS = [{"do_sample": False}, {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 5}]


def _generate(model, depth, ids, mask, options, reuse=None):
    model.set_depth(depth)
    extra = {"_prompt_reuse": reuse} if reuse is not None else {}
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, **options, **extra)


@pytest.mark.parametrize("options", OPTIONS, ids=["greedy", "sampled"])
def test_a_reused_prompt_gives_each_depth_the_tokens_of_its_own_prefill(family_name, options):
    model = AdalasForCausalLM(BUILDERS[family_name]())
    ids, mask = batch(B=3, T=9)
    alone = [_generate(model, d, ids, mask, options) for d in SHARED + NOT_SHARED]
    reuse = PromptReuse()
    shared = [_generate(model, d, ids, mask, options, reuse) for d in SHARED + NOT_SHARED]
    for depth, a, b in zip(SHARED + NOT_SHARED, alone, shared):
        assert torch.equal(a, b), depth
    assert reuse.served == len(SHARED) - 1  # the first prefills; skip_prompt and per-token depths never reuse


def test_a_prompt_is_served_again_only_for_the_same_model_and_tokens(family_name):
    model = AdalasForCausalLM(BUILDERS[family_name]())
    other = AdalasForCausalLM(BUILDERS[family_name]())  # the same weights, another model
    ids, mask = batch(B=2, T=7)
    reuse = PromptReuse()
    first = _generate(model, SHARED[0], ids, mask, OPTIONS[0], reuse)
    assert torch.equal(_generate(other, SHARED[0], ids, mask, OPTIONS[0], reuse), first) and reuse.served == 0
    changed = ids.clone()
    changed[1, -1] = (changed[1, -1] + 1) % 90 + 3
    assert torch.equal(_generate(other, SHARED[1], changed, mask, OPTIONS[0], reuse),
                       _generate(other, SHARED[1], changed, mask, OPTIONS[0]))
    assert reuse.served == 0
    unpadded = torch.ones_like(mask)  # the same tokens, another mask
    _generate(other, SHARED[1], changed, unpadded, OPTIONS[0], reuse)
    assert reuse.served == 0
    _generate(other, SHARED[2], changed, unpadded, OPTIONS[0], reuse)
    assert reuse.served == 1
