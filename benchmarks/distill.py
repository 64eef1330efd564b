"""What a distillation step costs: the teacher's top-k read from the cache against a full-depth teacher
forward, and the head over the response positions only against every position; side by side in one
process, prints one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill.py [--model smollm2-135m] [--data FILE]
        [--batch-size 8] [--repeats 3] [--top-k 32] [--max-seq-length 512] [--prompt-fraction 0.75]

Every step: the student forward + backward under a 20-of-30 route (LoRA r 16 on every projection, the
prompt at full depth) and the KD loss on the response tokens, on the first rows of the recipes' data
at their lengths. `cached` (what `adalas train` runs) reads the k + 1 bucket teacher from a TeacherCache
built once beforehand (its one-off cost per example is reported too, as `cache_build_s_per_example`, so
the break-even number of epochs is visible) and computes the logits only where a label follows
(`response_logits=True`); `cached_all_logits` is the same with logits and cross-entropy at every
position, as training ran before; `online` adds the teacher's no-grad full-depth forward (adapters
disabled) and the full-vocabulary KL. Interleaved repeats; the median step time of each, and the ratios.
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
    from adalas.distill import Distiller, build_teacher_cache, response_positions
    from adalas.hub import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="data/synth/shapes/train.jsonl")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--prompt-fraction", type=float, default=0.75)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top-k", type=int, default=32)
    args = p.parse_args()

    tok = load_tokenizer(args.model)
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8").read().splitlines()[:args.batch_size]]
    feats = [tokenize_example(Example(str(i), r["instruction"], r.get("input", ""), r["output"], "alpaca"), tok,
                              max_seq_length=args.max_seq_length, prompt_fraction=args.prompt_fraction)
             for i, r in enumerate(rows)]
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
    cached, online = Distiller(1.0, 1.0, cache=cache), Distiller(1.0, 1.0, adalas=model)
    where = response_positions(batch["labels"])
    arms = {"cached": (cached, True), "cached_all_logits": (cached, False), "online": (online, True)}
    index = torch.arange(len(feats))
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.repeats):
        for name, (d, response) in arms.items():
            start = time.perf_counter()
            out = peft(**batch, response_logits=response)
            student = out.logits if response else out.logits[:, :-1][where]
            loss = d.loss(peft, batch, student, out.loss, index, None)
            loss.backward()
            peft.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "top_k": args.top_k,
                      "tokens": int(batch["attention_mask"].sum()), "response_tokens": int(where.sum()),
                      "repeats": args.repeats,
                      "step_s_median": {k: round(v, 3) for k, v in med.items()},
                      "cached_vs_online_step_time": round(med["cached"] / med["online"], 3),
                      "response_vs_all_logits_step_time": round(med["cached"] / med["cached_all_logits"], 3),
                      "cache_build_s_per_example": round(build_s / len(feats), 3),
                      "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
