"""Ship version 4 where `v4/choice.json` says it replaces version 3: the chosen seed's adapter becomes the
package's alias, and the recipe of that name is set to what trained it (320 steps, the seed), so that
`adalas train --recipe ALIAS` remakes what ships. Run from the repository root after `v4/choose.py`:

    python data/synth/route-choice/v4/ship.py

The other seed goes under the ignored alias `_ALIAS-seedN`, for `adalas tasks run --also-adapted` (the protocol
reports both seeds' test scores); printed at the end. The dropout recipe inherits the 24-layer one: it is pinned
to the 160 steps it trained with before the 24-layer recipe changes. docs/adapters.md and the README are edited
by hand.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "v3"))
from ship import RECIPES, ROOT, other_seed, replace_adapter, set_keys  # noqa: E402  (version 3's shipping)

CHOSEN = ("# Route, steps and seed were chosen on 192 held-out self-written rows: the route by version 3's rule,\n"
          "# 320 steps (twice version 3's) and the seed by version 4's (data/synth/route-choice/README.md,\n"
          "# v3/choice.json, v4/choice.json); never on the built-in set or the real test sets.\n"
          "# Ships as src/adalas/adapters/smollm2-135m-adapted-{size}: data/synth/route-choice/v4/ship.py copies\n"
          "# the chosen run's adapter/ there.\n")


def ship(size: str, doc: dict) -> str:
    run = ROOT / Path(doc["ships"]).parent
    alias = f"smollm2-135m-adapted-{size}"
    seed = run.name.rsplit("-s", 1)[1]
    if size == "24":
        dropout = RECIPES / "smollm2-135m-dropout.yaml"
        dropout.write_text(set_keys(dropout.read_text(), {"max_steps": "160"}))
    replace_adapter(run / "adapter", alias)
    also = other_seed(run, alias)
    recipe = RECIPES / f"{alias}.yaml"
    lines = recipe.read_text().splitlines(keepends=True)
    headers = ("# Route and seed were chosen", "# Route, steps and seed")  # version 3's header, or CHOSEN
    start = next(k for k, line in enumerate(lines) if line.startswith(headers))
    end = next(k for k, line in enumerate(lines) if not line.startswith("#"))
    text = "".join(lines[:start]) + CHOSEN.format(size=size) + "".join(lines[end:])
    recipe.write_text(set_keys(text, {"max_steps": "320", "seed": seed}))
    return also


def main() -> None:
    choice = json.loads((HERE / "choice.json").read_text())
    shipped = {size: doc["ships"] for size, doc in choice["sizes"].items() if doc["v4_replaces_v3"]}
    also = [ship(size, choice["sizes"][size]) for size in shipped]
    print(json.dumps({"shipped": shipped, "also_adapted": also}, indent=1))


if __name__ == "__main__":
    main()
