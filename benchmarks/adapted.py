"""Decode speed of the shipped adapted models against transformers running the same weights with the
route's layers deleted (the limit), side by side in one process: prints one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adapted.py [--aliases smollm2-135m-adapted-24 ...]
        [--batch-sizes 1 8] [--new-tokens 48] [--repeats 3]

Per alias and batch size (greedy, every config makes the same number of tokens; interleaved repeats,
medians): `adalas_alias` (the alias at its own depth: the prompt at full depth, generated tokens on
the route), `adalas_alias_skip_prompt` (the prompt on the route too: the deleted model's function),
`hf_deleted` (transformers, the merged weights with the skipped layers removed) and `hf_full`
(transformers, the merged weights at full depth). Ratios: alias / hf_deleted and alias / hf_full.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode import adalas_case, deleted, encode, finish, hf_case, section, time_cases  # noqa: E402


def main() -> None:
    from adalas import AdalasForCausalLM
    from adalas.hub import adapter_aliases, load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aliases", nargs="+", default=None, help="default: every shipped adapted alias")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    aliases = args.aliases or [a for a in adapter_aliases() if "-adapted-" in a]
    if not aliases:
        raise SystemExit("no adapted alias ships yet (src/adalas/adapters/)")
    doc: dict = {"new_tokens": args.new_tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
                 "aliases": {}}
    for alias in aliases:
        model = AdalasForCausalLM.from_pretrained(alias).eval()
        tok = load_tokenizer(alias)
        route = model.depth.static_route(model.num_layers)
        keep = [i for i, run in enumerate(route) if run]
        hf_del = deleted(model.model, keep)
        pad = tok.pad_token_id
        doc["aliases"][alias] = {"layers": len(keep)}
        for b in args.batch_sizes:
            enc = encode(tok, b, model.device)
            cases = [adalas_case("adalas_alias", model, enc, model.depth, pad),
                     adalas_case("adalas_alias_skip_prompt", model, enc, replace(model.depth, skip_prompt=True), pad),
                     hf_case("hf_deleted", hf_del, enc, pad), hf_case("hf_full", model.model, enc, pad)]
            time_cases(cases, args.new_tokens, args.repeats, f"{alias} batch {b}")
            sec = finish(section(cases, b, args.new_tokens),
                         {"alias_vs_hf_deleted": ("adalas_alias", "hf_deleted"),
                          "alias_skip_prompt_vs_hf_deleted": ("adalas_alias_skip_prompt", "hf_deleted"),
                          "alias_vs_hf_full": ("adalas_alias", "hf_full")},
                         {"skip_prompt_equals_deleted": ("adalas_alias_skip_prompt", "hf_deleted")})
            doc["aliases"][alias][f"batch_{b}"] = sec
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
