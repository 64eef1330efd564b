"""DepthConfig: every mode, validation naming the field, JSON round trip."""
from __future__ import annotations

import pytest

from adalas import DepthConfig

VALID = [
    dict(mode="full"),
    dict(mode="static_skip", skip_layers=[1, 3]),
    dict(mode="stochastic", skip_probs=[0.0, 0.5, 1.0, 0.25], seed=3),
    dict(mode="stochastic", skip_probs=[0.0, 0.5, 1.0, 0.25], full_depth_share=0.25),
    dict(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.25], full_depth_share=0.5, route_pool=[[1], [2, 3]],
         route_pool_share=0.5),
    dict(mode="early_exit", exit_after=2),
    dict(mode="random_budget", budget=2, keep_first=True),
    dict(mode="route", route=[True, False, True, True]),
    dict(mode="learned", controller_layers=[1, 2], controller_input="position", tau=0.5, hidden_layers=2),
    dict(mode="static_skip", skip_layers=[0], skip_prompt=True, kv_fill="mask"),
]


@pytest.mark.parametrize("kw", VALID)
def test_json_round_trip(kw):
    cfg = DepthConfig(**kw)
    again = DepthConfig.from_json(cfg.to_json())
    assert again == cfg
    assert DepthConfig.parse(cfg.to_json()) == cfg
    assert DepthConfig.parse(cfg.to_dict()) == cfg
    cfg.check_layers(4)


def test_parse_from_file(tmp_path):
    f = tmp_path / "d.json"
    f.write_text('{"mode": "early_exit", "exit_after": 3}')
    assert DepthConfig.parse(str(f)) == DepthConfig(mode="early_exit", exit_after=3)


def test_defaults():
    cfg = DepthConfig(mode="learned")
    assert (cfg.tau, cfg.controller_input, cfg.hidden_layers, cfg.keep_first, cfg.seed) == (
        1.0, "hidden_states", 0, False, 0)
    assert (cfg.skip_prompt, cfg.kv_fill) == (False, "propagate")


INVALID_AT_CONSTRUCTION = [
    (dict(mode="no-such-mode"), "mode"),
    (dict(mode="full", kv_fill="zeros"), "kv_fill"),
    (dict(mode="static_skip"), "skip_layers"),
    (dict(mode="static_skip", skip_layers=[-1]), "skip_layers"),
    (dict(mode="static_skip", skip_layers=[1, 1]), "skip_layers"),
    (dict(mode="static_skip", skip_layers=[1.5]), "skip_layers"),
    (dict(mode="stochastic", skip_probs=[0.1, 1.2]), r"skip_probs\[1\]"),
    (dict(mode="stochastic", skip_probs=[-0.1]), r"skip_probs\[0\]"),
    (dict(mode="stochastic", skip_probs=[0.1], full_depth_share=1.5), "full_depth_share"),
    (dict(mode="static_skip", skip_layers=[1], full_depth_share=0.5), "full_depth_share"),
    (dict(mode="stochastic", skip_probs=[0.1], route_pool=[[0]]), "^route_pool_share: set it and route_pool"),
    (dict(mode="stochastic", skip_probs=[0.1], route_pool_share=0.5), "^route_pool_share: set it and route_pool"),
    (dict(mode="stochastic", skip_probs=[0.1], route_pool=[[0]], route_pool_share=-0.1), "^route_pool_share: must"),
    (dict(mode="stochastic", skip_probs=[0.1], route_pool=[], route_pool_share=0.5), "^route_pool: must be"),
    (dict(mode="stochastic", skip_probs=[0.1], route_pool=[[1, 1]], route_pool_share=0.5),
     r"^route_pool\[0\]: has dup"),
    (dict(mode="stochastic", skip_probs=[0.1], full_depth_share=0.7, route_pool=[[0]], route_pool_share=0.4),
     r"^route_pool_share: full_depth_share \+ route_pool_share is 1.1"),
    (dict(mode="static_skip", skip_layers=[1], route_pool=[[0]], route_pool_share=0.5), "^route_pool: only mode"),
    (dict(mode="early_exit", exit_after=0), "exit_after"),
    (dict(mode="early_exit"), "exit_after"),
    (dict(mode="random_budget", budget=0), "budget"),
    (dict(mode="route", route=[False, False]), "route"),
    (dict(mode="route", route=[True, "yes"]), r"route\[1\]"),
    (dict(mode="learned", controller_input="attention"), "controller_input"),
    (dict(mode="learned", tau=0), "tau"),
    (dict(mode="learned", hidden_layers=-1), "hidden_layers"),
    (dict(mode="full", skip_prompt="no"), "skip_prompt"),
    (dict(mode="full", seed=1.5), "seed"),
]


@pytest.mark.parametrize("kw,field", INVALID_AT_CONSTRUCTION)
def test_invalid_raises_naming_field(kw, field):
    with pytest.raises(ValueError, match=field):
        DepthConfig(**kw)


INVALID_FOR_MODEL = [
    (dict(mode="static_skip", skip_layers=[4]), "skip_layers"),
    (dict(mode="stochastic", skip_probs=[0.5] * 3), "skip_probs"),
    (dict(mode="stochastic", skip_probs=[0.5] * 4, route_pool=[[1], [4]], route_pool_share=0.5),
     r"^route_pool\[1\]: layer 4 is out of range"),
    (dict(mode="stochastic", skip_probs=[0.5] * 4, route_pool=[[0, 1, 2, 3]], route_pool_share=0.5),
     r"^route_pool\[0\]: skips all 4 layers"),
    (dict(mode="early_exit", exit_after=5), "exit_after"),
    (dict(mode="random_budget", budget=5), "budget"),
    (dict(mode="route", route=[True] * 5), "route"),
    (dict(mode="learned", controller_layers=[0, 4]), "controller_layers"),
]


@pytest.mark.parametrize("kw,field", INVALID_FOR_MODEL)
def test_invalid_for_layer_count(kw, field):
    cfg = DepthConfig(**kw)
    with pytest.raises(ValueError, match=field):
        cfg.check_layers(4)


@pytest.mark.parametrize("kw,field", INVALID_FOR_MODEL)
def test_model_checks_layer_count(kw, field):
    from conftest import tiny_llama

    from adalas import AdalasForCausalLM
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match=field):
        m.set_depth(DepthConfig(**kw))
    with pytest.raises(ValueError, match=field):
        AdalasForCausalLM.from_hf(tiny_llama(), depth=DepthConfig(**kw))


def test_unknown_field_and_malformed_json():
    with pytest.raises(ValueError, match="unknown field.*skip_layer"):
        DepthConfig.from_json('{"mode": "static_skip", "skip_layer": [1]}')
    with pytest.raises(ValueError, match="malformed JSON"):
        DepthConfig.from_json('{"mode": ')
    with pytest.raises(ValueError, match="neither inline JSON nor an existing JSON file"):
        DepthConfig.parse("no/such/file.json")
