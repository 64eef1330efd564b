"""`adalas analyze hidden`: cosine similarity of hidden states to the full model's, per layer.

    adalas analyze hidden --model smollm2-135m --data builtin --limit 24 --budgets 21,24,27 --out results/hidden

Teacher-forced on prompt + reference; early exit, uniform skipping and random routes at each budget.
Writes DIR/hidden_similarity.json and DIR/hidden_similarity.png.
"""
from __future__ import annotations

from pathlib import Path

from ..cli import add_model_args, check_counts, make_parser

ANALYSES = ("hidden",)


def build_parser():
    p = make_parser("analyze", __doc__.splitlines()[0])
    p.add_argument("analysis", choices=ANALYSES, help="hidden: hidden-state similarity across depth")
    add_model_args(p)
    p.add_argument("--data", default="builtin", help="hub id, local JSON/JSONL file, or builtin (default)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=24, help="the first K sequences (default 24)")
    p.add_argument("--strategies", default="early_exit,uniform_skip,random_route")
    p.add_argument("--budgets", help="layers kept: 20,24,27 or a range 20-30:2 (default: about 2/3, 4/5, 9/10)")
    p.add_argument("--routes-per-budget", type=int, default=1)
    p.add_argument("--keep-first", action="store_true", help="random routes always keep layer 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--prompt-format", default="auto", choices=["auto", "alpaca", "native", "chat"])
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str]) -> int:
    from ..analysis import hidden_similarity
    from ..cli import load_model_from_args
    from ..data import load_examples
    from ..io import atomic_write_json, check_output_dir
    from ..plots import plot_similarity
    from ..sweep import build_configs, parse_budgets, parse_strategies

    args = build_parser().parse_args(argv)
    check_counts(("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                 ("--routes-per-budget", args.routes_per_budget, 0), ("--max-seq-length", args.max_seq_length, 2))
    check_output_dir(args.out)
    strategies = parse_strategies(args.strategies)
    examples = load_examples(args.data, split=args.split, limit=args.limit)  # bad data fails before the model loads
    model, tok = load_model_from_args(args)
    L = model.num_layers
    configs = build_configs(L, strategies, parse_budgets(args.budgets, L), args.routes_per_budget, args.seed,
                            args.keep_first)
    doc = hidden_similarity(model, tok, examples, configs, batch_size=args.batch_size,
                            prompt_format=args.prompt_format, max_seq_length=args.max_seq_length)
    doc.update(model=args.model, data={"name": args.data, "split": args.split, "limit": args.limit})
    out = Path(args.out)
    atomic_write_json(out / "hidden_similarity.json", doc)
    plot_similarity(doc, out / "hidden_similarity.png")
    print(f"{'config':<22} {'final':>7} {'mean':>7}")
    for c in doc["configs"]:
        print(f"{c['config_id']:<22} {c['final']:>7.4f} {c['mean']:>7.4f}")
    print(f"wrote {out / 'hidden_similarity.json'} and hidden_similarity.png")
    return 0
