"""A teacher-forced pass that runs each layer only on the rows of the tokens that run it (gathered)
equals the pass that runs every token and keeps the runners' outputs (today's masked computation):
logits at every real position, the loss and every parameter's gradient, in fp32, on tiny random OPT
(both layouts), Llama and GPT-2 models; for static routes with the prompt at full depth, `stochastic`
(with a route pool too), `early_exit` with labels, both kv_fill values, left and right padding, and
LoRA. `learned` controllers under the straight-through estimator keep the masked computation (their
gate gradient needs the layer's output on skipped rows)."""
from __future__ import annotations

import pytest
import torch
from conftest import BUILDERS, LAYERS, VOCAB

from adalas import AdalasForCausalLM, DepthConfig

ATOL = 1e-5

DEPTHS = {
    "static_skip": dict(mode="static_skip", skip_layers=[1, 3]),
    "early_exit": dict(mode="early_exit", exit_after=2),
    "route": dict(mode="route", route=[True, False, True, False]),
    "stochastic": dict(mode="stochastic", skip_probs=[0.0] + [0.5] * (LAYERS - 1), seed=3),
    "stochastic_pool": dict(mode="stochastic", skip_probs=[0.0] + [0.5] * (LAYERS - 1), seed=3, full_depth_share=0.3,
                            route_pool=[[1], [2, 3]], route_pool_share=0.4),
    "confidence_exit": dict(mode="confidence_exit", exit_layers=[1, 2], threshold=0.02),
    "random_budget": dict(mode="random_budget", budget=2, seed=1),
}


def teacher_forced_batch(padding: str, B: int = 3, T: int = 12, prompt: int = 4, seed: int = 0):
    """Prompt + response rows of different lengths, padded on `padding` ("right" as training pads,
    "left", or "none"), labels -100 on the prompt and the padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    lengths = [T, T - 3, T - 5] if padding != "none" else [T] * B
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for b, n in enumerate(lengths[:B]):
        span = slice(0, n) if padding != "left" else slice(T - n, T)
        mask[b, span] = 1
        start = span.start
        labels[b, start + prompt:start + n] = ids[b, start + prompt:start + n]
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, labels


def run(m: AdalasForCausalLM, gather: bool, ids, mask, labels):
    """Logits, loss and every trainable parameter's gradient of one forward + backward."""
    m.gather_tokens = gather
    m.zero_grad(set_to_none=True)
    out = m(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def assert_same(m, ids, mask, labels, atol=ATOL):
    logits, loss, grads = run(m, False, ids, mask, labels)
    g_logits, g_loss, g_grads = run(m, True, ids, mask, labels)
    real = mask.bool()
    torch.testing.assert_close(g_logits[real], logits[real], atol=atol, rtol=0)
    torch.testing.assert_close(g_loss, loss, atol=atol, rtol=0)
    assert g_grads.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(g_grads[name], grads[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("padding", ["right", "left", "none"])
@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_gathered_pass_equals_masked_pass(family_name, depth, kv_fill, padding):
    m = AdalasForCausalLM.from_hf(BUILDERS[family_name](), DepthConfig(kv_fill=kv_fill, **DEPTHS[depth]))
    assert_same(m, *teacher_forced_batch(padding))


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@pytest.mark.parametrize("newer", ["qwen3", "mistral_window", "qwen2_window"])
def test_gathered_pass_on_newer_llama_layouts(newer, kv_fill):
    """Qwen3's per-head q/k norms and sliding windows shorter than the sequence (Mistral: every layer;
    Qwen2: the last two), under the gathered queries' own masks."""
    from test_families import NEWER
    for depth in ("static_skip", "stochastic", "early_exit"):
        m = AdalasForCausalLM.from_hf(NEWER[newer](), DepthConfig(kv_fill=kv_fill, **DEPTHS[depth]))
        for padding in ("right", "left"):
            assert_same(m, *teacher_forced_batch(padding))


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
def test_gathered_pass_in_training_mode_and_with_checkpointing(kv_fill):
    """model.train() (no dropout in the tiny models) and activation checkpointing take the same path."""
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"](), DepthConfig(kv_fill=kv_fill, **DEPTHS["stochastic"])).train()
    batch = teacher_forced_batch("right")
    assert_same(m, *batch)
    m.gradient_checkpointing_enable()
    assert_same(m, *batch)


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_gathered_pass_with_lora(family, kv_fill):
    """peft LoRA on every projection (GPT-2's fused c_attn included: its keys/values then go through
    the wrapped module): the adapters' gradients and the logits match."""
    peft = pytest.importorskip("peft")
    targets = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "gpt2": ["c_attn", "c_proj", "c_fc"], "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}
    for depth in ("static_skip", "stochastic"):
        m = AdalasForCausalLM.from_hf(BUILDERS[family](), DepthConfig(kv_fill=kv_fill, **DEPTHS[depth]))
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets[family], lora_dropout=0.0,
                              fan_in_fan_out=family == "gpt2", init_lora_weights=False)
        lora = peft.get_peft_model(m, cfg)
        assert_same(lora.base_model.model, *teacher_forced_batch("right"))


def test_learned_controllers_keep_the_masked_pass_in_training():
    """Straight-through gates: the same logits and gradients (controllers' included) whatever
    gather_tokens says, since the gate's gradient needs each layer's output on skipped rows; in eval
    (hard decisions, no gate gradient) the gathered pass applies and matches."""
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"](), DepthConfig(mode="learned", tau=1.0)).train()
    batch = teacher_forced_batch("right")
    results = []
    for gather in (False, True):
        torch.manual_seed(7)  # the same Gumbel noise
        results.append(run(m, gather, *batch))
    (a_logits, a_loss, a_grads), (b_logits, b_loss, b_grads) = results
    assert torch.equal(a_logits, b_logits) and torch.equal(a_loss, b_loss)
    assert any("controllers" in n for n in a_grads)
    for name in a_grads:
        assert torch.equal(a_grads[name], b_grads[name]), name
    m.eval()
    assert_same(m, *batch)


def test_padding_and_prompt_rows_only_run_what_they_must(monkeypatch):
    """With every other layer skipped and the prompt at full depth, the MLP of a skipped layer runs on
    the real prompt tokens' rows only (right padding runs nothing), and keys/values are computed for
    nothing else (no runner comes after a skipper)."""
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"](), DepthConfig(mode="static_skip", skip_layers=[1, 3]))
    ids, mask, labels = teacher_forced_batch("right")
    rows = []
    hooks = [layer.mlp.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:-1].numel()))
             for layer in m.family.layers()]
    kv_rows = []
    hooks += [layer.self_attn.k_proj.register_forward_hook(
        lambda mod, args, out: kv_rows.append(args[0].shape[:-1].numel())) for layer in m.family.layers()]
    m.gather_tokens = True
    m(input_ids=ids, attention_mask=mask, labels=labels)
    for h in hooks:
        h.remove()
    prompt = int(((labels == -100) & mask.bool()).sum())
    B, T = ids.shape
    assert rows == [B * T, prompt, B * T, prompt]
    assert kv_rows[1] == kv_rows[3] == B * 4  # packed: every row has a 4-token prompt


def test_cost_model_gathers_where_it_pays():
    from adalas.cost import CostModel
    m = AdalasForCausalLM.from_hf(BUILDERS["llama"]())
    costs = CostModel.of(m)
    assert costs.train_gather_pays(128, 128, 512)  # a quarter of the tokens run (the prompt)
    assert costs.train_gather_pays(320, 512, 512)  # 5/8 run (stochastic p=1/2 on the response)
    assert not costs.train_gather_pays(500, 512, 512)  # nearly everyone runs


def test_bench_train_on_a_tiny_model(tiny_files, tmp_path, capsys):
    """`adalas bench train` end to end on the tiny model directory: one JSON document with every
    config, ratios to both full-depth baselines, and the gathered and masked passes' equal losses."""
    import json

    from adalas.commands import bench

    out = tmp_path / "train.json"
    assert bench.main(["train", "--model", str(tiny_files[0]), "--batch", "2", "--tokens", "12", "--labels", "8",
                       "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == doc
    names = {"hf_full", "hf_half_deleted", "adalas_full", "adalas_half_skip", "adalas_half_skip_kv_mask",
             "adalas_half_skip_deleted_equiv", "adalas_stochastic", "adalas_learned", "adalas_half_skip_masked",
             "adalas_stochastic_masked", "adalas_full_response", "adalas_half_skip_response",
             "adalas_stochastic_response"}
    for key in ("vs_hf_full", "vs_adalas_full", "cpu_vs_hf_full", "cpu_vs_adalas_full"):
        assert set(doc[key]) == names
    loss = doc["loss"]
    assert loss["adalas_full"] == pytest.approx(loss["hf_full"], abs=1e-4)
    assert loss["adalas_half_skip_deleted_equiv"] == pytest.approx(loss["hf_half_deleted"], abs=1e-4)
    assert loss["adalas_half_skip"] == pytest.approx(loss["adalas_half_skip_masked"], abs=1e-4)
    assert loss["adalas_stochastic"] == pytest.approx(loss["adalas_stochastic_masked"], abs=1e-4)
    for name in ("full", "half_skip", "stochastic"):  # logits only where a label follows: the same loss
        assert loss[f"adalas_{name}_response"] == pytest.approx(loss[f"adalas_{name}"], abs=1e-4)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["train", "--batch", "x"])
    args = ["train", "--model", str(tiny_files[0]), "--batch", "2", "--tokens", "12", "--labels", "8", "--repeats", "1"]
    assert bench.main(args + ["--cases", "adalas_full_response", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["loss"]) == {"hf_full", "adalas_full", "adalas_full_response"}
    with pytest.raises(ValueError, match=r"--cases: unknown config\(s\) adalas_everything"):
        bench.main(args + ["--cases", "adalas_everything"])
