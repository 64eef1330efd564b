"""A small sweep on the embedded model in the `adalas sweep` format, for `adalas train-router`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sequence_sweep.py --out results/seqsweep --n 100

Configs: full depth, uniform skipping at every budget 20..29, `--random-per-budget` random routes at
budgets 22, 24, 26, 28, and early exit after 28 and 29 layers. Greedy, `--max-new-tokens` 32, the
built-in set's first `--n` rows with the tokenizer's chat template; ROUGE-L F1 without stemmer.
Rows are appended per config; a rerun skips the configs already written (resumable).
Stands in for `adalas sweep` until that command exists; the files are the same format.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def configs(L: int, random_per_budget: int, seed: int) -> list[dict]:
    from adalas.oracle import early_exit_route, random_routes, route_to_str, uniform_skip_route

    out = [dict(config_id="full", strategy="full", budget=L, route=route_to_str([True] * L))]
    for b in range(L - 1, 19, -1):
        out.append(dict(config_id=f"uniform_{b}", strategy="uniform_skip", budget=b,
                        route=route_to_str(uniform_skip_route(L, b))))
    for b in (28, 26, 24, 22):
        for j, r in enumerate(random_routes(L, b, random_per_budget, seed, keep_first=True)):
            out.append(dict(config_id=f"random_{b}_{j}", strategy="random_route", budget=b, route=route_to_str(r)))
    for k in (29, 28):
        out.append(dict(config_id=f"early_exit_{k}", strategy="early_exit", budget=k,
                        route=route_to_str(early_exit_route(L, k))))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="results/seqsweep")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--random-per-budget", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default=None, help="config ids to run first, comma-separated")
    args = p.parse_args()

    from rouge_score import rouge_scorer

    from adalas import AdalasForCausalLM, DepthConfig
    from adalas.data import load_examples, tokenize_prompt
    from adalas.hub import load_tokenizer
    from adalas.oracle import route_from_str

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = AdalasForCausalLM.from_pretrained(args.model)
    tok = load_tokenizer(args.model)
    L = model.num_layers
    examples = load_examples("builtin", limit=args.n)
    prompts = [tokenize_prompt(e, tok)["input_ids"] for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))  # less padding per batch
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    model_id = {"name": args.model}
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    done = set()
    if (out / "sweep.jsonl").is_file():
        done = {json.loads(line)["config_id"] for line in (out / "sweep.jsonl").read_text().splitlines() if line}
    first = args.order.split(",") if args.order else []
    for cfg in sorted(configs(L, args.random_per_budget, args.seed),
                      key=lambda c: first.index(c["config_id"]) if c["config_id"] in first else len(first)):
        if cfg["config_id"] in done:
            continue
        route = route_from_str(cfg["route"])
        model.set_depth(DepthConfig(mode="route", route=route))
        rows, n_tokens, t0 = {}, 0, time.perf_counter()
        for s in range(0, len(order), args.batch_size):
            idx = order[s:s + args.batch_size]
            T = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), T), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(idx), T, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, T - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, T - len(prompts[i]):] = 1
            gen_ids = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id, **gen)[:, T:]
            for r, i in enumerate(idx):
                toks = gen_ids[r].tolist()
                if tok.eos_token_id in toks:
                    toks = toks[:toks.index(tok.eos_token_id) + 1]
                text = tok.decode(toks, skip_special_tokens=True).strip()
                ex = examples[i]
                n_tokens += len(toks)
                rows[i] = dict(config_id=cfg["config_id"], id=ex.id, prompt=tok.decode(prompts[i]),
                               reference=ex.response, prediction=text,
                               rougeL=scorer.score(ex.response, text)["rougeL"].fmeasure,
                               layers_used=float(sum(route)), prompt_tokens=len(prompts[i]),
                               output_tokens=len(toks), model=model_id)
        dt = time.perf_counter() - t0
        with open(out / "per_sequence.jsonl", "a") as f:
            for i in range(len(examples)):
                f.write(json.dumps(rows[i], sort_keys=True) + "\n")
        row = dict(cfg, rougeL=sum(r["rougeL"] for r in rows.values()) / len(rows), avg_layers=float(sum(route)),
                   num_layers=L, n=len(rows), model=model_id, generation=gen, seconds=round(dt, 1),
                   tokens_per_s=round(n_tokens / dt, 1))
        with open(out / "sweep.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(json.dumps({k: row[k] for k in ("config_id", "rougeL", "avg_layers", "seconds", "tokens_per_s")}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
