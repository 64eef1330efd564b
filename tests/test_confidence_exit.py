"""confidence_exit (CALM-style early exit) on tiny random OPT (both layouts), Llama and GPT-2 models:
the cached-generation invariant under both kv fills, the two limits of the threshold, head-evaluation
counting, and validation."""
from __future__ import annotations

import pytest
import torch
from conftest import LAYERS, batch, tiny_gpt2, tiny_llama

from adalas import AdalasForCausalLM, DepthConfig
from adalas.routers import confidence

ATOL = 1e-5
EXITS = [1, 2]


def _median_threshold(m, ids, mask, n_new, measure: str) -> float:
    """A threshold that splits the generated tokens at the first candidate exit (random tiny models
    are unsure everywhere, so a fixed value would make every token exit or none)."""
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], n_new, dtype=mask.dtype)], dim=1)
    hidden = m(input_ids=out, attention_mask=full_mask, output_hidden_states=True).hidden_states
    conf = confidence(m.family.head(m.family.final(hidden[EXITS[0]])), measure)  # (B, T)
    values = conf[:, ids.shape[1]:].flatten().sort().values
    mid = len(values) // 2  # halfway between two neighbours: no token sits on the threshold, where a
    return float(values[mid - 1:mid + 1].mean())  # rounding difference between two paths would flip it


def _generate_with_steps(m, ids, mask, n_new):
    """Generate, keeping the logits of every step (as tests/test_invariants.py does)."""
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    try:
        out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    finally:
        m.logits_from_state = orig
    return out, steps


def _check_cached_equals_recomputation(hf, kv_fill, measure):
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(hf).eval()
    n_new = 5
    threshold = _median_threshold(m, ids, mask, n_new, measure)
    m.set_depth(DepthConfig(mode="confidence_exit", exit_layers=EXITS, threshold=threshold, measure=measure,
                            kv_fill=kv_fill))
    m.reset_usage()
    out, steps = _generate_with_steps(m, ids, mask, n_new)
    usage = m.layer_usage()
    assert usage[0] == 1.0 and 0.0 < usage[-1] < 1.0, usage  # some tokens exited, some did not
    full_mask = torch.cat([mask, torch.ones(3, n_new, dtype=mask.dtype)], dim=1)
    labels = out.clone()
    labels[:, :6] = -100
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels).logits
    for s, logits in enumerate(steps):
        torch.testing.assert_close(logits, ref[:, 5 + s], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_cached_generation_equals_recomputation(hf_model, kv_fill):
    _check_cached_equals_recomputation(hf_model, kv_fill, "softmax")


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_margin_measure_cached_generation_equals_recomputation(kv_fill):
    _check_cached_equals_recomputation(tiny_llama(), kv_fill, "margin")


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_threshold_limits(hf_model, kv_fill):
    """Above 1 no token ever exits (full depth); 0 exits every token at the first candidate (early exit)."""
    ids, mask = batch(B=2, T=5)
    n = 5
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(kv_fill=kv_fill))
    full, full_steps = _generate_with_steps(m, ids, mask, n)
    m.set_depth(DepthConfig(mode="early_exit", exit_after=EXITS[0], kv_fill=kv_fill))
    early, early_steps = _generate_with_steps(m, ids, mask, n)

    m.set_depth(DepthConfig(mode="confidence_exit", exit_layers=EXITS, threshold=1.01, kv_fill=kv_fill))
    m.reset_usage()
    out, steps = _generate_with_steps(m, ids, mask, n)
    assert torch.equal(out, full)
    for a, b in zip(steps, full_steps):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert m.avg_layers() == LAYERS
    assert m.head_evaluations() == len(EXITS)  # every candidate was checked, and the checks count

    m.set_depth(DepthConfig(mode="confidence_exit", exit_layers=EXITS, threshold=0.0, kv_fill=kv_fill))
    m.reset_usage()
    out, steps = _generate_with_steps(m, ids, mask, n)
    assert torch.equal(out, early)
    for a, b in zip(steps, early_steps):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert m.avg_layers() == EXITS[0]
    assert m.head_evaluations() == 1.0


@torch.no_grad()
def test_skip_prompt_uncached_forward_equals_early_exit(hf_model):
    """With skip_prompt every token of a forward may exit; threshold 0 is then the truncated model."""
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(mode="early_exit", exit_after=2, skip_prompt=True))
    ref = m(input_ids=ids, attention_mask=mask).logits
    m.set_depth(DepthConfig(mode="confidence_exit", exit_layers=[3, 2], threshold=0.0, skip_prompt=True))
    keep = mask.bool()
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits[keep], ref[keep], atol=ATOL, rtol=0)


def test_finished_rows_not_counted():
    ids, mask = batch(B=2, T=5)
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="confidence_exit", exit_layers=[1, 3],
                                                            threshold=1.5))
    first = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1)[:, -1]
    m.reset_usage()
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, eos_token_id=int(first[0]), pad_token_id=0)
    assert m.usage.tokens == 4  # row 0 stopped at once; row 1 fed 4 tokens after the prefill
    assert m.head_evaluations() == 2.0


@pytest.mark.parametrize("kwargs,field", [
    (dict(exit_layers=[1]), "threshold"),
    (dict(threshold=0.5), "exit_layers"),
    (dict(threshold=-0.1, exit_layers=[1]), "threshold"),
    (dict(threshold=float("nan"), exit_layers=[1]), "threshold"),
    (dict(threshold=0.5, exit_layers=[0]), "exit_layers"),
    (dict(threshold=0.5, exit_layers=[]), "exit_layers"),
    (dict(threshold=0.5, exit_layers=[2, 2]), "exit_layers"),
    (dict(threshold=0.5, exit_layers=[1], measure="entropy"), "measure"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        DepthConfig(mode="confidence_exit", **kwargs)


def test_exit_layers_checked_against_layer_count():
    cfg = DepthConfig(mode="confidence_exit", threshold=0.9, exit_layers=[1, LAYERS])
    with pytest.raises(ValueError, match="^exit_layers"):
        AdalasForCausalLM.from_hf(tiny_gpt2(), cfg)
    assert DepthConfig.from_json(cfg.to_json()) == cfg
