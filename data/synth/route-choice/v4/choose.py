"""Version 4's rule, written before it trained (`../README.md`, "Version 4"), from the choice set's sweep
(`v4/pipeline.sh` scores each version-4 seed into it). Run from the repository root:

    python data/synth/route-choice/v4/choose.py [SWEEP_DIR]   # -> data/synth/route-choice/v4/choice.json

Per size with both version-4 seeds scored: version 4 (320 steps) replaces version 3 (160 steps, the route version
3 chose) if its two seeds' mean pooled score is higher than version 3's (v3/choice.json: 0.480 at 20 layers,
0.531 at 24); its higher seed then ships. The sweep version 3 was chosen in did not outlive its checkout, nor did
version 3's unshipped seed, so version 3's two-seed mean is the recorded one, and the paired difference reported
beside the rule (per row, pooled and per shape) is version 4's two-seed mean against the version-3 seed that ships
(`adapted:smollm2-135m-adapted-SIZE`, its rows made again: `v3/score.sh --adapted smollm2-135m-adapted-SIZE`),
whose pooled mean must equal the one recorded for it (the sweep is deterministic; a mismatch stops the choice).
The 24-layer pair trains only if the 20-layer pair gained (`train_24`).
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "v3"))
from adalas.data import file_sha256  # noqa: E402
from adalas.io import atomic_write_json, read_jsonl  # noqa: E402
from adalas.stats import paired_difference  # noqa: E402
from choose import CHOICE_SET, SEEDS, scores, summary  # noqa: E402  (version 3's rows and score)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
V3 = json.loads((HERE.parent / "v3" / "choice.json").read_text())


def main(sweep: Path) -> dict:
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    by_config = scores(sweep)
    out = {"sweep": str(sweep), "rows": len(ids), "sizes": {}}
    for size in ("20", "24"):
        v3 = V3["choice"][size]
        v4 = [f"adapted:_v4-{size}-s{s}" for s in SEEDS]
        shipped = f"adapted:smollm2-135m-adapted-{size}"  # version 3's seed that ships
        if any(set(ids) - set(by_config.get(c, {})) for c in [*v4, shipped]):
            continue  # not trained or not scored (yet)
        table = {c: summary(by_config[c], ids, shapes) for c in [*v4, shipped]}
        recorded = V3["configs"][f"{size}-{v3['route']}-s{v3['seed']}"]["rougeL"]
        if abs(table[shipped]["rougeL"] - recorded) > 1e-9:
            raise SystemExit(f"choose: {shipped} scores {table[shipped]['rougeL']:.6f} here, {recorded:.6f} when version 3 "
                             f"chose it: not the same rows (another full-depth output?); nothing compared")
        means = {"v3": float(v3["seed_means"][v3["route"]]),  # recorded: both version-3 seeds
                 "v4": float(np.mean([table[c]["rougeL"] for c in v4]))}
        row_v4 = [float(np.mean([by_config[c][i]["rougeL"] for c in v4])) for i in ids]
        row_v3 = [by_config[shipped][i]["rougeL"] for i in ids]
        diff = paired_difference(row_v4, row_v3)
        per_shape = {}
        for shape in sorted(set(shapes.values())):
            keep = [k for k, i in enumerate(ids) if shapes[i] == shape]
            d = paired_difference([row_v4[k] for k in keep], [row_v3[k] for k in keep])
            per_shape[shape] = {"diff": d["diff"], "ci95": d["ci95"]}
        replaces = means["v4"] > means["v3"]
        seed = max(SEEDS, key=lambda s: table[f"adapted:_v4-{size}-s{s}"]["rougeL"])
        weights = {c: file_sha256(ROOT / "src" / "adalas" / "adapters" / c.removeprefix("adapted:") /
                              "adapter_model.safetensors") for c in v4}  # a seed trained again must match
        out["sizes"][size] = {"configs": table, "adapter_sha256": weights, "two_seed_means": means,
                              "v3_shipped_seed_reproduced": recorded,
                              "v4_minus_v3_shipped_seed": {**diff, "per_shape": per_shape},
                              "v4_replaces_v3": replaces,
                              "ships": f"runs/v4/{size}-s{seed}/adapter" if replaces else v3["ships"]}
    if "20" in out["sizes"]:
        out["train_24"] = out["sizes"]["20"]["v4_replaces_v3"]
    atomic_write_json(HERE / "choice.json", out)
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep"))
    print(json.dumps({size: {k: v for k, v in doc.items() if k != "configs"} for size, doc in result["sizes"].items()}
                     | {"train_24": result.get("train_24")}, indent=1))
