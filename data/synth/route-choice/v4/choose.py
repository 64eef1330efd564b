"""Version 4's rule, written before it trained (`../README.md`, "Version 4"), from the choice set's sweep
(`v4/pipeline.sh` adds its rows to version 3's). Run from the repository root:

    python data/synth/route-choice/v4/choose.py [SWEEP_DIR]   # -> data/synth/route-choice/v4/choice.json

Per size with both version-4 seeds scored: version 4 (320 steps) replaces version 3 (160 steps, the route version
3 chose) if its two seeds' mean pooled score is higher; its higher seed then ships. Reported beside the rule: the
paired difference of the per-row two-seed means with its 95% interval, per shape. The 24-layer pair trains only if
the 20-layer pair gained (`train_24`).
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "v3"))
from adalas.io import atomic_write_json, read_jsonl  # noqa: E402
from adalas.stats import paired_difference  # noqa: E402
from choose import CHOICE_SET, SEEDS, scores, summary  # noqa: E402  (version 3's rows and score)

HERE = Path(__file__).resolve().parent
V3 = json.loads((HERE.parent / "v3" / "choice.json").read_text())["choice"]


def main(sweep: Path) -> dict:
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    by_config = scores(sweep)
    out = {"sweep": str(sweep), "rows": len(ids), "sizes": {}}
    for size in ("20", "24"):
        arms = {"v3": [f"adapted:_v3-{size}-{V3[size]['route']}-s{s}" for s in SEEDS],
                "v4": [f"adapted:_v4-{size}-s{s}" for s in SEEDS]}
        if any(set(ids) - set(by_config.get(c, {})) for c in arms["v4"]):
            continue  # not trained (yet)
        table = {c: summary(by_config[c], ids, shapes) for cs in arms.values() for c in cs}
        means = {arm: float(np.mean([table[c]["rougeL"] for c in cs])) for arm, cs in arms.items()}
        row_mean = {arm: [float(np.mean([by_config[c][i]["rougeL"] for c in cs])) for i in ids]
                    for arm, cs in arms.items()}
        diff = paired_difference(row_mean["v4"], row_mean["v3"])
        per_shape = {}
        for shape in sorted(set(shapes.values())):
            keep = [k for k, i in enumerate(ids) if shapes[i] == shape]
            d = paired_difference([row_mean["v4"][k] for k in keep], [row_mean["v3"][k] for k in keep])
            per_shape[shape] = {"diff": d["diff"], "ci95": d["ci95"]}
        replaces = means["v4"] > means["v3"]
        seed = max(SEEDS, key=lambda s: table[f"adapted:_v4-{size}-s{s}"]["rougeL"])
        out["sizes"][size] = {"configs": table, "two_seed_means": means, "v4_minus_v3": {**diff, "per_shape": per_shape},
                              "v4_replaces_v3": replaces,
                              "ships": f"runs/v4/{size}-s{seed}/adapter" if replaces else V3[size]["ships"]}
    if "20" in out["sizes"]:
        out["train_24"] = out["sizes"]["20"]["two_seed_means"]["v4"] > out["sizes"]["20"]["two_seed_means"]["v3"]
    atomic_write_json(HERE / "choice.json", out)
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep"))
    print(json.dumps({size: {k: v for k, v in doc.items() if k != "configs"} for size, doc in result["sizes"].items()}
                     | {"train_24": result.get("train_24")}, indent=1))
