"""Version 3's dropout model: the rule written before it trained (`../README.md`, "Version 3's dropout
model"), from the choice set's sweep (`v3/dropout.sh A` and `B` write it). Run from the repository root:

    python data/synth/route-choice/v3/choose_dropout.py [SWEEP_DIR]   # -> data/synth/route-choice/v3/dropout-choice.json

Each model (the fourth version, the fifth version's two seeds) is scored at full depth and on the two
chosen routes; its summary is the mean of the three pooled scores. The fifth version replaces the fourth if
its two seeds' mean summary is higher and, at full depth, its per-row two-seed mean is not worse than the
fourth version by more than 0.02 (one-sided 95% lower bound, paired bootstrap over rows); its
higher-summary seed ships.
"""
import json
import sys
from pathlib import Path

import numpy as np

from adalas.io import atomic_write_json, read_jsonl
from adalas.stats import paired_difference
from choose import CHOICE_SET, HERE, SEEDS, config_line, scores, summary  # the script beside this one: the same rows and score

FOURTH = "smollm2-135m-dropout"
MARGIN = 0.02


def main(sweep: Path) -> dict:
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    chosen = json.loads((HERE / "choice.json").read_text())["choice"]
    routes = {size: f"_v3-{size}-{chosen[size]['route']}-s{chosen[size]['seed']}" for size in ("20", "24")}
    models = {"fourth": FOURTH, **{f"fifth-s{s}": f"_v3-dropout-s{s}" for s in SEEDS}}
    configs = {(name, where): f"adapted:{alias}" + (f"@{routes[where]}" if where != "full" else "")
               for name, alias in models.items() for where in ("full", "20", "24")}
    by_config = scores(sweep)
    missing = [c for c in configs.values() if set(ids) - set(by_config.get(c, {}))]
    if missing:
        raise SystemExit(f"choose_dropout: {sweep} lacks rows of {missing}; run v3/dropout.sh to the end first")
    table = {f"{name}@{where}": summary(by_config[c], ids, shapes) for (name, where), c in configs.items()}
    summaries = {name: float(np.mean([table[f"{name}@{w}"]["rougeL"] for w in ("full", "20", "24")]))
                 for name in models}
    fifth_mean = float(np.mean([summaries[f"fifth-s{s}"] for s in SEEDS]))
    fifth_full = [float(np.mean([by_config[configs[(f"fifth-s{s}", "full")]][i]["rougeL"] for s in SEEDS]))
                  for i in ids]
    fourth_full = [by_config[configs[("fourth", "full")]][i]["rougeL"] for i in ids]
    full_test = paired_difference(fifth_full, fourth_full)
    full_test = {"diff": full_test["diff"], "ci90": full_test["ci90"], "one_sided_lower_95": full_test["ci90"][0],
                 "margin": MARGIN, "not_worse": full_test["ci90"][0] > -MARGIN}
    replaces = fifth_mean > summaries["fourth"] and full_test["not_worse"]
    seed = max(SEEDS, key=lambda s: summaries[f"fifth-s{s}"])
    doc = {"sweep": str(sweep), "rows": len(ids), "routes": routes, "configs": table, "summaries": summaries,
           "fifth_two_seed_mean": fifth_mean, "full_depth_test": full_test, "fifth_replaces_fourth": replaces,
           "ships": f"runs/v3/dropout-s{seed}/adapter" if replaces else FOURTH}
    atomic_write_json(HERE / "dropout-choice.json", doc)
    return doc


if __name__ == "__main__":
    result = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep"))
    for name, row in result["configs"].items():
        print(config_line(name, row, width=16))
    print(json.dumps({k: result[k] for k in ("summaries", "fifth_two_seed_mean", "full_depth_test",
                                              "fifth_replaces_fourth", "ships")}, indent=1))
