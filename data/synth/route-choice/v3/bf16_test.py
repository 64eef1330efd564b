"""bf16 or fp32 training (`../README.md`, "bf16 training: alike or not?"): two one-sided tests of the
20-layer searched candidate trained under bf16 autocast against the same command in fp32, two seeds
each, on the choice set. Run from the repository root once `v3/bf16.sh` has finished:

    python data/synth/route-choice/v3/bf16_test.py [SWEEP_DIR]   # -> data/synth/route-choice/v3/bf16.json
"""
import json
import sys
from pathlib import Path

import numpy as np

from adalas.io import atomic_write_json, read_jsonl
from adalas.stats import equivalence
from choose import CHOICE_SET, HERE, SEEDS, scores, summary  # the script beside this one: the same rows and score

ARMS = {"fp32": ("_v3-20-searched-s{}", "runs/v3/20-searched-s{}"),
        "bf16": ("_v3bf16-20-searched-s{}", "runs/v3-bf16/20-searched-s{}")}
MARGIN_SHARE = 0.05  # the protocol's default margin: 5% of the reference arm's mean


def main(sweep: Path) -> dict:
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    by_config = scores(sweep)
    configs = {(arm, s): f"adapted:{alias.format(s)}" for arm, (alias, _) in ARMS.items() for s in SEEDS}
    missing = [c for c in configs.values() if set(ids) - set(by_config.get(c, {}))]
    if missing:
        raise SystemExit(f"bf16_test: {sweep} lacks rows of {missing}; run v3/bf16.sh to the end first")
    runs = {}
    for (arm, s), cid in configs.items():
        provenance = json.loads((Path(ARMS[arm][1].format(s)) / "adapter" / "provenance.json").read_text())
        runs[f"{arm}-s{s}"] = {**summary(by_config[cid], ids, shapes),
                               "s_per_step": provenance["wall_s"] / provenance["steps"]}
    mean = {arm: [float(np.mean([by_config[configs[(arm, s)]][i]["rougeL"] for s in SEEDS])) for i in ids]
            for arm in ARMS}
    margin = MARGIN_SHARE * float(np.mean(mean["fp32"]))
    test = equivalence(mean["bf16"], mean["fp32"], margin)
    doc = {"sweep": str(sweep), "rows": len(ids), "runs": runs, "margin": margin,
           "bf16_minus_fp32": {k: test[k] for k in ("diff", "ci90", "ci95", "equivalent", "detectable")},
           "alike": test["equivalent"],
           "note": "s_per_step is each run's wall time over its steps, under whatever else ran beside it; "
                   "it is not a benchmark"}
    atomic_write_json(HERE / "bf16.json", doc)
    return doc


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep")), indent=1))
