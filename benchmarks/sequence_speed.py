"""Decode speed of a per-sequence router (`adalas train-router` output), batched by route, against full depth.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sequence_speed.py --router results/router --n 100

Greedy, the built-in set's first `--n` prompts (chat template), `--batch-size` rows per batch. Full
depth and `generate_grouped` alternate `--repeats` times; each keeps its fastest run. With
`--static-budget B`, also a static uniform route of B layers for every sequence (what an input-blind
controller at that depth would run: the best case for batching). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--router", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--target-avg-layers", type=float, default=None)
    p.add_argument("--static-budget", type=int, default=None)
    args = p.parse_args()

    from adalas import AdalasForCausalLM, DepthConfig
    from adalas.data import load_examples, tokenize_prompt
    from adalas.hub import load_tokenizer
    from adalas.oracle import uniform_skip_route
    from adalas.sequence import batches, left_pad, measure_speed

    depth = DepthConfig(mode="sequence", router_path=args.router, target_avg_layers=args.target_avg_layers)
    model = AdalasForCausalLM.from_pretrained(args.model, depth=depth)
    tok = load_tokenizer(args.model)
    prompts = [tokenize_prompt(e, tok)["input_ids"] for e in load_examples("builtin", limit=args.n)]
    res = measure_speed(model, prompts, args.batch_size, args.max_new_tokens, args.repeats,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for key in ("routes", "sequences", "full_sequences"):
        res.pop(key)
    if args.static_budget:
        route = uniform_skip_route(model.num_layers, args.static_budget)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        best = float("inf")
        with model.temporary_depth(DepthConfig(mode="route", route=route)):
            for _ in range(args.repeats):
                t0, tokens = time.perf_counter(), 0
                for idx in batches(order, args.batch_size):
                    ids, mask = left_pad([prompts[i] for i in idx])
                    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                         do_sample=False, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:].tolist()
                    tokens += sum(s.index(tok.eos_token_id) + 1 if tok.eos_token_id in s else len(s) for s in out)
                best = min(best, time.perf_counter() - t0)
        res["static_uniform"] = {"budget": args.static_budget, "seconds": best, "tokens": tokens,
                                 "tokens_per_s": tokens / best,
                                 "speedup_tokens_per_s": (tokens / best) / res["full"]["tokens_per_s"]}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
