"""The adapted embedded models that ship with the package (src/adalas/adapters/<alias>/): each loads by
alias, runs exactly the layers its name says for every generated token, and is small."""
from __future__ import annotations

import json
import re
import shlex

import pytest
import torch

from adalas import AdalasForCausalLM, DepthConfig
from adalas.hub import adapter_aliases, adapter_dir, load_tokenizer
from adalas.recipes import load_recipe

ALIASES = adapter_aliases()


@pytest.mark.parametrize("alias", ALIASES)
def test_a_shipped_adapter_is_small_and_says_how_it_was_made(alias):
    d = adapter_dir(alias)
    assert (d / "adapter_model.safetensors").stat().st_size <= 11 * 2 ** 20
    provenance = json.loads((d / "provenance.json").read_text())
    assert {"command", "recipe", "data_sha256", "steps", "wall_s", "base_model"} <= set(provenance)
    assert provenance["data"] != "builtin"


@pytest.mark.parametrize("alias", ALIASES)
def test_a_shipped_adapter_was_trained_at_its_recipes_depth(alias):
    """`adalas train --recipe <recipe>` remakes what ships: the depth the adapter was trained at (the
    recipe's, or a --depth on its command line) is the recipe's depth today."""
    provenance = json.loads((adapter_dir(alias) / "provenance.json").read_text())
    argv = shlex.split(provenance["command"])
    recipe = load_recipe(provenance["recipe"])
    trained = argv[argv.index("--depth") + 1] if "--depth" in argv else recipe["depth"]
    assert DepthConfig.parse(trained) == DepthConfig.parse(recipe["depth"])


def test_the_dropout_recipe_remakes_the_shipped_pool_and_a_same_version_pool_is_the_shipped_routes():
    """The recipe's route pool is the one the shipped dropout adapter trained with (its provenance command);
    a dropout model trained on the route adapters' data (the same version) has their routes as its pool (a
    route may be listed more than once, to weight it). The fourth version, trained on version 2's data, keeps
    version 2's routes until a later one replaces it."""
    pool = DepthConfig.parse(load_recipe("smollm2-135m-dropout")["depth"]).route_pool
    provenance = json.loads((adapter_dir("smollm2-135m-dropout") / "provenance.json").read_text())
    argv = shlex.split(provenance["command"])
    trained = json.loads(argv[argv.index("--depth") + 1])
    assert pool == trained["route_pool"]
    routes = {a: json.loads((adapter_dir(a) / "provenance.json").read_text())
              for a in ("smollm2-135m-adapted-20", "smollm2-135m-adapted-24")}
    if all(r["data_sha256"] == provenance["data_sha256"] for r in routes.values()):
        distinct = [route for k, route in enumerate(pool) if route not in pool[:k]]
        assert distinct == [DepthConfig.from_dir(adapter_dir(a)).skip_layers for a in routes]
    else:
        assert provenance["data"] == "data/synth/smollm2-135m.train.jsonl"  # the fourth version


@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_a_shipped_alias_loads_and_runs_the_layers_its_name_says(alias):
    model = AdalasForCausalLM.from_pretrained(alias)
    tok = load_tokenizer(alias)
    match = re.search(r"-adapted-(\d+)$", alias)
    expected = int(match.group(1)) if match else model.num_layers  # the dropout model defaults to full depth
    route = model.depth.static_route(model.num_layers)
    assert route is not None and sum(route) == expected
    ids = tok.apply_chat_template([{"role": "user", "content": "Name three colors."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    model.reset_usage()
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert model.avg_layers() == pytest.approx(expected)
    assert [u for u in model.layer_usage()] == [1.0 if r else 0.0 for r in route]


# --- writing and loading an adapter directory: all or nothing ---------------------------------------

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "adalas_depth.json", "provenance.json")


def _lora_model(model_dir, depth: DepthConfig):
    from peft import LoraConfig, get_peft_model

    m = AdalasForCausalLM.from_pretrained(model_dir, depth=depth)
    pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in pm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return pm


def test_save_adapter_writes_the_directory_at_once(tiny_files, tmp_path, monkeypatch):
    """A save that fails part way leaves no directory (a first save) or the old complete one (a
    replacement), never a mix of old and new files."""
    from adalas import checkpoints

    model_dir, _ = tiny_files
    target = tmp_path / "adapter"
    first = _lora_model(model_dir, DepthConfig(mode="static_skip", skip_layers=[1]))
    record = {"command": "test", "base_model": str(model_dir)}
    real = checkpoints.atomic_write_json

    def failing(path, doc):
        if path.name == "provenance.json":
            raise OSError("disk full")
        return real(path, doc)

    monkeypatch.setattr(checkpoints, "atomic_write_json", failing)
    with pytest.raises(OSError):
        checkpoints.save_adapter(first, target, record)
    assert not target.exists()
    monkeypatch.setattr(checkpoints, "atomic_write_json", real)
    checkpoints.save_adapter(first, target, record)
    assert sorted(p.name for p in target.iterdir()) == sorted(ADAPTER_FILES)
    old = {p.name: p.read_bytes() for p in target.iterdir()}

    second = _lora_model(model_dir, DepthConfig(mode="static_skip", skip_layers=[2]))
    monkeypatch.setattr(checkpoints, "atomic_write_json", failing)
    with pytest.raises(OSError):
        checkpoints.save_adapter(second, target, record)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old  # the old adapter, whole
    monkeypatch.setattr(checkpoints, "atomic_write_json", real)
    checkpoints.save_adapter(second, target, record)
    assert DepthConfig.from_dir(target) == DepthConfig(mode="static_skip", skip_layers=[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary siblings left


@pytest.mark.parametrize("missing", ["adalas_depth.json", "adapter_config.json", "adapter_model.safetensors"])
def test_an_incomplete_adapter_directory_is_refused(tiny_files, tmp_path, monkeypatch, missing):
    """Without its depth config an alias would load at full depth; without its weights or config it is
    no adapter: each is a one-line ValueError naming the missing file."""
    from adalas import hub
    from adalas.checkpoints import save_adapter

    model_dir, _ = tiny_files
    root = tmp_path / "adapters"
    save_adapter(_lora_model(model_dir, DepthConfig(mode="static_skip", skip_layers=[1])), root / "tiny-adapted",
                 {"command": "test", "base_model": str(model_dir)})
    monkeypatch.setattr(hub, "adapters_root", lambda: root)
    assert AdalasForCausalLM.from_pretrained("tiny-adapted").depth == DepthConfig(mode="static_skip", skip_layers=[1])
    (root / "tiny-adapted" / missing).unlink()
    with pytest.raises(ValueError, match=missing):
        AdalasForCausalLM.from_pretrained("tiny-adapted")
