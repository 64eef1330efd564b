"""Version 3's choice, by the rule written before training (`../README.md`, "Version 3"), from the sweep of
every candidate over the choice set (`v3/pipeline.sh` writes it). Run from the repository root:

    python data/synth/route-choice/v3/choose.py [SWEEP_DIR]   # -> data/synth/route-choice/v3/choice.json

Per size, the route whose two seeds have the higher mean pooled score is chosen, and of its seeds the higher
one ships. Also issue 26's test of the found route: at 20 layers, searched minus shipped after training,
per row averaged over the seeds, on the 144 rows the route search never saw (the choice set's rows 49-192),
one-sided at margin 0.02 (the 90% paired interval's lower bound, i.e. a one-sided 95% bound).
"""
import json
import sys
from pathlib import Path

import numpy as np

from adalas.io import atomic_write_json, read_jsonl
from adalas.report import read_scores
from adalas.stats import bootstrap_ci, paired_difference

HERE = Path(__file__).resolve().parent
CHOICE_SET = HERE.parents[1] / "shapes" / "choice.heldout.jsonl"
SEARCH_ROWS = 48  # `adalas route --rows 48`: the search saw the choice set's first 48 rows
ROUTES = {  # the order of `--routes` in v3/pipeline.sh
    "route#0": "20-shipped", "route#1": "20-searched", "route#2": "24-shipped", "route#3": "24-searched"}
SEEDS = (0, 1)
MARGIN = 0.02


def scores(sweep: Path) -> dict[str, dict[str, dict[str, float]]]:
    """config id -> row id -> {rougeL, output_tokens, stopped}."""
    by_metric = {m: read_scores(sweep, m) for m in ("rougeL", "output_tokens", "stopped")}
    return {c: {i: {m: by_metric[m][c][i] for m in by_metric} for i in rows}
            for c, rows in by_metric["rougeL"].items()}


def summary(rows: dict[str, dict], ids: list[str], shapes: dict[str, str]) -> dict:
    f = [rows[i]["rougeL"] for i in ids]
    per_shape = {}
    for shape in sorted(set(shapes.values())):
        per_shape[shape] = float(np.mean([rows[i]["rougeL"] for i in ids if shapes[i] == shape]))
    return {"rougeL": float(np.mean(f)), "ci95": bootstrap_ci(f), "per_shape": per_shape,
            "output_tokens": float(np.mean([rows[i]["output_tokens"] for i in ids])),
            "stopped": float(np.mean([rows[i]["stopped"] for i in ids]))}


def config_line(name: str, row: dict, width: int = 18) -> str:
    """One config's summary as the choice scripts print it."""
    return (f"{name:{width}s} F {row['rougeL']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] "
            f"tokens {row['output_tokens']:.1f} stopped {row['stopped']:.2f}")


def main(sweep: Path) -> dict:
    examples = read_jsonl(CHOICE_SET, strict=True)
    ids = [e["id"] for e in examples]
    shapes = {e["id"]: e["shape"] for e in examples}
    unseen = ids[SEARCH_ROWS:]
    by_config = scores(sweep)
    configs = {"full": "full", **ROUTES}
    for size in (20, 24):
        for route in ("shipped", "searched"):
            for seed in SEEDS:
                configs[f"adapted:_v3-{size}-{route}-s{seed}"] = f"{size}-{route}-s{seed}"
    missing = [c for c in configs if set(ids) - set(by_config.get(c, {}))]
    if missing:
        raise SystemExit(f"choose: {sweep} lacks rows of {missing}; run the sweep to the end first")
    table = {name: summary(by_config[c], ids, shapes) for c, name in configs.items()}
    choice = {}
    for size in (20, 24):
        means = {route: float(np.mean([table[f"{size}-{route}-s{s}"]["rougeL"] for s in SEEDS]))
                 for route in ("shipped", "searched")}
        route = max(means, key=means.get)
        seed = max(SEEDS, key=lambda s: table[f"{size}-{route}-s{s}"]["rougeL"])
        choice[str(size)] = {"route": route, "seed": seed, "seed_means": means,
                             "ships": f"runs/v3/{size}-{route}-s{seed}/adapter"}

    def per_row_mean(route: str) -> list[float]:
        return [float(np.mean([by_config[f"adapted:_v3-20-{route}-s{s}"][i]["rougeL"] for s in SEEDS]))
                for i in unseen]

    found = paired_difference(per_row_mean("searched"), per_row_mean("shipped"))
    per_seed = {s: paired_difference([by_config[f"adapted:_v3-20-searched-s{s}"][i]["rougeL"] for i in unseen],
                                     [by_config[f"adapted:_v3-20-shipped-s{s}"][i]["rougeL"] for i in unseen])
                for s in SEEDS}
    found_route = {"rows": len(unseen), "margin": MARGIN, "diff": found["diff"], "ci90": found["ci90"],
                   "one_sided_lower_95": found["ci90"][0], "not_worse": found["ci90"][0] > -MARGIN,
                   "per_seed": {str(s): {"diff": d["diff"], "ci95": d["ci95"]} for s, d in per_seed.items()}}
    doc = {"sweep": str(sweep), "rows": len(ids), "configs": table, "choice": choice,
           "found_route_20": found_route}
    atomic_write_json(HERE / "choice.json", doc)
    return doc


if __name__ == "__main__":
    result = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep"))
    for name, row in result["configs"].items():
        print(config_line(name, row) + " " + " ".join(f"{k} {v:.3f}" for k, v in row["per_shape"].items()))
    print(json.dumps({"choice": result["choice"], "found_route_20": result["found_route_20"]}, indent=1))
