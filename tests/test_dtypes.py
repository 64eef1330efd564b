"""dtypes, devices and attention implementations: the key invariants in bfloat16 on the CPU, and
adalas against the wrapped model under transformers' eager and SDPA attention.

Tolerances: bfloat16 keeps 8 significant bits (a step of 2**-9 ~ 0.002 at the tiny models' logit
scale of ~0.5), so logits compare with atol 1e-2 (about five steps; measured differences are 0 to
0.002) and the argmax must agree on every compared position. fp32 comparisons keep docs/design.md's 1e-5.
"""
from __future__ import annotations

import pytest
import torch
from conftest import BUILDERS, batch, positions, tiny_llama
from test_confidence_exit import _median_threshold
from test_invariants import delete_layers

from adalas import AdalasForCausalLM, DepthConfig

BF16_ATOL = 1e-2
FP32_ATOL = 1e-5


def close_bf16(a, b, keep=None):
    if keep is not None:
        a, b = a[keep], b[keep]
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), atol=BF16_ATOL, rtol=0)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.fixture
def bf16_model(family_name):
    return BUILDERS[family_name]().to(torch.bfloat16)


def hf_logits(hf, ids, mask):
    return hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


@torch.no_grad()
def test_from_pretrained_dtype_and_device(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")
    m = AdalasForCausalLM.from_pretrained(tmp_path / "m", dtype="bfloat16", device="cpu",
                                          depth=dict(mode="confidence_exit", threshold=0.0, exit_layers=[2]))
    assert m.dtype == torch.bfloat16 and m.device.type == "cpu"
    ids, mask = batch()
    assert m(input_ids=ids, attention_mask=mask).logits.dtype == torch.bfloat16
    m.reset_usage()
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (2, 10) and m.avg_layers() == 2
    with pytest.raises(ValueError, match="^dtype"):
        AdalasForCausalLM.from_pretrained(tmp_path / "m", dtype="int3")


@torch.no_grad()
def test_bf16_full_equals_wrapped_model(bf16_model):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(bf16_model)
    close_bf16(m(input_ids=ids, attention_mask=mask).logits, hf_logits(bf16_model, ids, mask), mask.bool())


@torch.no_grad()
def test_bf16_static_skip_equals_deleted_layers(bf16_model):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(bf16_model, DepthConfig(mode="static_skip", skip_layers=[1, 2], skip_prompt=True))
    ref = hf_logits(delete_layers(bf16_model, [0, 3]), ids, mask)
    close_bf16(m(input_ids=ids, attention_mask=mask).logits, ref, mask.bool())


BF16_CACHED = {  # per-token decisions, so decode steps gather rows and mix runs with skips
    "stochastic": dict(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5], seed=3),
    "confidence_exit": dict(mode="confidence_exit", exit_layers=[1, 2]),  # threshold: the median
}


def _cached_vs_recomputed(hf, cfg):
    ids, mask = batch(B=3, T=5)
    m = AdalasForCausalLM.from_hf(hf, cfg)
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    n_new = 4
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    m.logits_from_state = orig
    full_mask = torch.cat([mask, torch.ones(3, n_new, dtype=mask.dtype)], dim=1)
    labels = out.clone()
    labels[:, :5] = -100
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels).logits
    for s, logits in enumerate(steps):
        close_bf16(logits, ref[:, 4 + s])
    return m


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_bf16_cached_generation_equals_recomputation(bf16_model, kv_fill):
    _cached_vs_recomputed(bf16_model, DepthConfig(kv_fill=kv_fill, **BF16_CACHED["stochastic"]))


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_bf16_confidence_exit_cached_equals_recomputation(kv_fill):
    hf = tiny_llama().to(torch.bfloat16)
    ids, mask = batch(B=3, T=5)
    threshold = _median_threshold(AdalasForCausalLM.from_hf(hf), ids, mask, 4, "softmax")
    m = _cached_vs_recomputed(hf, DepthConfig(kv_fill=kv_fill, threshold=threshold, **BF16_CACHED["confidence_exit"]))
    assert 0 < m.layer_usage()[-1] < 1  # some tokens exited, some did not


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@torch.no_grad()
def test_attention_implementations(family_name, impl):
    """The wrapped model built with eager or SDPA attention: adalas (which always calls SDPA itself)
    gives its logits, padded batch included, and its greedy tokens."""
    hf = BUILDERS[family_name]()
    hf.set_attn_implementation(impl)
    assert hf.config._attn_implementation == impl
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(hf)
    keep = mask.bool()
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits[keep], hf_logits(hf, ids, mask)[keep],
                               atol=FP32_ATOL, rtol=0)
    m.set_depth(DepthConfig(mode="static_skip", skip_layers=[2], skip_prompt=True))
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits[keep],
                               hf_logits(delete_layers(hf, [0, 1, 3]), ids, mask)[keep], atol=FP32_ATOL, rtol=0)
    m.set_depth(DepthConfig())
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=2)
    assert torch.equal(m.generate(**kw), hf.generate(**kw))
