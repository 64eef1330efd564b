"""Recipes: every packaged recipe parses into valid flags and a valid depth config, and starts with its
exact command; `base` inheritance; command-line overrides win; dash and underscore spellings."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch

from adalas import DepthConfig, recipes
from adalas.train_args import build_parser, parse_args

RECIPE_FILES = sorted(recipes.recipe_dir().glob("*.yaml"))
# layer counts of the models the recipes name (a run's output directory keeps its model's count)
KNOWN_LAYERS = {"opt-iml-1.3b": 24, "opt-1.3b": 24, "opt-125m": 12, "opt-350m": 24, "smollm2-135m": 30}


def _layers(model: str) -> int | None:
    return next((n for key, n in KNOWN_LAYERS.items() if key in model), None)


def test_there_are_recipes_and_the_top_level_folder_is_the_packaged_one():
    names = recipes.recipe_names()
    assert len(names) >= 10 and "tiny" in names
    for alpha in (2, 4, 6, 10):
        assert f"opt-iml-1.3b-alpaca-hidden-a{alpha}" in names and f"opt-iml-1.3b-alpaca-fixed-a{alpha}" in names
    top = Path(__file__).resolve().parents[1] / "recipes"
    if top.exists():
        assert top.resolve() == recipes.recipe_dir().resolve()


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_is_valid(path: Path, tmp_path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "adalas " in first and f"--recipe {path.stem}" in first, first
    assert first.split()[1:3] in (["adalas", "train"], ["adalas", "warmup"]) or "torchrun" in first
    fields = recipes.load_recipe(path.stem)
    known = {a.dest for a in build_parser()._actions}
    recipes.check_fields(fields, known, where=path.name)
    assert fields.get("output_dir"), "every recipe names its output directory"
    # parse exactly as `adalas train --recipe NAME` would (bf16 needs a GPU to validate)
    extra = ["--output_dir", str(tmp_path)]
    if fields.get("bf16") and not torch.cuda.is_available():
        extra += ["--use_cpu", "true", "--bf16", "false"]
    cfg, args = parse_args(["--recipe", path.stem] + extra)
    assert cfg.model == fields["model"] and cfg.data == fields["data"]
    if "learning_rate" in fields:
        assert args.learning_rate == pytest.approx(float(fields["learning_rate"]))
    depth = DepthConfig.parse(cfg.depth)
    layers = _layers(cfg.model)
    assert layers is not None, f"add {cfg.model} to KNOWN_LAYERS"
    depth.check_layers(layers)
    if cfg.freeze_skipped:
        assert depth.static_route(layers) is not None
    if first.split()[2] == "warmup":
        assert depth.mode == "learned", "warmup trains controllers: the depth must be learned"


def test_paper_recipes_hold_the_paper_settings():
    full = recipes.load_recipe("opt-iml-1.3b-alpaca")
    assert (full["model"], full["max_seq_length"], full["prompt_fraction"], full["num_train_epochs"]) == (
        "facebook/opt-iml-1.3b", 512, 0.5, 3)
    skip = recipes.load_recipe("opt-iml-1.3b-alpaca-skip2")
    assert skip["depth"]["skip_layers"] == list(range(1, 24, 2)) and skip["freeze_skipped"] is True
    for kind, inp in (("hidden", "hidden_states"), ("fixed", "fixed")):
        for alpha in (2, 4, 6, 10):
            r = recipes.load_recipe(f"opt-iml-1.3b-alpaca-{kind}-a{alpha}")
            assert r["cost_alpha"] == alpha and r["depth"]["controller_input"] == inp
            assert r["output_dir"].endswith(f"{kind}-a{alpha}")


def test_base_inheritance_and_command_line_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("# adalas train --recipe base.yaml\nmodel: m0\ndata: d0\nlearning_rate: 2e-5\n"
                    "max-seq-length: 64\noutput_dir: out0\ndepth: {mode: early_exit, exit_after: 3}\nbf16: false\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel: m1\nreport_to: [none]\n")
    fields = recipes.load_recipe(child)
    assert fields["model"] == "m1" and fields["data"] == "d0" and fields["max_seq_length"] == 64
    cfg, args = parse_args(["--recipe", str(child), "--max-seq-length", "32", "--learning_rate=1e-3"])
    assert (cfg.model, cfg.data, cfg.max_seq_length, cfg.recipe) == ("m1", "d0", 32, str(child))
    assert args.learning_rate == 1e-3 and args.output_dir == "out0" and args.report_to == []
    assert DepthConfig.parse(cfg.depth) == DepthConfig(mode="early_exit", exit_after=3)
    cfg, args = parse_args(["--recipe", str(child)])
    assert args.learning_rate == 2e-5 and isinstance(args.learning_rate, float)  # YAML's "2e-5" is a string
    assert args.report_to == []  # `none`
    cfg, _ = parse_args(["--recipe", str(child), "--depth", '{"mode": "full"}'])
    assert DepthConfig.parse(cfg.depth).mode == "full"


def test_no_recipe_uses_the_defaults_and_tensorboard(tmp_path):
    cfg, args = parse_args(["--output_dir", str(tmp_path)])
    assert (cfg.model, cfg.data, cfg.recipe) == ("smollm2-135m", "builtin", None)
    assert args.report_to == ["tensorboard"]


@pytest.mark.parametrize("text,pattern", [
    ("model: m\nno_such_field: 1\n", "unknown field.*no_such_field"),
    ("- a\n- b\n", "mapping"),
    ("model: [unclosed\n", "invalid YAML"),
    ("base: loop.yaml\n", "loops"),
])
def test_bad_recipes_raise(tmp_path, text, pattern):
    p = tmp_path / "loop.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        parse_args(["--recipe", str(p), "--output_dir", str(tmp_path)])


def test_unknown_recipe_lists_the_packaged_ones():
    with pytest.raises(ValueError, match="tiny"):
        recipes.load_recipe("no-such-recipe")


def test_packaged_deepspeed_config_is_zero2():
    path = Path(recipes.packaged_file("ds_zero2.json"))
    assert path.is_file() and json.loads(path.read_text())["zero_optimization"]["stage"] == 2


def test_doctests():
    assert doctest.testmod(recipes).failed == 0


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_no_recipe_trains_or_tunes_on_the_builtin_evaluation_set(path: Path):
    fields = recipes.load_recipe(path.stem)
    assert fields.get("data") != "builtin" and fields.get("eval_data") != "builtin"
