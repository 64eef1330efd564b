"""AdalasForCausalLM beyond the invariants: loss, learned controllers in training, save/load,
the Trainer, peft, and the embedded model (slow)."""
from __future__ import annotations

import pytest
import torch
from conftest import LAYERS, VOCAB, batch, tiny_gpt2, tiny_llama, tiny_opt

from adalas import AdalasForCausalLM, DepthConfig


def test_loss_matches_transformers():
    hf = tiny_llama()
    ids, _ = batch(pad=False)
    labels = ids.clone()
    labels[:, :3] = -100
    m = AdalasForCausalLM.from_hf(hf)
    ours = m(input_ids=ids, labels=labels)
    theirs = hf(input_ids=ids, labels=labels)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
    assert ours.layer_gates.shape == (2, 7, LAYERS)


@pytest.mark.parametrize("builder", [tiny_opt, lambda: tiny_opt(post_ln=True), tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("items", [None, 9])
def test_response_logits_are_the_full_logits_where_a_label_follows(builder, items):
    """Training asks for the logits at response positions only: the same values, loss and gradients as
    the full (B, T, V) logits sliced there (with left padding, on a route, the Trainer's token count)."""
    torch.manual_seed(0)
    m = AdalasForCausalLM.from_hf(builder(), DepthConfig(mode="static_skip", skip_layers=[1])).train()
    ids, mask = batch()
    labels = ids.masked_fill(mask.eq(0), -100)
    labels[:, :4] = -100
    labels[1, 6] = -100  # a hole inside a response
    follows = labels[:, 1:].ne(-100)
    full = m(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items)
    (full.loss + full.logits[:, :-1][follows].square().mean()).backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    packed = m(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items, response_logits=True)
    (packed.loss + packed.logits.square().mean()).backward()
    assert packed.logits.shape == (int(follows.sum()), VOCAB)
    torch.testing.assert_close(packed.logits, full.logits[:, :-1][follows], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed.loss, full.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed.layer_gates, full.layer_gates)
    assert want and set(want) == {n for n, p in m.named_parameters() if p.grad is not None}
    for name, grad in want.items():
        torch.testing.assert_close(dict(m.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="response_logits=True needs labels"):
        m(input_ids=ids, attention_mask=mask, response_logits=True)


@pytest.mark.parametrize("builder", [tiny_opt, tiny_llama, tiny_gpt2])
def test_labels_change_nothing_when_the_prompt_follows_the_route(builder):
    """Labels mark the prompt, which runs every layer unless skip_prompt: with skip_prompt the forward is
    the same with or without them (the route search passes them to get response logits only)."""
    m = AdalasForCausalLM.from_hf(builder(), DepthConfig(mode="static_skip", skip_layers=[1, 2], skip_prompt=True))
    ids, mask = batch()
    labels = ids.masked_fill(mask.eq(0), -100)
    labels[:, :4] = -100
    with torch.no_grad():
        plain = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        labelled = m(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    assert torch.equal(plain.logits, labelled.logits)
    assert all(torch.equal(a, b) for a, b in zip(plain.hidden_states, labelled.hidden_states))


@pytest.mark.parametrize("controller_input", ["hidden_states", "fixed", "position", "token", "initial"])
def test_learned_controllers_get_gradients(controller_input):
    torch.manual_seed(0)
    m = AdalasForCausalLM.from_hf(tiny_opt(), DepthConfig(mode="learned", controller_input=controller_input,
                                                          hidden_layers=1 if controller_input != "fixed" else 0))
    m.train()
    ids, mask = batch(pad=False)
    labels = ids.clone()
    labels[:, :2] = -100
    out = m(input_ids=ids, attention_mask=mask, labels=labels)
    cost = out.layer_gates[labels.ne(-100)].mean()
    (out.loss + cost).backward()
    grads = [p.grad for n, p in m.named_parameters() if "controller" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    gates = out.layer_gates[labels.ne(-100)]
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}  # straight-through: hard forward values


def test_learned_eval_is_deterministic():
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="learned")).eval()
    ids, mask = batch()
    labels = ids.clone()
    labels[:, :3] = -100
    a = m(input_ids=ids, attention_mask=mask, labels=labels)
    b = m(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.layer_gates, b.layer_gates)


def test_prompt_tokens_run_every_layer():
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="static_skip", skip_layers=[1, 2]))
    ids, _ = batch(pad=False)
    labels = ids.clone()
    labels[:, :3] = -100
    gates = m(input_ids=ids, labels=labels).layer_gates
    assert gates[:, :3].eq(1).all() and gates[:, 3:, [1, 2]].eq(0).all() and gates[:, 3:, [0, 3]].eq(1).all()
    assert m(input_ids=ids).layer_gates.eq(1).all()  # no labels: every token is a prompt token
    m.set_depth(DepthConfig(mode="static_skip", skip_layers=[1, 2], skip_prompt=True))
    assert m(input_ids=ids).layer_gates[..., [1, 2]].eq(0).all()


def test_stochastic_is_seeded():
    ids, _ = batch(B=4, T=20, pad=False)
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="stochastic", skip_probs=[0.5] * LAYERS,
                                                            skip_prompt=True, seed=1))
    a = m(input_ids=ids).layer_gates
    assert torch.equal(a, m(input_ids=ids).layer_gates)
    rate = 1 - a.mean().item()
    assert 0.35 < rate < 0.65
    m.set_depth(DepthConfig(mode="stochastic", skip_probs=[0.5] * LAYERS, skip_prompt=True, seed=2))
    assert not torch.equal(a, m(input_ids=ids).layer_gates)


def test_random_budget_routes_per_sequence():
    ids, _ = batch(B=6, T=5, pad=False)
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="random_budget", budget=2, keep_first=True,
                                                            skip_prompt=True, seed=4))
    gates = m(input_ids=ids).layer_gates  # (B, T, L)
    assert gates.sum(-1).eq(2).all() and gates[..., 0].eq(1).all()
    assert gates.eq(gates[:, :1]).all()  # one route per sequence, held by all its tokens
    assert len({tuple(g[0].tolist()) for g in gates}) > 1


@pytest.mark.parametrize("builder", [tiny_llama, tiny_opt, tiny_gpt2])
def test_save_and_load_restores_depth_and_controllers(tmp_path, builder):
    cfg = DepthConfig(mode="learned", controller_layers=[1, 2], controller_input="token", hidden_layers=1)
    m = AdalasForCausalLM.from_hf(builder(), cfg).eval()
    for p in m.controllers.parameters():
        torch.nn.init.normal_(p)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    m2 = AdalasForCausalLM.from_pretrained(tmp_path).eval()
    assert m2.depth == cfg
    for (n1, p1), (n2, p2) in zip(m.controllers.state_dict().items(), m2.controllers.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    ids, mask = batch()
    labels = ids.clone()
    labels[:, :3] = -100
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask, labels=labels).logits,
                               m2(input_ids=ids, attention_mask=mask, labels=labels).logits, atol=1e-6, rtol=0)
    m3 = AdalasForCausalLM.from_pretrained(tmp_path, depth=DepthConfig(mode="early_exit", exit_after=2))
    assert m3.depth.mode == "early_exit"


def test_pickle_only_checkpoint_is_refused(tmp_path):
    hf = tiny_llama()
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle.*--allow-pickle"):
        AdalasForCausalLM.from_pretrained(tmp_path)


def test_trainer_runs_and_lowers_loss(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (8, 12))
    rows = [{"input_ids": r.tolist(), "attention_mask": [1] * 12, "labels": [-100] * 4 + r[4:].tolist()} for r in ids]
    ds = Dataset.from_list(rows)
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="learned", controller_layers=[1, 2]))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=8,
                             learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=m, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_peft_lora_wraps_and_trains():
    from peft import LoraConfig, get_peft_model

    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="static_skip", skip_layers=[1]))
    pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ids, _ = batch(pad=False)
    labels = ids.clone()
    labels[:, :3] = -100
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    lora = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n, _ in lora)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora if "lora_B" in n or "lora_A" in n)
    gen = pm.base_model.model.generate(input_ids=ids, max_new_tokens=3)
    assert gen.shape == (2, 10)


@pytest.mark.parametrize("keyword", ["past_key_values", "inputs_embeds", "token_type_ids", "cache_position",
                                     "output_attentions", "no_such_option"])
def test_forward_refuses_inputs_it_would_drop(keyword):
    """A keyword forward would ignore (a cache, embeddings instead of ids, token types) is refused,
    naming it; what peft and the Trainer pass (None placeholders, return_dict, use_cache,
    num_items_in_batch) is accepted."""
    m = AdalasForCausalLM.from_hf(tiny_llama())
    ids, _ = batch(pad=False)
    value = True if keyword == "output_attentions" else torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=keyword):
        m(input_ids=ids, **{keyword: value})
    ref = m(input_ids=ids).logits
    out = m(input_ids=ids, inputs_embeds=None, past_key_values=None, token_type_ids=None, output_attentions=False,
            return_dict=True, use_cache=False, num_items_in_batch=None)
    torch.testing.assert_close(out.logits, ref)
    with pytest.raises(ValueError, match="return_dict"):
        m(input_ids=ids, return_dict=False)


@pytest.mark.slow
def test_embedded_model_loads_and_matches_transformers():
    from adalas.hub import load_hf_model, load_tokenizer

    m = AdalasForCausalLM.from_pretrained("smollm2-135m")
    assert m.num_layers == 30
    hf, _ = load_hf_model("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    enc = tok(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = m(**enc).logits
        theirs = hf(**enc, position_ids=pos).logits
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-4, rtol=1e-4)
    out = m.generate(**enc, max_new_tokens=8)
    ref = hf.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref)
