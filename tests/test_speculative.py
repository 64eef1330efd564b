"""Self-speculative decoding on tiny random models: greedy output equals the target's own greedy
output token for token (draft routes, lengths, batch sizes, left padding, rows that accept different
numbers of drafts), seeded sampling is reproducible, the acceptance rule keeps the target's
distribution, and draft and verify work are counted separately."""
from __future__ import annotations

import pytest
import torch
from conftest import BUILDERS, LAYERS, batch

from adalas import AdalasForCausalLM, DepthConfig
from adalas.speculative import _Selector
from transformers import LogitsProcessorList


def varied(family_name: str, scale: float = 0.3) -> AdalasForCausalLM:
    """A tiny model whose greedy output varies and whose early exits agree with it often, not always:
    the head is untied (a tied random model keeps repeating its input token) and the upper half's
    residual outputs are damped."""
    hf = BUILDERS[family_name]()
    out = hf.get_output_embeddings()
    out.weight = torch.nn.Parameter(torch.randn(out.weight.shape, generator=torch.Generator().manual_seed(1)))
    m = AdalasForCausalLM.from_hf(hf).eval()
    with torch.no_grad():
        for layer in list(m.family.layers())[LAYERS // 2:]:
            for proj in m.family.residual_outputs(layer):
                proj.weight.mul_(scale)
    return m


def greedy(m, ids, mask, n=12, **kw):
    return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)


DRAFTS = {
    "exit1": DepthConfig(mode="early_exit", exit_after=1),
    "exit2": DepthConfig(mode="early_exit", exit_after=2),
    "exit3": DepthConfig(mode="early_exit", exit_after=3),
    "skip_odd": DepthConfig(mode="static_skip", skip_layers=[1, 3]),
    "route": DepthConfig(mode="route", route=[True, False, True, True]),
    "skip_first": DepthConfig(mode="static_skip", skip_layers=[0]),
}


CASES = [("llama", d) for d in sorted(DRAFTS)] + [("opt", "exit2"), ("opt", "skip_first"), ("gpt2", "exit1"),
                                                   ("gpt2", "skip_odd")]


@pytest.mark.parametrize("family,draft", CASES)
@torch.no_grad()
def test_greedy_equals_full_depth(family, draft):
    m = varied(family)
    for B, pad, lengths in ((1, False, (2,)), (3, True, (1, None))):  # None: the length adapts
        ids, mask = batch(B=B, T=6, pad=pad)
        ref = greedy(m, ids, mask, n=10)
        for k in lengths:
            out = greedy(m, ids, mask, n=10, draft_depth=DRAFTS[draft], num_draft_tokens=k)
            assert torch.equal(out, ref), (B, k)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_rows_rejecting_at_different_positions(family):
    """A batch whose rows accept different numbers of drafts (holes in the shared cache), with EOS
    and max_new_tokens ending rows at different steps."""
    m = varied(family)
    ids, mask = batch(B=4, T=7)
    ref = greedy(m, ids, mask, n=16)
    m.reset_usage()
    out = greedy(m, ids, mask, n=16, draft_depth=DRAFTS["exit2"], num_draft_tokens=4)
    assert torch.equal(out, ref)
    stats = m.speculative_stats()
    assert stats["ragged_rounds"] > 0 and 0 < stats["acceptance_rate"] < 1
    eos = int(ref[1, 7 + 5])  # row 1 stops early on this token (others may too)
    plain = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    spec = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0,
                      draft_depth=DRAFTS["exit2"], num_draft_tokens=3)
    assert torch.equal(spec, plain)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_auto_equals_full_depth(family):
    for scale in (0.0, 0.3):  # 0: the upper half is the identity, so an exit there is exact and "auto" speculates
        m = varied(family, scale)
        ids, mask = batch(B=3, T=6)
        ref = greedy(m, ids, mask, n=14)
        m.reset_usage()
        assert torch.equal(greedy(m, ids, mask, n=14, draft_depth="auto"), ref)
        choice = m.speculative_stats()["choices"][-1]
        assert set(choice["agreement"]) <= set(range(1, LAYERS))
        if scale == 0.0:
            assert not choice["fallback"] and choice["exit_after"] == LAYERS // 2
            assert m.speculative_stats()["acceptance_rate"] == 1.0
        elif choice["fallback"]:  # the plain loop continued from the calibration's prefill
            assert m.speculative_stats()["plain_tokens"] == 3 * 14 and m.speculative_stats()["rounds"] == 0
            assert m.layer_usage() == [1.0] * LAYERS


@torch.no_grad()
def test_target_with_skipped_layers_and_mask():
    """The target may itself skip layers (its kv_fill applies); the draft runs a subset of them."""
    m = varied("llama")
    for kv_fill in ("propagate", "mask"):
        m.set_depth(DepthConfig(mode="static_skip", skip_layers=[2], kv_fill=kv_fill))
        ids, mask = batch(B=3, T=6)
        ref = greedy(m, ids, mask)
        for draft in (DepthConfig(mode="early_exit", exit_after=1), DepthConfig(mode="route", route=[True, True, False, False])):
            assert torch.equal(greedy(m, ids, mask, draft_depth=draft, num_draft_tokens=2), ref)


@torch.no_grad()
def test_sampling_reproducible_with_seed():
    m = varied("llama")
    ids, mask = batch(B=3, T=5)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=30, top_p=0.95,
              draft_depth=DRAFTS["exit2"], num_draft_tokens=3)
    a = m.generate(input_ids=ids, attention_mask=mask, seed=7, **kw)
    b = m.generate(input_ids=ids, attention_mask=mask, seed=7, **kw)
    c = m.generate(input_ids=ids, attention_mask=mask, seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    auto = dict(kw, draft_depth="auto", num_draft_tokens=None)
    assert torch.equal(m.generate(input_ids=ids, attention_mask=mask, seed=3, **auto),
                       m.generate(input_ids=ids, attention_mask=mask, seed=3, **auto))


def test_acceptance_keeps_the_target_distribution():
    """Draft from q, accept with min(1, p/q), else resample from max(0, p - q): the token is p-distributed
    (checked on 200k independent rows at once)."""
    g = torch.Generator().manual_seed(0)
    V, N = 5, 200_000
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])
    drafts = torch.multinomial(q.expand(N, V), 1, replacement=True, generator=g)  # (N, 1)
    sel = _Selector(True, LogitsProcessorList(), 0, None, g)
    n, after = sel.accept(drafts, q.expand(N, 1, V), p.expand(N, 2, V))
    token = torch.where(n == 1, drafts[:, 0], after)  # the first new token either way
    freq = torch.bincount(token, minlength=V).float() / N
    torch.testing.assert_close(freq, p, atol=0.005, rtol=0)


@torch.no_grad()
def test_draft_and_verify_counted_separately():
    m = varied("llama")
    ids, mask = batch(B=2, T=5, pad=False)
    m.reset_usage()
    greedy(m, ids, mask, n=10, draft_depth=DRAFTS["exit2"], num_draft_tokens=3)
    s = m.speculative_stats()
    draft, verify = s["draft_layer_usage"], s["verify_layer_usage"]
    assert all(d > 0 for d in draft[:2]) and draft[2:] == [0.0, 0.0]  # an exit after 2 layers drafts with 0, 1
    assert verify[:2] == [0.0, 0.0] and verify[2] == verify[3] > 0  # verification runs only the layers above
    assert s["rounds"] > 0 and s["drafted"] == 2 * round(s["mean_draft_length"] * s["rounds"])
    assert s["draft_avg_layers"] == pytest.approx(sum(draft))
    assert s["round_tokens"] + s["plain_tokens"] == 2 * 9  # the first token comes from the prefill
    assert m.usage.tokens == s["plain_tokens"]  # layer_usage() counts the plain decode steps only


def test_invalid_drafts_raise():
    m = varied("llama")
    ids, mask = batch(B=1, T=4, pad=False)
    with pytest.raises(ValueError, match="subset"):
        m.set_depth(DepthConfig(mode="static_skip", skip_layers=[1]))
        greedy(m, ids, mask, draft_depth=DepthConfig(mode="route", route=[True, True, False, False]))
    m.set_depth(DepthConfig())
    with pytest.raises(ValueError, match="every layer"):
        greedy(m, ids, mask, draft_depth=DepthConfig())
    with pytest.raises(ValueError, match="static route"):
        greedy(m, ids, mask, draft_depth=DepthConfig(mode="stochastic", skip_probs=[0.5] * LAYERS))
    with pytest.raises(ValueError, match="num_draft_tokens"):
        greedy(m, ids, mask, draft_depth="auto", num_draft_tokens=0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        greedy(m, ids, mask, draft_depth="auto", repetition_penalty=1.3)
    m.set_depth(DepthConfig(mode="stochastic", skip_probs=[0.5] * LAYERS))
    with pytest.raises(ValueError, match="static route"):
        greedy(m, ids, mask, draft_depth=DRAFTS["exit1"])
