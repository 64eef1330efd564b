"""The invariants of docs/design.md (tests/test_invariants.py) and the fast path's equality with the depth
loop (tests/test_speed.py), rerun on the newer Llama-layout families: Qwen3 (per-head q/k RMSNorm,
explicit head_dim), and sliding-window attention (Mistral on every layer; Qwen2 on the layers its
`layer_types` marks), with windows shorter than the test sequences so that they matter."""
from __future__ import annotations

import pytest
import torch
from conftest import LAYERS, VOCAB, batch, positions
from test_invariants import (  # noqa: F401  (collected here again, on this module's models)
    test_cached_generation_equals_recomputation, test_early_exit_equals_truncated_model,
    test_full_equals_wrapped_model, test_full_equals_wrapped_model_without_padding,
    test_generate_matches_transformers_greedy, test_layer_usage_counts_only_active_rows,
    test_layer_usage_exact_for_static_routes, test_sampling_reproducible_with_seed,
    test_static_skip_equals_deleted_layers)
from test_speed import test_fast_path_equals_depth_loop  # noqa: F401

from adalas import AdalasForCausalLM, DepthConfig

WINDOW = 3  # shorter than every test sequence (prompts of 4-7 tokens plus new ones)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, intermediate_size=64,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)


def _perturb_norms(hf):
    """Random norm weights (they start at one), so a norm applied in the wrong place shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return hf


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    return _perturb_norms(Qwen3ForCausalLM(Qwen3Config(head_dim=16, **COMMON))).eval()  # head_dim != 32 / 4


def tiny_mistral_window():
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(sliding_window=WINDOW, **COMMON)).eval()


def tiny_qwen2_window():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2, **COMMON)
    return Qwen2ForCausalLM(cfg).eval()  # layers 2 and 3 slide, 0 and 1 attend to everything


NEWER = {"qwen3": tiny_qwen3, "mistral_window": tiny_mistral_window, "qwen2_window": tiny_qwen2_window}


@pytest.fixture(params=sorted(NEWER))
def family_name(request):
    return request.param


@pytest.fixture
def hf_model(family_name):
    return NEWER[family_name]()


def test_families_are_recognized():
    assert AdalasForCausalLM.from_hf(tiny_qwen3()).family.windows == ()
    assert AdalasForCausalLM.from_hf(tiny_mistral_window()).family.windows == (WINDOW,) * LAYERS
    assert AdalasForCausalLM.from_hf(tiny_qwen2_window()).family.windows == (None, None, WINDOW, WINDOW)


@torch.no_grad()
def test_sliding_window_matters_and_matches_transformers():
    """The window changes the logits of long sequences (so the tests above would catch ignoring it),
    and adalas follows transformers with it, padded or not."""
    hf = tiny_mistral_window()
    ids, mask = batch(B=2, T=12)
    m = AdalasForCausalLM.from_hf(hf)
    ours = m(input_ids=ids, attention_mask=mask).logits
    theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)
    hf.config.sliding_window = None  # the same weights without the window
    m.family._windows = None
    unwindowed = m(input_ids=ids, attention_mask=mask).logits
    assert (unwindowed[:, -1] - ours[:, -1]).abs().max() > 1e-3


@torch.no_grad()
def test_sliding_window_with_mask_fill_and_self_speculation():
    """kv_fill="mask" narrows a windowed layer's keys further; speculative decoding verifies over
    windowed layers: both stay exact (recomputation; the target's greedy tokens)."""
    hf = tiny_qwen2_window()
    ids, mask = batch(B=2, T=6)
    m = AdalasForCausalLM.from_hf(hf, DepthConfig(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5],
                                                  kv_fill="mask", seed=4))
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    m.logits_from_state = orig
    labels = out.clone()
    labels[:, :6] = -100
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], 1)
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels).logits
    for s, logits in enumerate(steps):
        torch.testing.assert_close(logits, ref[:, 5 + s], atol=1e-5, rtol=0)
    m.set_depth(DepthConfig())
    plain = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8)
    spec = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                      draft_depth=DepthConfig(mode="early_exit", exit_after=2), num_draft_tokens=3)
    assert torch.equal(plain, spec)
