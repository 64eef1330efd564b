"""Does caching the teacher pay? One distillation step with the teacher's top-k read from the cache
against one with a full-depth teacher forward, side by side in one process: prints one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill.py [--model smollm2-135m] [--data FILE]
        [--batch-size 8] [--repeats 3] [--top-k 32]

Both steps: the student forward + backward under a 20-of-30 route (LoRA r 16 on every projection, the
prompt at full depth) and the KD loss on the response tokens. `online` adds the teacher's no-grad
full-depth forward (adapters disabled) and the full-vocabulary KL; `cached` reads the k + 1 bucket
teacher from a TeacherCache built once beforehand (its one-off cost per example is reported too, as
`cache_build_s_per_example`, so the break-even number of epochs is visible). Interleaved repeats; the
median step time of each, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    from peft import LoraConfig, get_peft_model

    from adalas import AdalasForCausalLM, DepthConfig
    from adalas.data import Example, make_collator, tokenize_example
    from adalas.distill import Distiller, build_teacher_cache
    from adalas.hub import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="data/synth/smollm2-135m.jsonl")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top-k", type=int, default=32)
    args = p.parse_args()

    tok = load_tokenizer(args.model)
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8").read().splitlines()[:args.batch_size]]
    feats = [tokenize_example(Example(str(i), r["instruction"], r.get("input", ""), r["output"], "alpaca"), tok,
                              max_seq_length=224) for i, r in enumerate(rows)]
    collate = make_collator(tok)
    batch = collate(feats)
    skip = [3, 4, 12, 13, 14, 15, 16, 17, 25, 26]
    model = AdalasForCausalLM.from_pretrained(args.model, depth=DepthConfig(mode="static_skip", skip_layers=skip))
    start = time.perf_counter()
    cache = build_teacher_cache(model, feats, collate, args.top_k, 1.0, batch_size=args.batch_size, progress=False)
    build_s = time.perf_counter() - start
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    peft.train()
    distillers = {"cached": Distiller(1.0, 1.0, cache=cache), "online": Distiller(1.0, 1.0, adalas=model)}
    index = torch.arange(len(feats))
    times: dict[str, list[float]] = {k: [] for k in distillers}
    for _ in range(args.repeats):
        for name, d in distillers.items():
            start = time.perf_counter()
            out = peft(**batch)
            loss = d.loss(peft, batch, out.logits, out.loss, index, None)
            loss.backward()
            peft.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "top_k": args.top_k,
                      "tokens": int(batch["attention_mask"].sum()), "repeats": args.repeats,
                      "step_s_median": {k: round(v, 3) for k, v in med.items()},
                      "cached_vs_online_step_time": round(med["cached"] / med["online"], 3),
                      "cache_build_s_per_example": round(build_s / len(feats), 3),
                      "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
