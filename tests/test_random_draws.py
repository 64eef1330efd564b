"""Random draws belong to the sequence: `stochastic` skips and `random_budget` routes are keyed on
(seed, the non-pad prompt token ids), never on the row's place in the batch, plus the Trainer's
step in training (`RouteKeyCallback`). Tiny random Llama (conftest)."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from adalas import AdalasForCausalLM, DepthConfig
from adalas.callbacks import RouteKeyCallback
from adalas.routers import sequence_keys, set_train_step

from conftest import LAYERS, VOCAB, tiny_llama

L8 = 8


def _model(depth: DepthConfig, layers: int = L8) -> AdalasForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    if layers == LAYERS:
        return AdalasForCausalLM.from_hf(tiny_llama(), depth).eval()
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AdalasForCausalLM.from_hf(LlamaForCausalLM(cfg).eval(), depth).eval()


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _pad(prompts, side: str = "left"):
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[r, sl], mask[r, sl] = torch.tensor(p), 1
    return ids, mask


def _training_batch(prompts):
    """Each prompt followed by 4 response tokens, right-padded as training pads, with labels on the
    response only: (sequences, input_ids, attention_mask, labels)."""
    seqs = [p + [11, 12, 13, 14] for p in prompts]
    ids, mask = _pad(seqs, side="right")
    labels = ids.masked_fill(mask == 0, -100)
    for r, p in enumerate(prompts):
        labels[r, :len(p)] = -100
    return seqs, ids, mask, labels


def _generated_routes(m, prompts) -> list[tuple[bool, ...]]:
    ids, mask = _pad(prompts)
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)
    return [tuple(r) for r in m.router.last_state.routes.tolist()]


def test_keys_depend_on_the_prompt_tokens_alone():
    a, b = [5, 6, 7], [5, 6, 8]
    ids, mask = _pad([a, b, [9, 9, 9, 9, 9]])
    keys = sequence_keys(0, ids, mask.bool())
    alone = sequence_keys(0, torch.tensor([a]), torch.ones(1, 3, dtype=torch.bool))
    assert keys[0] == alone[0] and keys[0] != keys[1]  # padding does not enter; one token changes the key
    assert sequence_keys(1, ids, mask.bool())[0] != keys[0]  # the seed does
    assert sequence_keys(0, ids, mask.bool(), step=0)[0] != keys[0] != sequence_keys(0, ids, mask.bool(), step=1)[0]
    assert keys.dtype == torch.long and bool((keys >= 0).all())


def test_random_budget_routes_are_the_same_at_any_batch_size_and_order():
    m = _model(DepthConfig(mode="random_budget", budget=4, keep_first=True, seed=3))
    prompts = _prompts(8)
    together = _generated_routes(m, prompts)
    assert _generated_routes(m, prompts[::-1]) == together[::-1]
    assert [_generated_routes(m, [p])[0] for p in prompts] == together
    assert _generated_routes(m, prompts[2:5]) == together[2:5]  # a shard
    assert len(set(together)) >= 6  # 8 prompts draw (nearly) independent routes of 35
    assert all(sum(r) == 4 and r[0] for r in together)


@torch.no_grad()
def test_stochastic_skips_are_the_same_alone_and_batched():
    """Generation (left padding) and a forward with labels (right padding, as training pads) give each
    sequence the same per-token skips as it gets alone."""
    m = _model(DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.5] * (L8 - 1), seed=1))
    prompts = _prompts(4, seed=2)
    seqs, ids, mask, labels = _training_batch(prompts)
    gates = m(input_ids=ids, attention_mask=mask, labels=labels).layer_gates  # (B, T, L)
    for r, (p, s) in enumerate(zip(prompts, seqs)):
        one = torch.tensor([s])
        lab = one.clone()
        lab[0, :len(p)] = -100
        alone = m(input_ids=one, labels=lab).layer_gates[0]
        assert torch.equal(gates[r, :len(s)], alone), r
    assert 0 < float(gates[:, :, 1:].mean()) < 1


@torch.no_grad()
def test_training_steps_draw_anew_and_the_callback_sets_the_step():
    m = _model(DepthConfig(mode="random_budget", budget=4, seed=0))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = ids.clone()
    labels[0, :3] = -100

    def route():
        return tuple(m(input_ids=ids, labels=labels).layer_gates[0, -1].tolist())

    outside = route()
    assert route() == outside  # no step: the sequence's own draw, every time
    wrapped = nn.ModuleDict({"inner": m})  # as peft or DDP wrap the model
    cb = RouteKeyCallback()
    seen = set()
    for step in range(6):
        cb.on_step_begin(None, types.SimpleNamespace(global_step=step), None, model=wrapped)
        assert m.router.train_step == step
        seen.add(route())
        cb.on_step_end(None, types.SimpleNamespace(global_step=step + 1), None, model=wrapped)
        assert m.router.train_step is None
    assert len(seen) > 1  # steps differ
    assert route() == outside
    set_train_step(m, 2)
    m.set_depth(DepthConfig(mode="random_budget", budget=4, seed=0))  # a new router starts outside training
    assert m.router.train_step is None


@pytest.mark.parametrize("mode", ["random_budget", "stochastic"])
@torch.no_grad()
def test_cached_generation_equals_recomputation_with_keyed_draws(mode):
    """The uncached forward reads the same prompt (labels -100) and so draws what generation drew."""
    depth = (DepthConfig(mode="random_budget", budget=4, seed=2) if mode == "random_budget"
             else DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.5] * (L8 - 1), seed=2))
    m = _model(depth)
    ids, mask = _pad(_prompts(3, seed=5))
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4)
    m.reset_usage()
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4)
    m.logits_from_state = orig
    full_mask = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], 1)
    labels = out.clone()
    labels[:, :ids.shape[1]] = -100
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels).logits
    T0 = ids.shape[1]
    for s, logits in enumerate(steps):
        torch.testing.assert_close(logits, ref[:, T0 - 1 + s], atol=1e-4, rtol=0)


def test_in_training_the_step_joins_the_key(tiny_files, tmp_path):
    """The Trainer with RouteKeyCallback: one sequence, trained on at every step, draws a new route each
    step (outside training it always draws the same one: see above)."""
    import json

    from transformers import TrainerCallback

    from adalas.train import run

    d, data = tiny_files
    one = tmp_path / "one.jsonl"
    one.write_text(data.read_text().splitlines()[1] + "\n")

    class Seen(TrainerCallback):
        def __init__(self):
            self.routes = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            router = model.router if hasattr(model, "router") else model.get_base_model().router
            self.routes.append(tuple(router.last_state.routes[0].tolist()))

    argv = ["--model", str(d), "--data", str(one), "--max_steps", "6", "--max_seq_length", "128",
            "--per_device_train_batch_size", "1", "--report_to", "none", "--save_strategy", "no",
            "--learning_rate", "0", "--depth", json.dumps({"mode": "random_budget", "budget": 2, "seed": 1}),
            "--output_dir", str(tmp_path / "out")]
    seen = Seen()
    assert run(argv, callbacks=[RouteKeyCallback(), seen]) == 0
    assert len(seen.routes) == 6 and len(set(seen.routes)) > 1


@torch.no_grad()
def test_a_full_depth_share_of_sequences_skips_nothing_and_the_rest_still_draw():
    """Layer dropout with `full_depth_share`: whole rows run every layer (about that share of them,
    drawn from each row's key, so the same alone and batched); the other rows' skips are unchanged."""
    probs = [0.0] + [0.5] * (L8 - 1)
    m = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1, full_depth_share=0.4))
    plain = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1))
    seqs, ids, mask, labels = _training_batch(_prompts(64, seed=4))
    gates = m(input_ids=ids, attention_mask=mask, labels=labels).layer_gates  # (B, T, L)
    plain_gates = plain(input_ids=ids, attention_mask=mask, labels=labels).layer_gates
    full_rows = [r for r, s in enumerate(seqs) if bool(gates[r, :len(s)].all())]
    assert 0.2 * 64 <= len(full_rows) <= 0.6 * 64  # about 40% of the rows
    for r, s in enumerate(seqs):
        if r not in full_rows:
            assert torch.equal(gates[r, :len(s)], plain_gates[r, :len(s)]), r
    r = full_rows[0]
    one, lab = torch.tensor([seqs[r]]), labels[r:r + 1, :len(seqs[r])]
    assert bool(m(input_ids=one, labels=lab).layer_gates.all())  # alone too
    everyone = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1, full_depth_share=1.0))
    assert bool(everyone(input_ids=ids, attention_mask=mask, labels=labels).layer_gates.all())


@torch.no_grad()
def test_a_route_pool_share_of_sequences_runs_exactly_one_pooled_route():
    """`route_pool_share`: after the full-depth share, whole rows run one route from the pool (drawn
    from the row's key: the same alone and batched); the full-depth rows stay as they were and the
    rest still drop layers token by token, exactly as without a pool."""
    probs = [0.0] + [0.5] * (L8 - 1)
    pool = [[2, 3], [5, 6, 7]]
    m = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1, full_depth_share=0.3,
                           route_pool=pool, route_pool_share=0.4))
    shared = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1, full_depth_share=0.3))
    seqs, ids, mask, labels = _training_batch(_prompts(96, seed=5))
    gates = m(input_ids=ids, attention_mask=mask, labels=labels).layer_gates  # (B, T, L)
    shared_gates = shared(input_ids=ids, attention_mask=mask, labels=labels).layer_gates
    routes = [tuple(i not in skips for i in range(L8)) for skips in pool]
    kinds, drawn_routes = {"full": 0, "pool": 0, "drop": 0}, set()
    for r, s in enumerate(seqs):
        response = gates[r, len(s) - 4:len(s)]  # the 4 response tokens (the prompt runs every layer)
        assert bool(gates[r, :len(s) - 4].all())
        if bool(shared_gates[r, :len(s)].all()):  # a full-depth row without the pool stays one
            assert bool(gates[r, :len(s)].all()), r
            kinds["full"] += 1
            continue
        token_routes = {tuple(t.tolist()) for t in response}
        if len(token_routes) == 1 and token_routes <= set(routes):
            drawn_routes |= token_routes
            kinds["pool"] += 1
            one, lab = torch.tensor([s]), labels[r:r + 1, :len(s)]
            assert torch.equal(m(input_ids=one, labels=lab).layer_gates[0], gates[r, :len(s)])  # alone too
        else:
            assert torch.equal(gates[r, :len(s)], shared_gates[r, :len(s)]), r
            kinds["drop"] += 1
    assert drawn_routes == set(routes)  # both routes drawn
    shares = {k: v / len(seqs) for k, v in kinds.items()}  # about 0.3, 0.4 and 0.3
    assert 0.15 <= shares["full"] <= 0.45 and 0.25 <= shares["pool"] <= 0.55 and 0.15 <= shares["drop"] <= 0.45, kinds
    everyone = _model(DepthConfig(mode="stochastic", skip_probs=probs, seed=1, route_pool=[[3]],
                                  route_pool_share=1.0))
    g = everyone(input_ids=ids, attention_mask=mask, labels=labels).layer_gates
    for r, s in enumerate(seqs):
        assert not bool(g[r, len(s) - 4:len(s), 3].any()) and bool(g[r, len(s) - 4:len(s), [0, 1, 2, 4, 5, 6, 7]].all())
