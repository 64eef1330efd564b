"""`adalas reproduce` (what `make run` runs): the paper's curves on the embedded model, in one command.

    adalas reproduce            # ~13-15 min on 2 idle CPU cores: 48 sequences x 24 new tokens x 33 configs
    adalas reproduce --quick    # ~1-2 min idle: 8 sequences x 16 new tokens x 21 configs

On the built-in evaluation set, into results/reproduce/ (or results/reproduce-quick/):
- a sweep: the full model; early exit, uniform skipping and 5 random routes at each budget; the
  oracle's null control (`full_sample`: the full model sampled K - 1 times, K = the oracle's choices);
- the cross-fitted per-sequence router (strategy `sequence`, one row per budget): every sequence
  routed by a router fit on the other folds, by lookup of its chosen route's row (nothing generated);
- the per-sequence oracle over full + uniform skipping + early exit (K = 1 + 2 x budgets) with its
  null control, and beside it the oracles over uniform skipping only (the paper's choice set) and
  over every fixed route;
- the hidden-state analysis and the report (intervals, paired comparisons, the comparison with the
  paper): sweep.jsonl, per_sequence.jsonl, oracle*.json, router_crossfit.json,
  hidden_similarity.json, report.md and PNGs. A rerun continues where a killed one stopped.
"""
from __future__ import annotations

import time

from ..cli import add_model_args, check_counts, make_parser

# Sized for 2 idle CPU cores: 1 + 3 x (2 + 5) + 6 = 28 generated configs of the base model and 5 of
# the shipped adapters (two routes off the shelf and adapted, the dropout model at full depth), the
# router's 3 rows by lookup (seconds), loading and the analysis (under a minute). Measured at batch 8:
# about 32 s a config, 17 min 33 s for the sweep, over the 18 minutes of docs/design.md ("Budgets")
# with everything else. Batch 16 generated in 0.71x of batch 8's time (full and uniform_skip@24 over
# the same 48 rows, two interleaved repeats each on idle cores: 96 s against 135 s), so the preset uses
# 16: 13-15 min in all, measured (15 min 03 s, then 13 min 13 s in a later run). docs/notebook.md:
# sweeps on this model are informative between 20 and 30 layers.
PRESETS = {
    "full": {"limit": 48, "max_new_tokens": 24, "batch_size": 16, "budgets": "24,27,29",
             "routes_per_budget": 5, "folds": 5, "analysis_limit": 8, "out": "results/reproduce"},
    "quick": {"limit": 8, "max_new_tokens": 16, "batch_size": 8, "budgets": "24,27",
              "routes_per_budget": 5, "folds": 2, "analysis_limit": 4, "out": "results/reproduce-quick"},
}
STRATEGIES = ["early_exit", "uniform_skip", "random_route"]
ORACLE_STRATEGIES = ["uniform_skip", "early_exit"]  # the headline oracle's candidates, with the full model


def build_parser():
    p = make_parser("reproduce", __doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes)")
    add_model_args(p)
    p.add_argument("--data", default="builtin")
    p.add_argument("--limit", type=int, help="sequences (default 48; quick 8)")
    p.add_argument("--max-new-tokens", type=int, help="default 24; quick 16")
    p.add_argument("--batch-size", type=int, help="default 16; quick 8")
    p.add_argument("--budgets", help="layers kept (default 24,27,29; quick 24,27)")
    p.add_argument("--routes-per-budget", type=int, help="random routes per budget (default 5)")
    p.add_argument("--folds", type=int, help="cross-fitting folds of the per-sequence router (default 5; quick 2; "
                                             "at most a third of the sequences)")
    p.add_argument("--analysis-limit", type=int, help="sequences for the hidden-state analysis (default 8; quick 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default results/reproduce, or results/reproduce-quick)")
    p.add_argument("--readme", help="also put the tables into this README, between its built-in markers "
                                     "(report.README_START and README_END)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from ..analysis import hidden_similarity
    from ..cli import load_model_from_args
    from ..data import load_examples
    from ..evaluate import context_length, load_items
    from ..hub import adapter_aliases, adapter_base, adapter_dir
    from ..io import atomic_write_json, check_markers, check_output_dir, write_between_markers
    from ..oracle import run_oracle
    from ..report import README_END, README_START, read_json, readme_builtin, readme_results, write_report
    from ..run_settings import changed_definitions, versions
    from ..sequence import add_crossfit_router, load_sweep
    from ..sweep import build_configs, forget_configs, parse_budgets, run_sweep

    t_start = time.perf_counter()
    args = build_parser().parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    check_counts(*((f"--{key.replace('_', '-')}", getattr(args, key), 1)
                   for key in ("limit", "max_new_tokens", "batch_size", "analysis_limit", "routes_per_budget")),
                 ("--folds", args.folds, 2))
    out = check_output_dir(args.out)
    if args.readme:
        check_markers(args.readme, README_START, README_END)  # before the run, not after it
    stages: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        stages[name] = round(time.perf_counter() - t0, 1)
        print(f"[reproduce] {name}: {stages[name]:.0f} s", flush=True)

    t0 = time.perf_counter()
    model, tok = load_model_from_args(args)
    L = model.num_layers
    budgets = [b for b in parse_budgets(args.budgets, L) if b < L]
    if not budgets:
        raise ValueError(f"--budgets: need at least one budget below the model's {L} layers")
    null_k = 1 + len(ORACLE_STRATEGIES) * len(budgets)  # the headline oracle's number of choices
    adapted = [a for a in adapter_aliases() if adapter_base(adapter_dir(a)) == args.model]  # shipped for this model
    configs = build_configs(L, STRATEGIES, budgets, args.routes_per_budget, args.seed, keep_first=True, null_k=null_k,
                            adapted=adapted)
    items = load_items(args.data, tok, limit=args.limit, context=context_length(model),
                       max_new_tokens=args.max_new_tokens)  # a prompt too long for the context: refused
    folds = min(args.folds, len(items) // 3)  # each fold's router needs 3+ other sequences (train and validation)
    stage("load", t0)
    print(f"[reproduce] sweep: {len(configs)} configs x {len(items)} sequences x {args.max_new_tokens} new tokens "
          f"-> {out}", flush=True)

    t0 = time.perf_counter()
    data_id = {"name": args.data, "split": "test"}
    # a shipped adapter replaced since the rows were made (its weights' sha256 differ): its rows are stale, and
    # only they are made again
    changed = changed_definitions(out, {c.config_id: c.definition() for c in configs})
    if changed:
        forget_configs(out, changed, configs)
        print("[reproduce] made again (its definition or weights changed since its rows were made): "
              + ", ".join(changed), flush=True)
    rows_were_resumed = (out / "per_sequence.jsonl").is_file()
    rows = run_sweep(model, tok, items, configs, out, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, model_id=args.model, data_id=data_id,
                     settings={"prompt_format": "auto", "max_prompt_tokens": None, "dtype": args.dtype},
                     progress=not args.no_progress)
    stage("sweep", t0)
    if rows is None:  # another rank merges (reproduce is meant for one process)
        return 0

    t0 = time.perf_counter()  # the cross-fitted per-sequence router, among the headline oracle's choices
    if folds >= 2:
        table = load_sweep(out, ["full", *ORACLE_STRATEGIES])
        _, rows = add_crossfit_router(table, out, model, items, configs, budgets, folds=folds, seed=args.seed,
                                      model_id=args.model, data_id=data_id, batch_size=max(args.batch_size, 16))
    else:
        print(f"[reproduce] router: skipped ({len(items)} sequences; cross-fitting needs at least 6)", flush=True)
    stage("router", t0)

    t0 = time.perf_counter()
    run_oracle(out, strategies=ORACLE_STRATEGIES)
    run_oracle(out, out=out / "oracle_uniform_skip.json", strategies=["uniform_skip"])
    run_oracle(out, out=out / "oracle_all_routes.json", strategies=STRATEGIES)
    stage("oracle", t0)

    t0 = time.perf_counter()
    analysis_path = out / "hidden_similarity.json"
    analysis_configs = [c for c in configs if c.strategy in ("early_exit", "uniform_skip")]
    key = {"model": args.model, "data": data_id, "limit": args.analysis_limit,
           "configs": [c.config_id for c in analysis_configs], "seed": args.seed}
    analysis = read_json(analysis_path)
    if analysis is None or analysis.get("key") != key:
        examples = load_examples(args.data, limit=args.analysis_limit)
        analysis = hidden_similarity(model, tok, examples, analysis_configs, batch_size=args.batch_size)
        analysis.update(model=args.model, data=data_id, key=key)
        atomic_write_json(analysis_path, analysis)
    stage("analysis", t0)

    runs = (read_json(out / "reproduce.json") or {}).get("runs_wall_s", []) if rows_were_resumed else []
    meta = {"model": args.model, "data": data_id, "n_sequences": len(items), "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size, "budgets": budgets, "routes_per_budget": args.routes_per_budget,
            "keep_first": True, "seed": args.seed, "n_configs": len(rows), "null_k": null_k, "folds": folds if folds >= 2 else None,
            "oracle_strategies": ["full", *ORACLE_STRATEGIES], "quick": args.quick,
            "stages_s": dict(stages), "wall_s": round(time.perf_counter() - t_start, 1), "versions": versions()}
    meta["runs_wall_s"] = runs + [meta["wall_s"]]  # a resumed run: every invocation that built these results
    atomic_write_json(out / "reproduce.json", meta)
    t0 = time.perf_counter()
    report = write_report(out, analysis, meta)
    stage("report", t0)
    meta.update(stages_s=dict(stages), wall_s=round(time.perf_counter() - t_start, 1))
    meta["runs_wall_s"] = runs + [meta["wall_s"]]
    atomic_write_json(out / "reproduce.json", meta)

    print()
    print(readme_results(out))
    if args.readme:
        write_between_markers(args.readme, README_START, README_END, readme_builtin(out))
        print(f"[reproduce] tables written into {args.readme}")
    print(f"\n[reproduce] done in {meta['wall_s']:.0f} s: {report} (and {', '.join(sorted(p.name for p in out.glob('*.png')))})")
    return 0
