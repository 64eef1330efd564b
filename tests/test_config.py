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


# -- what each mode takes ------------------------------------------------------------------------
ONE_PER_MODE = {  # a valid config of each mode, and a non-default value for each mode-owned field
    "full": {}, "static_skip": dict(skip_layers=[1, 3]), "stochastic": dict(skip_probs=[0.0, 0.5, 0.5, 0.25]),
    "early_exit": dict(exit_after=2), "random_budget": dict(budget=2), "route": dict(route=[True, False, True, True]),
    "learned": {}, "confidence_exit": dict(threshold=0.5, exit_layers=[1, 2]), "sequence": {},
}
OTHER_VALUE = dict(skip_layers=[1], skip_probs=[0.5] * 4, full_depth_share=0.5, route_pool=[[1]], route_pool_share=0.5,
                   exit_after=2, budget=2, keep_first=True, route=[True, False, True, True], controller_layers=[1],
                   controller_input="fixed", tau=0.5, hidden_layers=1, exit_layers=[1], threshold=0.5,
                   measure="margin", router_path="router", target_avg_layers=2.0)


def test_every_mode_field_is_owned_by_one_mode():
    import dataclasses

    from adalas.config import COMMON_FIELDS, MODE_FIELDS, MODES
    owned = [name for names in MODE_FIELDS.values() for name in names]
    assert set(MODE_FIELDS) == set(MODES) and len(owned) == len(set(owned))
    assert sorted(owned + list(COMMON_FIELDS)) == sorted(f.name for f in dataclasses.fields(DepthConfig))
    assert sorted(OTHER_VALUE) == sorted(owned)


@pytest.mark.parametrize("mode", sorted(ONE_PER_MODE))
def test_a_field_of_another_mode_is_refused_naming_the_field_and_the_mode(mode):
    import dataclasses

    from adalas.config import MODE_FIELDS
    defaults = {f.name: f.default for f in dataclasses.fields(DepthConfig)}
    for owner, names in MODE_FIELDS.items():
        for name in names:
            kw = {"mode": mode, **ONE_PER_MODE[mode], name: OTHER_VALUE[name]}
            if owner == mode:
                if name.startswith("route_pool"):  # the pool and its share go together
                    kw.update(route_pool=OTHER_VALUE["route_pool"], route_pool_share=OTHER_VALUE["route_pool_share"])
                DepthConfig(**kw)
                continue
            with pytest.raises(ValueError, match=rf"^{name}: only mode '{owner}' takes it; got mode '{mode}'") as e:
                DepthConfig(**kw)
            assert "\n" not in str(e.value)
            DepthConfig(**{**kw, name: defaults[name]})  # at its default (as an old saved config may hold it): fine
    with pytest.raises(ValueError, match="^exit_after: only mode 'early_exit'"):  # the example of issue 27
        DepthConfig.from_json('{"mode": "static_skip", "skip_layers": [1], "exit_after": 15}')


def _depth_entries(x, where):
    """(where, value) of every `depth` / `draft_depth` entry of a parsed document that holds a config
    (an object; a number under `depth` is a layer count, as in the study's E1 pairs)."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("depth", "draft_depth") and isinstance(v, dict):
                yield where, v
            else:
                yield from _depth_entries(v, where)
    elif isinstance(x, list):
        for v in x:
            yield from _depth_entries(v, where)


def test_every_depth_config_in_the_repository_loads():
    """Shipped adapters, recipes, study plans, and the depth of every committed result (sweep rows and
    settings, metrics, study records) and of the self-written data's route choices."""
    import json
    from pathlib import Path

    import yaml

    from adalas.config import DEPTH_FILE
    from adalas.recipes import load_recipe, recipe_names
    root = Path(__file__).resolve().parents[1]
    pkg = root / "src" / "adalas"
    found = [(str(d), DepthConfig.from_dir(d)) for d in sorted((pkg / "adapters").glob("*")) if (d / DEPTH_FILE).is_file()]
    assert len(found) >= 3
    entries = [(f"recipe {name}", load_recipe(name).get("depth")) for name in recipe_names()]
    from adalas.study.routes import resolve_depth
    for f in sorted((pkg / "studies").glob("*.yaml")):  # a plan names routes (uniform@B): resolved as it loads them
        plan = yaml.safe_load(f.read_text())
        entries += [(w, resolve_depth(v, plan["layers"])) for w, v in _depth_entries(plan, str(f))]
    for pattern in ("results/**/*.json", "results/**/*.jsonl", "data/**/*.json", "data/**/*.jsonl"):
        for f in sorted(root.glob(pattern)):
            lines = f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]
            for k, line in enumerate(lines, 1):
                if '"depth"' in line:
                    entries += _depth_entries(json.loads(line), f"{f}:{k}" if f.suffix == ".jsonl" else str(f))
    for where, value in entries:
        if value is None:  # a recipe without a depth: full
            continue
        try:
            found.append((where, DepthConfig.parse(json.dumps(value) if isinstance(value, dict) else value)))
        except ValueError as e:
            raise AssertionError(f"{where}: {e}") from None
    assert sum(1 for w, _ in found if w.startswith("recipe")) >= 8
    assert any("studies" in w for w, _ in found) and any("results" in w for w, _ in found)
    assert {cfg.mode for _, cfg in found} >= {"full", "static_skip", "stochastic", "early_exit", "route", "learned",
                                              "sequence"}
