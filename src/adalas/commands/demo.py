"""`adalas demo`: the same prompts at full depth, with early exit and with layer skipping."""
from __future__ import annotations

import json
import time

import torch

from ..cli import check_counts, make_parser
from ..config import DepthConfig
from ..model import AdalasForCausalLM

PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy.",
           "Explain what a transformer language model is in one sentence."]


def build_parser():
    from .eval import add_long_prompts_arg

    p = make_parser("demo", __doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=32)
    add_long_prompts_arg(p, "refuse")
    return p


def main(argv: list[str]) -> int:
    from ..data import Example, make_collator
    from ..evaluate import context_length, make_items
    from ..hub import load_tokenizer

    args = build_parser().parse_args(argv)
    check_counts(("--max-new-tokens", args.max_new_tokens, 1))
    m = AdalasForCausalLM.from_pretrained(args.model)
    tok = load_tokenizer(args.model)
    L = m.num_layers
    # the chat template when the tokenizer has one, else the Alpaca template; fitted to the model's context
    examples = [Example(str(i), p, "", "", "alpaca") for i, p in enumerate(PROMPTS)]
    items = make_items(examples, tok, context=context_length(m), max_new_tokens=args.max_new_tokens,
                       long_prompts=args.long_prompts, source="demo prompts")
    enc = make_collator(tok, "left")([{"input_ids": list(it.input_ids), "attention_mask": [1] * len(it.input_ids)}
                                      for it in items])
    configs = {
        "full": DepthConfig(),
        f"early_exit@{L - 3}": DepthConfig(mode="early_exit", exit_after=L - 3),
        f"skip 3 spread": DepthConfig(mode="static_skip", skip_layers=[L // 4, L // 2, 3 * L // 4]),
    }
    for name, cfg in configs.items():
        m.set_depth(cfg)
        m.reset_usage()
        t0 = time.perf_counter()
        out = m.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        dt = time.perf_counter() - t0
        texts_out = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        print(json.dumps({"depth": name, "avg_layers": round(m.avg_layers(), 2), "seconds": round(dt, 2),
                          "outputs": [t.strip() for t in texts_out]}, indent=1))
    return 0
