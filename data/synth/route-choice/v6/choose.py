"""Version 6's rule, written before its dropout model trained (`../README.md`, "Version 6"): version 5's rule
(`v5/choose.py`) on the seventh version's two seeds (`_v6-dropout-sSEED`). Run from the repository root:

    python data/synth/route-choice/v6/choose.py [SWEEP_DIR]   # -> data/synth/route-choice/v6/choice.json
"""
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# loaded under its own name: v5/choose.py imports version 3's module `choose` itself
_spec = importlib.util.spec_from_file_location("v5_choose", HERE.parent / "v5" / "choose.py")
v5 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v5)

if __name__ == "__main__":
    sweep = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep")
    v5.show(v5.main(sweep, name="seventh", version="v6", out=HERE / "choice.json"), name="seventh")
