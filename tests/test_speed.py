"""The decode fast path on tiny random models: the same greedy tokens and logits as the depth loop
without it; a skipped (token, layer) runs no attention and no MLP (forward hooks that only count);
fused weights follow in-place updates and stay off for wrapped (LoRA) projections; the key/value
cache of a static route under kv_fill="mask" holds only what it needs. No timing here: speed is
`adalas bench decode`'s job."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUILDERS, LAYERS, batch, positions

import adalas.cost
from adalas import AdalasForCausalLM, DepthConfig
from adalas.cache import KVCache
from adalas.routers import hash_uniform, random_route, sequence_keys

ATOL = 1e-5
MODES = {
    "full": dict(mode="full"),
    "static_skip": dict(mode="static_skip", skip_layers=[1, 2]),
    "early_exit": dict(mode="early_exit", exit_after=2),
    "route_skip_prompt": dict(mode="route", route=[False, True, True, False], skip_prompt=True),
    "random_budget": dict(mode="random_budget", budget=2, seed=3),
}


def generate_with_logits(m, ids, mask, n, **kw):
    """Greedy tokens and each step's logits (B, n, V) (an observing wrapper, as tests/test_invariants.py)."""
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    try:
        out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
    finally:
        m.logits_from_state = orig
    return out, torch.stack([s.reshape(s.shape[0], -1) for s in steps], 1)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_fast_path_equals_depth_loop(hf_model, mode, kv_fill):
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(kv_fill=kv_fill, **MODES[mode])).eval()
    ids, mask = batch(B=3, T=6)
    fast, fast_logits = generate_with_logits(m, ids, mask, 6)
    plain, plain_logits = generate_with_logits(m, ids, mask, 6, _fast_path=False)
    assert torch.equal(fast, plain)
    torch.testing.assert_close(fast_logits, plain_logits, atol=ATOL, rtol=0)
    usage = m.layer_usage()
    m.reset_usage()
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, _fast_path=False)
    assert m.layer_usage() == pytest.approx(usage)  # the fast path counts layers as the depth loop does


def test_the_fast_path_is_not_an_option():
    """generate() always takes the fast path where it applies; `fast_path=` is an unknown keyword."""
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"]()).eval()
    ids, mask = batch(B=1, T=4)
    with pytest.raises(ValueError, match="fast_path"):
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, fast_path=False)


def _count_rows(m):
    """Per layer and projection, the (token, row) pairs of decode steps (one new token) it processed."""
    counts = {name: [0] * m.num_layers for name in ("q_proj", "k_proj", "v_proj", "o_proj", "mlp")}
    handles = []
    for i, layer in enumerate(m.family.layers()):
        mods = {"q_proj": layer.self_attn.q_proj, "k_proj": layer.self_attn.k_proj,
                "v_proj": layer.self_attn.v_proj, "o_proj": layer.self_attn.o_proj, "mlp": layer.mlp}
        for name, mod in mods.items():
            def hook(module, args, output, name=name, i=i):
                if args[0].shape[1] == 1:  # decode steps only (the prefill runs the prompt at full depth)
                    counts[name][i] += args[0].shape[0]
            handles.append(mod.register_forward_hook(hook))
    return counts, handles


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@pytest.mark.parametrize("mode", ["static_skip", "random_budget", "stochastic"])
@torch.no_grad()
def test_skipped_layers_run_no_attention_or_mlp(kv_fill, mode, monkeypatch):
    """Hooks count what each layer's q/k/v/o projections and MLP process in decode steps: a layer
    runs exactly on the (row, step) pairs its route gives it; a skipped one runs only k/v (propagate)
    or nothing (mask). A layer some rows of a step run is run on those rows only (gather/scatter)
    where the cost model says it pays, else on every row with the runners' outputs kept: both give
    the same tokens."""
    cfg = {"static_skip": dict(mode="static_skip", skip_layers=[1, 3]),
           "random_budget": dict(mode="random_budget", budget=2, seed=5),
           "stochastic": dict(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5], seed=2)}[mode]
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"](), DepthConfig(kv_fill=kv_fill, **cfg)).eval()
    B, T, n = 3, 6, 6
    ids, mask = batch(B=B, T=T)
    steps = n - 1  # the first new token comes from the prefill
    keys = sequence_keys(cfg.get("seed", 0), ids, mask.bool())  # (B,): (seed, each row's prompt tokens)
    if mode == "stochastic":  # the router's own draws: hash of (row key, position, layer)
        pos = positions(mask)[:, -1:] + 1 + torch.arange(steps)  # (B, steps) decode positions
        runs = torch.stack([hash_uniform(keys[:, None], pos, i) >= p
                            for i, p in enumerate(cfg["skip_probs"])], -1)  # (B, steps, L)
    elif mode == "random_budget":
        routes = torch.stack([random_route(LAYERS, 2, False, k) for k in keys.tolist()])  # (B, L): from the key alone
        runs = routes[:, None, :].expand(B, steps, LAYERS)
    else:
        runs = torch.tensor([i not in cfg["skip_layers"] for i in range(LAYERS)]).expand(B, steps, LAYERS)
    assert 0 < int(runs.sum()) < B * steps * LAYERS
    outputs = {}
    for strategy, margin in (("gather", 1e9), ("every_row", 0.0)):
        monkeypatch.setattr(adalas.cost, "GATHER_MARGIN", margin)
        counts, handles = _count_rows(m)
        try:
            outputs[strategy] = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n)
        finally:
            for h in handles:
                h.remove()
        if strategy == "gather":
            expected = runs.sum((0, 1)).tolist()
        else:  # a layer any row of a step runs is run on all B rows
            expected = (runs.any(0).sum(0) * B).tolist()
        for name in ("q_proj", "o_proj", "mlp"):
            assert counts[name] == expected, (strategy, name)
        kv = [B * steps] * LAYERS if kv_fill == "propagate" and mode == "stochastic" else expected  # see test_compat
        assert counts["k_proj"] == kv and counts["v_proj"] == kv, strategy
    assert torch.equal(outputs["gather"], outputs["every_row"])


@torch.no_grad()
def test_fused_weights_follow_updates_and_skip_wrapped_projections():
    hf = BUILDERS["llama"]()
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(hf.lm_head.weight.shape))  # untied: varied tokens
    m = AdalasForCausalLM.from_hf(hf).eval()
    ids, mask = batch(B=2, T=5)

    def both():  # the last step's logits, fast path and depth loop
        return (generate_with_logits(m, ids, mask, 4)[1][:, -1],
                generate_with_logits(m, ids, mask, 4, _fast_path=False)[1][:, -1])

    fast, plain = both()
    torch.testing.assert_close(fast, plain, atol=ATOL, rtol=0)
    layer = m.family.layers()[1]
    layer.self_attn.q_proj.weight.mul_(-30.0)  # an in-place update (as an optimizer step) invalidates the copy
    layer.mlp.up_proj.weight.mul_(20.0)
    fast2, plain2 = both()
    torch.testing.assert_close(fast2, plain2, atol=ATOL, rtol=0)
    assert (fast2 - fast).abs().max() > 1e-3
    with m.family.fused_weights():
        assert layer in m.family.active
    m.train()
    with m.family.fused_weights():
        assert not m.family.active  # training never sees fused copies
    m.eval()
    with torch.enable_grad(), m.family.fused_weights():
        assert not m.family.active

    from peft import LoraConfig, get_peft_model
    get_peft_model(hf, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], lora_alpha=4))  # in place
    for name, p in hf.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    with m.family.fused_weights():
        assert not m.family.active  # LoRA-wrapped projections are called as modules
    fast3, plain3 = both()
    torch.testing.assert_close(fast3, plain3, atol=ATOL, rtol=0)
    assert (fast3 - fast2).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama"])
@torch.no_grad()
def test_fused_copies_are_freed_after_generate(family):
    """generate() builds fused q/k/v and gate/up copies (and the CPU head copy) for its own decode
    steps and frees them when it returns: nothing but the parameters stays referenced afterwards (for
    a large model on a GPU, keeping them was an out-of-memory error). `hold_fused()` keeps them across
    the calls inside it (evaluation loops), built once, and frees them at its end."""
    import gc
    import weakref

    hf = BUILDERS[family]()
    m = AdalasForCausalLM.from_hf(hf).eval()
    ids, mask = batch(B=1, T=5, pad=False)
    weights = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    seen: list[weakref.ref] = []
    orig = m.logits_from_state

    def watch(h):  # inside generate: the copies in use
        seen.extend(weakref.ref(t) for f in m.family.active.values() for w, b in f.values()
                    for t in (w, b) if t is not None)
        return orig(h)

    m.logits_from_state = watch
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)
    if family == "llama":
        assert seen  # the fast path fused something
    gc.collect()
    assert all(r() is None for r in seen)
    assert m.family.fused_bytes() == 0 and not m.family.active
    assert sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) == weights
    with m.family.hold_fused():
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)
        held = m.family.fused_bytes()
        first = [r() for r in seen[-1:]]
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)
        assert m.family.fused_bytes() == held
        if family == "llama":
            assert held > 0 and seen[-1]() is first[0]  # built once for both calls
    assert m.family.fused_bytes() == 0


@torch.no_grad()
def test_mask_cache_holds_only_what_a_static_route_stores():
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"]()).eval()
    ids, mask = batch(B=2, T=6)
    sizes = {}
    for name, cfg in {"full": DepthConfig(),
                      "exit_mask": DepthConfig(mode="early_exit", exit_after=2, kv_fill="mask"),
                      "exit_mask_skip_prompt": DepthConfig(mode="early_exit", exit_after=2, kv_fill="mask",
                                                           skip_prompt=True),
                      "exit_propagate": DepthConfig(mode="early_exit", exit_after=2)}.items():
        m.set_depth(cfg)
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10)
        sizes[name] = m.usage.last_cache_bytes
    per_slot = sizes["full"] // (LAYERS * 16)  # bytes per (layer, slot): 6 prompt + 10 new slots
    assert sizes["exit_propagate"] == sizes["exit_mask"]  # a static route stores no skipped keys/values either way
    assert sizes["exit_mask"] == per_slot * (2 * 16 + 2 * 6)  # skipped layers keep the prompt only
    assert sizes["exit_mask_skip_prompt"] == per_slot * 2 * 16


def test_cache_rewind_truncate_holes_and_growth():
    c = KVCache(2, 2, 1, 4, 5, torch.float32, torch.device("cpu"), track_stored=True)
    c.append_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert c.has_holes
    c.write(0, torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    c.mark_stored(0, True, 3)
    c.advance(3)
    c.append_mask(torch.ones(2, 2), all_valid=True)
    c.advance(2)
    c.rewind(3)  # verification rewrites slots 3.. without forgetting them
    assert c.length == 3 and c.key_valid[:, 3:5].all()
    c.truncate(4)
    assert not c.key_valid[:, 4:].any() and not c.stored[:, :, 4:].any()
    c.invalidate(3, torch.tensor([[False], [True]]))  # row 0 rejected slot 3
    assert c.key_valid.tolist()[0][:4] == [False, True, True, False]
    c.ensure(9)
    assert c.max_length >= 9 and c.keys[0].shape[2] == c.max_length and c.keys[0][:, :, :3].eq(1).all()
    assert c.key_valid.shape[1] == c.max_length and c.peak_bytes == c.nbytes


def test_bench_command_parses():
    from adalas.commands import bench
    args = bench.build_parser().parse_args(["decode", "--batch_sizes", "1", "2", "--new-tokens", "4"])
    assert args.what == "decode" and args.batch_sizes == [1, 2] and args.new_tokens == 4
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["nothing"])


@pytest.mark.slow
def test_bench_decode_runs_end_to_end(tmp_path):
    """The benchmark on the embedded model, as small as it goes: one JSON document with ratios."""
    import json
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    out = tmp_path / "decode.json"
    r = subprocess.run([sys.executable, str(script), "--batch-sizes", "2", "--new-tokens", "3", "--repeats", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    sec = doc["batches"]["2"]
    assert {"full_vs_hf", "half_skip_vs_deleted", "spec_auto_vs_full"} <= set(sec["ratios"])
    assert all(sec["greedy_identical"].values())
    assert doc["memory"]["peak_rss_bytes"] > 0 and "redundant_spec_exit_half_vs_hf@2" in doc["summary"]
