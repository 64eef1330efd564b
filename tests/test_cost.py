"""cost.py: FLOPs per generated token against hand counts on tiny configs."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama, tiny_opt

from adalas import AdalasForCausalLM, DepthConfig
from adalas.cost import Shapes, config_flops, flops_per_token, generation_flops

C = 10  # keys each generated token attends to


def llama_by_hand():
    """Tiny Llama: D=32, H=4, Hkv=2, Dh=8, I=64, gated MLP (3 matrices), V=96, L=4."""
    q = o = 2 * 32 * 32
    k = v = 2 * 32 * 16
    attention = 2 * 2 * 32 * C
    mlp = 2 * 3 * 32 * 64
    layer = q + k + v + o + attention + mlp  # 19712
    return layer, k + v, 2 * 96 * 32  # whole layer, keys/values only, head


def test_hand_count_tiny_llama():
    layer, kv, head = llama_by_hand()
    m = AdalasForCausalLM.from_hf(tiny_llama())
    assert Shapes.of(m) == Shapes(4, 32, 4, 2, 8, 64, 3, 96 * 32)
    assert flops_per_token(m, [1.0] * 4, "propagate", C) == 4 * layer + head == 84992
    skip = DepthConfig(mode="static_skip", skip_layers=[1, 3])
    # a route fixed per sequence stores no keys/values for skipped layers under either kv_fill (none is read)
    assert config_flops(m, skip, C)["flops_per_token"] == 2 * layer + head
    assert not config_flops(m, skip, C)["skipped_kv_computed"]
    # per-token skipping under propagate: a skipped (token, layer) costs its key/value projection
    per_token = config_flops(m, DepthConfig(mode="stochastic", skip_probs=[0.0, 1.0, 0.0, 1.0]), C,
                             layer_usage=[1.0, 0.0, 1.0, 0.0])
    assert per_token["flops_per_token"] == 2 * layer + 2 * kv + head and per_token["skipped_kv_computed"]
    masked = config_flops(m, DepthConfig(mode="static_skip", skip_layers=[1, 3], kv_fill="mask"), C)
    assert masked["flops_per_token"] == 2 * layer + head
    # half the layers skipped: the expected ratio (and 1/ratio is the speed-up bound)
    assert masked["relative_to_full"] == pytest.approx((2 * layer + head) / (4 * layer + head))
    assert masked["speedup_bound"] == pytest.approx((4 * layer + head) / (2 * layer + head))
    # confidence checks cost one head each; fractional usage counts pro rata
    exit_cfg = DepthConfig(mode="confidence_exit", threshold=0.5, exit_layers=[1, 2])
    r = config_flops(m, exit_cfg, C, layer_usage=[1.0, 0.5, 0.25, 0.25], head_evals_per_token=1.5)
    assert r["flops_per_token"] == pytest.approx(2 * layer + 2 * kv + 2.5 * head)
    assert r["avg_layers"] == 2.0


def test_hand_count_opt_and_gpt2():
    """OPT and GPT-2: 2-matrix MLPs; OPT-350m's head includes its output projection."""
    D, V = 32, 96
    for hf, I in ((tiny_opt(), 64), (tiny_gpt2(), 4 * D)):  # OPT: ffn_dim; GPT-2: n_inner unset = 4 * D
        layer = 4 * 2 * D * D + 2 * 2 * D * C + 2 * 2 * D * I
        assert flops_per_token(hf, [1.0] * 4, "mask", C) == 4 * layer + 2 * V * D
    post_ln = tiny_opt(post_ln=True)  # word_embed_proj_dim 16: head reads 16 features after a 32->16 projection
    opt_layer = 4 * 2 * D * D + 2 * 2 * D * C + 2 * 2 * D * 64
    assert flops_per_token(post_ln, [0.0, 1.0, 0.0, 0.0], "mask", C) == opt_layer + 2 * (V * 16 + 32 * 16)


def test_embedded_model_shapes_give_the_measured_bound():
    """SmolLM2-135M's shapes (built on the meta device, no weights): deleting every other layer is a
    1.66x FLOP bound and the head about 20% of the work (docs/notebook.md: 1.65x measured, 21%)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True)
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    half = config_flops(hf, DepthConfig(mode="static_skip", skip_layers=list(range(1, 30, 2)), kv_fill="mask"), 128)
    assert half["speedup_bound"] == pytest.approx(1.66, abs=0.01)
    full = config_flops(hf, DepthConfig(), 128)
    assert 2 * 576 * 49152 / full["flops_per_token"] == pytest.approx(0.20, abs=0.01)
    json.dumps(full)  # plain JSON for sweep rows


def test_measured_usage_from_generation():
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="stochastic", skip_probs=[0, 0.5, 0.5, 0.5]))
    ids = torch.randint(3, 96, (2, 5))
    m.generate(input_ids=ids, max_new_tokens=6)
    r = config_flops(m, None, C, layer_usage=m.layer_usage())
    assert r["avg_layers"] == pytest.approx(m.avg_layers()) and 0 < r["relative_to_full"] < 1


def test_generation_flops_uses_measured_usage_and_context():
    layer, kv, head = llama_by_hand()  # attention term for C = 10 keys
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="static_skip", skip_layers=[1, 3]))
    # context = prompt + half the new tokens = 6 + 8 / 2 = 10 = C
    assert generation_flops(m, None, [1.0, 0.0, 1.0, 0.0], prompt_tokens=6, output_tokens=8) == 2 * layer + head
    assert generation_flops(m, DepthConfig(mode="stochastic", skip_probs=[0.5] * 4), [1.0, 0.5, 0.5, 0.0], 6, 8) \
        == pytest.approx(2 * layer + 2 * kv + head)


def test_errors_name_the_argument():
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match="^layer_usage: required for mode 'stochastic'"):
        config_flops(m, DepthConfig(mode="stochastic", skip_probs=[0.5] * 4), C)
    with pytest.raises(ValueError, match="^head_evals_per_token"):
        config_flops(m, DepthConfig(mode="confidence_exit", threshold=0.5, exit_layers=[1]), C, layer_usage=[1.0] * 4)
    with pytest.raises(ValueError, match="^layer_usage: has 3 entries"):
        flops_per_token(m, [1.0] * 3, "propagate", C)
    with pytest.raises(ValueError, match="^kv_fill"):
        flops_per_token(m, [1.0] * 4, "zero", C)
    with pytest.raises(ValueError, match="^skip_layers"):
        config_flops(m, DepthConfig(mode="static_skip", skip_layers=[9]), C)
