"""`adalas sweep`: many depth configs over the same sequences, for the curves and the oracle.

    adalas sweep --model smollm2-135m --data builtin --limit 48 --max-new-tokens 32 \
        --strategies early_exit,uniform_skip,random_route --budgets 20,24,27 --routes-per-budget 5 \
        --null-k 7 --out results/sweep

The full model always runs (first). Writes DIR/sweep.jsonl (one row per config, with rougeL_ci95)
and DIR/per_sequence.jsonl (with a config_id column), then DIR/report.md with its plots (paired
comparisons, the adapted models' table); a killed sweep resumes where it stopped.
`--adapted` adds shipped adapted models: `ALIAS` on its own depth (beside its route off the shelf),
`ALIAS@24` with uniform skipping to 24 layers, `ALIAS@OTHER` on another alias's route; a route off the
shelf that the directory already has (another alias's `route:` rows) is not generated again.
`--redo ID ...` first drops the rows of the configs whose ids match (shell patterns, such as
`'adapted:smollm2-135m-dropout*'` after that adapter is retrained), so they run again; a directory
made with other settings is refused first, with nothing dropped.
`--null-k K` adds the oracle's null control: the full model sampled K - 1 times (full_sample#1..K-1).
Under torchrun / accelerate (RANK, WORLD_SIZE) each rank takes its share of the batches.
"""
from __future__ import annotations

from ..cli import add_model_args, make_parser
from .eval import add_generation_args, fill_defaults, warn_if_trained_on


def build_parser():
    p = make_parser("sweep", __doc__.splitlines()[0])
    add_model_args(p)
    add_generation_args(p)
    p.add_argument("--strategies", default="early_exit,uniform_skip,random_route",
                   help="comma list of early_exit, uniform_skip, random_route (the full model always runs)")
    p.add_argument("--budgets", help="layers kept: 20,24,27 or a range 20-30 / 20-30:2 (default: about 2/3, 4/5, "
                                     "9/10 of the layers)")
    p.add_argument("--routes-per-budget", type=int, default=2, help="random routes drawn per budget (default 2)")
    p.add_argument("--keep-first", action="store_true", help="random routes always keep layer 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the random routes")
    p.add_argument("--routes", help="explicit routes, comma separated strings of 0/1 (one per layer)")
    p.add_argument("--checkpoints", nargs="+", default=[], help="learned checkpoints (model directories)")
    p.add_argument("--adapted", nargs="+", default=[],
                   help="shipped adapted aliases, each on its own depth beside its route off the shelf; "
                        "ALIAS@B runs the alias with uniform skipping to B layers, ALIAS@OTHER on the route "
                        "of another shipped alias")
    p.add_argument("--null-k", type=int, default=0,
                   help="the oracle's null control: also run the full model K - 1 times sampled (temperature 0.7, "
                        "top-p 0.9, seeds 1..K-1; config ids full_sample#s); K = the number of configs the oracle "
                        "chooses among (default 0: none)")
    p.add_argument("--redo", nargs="+", default=[], metavar="ID",
                   help="drop the rows of these configs from --out before running, so they are made again "
                        "(config ids or shell patterns, e.g. 'adapted:smollm2-135m-dropout*'); one process only")
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str]) -> int:
    from ..cli import load_model_from_args
    from ..data import data_sha256, load_examples
    from ..evaluate import context_length, dist_info, make_items, rank_device
    from ..metrics import parse_metrics
    from ..sweep import (build_configs, drop_routes_made, forget_configs, parse_budgets, parse_strategies,
                        run_sweep, sweep_settings)

    args = build_parser().parse_args(argv)
    fill_defaults(args)
    teacher_forced = parse_metrics(args.metric)
    strategies = parse_strategies(args.strategies)
    if args.null_k < 0 or args.null_k == 1:
        raise ValueError(f"--null-k: must be 0 (no null control) or >= 2 (the greedy full model and K - 1 sampled "
                         f"runs), got {args.null_k}")
    rank, world = dist_info()
    if args.redo and world > 1:
        raise ValueError("--redo: run it in one process (it rewrites --out before any rank starts), then the ranks")
    args.device = rank_device(args.device, rank, world)
    examples = load_examples(args.data, split=args.split, limit=args.limit)  # bad data fails before the model loads
    for model_dir in [args.model, *args.checkpoints]:
        warn_if_trained_on(model_dir, args.data, args.split)
    model, tok = load_model_from_args(args)
    L = model.num_layers
    configs = build_configs(L, strategies, parse_budgets(args.budgets, L), args.routes_per_budget, args.seed,
                            args.keep_first, [r for r in (args.routes or "").split(",") if r.strip()],
                            args.checkpoints, null_k=args.null_k, adapted=args.adapted)
    configs = drop_routes_made(configs, args.out)
    data_id = {"name": args.data, "split": args.split}
    settings = {"prompt_format": args.prompt_format, "max_prompt_tokens": args.max_prompt_tokens,
                "dtype": args.dtype, **({"metrics": teacher_forced} if teacher_forced else {}),
                **({"data_sha256": sha} if (sha := data_sha256(args.data)) else {})}
    if args.redo:
        full_settings = sweep_settings(args.model, data_id, args.max_new_tokens, args.reference, settings,
                                       batch_size=args.batch_size, model=model)
        dropped = forget_configs(args.out, args.redo, configs, settings=full_settings)
        print(f"redo: dropped the rows of {', '.join(dropped)}", flush=True)
    items = make_items(examples, tok, prompt_format=args.prompt_format, max_prompt_tokens=args.max_prompt_tokens,
                       context=context_length(model), max_new_tokens=args.max_new_tokens,
                       long_prompts=args.long_prompts, source=f"data {args.data!r}")
    print(f"sweep: {len(configs)} configs x {len(items)} sequences x {args.max_new_tokens} new tokens"
          + (f" (rank {rank} of {world})" if world > 1 else ""), flush=True)
    rows = run_sweep(model, tok, items, configs, args.out, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, reference=args.reference, rank=rank, world_size=world,
                     model_id=args.model, data_id=data_id, settings=settings,
                     progress=not args.no_progress, teacher_forced=teacher_forced)
    if rows is None:
        print(f"rank {rank}: done; the last rank to finish merges into {args.out}")
        return 0
    print_table(rows)
    from ..report import write_report
    print(f"report: {write_report(args.out)}")
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"{'config':<22} {'layers':>7} {'rouge1':>7} {'rouge2':>7} {'rougeL':>7}")
    for r in rows:
        print(f"{r['config_id']:<22} {r['avg_layers']:>7.2f} {r['rouge1']:>7.4f} {r['rouge2']:>7.4f} {r['rougeL']:>7.4f}")
