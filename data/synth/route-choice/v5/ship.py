"""Ship version 5 where `v5/choice.json` says the sixth dropout version replaces the fourth: the chosen seed's
adapter becomes `smollm2-135m-dropout` (default depth full), and its recipe is rewritten to what trained it, so
that `adalas train --recipe smollm2-135m-dropout` remakes what ships. Run from the repository root after
`v5/choose.py`:

    python data/synth/route-choice/v5/ship.py

The other seed goes under the ignored alias `_smollm2-135m-dropout-seedN`; its configs for `adalas tasks run
--also-adapted` (the protocol reports both seeds' test scores) are printed at the end. docs/adapters.md and the
README are edited by hand.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "v3"))
from ship import ADAPTERS, RECIPES, ROOT, V3_DATA, other_seed, replace_adapter, set_keys  # noqa: E402

HEADER = """# adalas train --recipe smollm2-135m-dropout
# LayerSkip-style layer dropout on the embedded SmolLM2-135M-Instruct, so that one set of weights
# serves several budgets: full depth and the two shipped routes. Each training sequence is drawn (from
# its key) into one of three groups:
# - 40% run every layer (full_depth_share 0.4), which keeps the full-depth model close to the base's;
# - 50% run a shipped route (route_pool_share 0.5): adapted-20's route is listed twice in the pool, so it
#   takes two thirds of them, adapted-24's the other third (the real-task target asks the dropout model
#   to serve each route within 0.05 of that route's own adapter, and the 20-layer route is the harder);
# - the other 10% skip layer i with probability 0.5 * i / 29 per generated token.
# The prompt runs at full depth. LoRA (r 16, every projection) and self-distillation against the
# full-depth model, 320 steps of 8 rows of the self-written data with the real tasks' shapes
# (data/synth/shapes/). Its sixth version; shares, steps and seed chosen by version 5's rule on 192
# held-out self-written rows (data/synth/route-choice/README.md, v5/choice.json), never on the built-in
# set or the real test sets. Its default depth is full; evaluate it with any route (--depth).
# Ships as src/adalas/adapters/smollm2-135m-dropout: data/synth/route-choice/v5/ship.py copies the
# chosen run's adapter/ there, with adalas_depth.json set to {"mode": "full"}.
"""


def ship(choice: Path, name: str, shares: dict, steps: int, header: str) -> None:
    """Ship the seed `choice` names if its version (`name`, trained with `shares` for `steps`) replaces the
    fourth; version 6 reuses it (`v6/ship.py`)."""
    doc = json.loads(choice.read_text())
    if not doc[f"{name}_replaces_fourth"]:
        print(json.dumps({"shipped": None, "why": f"the fourth version stays ({choice.parent.name}/choice.json)"}))
        return
    run = ROOT / Path(doc["ships"]).parent
    trained = json.loads((run / "adapter" / "adalas_depth.json").read_text())
    if any(trained.get(k) != v for k, v in shares.items()):
        raise SystemExit(f"ship: {run} did not train with the shares {shares}")
    seed = run.name.rsplit("-s", 1)[1]
    replace_adapter(run / "adapter", "smollm2-135m-dropout", depth={"mode": "full"})
    also = other_seed(run, "smollm2-135m-dropout")
    (ADAPTERS / also / "adalas_depth.json").write_text(json.dumps({"mode": "full"}) + "\n")
    recipe = RECIPES / "smollm2-135m-dropout.yaml"
    body = "\n".join(line for line in recipe.read_text().splitlines() if not line.startswith("#")) + "\n"
    depth = json.dumps({k: trained[k] for k in ("mode", "skip_probs", "full_depth_share", "route_pool",
                                                  "route_pool_share")})
    body = set_keys(body, {**V3_DATA, "max_steps": str(steps), "seed": seed, "depth": depth})
    body = "\n".join(line for line in body.splitlines() if not line.startswith("        ")) + "\n"  # old depth
    recipe.write_text(header + body)
    print(json.dumps({"shipped": str(run / "adapter"),
                      "also_adapted": [also, *(f"{also}@smollm2-135m-adapted-{s}" for s in ("24", "20"))]}, indent=1))


if __name__ == "__main__":
    ship(HERE / "choice.json", "sixth", {"route_pool_share": 0.5, "full_depth_share": 0.4}, 320, HEADER)
