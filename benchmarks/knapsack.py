"""Knapsack speed and accuracy: prints one JSON object.

    PYTHONPATH=src python benchmarks/knapsack.py [--n 20000] [--k 8] [--layers 24]

Instances look like an oracle's: sequence i under config k scores a noisy, saturating function of
depth and uses a per-sequence (fractional, as learned controllers give) number of layers, costed
at 1/8 layer. The large case must solve in under 5 s on the 2-core dev machine ("auto" picks the
hull there); the mid-size case runs both solvers and checks that the DP optimum lies between the
hull's total and its upper bound.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from adalas.knapsack import solve_knapsack
from adalas.oracle import LAYER_RESOLUTION, oracle_curve


def instance(n: int, k: int, num_layers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n, k), costs (n, k)) with depths spread from num_layers/k to num_layers."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(num_layers / k, num_layers, k)  # (k,) nominal depth per config
    depth = np.clip(depth + rng.normal(0, 0.5, (n, k)), 1, num_layers)  # (n, k) per sequence
    depth[:, -1] = num_layers  # the last config is the full model
    skill = rng.uniform(0.2, 0.6, (n, 1))  # (n, 1) how easy each sequence is
    scores = skill * (1 - np.exp(-depth / rng.uniform(2, 10, (n, 1)))) + rng.normal(0, 0.03, (n, k))
    return scores, np.rint(depth * LAYER_RESOLUTION).astype(np.int64)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--mid-n", type=int, default=400)
    args = p.parse_args()

    scores, costs = instance(args.n, args.k, args.layers, seed=0)
    budget = int(args.n * LAYER_RESOLUTION * args.layers * 0.6)  # 60% of full depth on average
    res, seconds = timed(lambda: solve_knapsack(scores, costs, budget))
    curve, curve_seconds = timed(lambda: oracle_curve(scores, costs / LAYER_RESOLUTION))

    mid_s, mid_c = instance(args.mid_n, args.k, args.layers, seed=1)
    mid_b = int(args.mid_n * LAYER_RESOLUTION * args.layers * 0.5)
    dp, dp_seconds = timed(lambda: solve_knapsack(mid_s, mid_c, mid_b, method="dp"))
    hull, hull_seconds = timed(lambda: solve_knapsack(mid_s, mid_c, mid_b, method="hull"))
    eps = 1e-9 * max(1.0, abs(dp.total))
    print(json.dumps({
        "n": args.n, "k": args.k, "budget": budget, "solver": res.solver,
        "seconds": round(seconds, 3), "gap": res.gap, "relative_gap": res.gap / res.total,
        "curve_points": len(curve), "curve_seconds": round(curve_seconds, 3),
        "mid": {
            "n": args.mid_n, "k": args.k, "budget": mid_b,
            "dp_total": dp.total, "hull_total": hull.total, "hull_gap": hull.gap,
            "dp_minus_hull": dp.total - hull.total,
            "within_gap": hull.total - eps <= dp.total <= hull.upper_bound + eps,
            "same_choice_fraction": float(np.mean(dp.choice == hull.choice)),
            "dp_seconds": round(dp_seconds, 3), "hull_seconds": round(hull_seconds, 3),
        },
    }))


if __name__ == "__main__":
    main()
