"""The invariants of docs/design.md on tiny random OPT (both layouts), Llama and GPT-2 models."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import LAYERS, batch, positions

import adalas
from adalas import AdalasForCausalLM, DepthConfig

ATOL = 1e-5


def hf_logits(hf, ids, mask):
    return hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


def delete_layers(hf, keep):
    """The same model with only the layers in `keep` (what skipping must equal)."""
    m = copy.deepcopy(hf)
    layers = _layer_list(m)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    _set_layer_list(m, kept)
    m.config.num_hidden_layers = len(keep)
    if isinstance(getattr(m.config, "layer_types", None), list):  # per-layer attention kinds (sliding windows)
        m.config.layer_types = [m.config.layer_types[i] for i in keep]
    if hasattr(m.config, "n_layer"):
        m.config.n_layer = len(keep)
    return m


def _layer_list(m):
    for path in ("model.decoder.layers", "model.layers", "transformer.h"):
        obj = m
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError


def _set_layer_list(m, layers):
    if hasattr(m, "transformer"):
        m.transformer.h = layers
    elif hasattr(m.model, "decoder"):
        m.model.decoder.layers = layers
    else:
        m.model.layers = layers


def masked_close(a, b, mask, atol=ATOL):
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep], atol=atol, rtol=0)


@torch.no_grad()
def test_full_equals_wrapped_model(hf_model):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(hf_model)
    masked_close(m(input_ids=ids, attention_mask=mask).logits, hf_logits(hf_model, ids, mask), mask)


@torch.no_grad()
def test_full_equals_wrapped_model_without_padding(hf_model):
    ids, mask = batch(pad=False)
    m = AdalasForCausalLM.from_hf(hf_model)
    torch.testing.assert_close(m(input_ids=ids).logits, hf_model(input_ids=ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("skip", [[1], [0, 2], [1, 2, 3]])
@torch.no_grad()
def test_static_skip_equals_deleted_layers(hf_model, skip):
    ids, mask = batch()
    keep = [i for i in range(LAYERS) if i not in skip]
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(mode="static_skip", skip_layers=skip, skip_prompt=True))
    masked_close(m(input_ids=ids, attention_mask=mask).logits, hf_logits(delete_layers(hf_model, keep), ids, mask), mask)
    route = [i in keep for i in range(LAYERS)]
    m.set_depth(DepthConfig(mode="route", route=route, skip_prompt=True))
    masked_close(m(input_ids=ids, attention_mask=mask).logits, hf_logits(delete_layers(hf_model, keep), ids, mask), mask)


@pytest.mark.parametrize("exit_after", [1, 3])
@torch.no_grad()
def test_early_exit_equals_truncated_model(hf_model, exit_after):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(mode="early_exit", exit_after=exit_after, skip_prompt=True))
    truncated = delete_layers(hf_model, list(range(exit_after)))
    masked_close(m(input_ids=ids, attention_mask=mask).logits, hf_logits(truncated, ids, mask), mask)


def _learned(**kw):
    return DepthConfig(mode="learned", controller_layers=[1, 2, 3], **kw)


CACHED_CONFIGS = {
    "static": dict(mode="static_skip", skip_layers=[1, 2]),
    "early_exit": dict(mode="early_exit", exit_after=2),
    "route": dict(mode="route", route=[True, False, True, False]),
    "stochastic": dict(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5], seed=3),
    "random_budget": dict(mode="random_budget", budget=2, keep_first=True, seed=5),
    "learned": dict(mode="learned", controller_layers=[1, 2, 3]),
    "learned_fixed": dict(mode="learned", controller_input="fixed", hidden_layers=0),
    "learned_position": dict(mode="learned", controller_input="position", hidden_layers=1),
    "learned_token": dict(mode="learned", controller_input="token"),
    "learned_initial": dict(mode="learned", controller_input="initial"),
}


def _mixed_controllers(m):
    """Make learned controllers decide differently per token (random init may run everything)."""
    torch.manual_seed(0)
    for c in m.controllers.values():
        last = c.net[-1]
        torch.nn.init.normal_(last.weight, std=3.0)
        torch.nn.init.zeros_(last.bias)


def _assert_cached_generation_equals_recomputation(m, n_new: int = 5) -> None:
    """Each generated step's logits equal one uncached forward over prompt + output (labels -100 on
    the prompt, so the forward's prompt, and the random keys read from it, are the prefill's)."""
    ids, mask = batch(B=3, T=6)
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    m.logits_from_state = orig
    assert out.shape == (3, 6 + n_new)
    full_mask = torch.cat([mask, torch.ones(3, n_new, dtype=mask.dtype)], dim=1)
    labels = out.clone()
    labels[:, :6] = -100
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels).logits
    for s, logits in enumerate(steps):
        torch.testing.assert_close(logits, ref[:, 5 + s], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CACHED_CONFIGS))
@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_cached_generation_equals_recomputation(hf_model, name, kv_fill):
    cfg = DepthConfig(kv_fill=kv_fill, **CACHED_CONFIGS[name])
    m = AdalasForCausalLM.from_hf(hf_model, cfg).eval()
    if cfg.mode == "learned":
        _mixed_controllers(m)
    _assert_cached_generation_equals_recomputation(m)


@pytest.mark.parametrize("name", ["stochastic", "random_budget"])
@torch.no_grad()
def test_cached_generation_equals_recomputation_with_skip_prompt(hf_model, name):
    """skip_prompt=True makes the prompt follow the route, but the random key still reads the prompt
    alone (labels -100), so the uncached forward draws what generation drew."""
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(skip_prompt=True, **CACHED_CONFIGS[name])).eval()
    _assert_cached_generation_equals_recomputation(m)


@torch.no_grad()
def test_layer_usage_exact_for_static_routes(hf_model):
    ids, mask = batch(B=2, T=5)
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(mode="static_skip", skip_layers=[0, 2]))
    m.reset_usage()
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    assert m.layer_usage() == [0.0, 1.0, 0.0, 1.0]
    assert m.usage.tokens == 2 * 5  # the first new token comes from the prefill and is not counted
    m.set_depth(DepthConfig(mode="early_exit", exit_after=3))
    m.reset_usage()
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4)
    assert m.layer_usage() == [1.0, 1.0, 1.0, 0.0]
    assert sum(m.layer_usage()) == 3


@torch.no_grad()
def test_layer_usage_counts_only_active_rows(hf_model):
    """Rows that finished are not counted: force row 0 to stop at once with an EOS it must emit."""
    ids, mask = batch(B=2, T=5)
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(mode="random_budget", budget=2, seed=1))
    first = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1)[:, -1]
    m.reset_usage()
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, eos_token_id=int(first[0]), pad_token_id=0)
    usage = m.layer_usage()
    assert abs(sum(usage) - 2.0) < 1e-9  # every counted token ran exactly its budget
    assert (out[0, 6:] == 0).all()


@torch.no_grad()
def test_generate_matches_transformers_greedy(hf_model):
    ids, mask = batch(B=2, T=6)
    m = AdalasForCausalLM.from_hf(hf_model)
    ours = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=2,
                      pad_token_id=0)
    theirs = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                               eos_token_id=2, pad_token_id=0)
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_sampling_reproducible_with_seed(hf_model):
    ids, mask = batch(B=2, T=4)
    m = AdalasForCausalLM.from_hf(hf_model)
    a = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9,
                   temperature=0.8, seed=7)
    b = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9,
                   temperature=0.8, seed=7)
    assert torch.equal(a, b)


def test_unsupported_generation_option_raises(hf_model):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(hf_model)
    with pytest.raises(ValueError, match="num_beams"):
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, num_beams=4)


def test_unsupported_architecture():
    from transformers import BertConfig, BertForMaskedLM
    hf = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))
    with pytest.raises(ValueError, match="unsupported architecture 'bert'.*llama"):
        adalas.AdalasForCausalLM.from_hf(hf)
