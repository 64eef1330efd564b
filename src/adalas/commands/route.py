"""`adalas route`: which N layers to keep, chosen teacher-forced on held-out rows against full depth.

    adalas route --model smollm2-135m --layers 20 [--data FILE] [--out route20.json]

Each candidate route is scored by one forward over the rows (prompt + the row's response, its first
--response-tokens tokens): the mean KL from the full model (`score`, lower is better) and top-1
agreement with it. The search starts from block influence, descends greedily from full depth, then
swaps layers in and out, scoring at most --max-candidates routes (adalas.route_search). Without
--data, the embedded model uses its held-out self-written rows (data/synth/smollm2-135m.heldout.jsonl,
from the repository root); other models need --data. Evaluation data (builtin, *.test.jsonl, a hub
test split) is refused. Prints the result as one JSON line (and writes it to --out, atomically):
keep, skip, score, score_name, searched, baseline (uniform, block_influence), data_sha256, and the
evidence (every candidate scored, block influence per layer).
"""
from __future__ import annotations

import json
import sys
import time

from ..cli import add_model_args, check_counts, make_parser


def build_parser():
    p = make_parser("route", __doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--layers", type=int, required=True, help="layers to keep, 1..L-1")
    p.add_argument("--data", default=None,
                   help="held-out rows: a local JSON/JSONL file or a hub id (default for smollm2-135m: "
                        "data/synth/smollm2-135m.heldout.jsonl; required for other models)")
    p.add_argument("--split", default="validation", help="a hub dataset's split (default validation; never test)")
    p.add_argument("--rows", type=int, default=32, help="score on the first K rows (default 32)")
    p.add_argument("--response-tokens", type=int, default=32,
                   help="score each row's first T response tokens (default 32)")
    p.add_argument("--max-candidates", type=int, default=40,
                   help="routes scored at most, the two baselines included (default 40; each is one forward "
                        "over the rows)")
    p.add_argument("--greedy-width", type=int, default=None,
                   help="candidates per step of the greedy descent (default: about a third of the budget, when "
                        "that is at least 2 a step; 0: none)")
    p.add_argument("--prompt-depth", default="route", choices=["route", "full"],
                   help="route (default): the prompt follows the route too (skip_prompt=true), as `adalas adapt` "
                        "trains and exports; full: the prompt runs every layer")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--prompt-format", default="auto", choices=["auto", "alpaca", "native", "chat"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    return p


def main(argv: list[str]) -> int:
    from ..cli import load_model_from_args
    from ..data import data_sha256, load_examples
    from ..io import atomic_write_json, check_output_file
    from ..route_search import RouteScorer, choice_data, prepare_rows, search_route

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    check_counts(("--layers", args.layers, 1), ("--rows", args.rows, 1), ("--response-tokens", args.response_tokens, 1),
                 ("--max-candidates", args.max_candidates, 2), ("--greedy-width", args.greedy_width, 0),
                 ("--batch-size", args.batch_size, 1), ("--max-seq-length", args.max_seq_length, 2))
    if args.out is not None:
        check_output_file(args.out, example="route.json")
    data = choice_data(args.model, args.data, args.split)
    examples = load_examples(data, split=args.split, limit=args.rows)  # bad data fails before the model loads
    model, tok = load_model_from_args(args)
    L = model.num_layers
    if args.layers > L - 1:
        raise ValueError(f"--layers: must be in 1..{L - 1} (the model has {L} layers), got {args.layers}")
    context = model.family.max_positions
    rows = prepare_rows(examples, tok, response_tokens=args.response_tokens, prompt_format=args.prompt_format,
                        max_seq_length=args.max_seq_length if context is None else min(args.max_seq_length, context))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scorer = RouteScorer(model, rows, pad_token_id=pad, batch_size=args.batch_size,
                         skip_prompt=args.prompt_depth == "route")
    doc = search_route(scorer, args.layers, max_candidates=args.max_candidates, greedy_width=args.greedy_width,
                       progress=not args.no_progress)
    doc.update(model=args.model, data=data, split=args.split, data_sha256=data_sha256(data),
               prompt_depth=args.prompt_depth, response_tokens=args.response_tokens, dtype=args.dtype,
               wall_s=round(time.perf_counter() - t0, 1))
    if args.out is not None:
        atomic_write_json(args.out, doc)
    base = doc["baseline"]
    print(f"keep {doc['keep']} of {L}: skip {doc['skip']}; kl {doc['kl']:.4f}, top-1 {doc['top1_agreement']:.3f} "
          f"(uniform {base['uniform']['kl']:.4f}, block influence {base['block_influence']['kl']:.4f}); "
          f"{doc['searched']} routes scored in {doc['wall_s']:.0f} s", file=sys.stderr)
    print(json.dumps(doc, sort_keys=True))
    return 0
