"""Recipes: YAML files of command-line defaults, by name or path, overridden by the command line.

Notable:
- A recipe is flat: its keys are the command's flags (dash or underscore spelling), its values
  what you would type after them. `base: <name or path>` inherits another recipe, so each of the
  paper's runs is a few overrides of one recipe (the cost-loss alphas, the controller inputs).
- The recipe becomes arguments placed before the user's: `command defaults < recipe < command
  line` is argparse's own rule that the last occurrence of a flag wins, so every value goes through
  the same parsing and type checks as if typed (YAML's `2e-5`, a string, still becomes a float).
- Recipes ship inside the package (`adalas/recipes/*.yaml`, read with importlib.resources); the
  repository's top-level `recipes/` is a link to that folder.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

RECIPE_SUFFIXES = (".yaml", ".yml")
BASE_KEY = "base"


def recipe_dir() -> Path:
    """The packaged recipes folder."""
    return Path(str(resources.files("adalas") / "recipes"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file: an existing path (also relative to `relative_to`), or a packaged recipe's name."""
    text = str(name_or_path)
    candidates = [Path(text).expanduser()]
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates += [recipe_dir() / text] + [recipe_dir() / f"{text}{s}" for s in RECIPE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"recipe {text!r}: no such file and no packaged recipe of that name; "
                     f"packaged: {', '.join(recipe_names()) or '(none)'}")


def packaged_file(name: str) -> str:
    """A packaged recipes-folder file (e.g. `ds_zero2.json`) when `name` is not an existing path."""
    if Path(name).expanduser().exists():
        return name
    for candidate in (recipe_dir() / name, recipe_dir() / f"{name}.json"):
        if candidate.is_file():
            return str(candidate)
    return name


def load_recipe(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's fields (underscore spelling), with its `base` chain merged in (child wins)."""
    path = recipe_path(name_or_path, relative_to=_seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ValueError(f"recipe {path.name}: `base` chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping of flag: value, got {type(data).__name__}")
    fields = {str(k).replace("-", "_"): v for k, v in data.items()}
    base = fields.pop(BASE_KEY, None)
    if base is None:
        return fields
    return {**load_recipe(base, _seen + (path,)), **fields}


def to_argv(fields: dict[str, Any]) -> list[str]:
    """Recipe fields as command-line arguments (`None` leaves a field at its default).

    >>> to_argv({"learning_rate": 2e-5, "bf16": True, "report_to": ["tensorboard"], "depth": {"mode": "full"}})
    ['--learning_rate', '2e-05', '--bf16', 'true', '--report_to', 'tensorboard', '--depth', '{"mode": "full"}']
    """
    argv: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, "true" if value else "false"]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"recipe field {key}: an empty list cannot be passed as flags "
                                 f"(for report_to write `none`)")
            argv += [flag, *(json.dumps(v) if isinstance(v, dict) else _scalar(v) for v in value)]
        else:
            argv += [flag, _scalar(value)]
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_fields(fields: dict[str, Any], known: Iterable[str], where: str) -> None:
    """Every recipe key must be one of the command's flags."""
    known = set(known)
    unknown = sorted(k for k in fields if k not in known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (not flags of this command)")


def split_recipe_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the value of `--recipe`, the other arguments); the last `--recipe` wins."""
    recipe, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--recipe":
            if i + 1 >= len(argv):
                raise ValueError("--recipe: expected a recipe name or a YAML path")
            recipe, i = argv[i + 1], i + 2
            continue
        if a.startswith("--recipe="):
            recipe = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return recipe, rest
