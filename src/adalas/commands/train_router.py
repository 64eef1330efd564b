"""`adalas train-router`: learn a per-sequence route controller from a sweep.

    adalas train-router --sweep results/sweep --model smollm2-135m --out results/router \
        [--target-avg-layers 26] [--tolerance 0.02] [--speed-check 24]

Reads the sweep's per-sequence scores of its fixed routes, computes prompt features with the model
(one prompt pass through the deepest candidate feature layer), fits the controller on the training
sequences, calibrates its cost weight on the validation ones, and writes to --out: the router
(`adalas_sequence_router.{json,safetensors}`, usable as `{"mode": "sequence", "router_path": OUT}`),
the feature cache, and `router_eval.json`: the held-out (test) curve beside uniform skipping, random
routes, early exit, the best input-blind mix of fixed routes and the oracle (`curves`, `matched`);
with --folds K the same with every sequence held out once (`crossfit`, with paired differences and
their standard errors); with --speed-check N a real generation of N held-out sequences batched by
route, timed against full depth (`speed`).
"""
from __future__ import annotations

import json

import numpy as np

from ..cli import add_model_args, check_counts, load_model_from_args, make_parser


def build_parser():
    p = make_parser("train-router", __doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="sweep directory (sweep.jsonl + per_sequence.jsonl)")
    add_model_args(p)
    p.add_argument("--out", required=True, help="directory for the router, its feature cache and router_eval.json")
    p.add_argument("--target-avg-layers", type=float, default=None,
                   help="average depth the router aims at (default: the shallowest whose validation score is "
                        "within --tolerance of full depth)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="ROUGE-L slack: labels are the cheapest route within it of the reference")
    p.add_argument("--reference", default="best", choices=["best", "full"],
                   help="labels: within tolerance of the sequence's best route, or of full depth")
    p.add_argument("--objective", default="regression", choices=["regression", "label"],
                   help="regression: predict each route's score (ridge); label: classify the cheapest good route")
    p.add_argument("--target", default="score", choices=["score", "agreement"],
                   help="what the controller predicts per route: ROUGE-L against the reference, or against "
                        "the full-depth output (less noisy)")
    p.add_argument("--feature-layers", default=None,
                   help="candidate feature layers, comma-separated (default: 0, L/8, L/4, L/2); chosen by "
                        "cross-validation on the training sequences")
    p.add_argument("--strategies", default=None,
                   help="candidate routes: comma-separated strategies among full, uniform_skip, random_route, "
                        "early_exit (default: all in the sweep)")
    p.add_argument("--data", default=None,
                   help="rebuild prompts from this dataset by id (default: the sweep's prompt text)")
    p.add_argument("--prompt-format", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5,
                   help="also report a cross-fitted curve: every sequence held out once (0: skip)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--speed-check", type=int, default=0, metavar="N",
                   help="generate N held-out sequences batched by route and at full depth; report tokens/s")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="speed check: new tokens (default: the sweep's)")
    p.add_argument("--speed-repeats", type=int, default=2, help="speed check: alternating runs; the fastest counts")
    p.add_argument("--save-model", default=None, help="also save the model with this router (sequence mode) here")
    return p


def _layers(text: str | None, L: int) -> list[int]:
    if text is None:
        return sorted({0, L // 8, L // 4, L // 2})
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--feature-layers: expected comma-separated integers, got {text!r}") from None
    if not layers or layers[0] < 0 or layers[-1] >= L:
        raise ValueError(f"--feature-layers: each must be in 0..{L - 1}, got {text!r}")
    return layers


def main(argv: list[str]) -> int:
    from ..config import DepthConfig
    from ..io import atomic_write_json, check_output_dir
    from ..oracle import check_sweep_model
    from ..sequence import load_sweep, measure_speed, sweep_prompts, train_from_sweep

    args = build_parser().parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds: must be 0 (skip) or >= 2, got {args.folds}")
    check_counts(("--speed-check", args.speed_check, 0), ("--speed-repeats", args.speed_repeats, 1),
                 ("--batch-size", args.batch_size, 1), ("--max-new-tokens", args.max_new_tokens, 1))
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction: must be in (0, 1) (router_eval.json compares on held-out sequences), "
                         f"got {args.test_fraction}")
    check_output_dir(args.out)
    if args.save_model:
        check_output_dir(args.save_model, "--save-model")
    check_sweep_model(args.sweep, args.model)
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    model, tok = load_model_from_args(args)
    if args.target_avg_layers is not None and not 0 < args.target_avg_layers <= model.num_layers:
        raise ValueError(f"--target-avg-layers: must be in (0, {model.num_layers}] for a model with "
                         f"{model.num_layers} layers, got {args.target_avg_layers}")
    doc = train_from_sweep(args.sweep, model, tok, args.out, strategies=strategies, data=args.data,
                           prompt_format=args.prompt_format,
                           feature_layers=_layers(args.feature_layers, model.num_layers),
                           folds=args.folds, batch_size=max(args.batch_size, 16),
                           target_avg_layers=args.target_avg_layers, tolerance=args.tolerance,
                           reference=args.reference, objective=args.objective, target=args.target, seed=args.seed,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    doc["model"] = args.model
    model.set_depth(DepthConfig(mode="sequence", router_path=str(args.out)))
    if args.speed_check:
        table = load_sweep(args.sweep, strategies)
        ids = doc["heldout_ids"][:args.speed_check]
        prompts = sweep_prompts(table, tok, args.data, args.prompt_format)
        n_new = args.max_new_tokens or _sweep_new_tokens(args.sweep) or 32
        speed = measure_speed(model, [prompts[s] for s in ids], args.batch_size, n_new, args.speed_repeats,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        doc["speed"] = _with_scores(speed, table, ids, _references(args.sweep, ids), tok)
    atomic_write_json(f"{args.out}/router_eval.json", doc)
    if args.save_model:
        model.save_pretrained(args.save_model)
    target = model.sequence_controller.default_target
    default = min(doc["matched"], key=lambda p: abs(p["avg_layers"] - target)) if doc["matched"] else None
    summary = {"out": str(args.out), "feature_layer": model.sequence_controller.feature_layer,
               "default_target": target, "heldout_n": doc["n"], "full_score": doc["full_score"],
               "at_default": default}
    if "speed" in doc:
        summary["speedup_tokens_per_s"] = doc["speed"]["speedup_tokens_per_s"]
    print(json.dumps(summary, indent=1))
    return 0


def _with_scores(speed: dict, table, ids: list[str], refs: dict[str, str], tok) -> dict:
    """ROUGE-L of what the speed check generated, beside what the sweep's rows give for the same
    routes (equal up to fp32 near-ties across batch companions)."""
    from ..evaluate import rouge
    from ..config import route_to_str

    col = {route_to_str(r): k for k, r in enumerate(table.routes)}
    rows = table.rows(ids)
    speed = dict(speed)
    decode = lambda seqs: [tok.decode(s, skip_special_tokens=True).strip() for s in seqs]  # noqa: E731
    preds, full_preds = decode(speed.pop("sequences")), decode(speed.pop("full_sequences"))
    routes = speed.pop("routes")
    speed["sequence"]["rougeL"] = float(np.mean([rouge(p, refs[s])["rougeL"] for p, s in zip(preds, ids)]))
    speed["sequence"]["rougeL_sweep"] = float(np.mean([table.scores[r, col[rt]] for r, rt in zip(rows, routes)]))
    speed["full"]["rougeL"] = float(np.mean([rouge(p, refs[s])["rougeL"] for p, s in zip(full_preds, ids)]))
    speed["full"]["rougeL_sweep"] = float(table.scores[rows, table.full_index].mean())
    return speed


def _sweep_new_tokens(sweep_dir) -> int | None:
    from ..io import read_jsonl
    from pathlib import Path

    for row in read_jsonl(Path(sweep_dir) / "sweep.jsonl", strict=True):
        gen = row.get("generation") or {}
        if gen.get("max_new_tokens"):
            return int(gen["max_new_tokens"])
    return None


def _references(sweep_dir, ids) -> dict:
    from ..io import read_jsonl
    from pathlib import Path

    wanted, refs = set(ids), {}
    for row in read_jsonl(Path(sweep_dir) / "per_sequence.jsonl", strict=True):
        if str(row.get("id")) in wanted and row.get("reference") is not None:
            refs.setdefault(str(row["id"]), row["reference"])
    return refs
