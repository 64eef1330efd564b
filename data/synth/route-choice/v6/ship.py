"""Ship version 6 where `v6/choice.json` says the seventh dropout version replaces the fourth: version 5's
shipping (`v5/ship.py`: the chosen seed becomes `smollm2-135m-dropout`, its recipe is rewritten to what trained
it, the other seed goes under `_smollm2-135m-dropout-seedN`). Run from the repository root after `v6/choose.py`:

    python data/synth/route-choice/v6/ship.py
"""
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
# loaded under its own name: v5/ship.py imports version 3's module `ship` itself
_spec = importlib.util.spec_from_file_location("v5_ship", HERE.parent / "v5" / "ship.py")
v5 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v5)

HEADER = """# adalas train --recipe smollm2-135m-dropout
# LayerSkip-style layer dropout on the embedded SmolLM2-135M-Instruct, so that one set of weights
# serves several budgets: full depth and the two shipped routes. Each training sequence is drawn (from
# its key) into one of three groups:
# - 60% run every layer (full_depth_share 0.6), which keeps the full-depth model close to the base's;
# - 35% run a shipped route (route_pool_share 0.35): adapted-20's route is listed twice in the pool, so it
#   takes two thirds of them, adapted-24's the other third (the real-task target asks the dropout model
#   to serve each route within 0.05 of that route's own adapter, and the 20-layer route is the harder);
# - the other 5% skip layer i with probability 0.5 * i / 29 per generated token.
# The prompt runs at full depth. LoRA (r 16, every projection) and self-distillation against the
# full-depth model, 480 steps of 8 rows of the self-written data with the real tasks' shapes
# (data/synth/shapes/). Its seventh version; shares, steps and seed chosen by version 6's rule on 192
# held-out self-written rows (data/synth/route-choice/README.md, v6/choice.json), never on the built-in
# set or the real test sets. Its default depth is full; evaluate it with any route (--depth).
# Ships as src/adalas/adapters/smollm2-135m-dropout: data/synth/route-choice/v6/ship.py copies the
# chosen run's adapter/ there, with adalas_depth.json set to {"mode": "full"}.
"""

if __name__ == "__main__":
    v5.ship(HERE / "choice.json", "seventh", {"route_pool_share": 0.35, "full_depth_share": 0.6}, 480, HEADER)
