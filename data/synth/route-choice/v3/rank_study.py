"""Issue 26's rank study (`../README.md`, "Does the search's score rank trained routes?"): how well the route
search's teacher-forced score ranks ten 20-layer routes after the same short training. Run from the
repository root once `v3/rank.sh A` and `B` have finished:

    python data/synth/route-choice/v3/rank_study.py [SWEEP_DIR]   # -> data/synth/route-choice/v3/rank.json

Spearman's rank correlation (average ranks for ties, numpy only) between each route's search score (KL to
full depth on the search's 48 rows; also top-1 agreement) and its mean ROUGE-L F against full depth's
output on the choice set's rows 49-192, which the search never saw; 95% percentile intervals from 1,000
resamples of those rows (routes fixed) and, separately, of the ten routes.
"""
import json
import sys
from pathlib import Path

import numpy as np

from adalas.io import atomic_write_json, read_jsonl
from adalas.report import read_scores
from choose import CHOICE_SET, HERE, SEARCH_ROWS  # the script beside this one: the same rows, the same split
ROUTES = [[3, 4, 5, 6, 12, 13, 14, 17, 25, 26], [3, 4, 5, 6, 11, 12, 13, 14, 25, 26], [3, 4, 6, 9, 12, 13, 14, 17, 25, 26],
          [3, 4, 5, 6, 7, 12, 13, 14, 16, 17], [3, 4, 6, 9, 11, 12, 13, 14, 25, 26], [3, 4, 5, 6, 12, 13, 14, 15, 25, 26],
          [3, 4, 6, 7, 9, 12, 13, 14, 25, 26], [3, 4, 9, 12, 13, 14, 15, 17, 25, 26], [3, 4, 6, 9, 12, 13, 14, 15, 25, 26],
          [3, 4, 7, 9, 12, 13, 14, 15, 25, 26]]  # the plan's table, in its order
RESAMPLES, SEED = 1000, 0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of a 1-d array, ties sharing the mean of their ranks."""
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of a and b along the last axis (nan where one side is constant)."""
    ra = np.apply_along_axis(_ranks, -1, np.asarray(a, dtype=np.float64))
    rb = np.apply_along_axis(_ranks, -1, np.asarray(b, dtype=np.float64))
    ra = ra - ra.mean(-1, keepdims=True)
    rb = rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


def search_scores() -> dict[str, dict]:
    """route name -> {kl, top1_agreement} from the search's records (the shipped route from routes.json)."""
    scores = {}
    for c in json.loads((HERE / "route-20.json").read_text())["candidates"]:
        scores["-".join(map(str, c["skip"]))] = {"kl": c["kl"], "top1_agreement": c["top1_agreement"]}
    shipped = json.loads((HERE / "routes.json").read_text())["shipped adapted-20"]
    scores["-".join(map(str, shipped["skip"]))] = {"kl": shipped["kl"], "top1_agreement": shipped["top1_agreement"]}
    return scores


def correlations(score: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> dict:
    """score (R,), f (R, N) per-route per-row F: rho of -score (higher is better) with the mean F."""
    point = float(spearman(-score, f.mean(1)))
    rows = rng.integers(0, f.shape[1], size=(RESAMPLES, f.shape[1]))
    by_rows = spearman(np.broadcast_to(-score, (RESAMPLES, len(score))), f[:, rows].mean(2).T)
    routes = rng.integers(0, len(score), size=(RESAMPLES, len(score)))
    by_routes = spearman(-score[routes], f.mean(1)[routes])
    return {"rho": point, "ci95_rows": [float(v) for v in np.nanpercentile(by_rows, [2.5, 97.5])],
            "ci95_routes": [float(v) for v in np.nanpercentile(by_routes, [2.5, 97.5])]}


def off_the_shelf_ids(sweep: Path, num_layers: int = 30) -> dict[tuple, str]:
    """skip list -> the id of a `route:` config that ran it off the shelf: a sweep makes a route once, under
    the first alias that asked for it (the shipped 20-layer route: `route:smollm2-135m-adapted-20`)."""
    configs = json.loads((sweep / "settings.json").read_text())["configs"]
    out = {}
    for cid, definition in sorted(configs.items()):
        route = definition.get("depth", {}).get("route") if cid.startswith("route:") else None
        if route is not None and len(route) == num_layers:
            out.setdefault(tuple(i for i, keep in enumerate(route) if not keep), cid)
    return out


def main(sweep: Path) -> dict:
    ids = [e["id"] for e in read_jsonl(CHOICE_SET, strict=True)][SEARCH_ROWS:]
    rows = read_scores(sweep)  # config id -> row id -> ROUGE-L F
    scores = search_scores()
    names = ["-".join(map(str, skip)) for skip in ROUTES]
    missing = [n for n in names if set(ids) - set(rows.get(f"adapted:_rank-{n}", {}))]
    if missing:
        raise SystemExit(f"rank_study: {sweep} lacks held-out rows of adapted:_rank-{missing[0]} (and {len(missing) - 1} more)")
    trained = np.array([[rows[f"adapted:_rank-{n}"][i] for i in ids] for n in names])  # (R, N)
    shelf_ids = off_the_shelf_ids(sweep)
    if any(tuple(skip) not in shelf_ids for skip in ROUTES):
        raise SystemExit(f"rank_study: {sweep} lacks a route off the shelf: "
                         f"{[skip for skip in ROUTES if tuple(skip) not in shelf_ids]}")
    shelf = np.array([[rows[shelf_ids[tuple(skip)]][i] for i in ids] for skip in ROUTES])
    healed = HERE / "healed.json"  # v3/healed.py: the KL after a linear correction, if computed
    if healed.is_file():
        for n, doc in json.loads(healed.read_text()).items():
            scores[n]["healed_kl"] = doc["healed_kl"]
    rng = np.random.default_rng(SEED)
    out = {"rows": len(ids), "routes": [{"skip": skip, **scores[n], "trained_F": float(trained[k].mean()),
                                         "off_the_shelf_F": float(shelf[k].mean())}
                                        for k, (skip, n) in enumerate(zip(ROUTES, names))]}
    names_of_scores = [("kl", 1.0), ("top1_agreement", -1.0)] + ([("healed_kl", 1.0)] if healed.is_file() else [])
    for score_name, sign in names_of_scores:  # -agreement: lower is better, as KL
        s = sign * np.array([scores[n][score_name] for n in names])
        out[f"{score_name}_vs_trained"] = correlations(s, trained, rng)
        out[f"{score_name}_vs_off_the_shelf"] = correlations(s, shelf, rng)
    atomic_write_json(HERE / "rank.json", out)
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/v3/choice-sweep")), indent=1))
