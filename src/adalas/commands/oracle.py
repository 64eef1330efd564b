"""`adalas oracle`: the per-sequence oracle over a sweep (multiple-choice knapsack).

    adalas oracle --sweep results/sweep [--out results/sweep/oracle.json] [--strategies uniform_skip,early_exit]

Each sequence picks its own config from the sweep; the curve is the best mean ROUGE-L at each
average depth (decode steps pooled, as avg_layers). An in-sample upper bound: with `full_sample` rows
in the sweep (`adalas sweep --null-k K`), oracle.json gets `null_control` (the same best-of-K over K
full-depth runs) and `match_avg_layers_null_adjusted`. Writes oracle.json (default: in the sweep
directory) and prints a summary.
"""
from __future__ import annotations

from ..cli import make_parser


def build_parser():
    p = make_parser("oracle", __doc__.splitlines()[0])
    p.add_argument("--sweep", required=True, help="a sweep directory (sweep.jsonl, per_sequence.jsonl)")
    p.add_argument("--out", help="output file (default: SWEEP/oracle.json)")
    p.add_argument("--strategies", help="only configs of these strategies (comma list; the full model stays; "
                                        "default: every config but full_sample and sequence rows)")
    return p


def main(argv: list[str]) -> int:
    from ..oracle import run_oracle

    args = build_parser().parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    doc = run_oracle(args.sweep, out=args.out, strategies=strategies)
    print(summary(doc))
    return 0


def summary(doc: dict) -> str:
    L = doc.get("num_layers")
    lines = [f"oracle over {doc['n_configs']} configs x {doc['n_sequences']} sequences "
             f"(solver {doc['solver']}, gap {doc['gap']:.3g})",
             f"full model: ROUGE-L {doc['full_score']:.4f} at {L} layers"]
    if doc["match_avg_layers"] is None:
        lines.append("the oracle (an in-sample upper bound) never reaches the full model's score")
    else:
        lines.append(f"the oracle (an in-sample upper bound) matches it with {doc['match_avg_layers']:.2f} layers on "
                     f"average ({100 * doc['match_fraction']:.1f}% of the layers)")
    null = doc.get("null_control")
    if null is None:
        lines.append("no null control (run the sweep with --null-k K, K = the number of configs): how much of this is "
                     "selection on a noisy reference is not measured")
    else:
        adj = doc.get("match_avg_layers_null_adjusted")
        lines.append(f"null control: best of {null['k']} full-depth runs scores {null['score']:.4f} "
                     f"({null['score'] - null['full_score']:+.4f} over greedy); net of that gain the oracle matches "
                     + ("never" if adj is None else f"with {adj:.2f} layers"))
    curve = doc["curve"]
    shown = [p for p in curve if float(p["avg_layers"]).is_integer()] or curve
    lines.append("avg layers  oracle ROUGE-L")
    lines += [f"{p['avg_layers']:>10.2f}  {p['score']:.4f}" for p in shown]
    return "\n".join(lines)
