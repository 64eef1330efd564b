"""`adalas demo`: the same prompts at full depth, with early exit and with layer skipping, side by side.

Prints, per prompt, one table row per depth config: the depth, layers run per generated token,
tokens per second (the whole batch of prompts, prefill included) and the output wrapped to the
terminal's width. `--json` prints one JSON object per depth config instead (JSON lines). Where the
package ships adapted models of `--model` (`smollm2-135m-adapted-24`, `-20`: LoRA adapters trained on
a route), each one's route runs twice more: off the shelf, then adapted, so skipping that works is shown
beside skipping that breaks (`--no-adapters` leaves them out).
"""
from __future__ import annotations

import json
import shutil
import textwrap
import time
from typing import Any

from ..cli import check_counts, make_parser
from ..config import DepthConfig
from ..model import AdalasForCausalLM

PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy.",
           "Explain what a transformer language model is in one sentence."]
HEADER = ("depth", "layers/token", "tokens/s")
MIN_OUTPUT_WIDTH = 20


def build_parser():
    from .eval import add_long_prompts_arg

    p = make_parser("demo", __doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="one JSON object per depth config (JSON lines), no table")
    p.add_argument("--no-adapters", action="store_true", help="leave out the shipped adapted models")
    add_long_prompts_arg(p, "refuse")
    return p


def demo_configs(L: int) -> dict[str, DepthConfig]:
    """Full depth, early exit 3 layers short of the top, and 3 evenly spread layers skipped."""
    spread = sorted({L // 4, L // 2, 3 * L // 4})
    return {
        "full": DepthConfig(),
        f"early exit after {L - 3}": DepthConfig(mode="early_exit", exit_after=max(1, L - 3)),
        f"skip {', '.join(map(str, spread))}": DepthConfig(mode="static_skip", skip_layers=spread),
    }


def shipped_adapters(model: str, num_layers: int) -> list[tuple[str, DepthConfig]]:
    """The shipped adapted aliases made from `model` on a route of their own (not full depth), with it."""
    from ..hub import adapter_aliases, adapter_base, adapter_dir

    out = []
    for alias in adapter_aliases():
        directory = adapter_dir(alias)
        depth = DepthConfig.from_dir(directory) or DepthConfig()
        route = depth.static_route(num_layers)
        if adapter_base(directory) == model and route is not None and len(route) == num_layers and not all(route):
            out.append((alias, depth))
    return out


def render(prompts: list[str], rows: list[dict[str, Any]], width: int) -> str:
    """The side-by-side tables, one per prompt, fitted to `width` columns (the output column wraps;
    it keeps at least MIN_OUTPUT_WIDTH)."""
    cells = [(r["depth"], f"{r['avg_layers']:.2f}", f"{r['tokens_per_s']:.1f}") for r in rows]
    widths = [max(len(h), *(len(c[j]) for c in cells)) for j, h in enumerate(HEADER)]
    lead = sum(widths) + 2 * len(widths)  # two spaces after each column
    out_width = max(MIN_OUTPUT_WIDTH, width - lead)

    def line(values: tuple[str, ...], text: str) -> str:
        left = "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(values, widths)))
        return (left + "  " + text).rstrip()

    blocks = []
    for p, prompt in enumerate(prompts):
        lines = textwrap.wrap(f"Prompt {p + 1}/{len(prompts)}: {prompt}", width=max(width, MIN_OUTPUT_WIDTH)) or [""]
        lines.append(line(HEADER, "output"))
        lines.append(line(tuple("-" * w for w in widths), "-" * min(out_width, 40)))
        for cell, row in zip(cells, rows):
            wrapped = [w for para in (row["outputs"][p].splitlines() or [""])
                       for w in (textwrap.wrap(para, width=out_width) or [""])]
            wrapped = wrapped if any(wrapped) else ["(empty)"]
            lines.append(line(cell, wrapped[0]))
            lines.extend(line(("",) * len(widths), w) for w in wrapped[1:])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _generated(row: list[int], eos: set[int]) -> int:
    """New tokens a row actually generated: up to and including its first EOS."""
    for i, t in enumerate(row):
        if t in eos:
            return i + 1
    return len(row)


def main(argv: list[str]) -> int:
    from ..data import Example, make_collator
    from ..evaluate import context_length, make_items
    from ..hub import load_tokenizer

    args = build_parser().parse_args(argv)
    check_counts(("--max-new-tokens", args.max_new_tokens, 1))
    m = AdalasForCausalLM.from_pretrained(args.model)
    tok = load_tokenizer(args.model)
    # the chat template when the tokenizer has one, else the Alpaca template; fitted to the model's context
    examples = [Example(str(i), p, "", "", "alpaca") for i, p in enumerate(PROMPTS)]
    items = make_items(examples, tok, context=context_length(m), max_new_tokens=args.max_new_tokens,
                       long_prompts=args.long_prompts, source="demo prompts")
    enc = make_collator(tok, "left")([{"input_ids": list(it.input_ids), "attention_mask": [1] * len(it.input_ids)}
                                      for it in items])
    eos = m.model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else (eos or [])) | ({tok.eos_token_id} - {None})
    runs = [(name, cfg, None) for name, cfg in demo_configs(m.num_layers).items()]
    for alias, cfg in ([] if args.no_adapters else shipped_adapters(args.model, m.num_layers)):
        short = alias.removeprefix(f"{args.model}-")
        runs += [(f"{short} route, untrained", cfg, None), (f"{short}, adapted", cfg, alias)]
    rows = []
    for name, cfg, alias in runs:
        model = m if alias is None else AdalasForCausalLM.from_pretrained(alias)  # the base with the adapter merged
        with model.family.hold_fused():  # fused weights built once (by the warm-up), not in a timed call
            model.set_depth(cfg)
            model.generate(**enc, max_new_tokens=2, do_sample=False)  # warm-up: first-call allocations are not timed
            model.reset_usage()
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
            dt = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        tokens = sum(_generated(r, eos) for r in new.tolist())
        texts = tok.batch_decode(new, skip_special_tokens=True)
        rows.append({"depth": name, "config": cfg.to_dict(), "model": alias or args.model,
                     "avg_layers": round(model.avg_layers(), 2), "tokens": tokens, "seconds": round(dt, 2),
                     "tokens_per_s": round(tokens / dt, 1), "outputs": [t.strip() for t in texts]})
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        width = shutil.get_terminal_size().columns
        print(textwrap.fill(f"{args.model}: {m.num_layers} layers, {len(PROMPTS)} prompts in one batch, greedy, "
                            f"up to {args.max_new_tokens} new tokens", width=max(width, MIN_OUTPUT_WIDTH),
                            break_long_words=True) + "\n")
        print(render(PROMPTS, rows, width))
    return 0
