"""Version 5's rule, written before its dropout model trained (`../README.md`, "Version 5"), from the choice
set's sweep (`v5/dropout.sh A` and `B` write it). Run from the repository root:

    python data/synth/route-choice/v5/choose.py [SWEEP_DIR]   # -> data/synth/route-choice/v5/choice.json

Each model (the shipped fourth version, the sixth version's two seeds) is scored at full depth and on the two
shipped routes; its summary is the mean of the three pooled scores. The sixth version replaces the fourth if
its two seeds' mean summary is higher and, at full depth, its per-row two-seed mean is not worse than the
fourth's by more than the margin, 5% of the fourth's full-depth mean on these rows (one-sided 95% lower bound
of the paired bootstrap over rows); its higher-summary seed ships. Reported beside it: the paired difference on
each route, and the 20-layer route's two-seed mean as a share of `smollm2-135m-adapted-20`'s score on the
same rows (the real-task target asks for that route's adapter's ratio minus 0.05).
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "v3"))
from adalas.io import atomic_write_json, read_jsonl  # noqa: E402
from adalas.stats import paired_difference  # noqa: E402
from choose import CHOICE_SET, SEEDS, config_line, scores, summary  # noqa: E402  (version 3's rows and score)

FOURTH = "smollm2-135m-dropout"
ROUTES = {"20": "smollm2-135m-adapted-20", "24": "smollm2-135m-adapted-24"}
WHERE = ("full", "20", "24")
MARGIN_SHARE = 0.05


def main(sweep: Path, name: str = "sixth", version: str = "v5", out: Path = HERE / "choice.json") -> dict:
    """The rule on `version`'s two seeds (aliases `_<version>-dropout-sSEED`, called `<name>-sSEED`) -> out;
    version 6 reuses it (`v6/choose.py`)."""
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    models = {"fourth": FOURTH, **{f"{name}-s{s}": f"_{version}-dropout-s{s}" for s in SEEDS}}
    configs = {(name, where): f"adapted:{alias}" + (f"@{ROUTES[where]}" if where != "full" else "")
               for name, alias in models.items() for where in WHERE}
    configs[("adapted-20", "20")] = f"adapted:{ROUTES['20']}"
    by_config = scores(sweep)
    missing = [c for c in configs.values() if set(ids) - set(by_config.get(c, {}))]
    if missing:
        raise SystemExit(f"choose: {sweep} lacks rows of {missing}; run {version}/dropout.sh A and B to the end first")
    table = {f"{name}@{where}": summary(by_config[c], ids, shapes) for (name, where), c in configs.items()}
    summaries = {m: float(np.mean([table[f"{m}@{w}"]["rougeL"] for w in WHERE])) for m in models}
    new_mean = float(np.mean([summaries[f"{name}-s{s}"] for s in SEEDS]))

    def per_row(names: list[str], where: str) -> list[float]:
        """Per row, the mean F of these models at `where`."""
        return [float(np.mean([by_config[configs[(n, where)]][i]["rougeL"] for n in names])) for i in ids]

    seeds = [f"{name}-s{s}" for s in SEEDS]
    differences = {where: paired_difference(per_row(seeds, where), per_row(["fourth"], where)) for where in WHERE}
    margin = MARGIN_SHARE * table["fourth@full"]["rougeL"]
    lower = differences["full"]["ci90"][0]
    full_test = {"diff": differences["full"]["diff"], "ci90": differences["full"]["ci90"],
                 "one_sided_lower_95": lower, "margin": margin, "not_worse": lower > -margin}
    replaces = new_mean > summaries["fourth"] and full_test["not_worse"]
    seed = max(SEEDS, key=lambda s: summaries[f"{name}-s{s}"])
    adapted_20 = table["adapted-20@20"]["rougeL"]
    doc = {"sweep": str(sweep), "rows": len(ids), "routes": ROUTES, "configs": table, "summaries": summaries,
           f"{name}_two_seed_mean": new_mean, "full_depth_test": full_test,
           "differences": {w: {"diff": d["diff"], "ci95": d["ci95"]} for w, d in differences.items()},
           "route_20_share_of_adapted_20": {
               m: table[f"{m}@20"]["rougeL"] / adapted_20 for m in models},
           f"{name}_replaces_fourth": replaces,
           "ships": f"runs/{version}/dropout-s{seed}/adapter" if replaces else FOURTH}
    atomic_write_json(out, doc)
    return doc


def show(result: dict, name: str = "sixth") -> None:
    for config, row in result["configs"].items():
        print(config_line(config, row, width=16))
    print(json.dumps({k: result[k] for k in ("summaries", f"{name}_two_seed_mean", "full_depth_test", "differences",
                                              "route_20_share_of_adapted_20", f"{name}_replaces_fourth", "ships")},
                     indent=1))


if __name__ == "__main__":
    show(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep")))
