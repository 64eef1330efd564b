"""Ship version 3's choices: each chosen run's adapter becomes the package's alias, and the recipe of that
name is set to what trained it, so that `adalas train --recipe ALIAS` remakes what ships. Run from the
repository root after `v3/choose.py` and `v3/choose_dropout.py`:

    python data/synth/route-choice/v3/ship.py

- `smollm2-135m-adapted-20` and `-24`: `runs/v3/SIZE-ROUTE-sSEED/adapter/` (v3/choice.json), the recipe's data,
  lengths, route and seed set to version 3's.
- `smollm2-135m-dropout`: the fifth version's chosen seed if v3/dropout-choice.json says it replaces the fourth
  (default depth full, its route pool the chosen routes); otherwise the fourth stays, and its recipe keeps the
  data and lengths it trained with (it inherits the 24-layer recipe, which changes here).
  Until v3/dropout-choice.json exists, the routes ship alone and the fourth version's recipe is pinned to its
  own data and lengths; run this again once it exists.
- The seed that did not ship: under the ignored alias `_ALIAS-seedN` (`-seedN@ROUTE` for the dropout model),
  for `adalas tasks run --also-adapted` (the protocol reports both seeds' test scores); printed at the end.
Each adapter directory is replaced at once (copied beside it, then renamed). The recipes' comments say where
each choice came from; docs/adapters.md and the README are edited by hand.
"""
import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
ADAPTERS = ROOT / "src" / "adalas" / "adapters"
RECIPES = ROOT / "src" / "adalas" / "recipes"
MAX_BYTES = 11 * 2 ** 20  # tests/test_adapters.py's bound on a shipped adapter
V3_DATA = {"data": "data/synth/shapes/train.jsonl", "max_seq_length": "512", "prompt_fraction": "0.75"}
V2_DATA = {"data": "data/synth/smollm2-135m.train.jsonl", "max_seq_length": "224", "prompt_fraction": "0.5"}

ROUTE_TEXT = {
    "searched": "# The route is the one `adalas route --layers {size}` found on 48 held-out rows (teacher-forced KL to\n"
                "# full depth; data/synth/route-choice/v3/route-{size}.json); after training, its two seeds scored\n"
                "# higher than the version-2 route's.\n",
    "shipped": "# The route is version 2's (data/synth/route-choice/README.md); after training, its two seeds scored\n"
               "# higher than those of the route `adalas route --layers {size}` found.\n",
}
HEADER = """# adalas train --recipe smollm2-135m-adapted-{size}
# Adapts the embedded SmolLM2-135M-Instruct to a static route that keeps {size} of its 30 layers (the
# prompt at full depth), by LoRA (r 16, every projection) and self-distillation: KL to the same model
# at full depth on the response tokens of instruction data the model wrote itself, plain requests and
# requests shaped like the real tasks: dialogues, articles, a text to work on (data/synth/shapes/).
{route_text}# Route and seed were chosen by version 3's rule on 192 held-out self-written rows
# (data/synth/route-choice/README.md, v3/choice.json); never on the built-in set or the real test sets.
# Ships as src/adalas/adapters/smollm2-135m-adapted-{size}: data/synth/route-choice/v3/ship.py copies
# the chosen run's adapter/ there.
"""


def replace_adapter(source: Path, alias: str, depth: dict | None = None) -> None:
    weights = source / "adapter_model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"ship: {source} has no adapter_model.safetensors")
    if weights.stat().st_size > MAX_BYTES:
        raise SystemExit(f"ship: {weights} is over {MAX_BYTES} bytes")
    target, staging = ADAPTERS / alias, ADAPTERS / f".{alias}.shipping"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if depth is not None:
        (staging / "adalas_depth.json").write_text(json.dumps(depth) + "\n")
    old = ADAPTERS / f".{alias}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def set_keys(text: str, values: dict[str, str]) -> str:
    """Each `key: ...` line of a flat recipe set to `key: value` (appended when absent)."""
    for key, value in values.items():
        line = f"{key}: {value}"
        text, n = re.subn(rf"^{key}:.*$", line, text, flags=re.M)
        if n == 0:
            text = text.rstrip("\n") + f"\n{line}\n"
    return text


def other_seed(run: Path, alias: str) -> str:
    """The other seed of the shipped run `...-sN` under the ignored alias `_ALIAS-seedM`; returns that alias."""
    stem, seed = run.name.rsplit("-s", 1)
    other = 1 - int(seed)
    name = f"_{alias}-seed{other}"
    replace_adapter(run.with_name(f"{stem}-s{other}") / "adapter", name)
    return name


def ship_route(size: str, chosen: dict) -> str:
    """Ships the chosen run; returns the other seed's alias."""
    run = ROOT / "runs" / "v3" / f"{size}-{chosen['route']}-s{chosen['seed']}"
    replace_adapter(run / "adapter", f"smollm2-135m-adapted-{size}")
    also = other_seed(run, f"smollm2-135m-adapted-{size}")
    skip = json.loads((run / "adapter" / "adalas_depth.json").read_text())["skip_layers"]
    recipe = RECIPES / f"smollm2-135m-adapted-{size}.yaml"
    body = "\n".join(line for line in recipe.read_text().splitlines() if not line.startswith("#")) + "\n"
    body = set_keys(body, {**V3_DATA, "seed": str(chosen["seed"]),
                           "depth": "{mode: static_skip, skip_layers: [" + ", ".join(map(str, skip)) + "]}"})
    header = HEADER.format(size=size, route_text=ROUTE_TEXT[chosen["route"]].format(size=size))
    recipe.write_text(header + body)
    return also


def ship_dropout(doc: dict | None) -> list[str]:
    """Ships the fifth version if it replaces the fourth; returns the other seed's configs for the look."""
    recipe = RECIPES / "smollm2-135m-dropout.yaml"
    text = recipe.read_text()
    if doc is None or not doc["fifth_replaces_fourth"]:
        # the fourth version stays: pin what it trained on (it inherits the 24-layer recipe, changed here)
        recipe.write_text(set_keys(text, {**V2_DATA, "seed": "0"}))
        return []
    run = ROOT / Path(doc["ships"]).parent
    trained = json.loads((run / "adapter" / "adalas_depth.json").read_text())
    if "route_pool" not in trained:
        raise SystemExit(f"ship: {run} did not train with a route pool")
    seed = run.name.rsplit("-s", 1)[1]
    pool = ", ".join("[" + ", ".join(map(str, r)) + "]" for r in trained["route_pool"])
    replace_adapter(run / "adapter", "smollm2-135m-dropout", depth={"mode": "full"})
    also = other_seed(run, "smollm2-135m-dropout")
    (ADAPTERS / also / "adalas_depth.json").write_text(json.dumps({"mode": "full"}) + "\n")
    text = re.sub(r"route_pool: \[\[.*?\]\]", f"route_pool: [{pool}]", text, flags=re.S)
    text = text.replace("# - 20% run one of the two shipped routes, adapted-20's or adapted-24's",
                        "# - 20% run one of the two shipped routes (version 3's), adapted-20's or adapted-24's")
    recipe.write_text(set_keys(text, {**V3_DATA, "seed": seed}))
    return [also, *(f"{also}@smollm2-135m-adapted-{size}" for size in ("24", "20"))]


def main() -> None:
    choice = json.loads((HERE / "choice.json").read_text())["choice"]
    dropout_file = HERE / "dropout-choice.json"
    dropout = json.loads(dropout_file.read_text()) if dropout_file.is_file() else None
    also = [ship_route(size, choice[size]) for size in ("24", "20")]
    also += ship_dropout(dropout)
    print(json.dumps({"routes": choice, "dropout": dropout["ships"] if dropout else "the fourth version, for now",
                      "also_adapted": also}, indent=1))


if __name__ == "__main__":
    main()
