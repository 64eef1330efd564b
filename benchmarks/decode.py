"""Decode speed and memory, side by side in one process: prints one JSON object.

    adalas bench decode [--batch-sizes 1 8] [--new-tokens 48] [--repeats 3] [--model smollm2-135m]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode.py --batch-sizes 1 8 --new-tokens 48 --repeats 3

Every repeat runs every config once, in the same order (interleaved, so load on a shared machine
hits them alike); tokens/s is batch x new tokens over the median wall time of a whole `generate`
call (prefill included; the fastest run is reported beside it). Greedy, `min_new_tokens = max_new_tokens` so every config makes the same
number of tokens. Prompts: real instructions through the tokenizer's chat template, left-padded.

Configs, per batch size (L layers, H = L // 2):
- hf_full / adalas_full: transformers `generate` / `AdalasForCausalLM.generate` at full depth;
  adalas_full_plain_path: the same through the depth loop without the fast path.
- adalas_half_skip: every other layer skipped (default: KV propagation, the prompt at full depth);
  adalas_half_skip_kv_mask: the same under kv_fill="mask" (a static route stores no skipped keys/values
  under either kv_fill, so the two run the same code: the ratio half_skip_propagate_vs_mask is 1 up to
  noise and the outputs are identical); adalas_half_skip_mask: kv_fill="mask", skip_prompt=True, which
  computes exactly the model with those layers deleted; hf_half_deleted: transformers running that
  model (the limit).
- adalas_exit_half: early exit after H layers; hf_exit_deleted: transformers with layers H.. deleted.
- adalas_per_sequence: one random route of H layers per row (random_budget); adalas_per_token: each
  token skips each layer with probability 1/2. A layer that only some rows of a step run runs on
  those rows alone (gather/scatter) where the cost model of `adalas.cost` says that pays, else on
  every row with the runners' outputs kept; at batch 1 every layer is run or skipped outright.
  With different routes per row no deleted-layer model exists to compare with: in a batch, a step
  costs about what the union of the rows' layers costs.
- adalas_spec_auto, adalas_spec_exit_half: self-speculative decoding, draft chosen by "auto" /
  early exit after H layers with an adaptive length; hf_assistant_early_exit (batch 1: transformers
  supports no more): transformers' own self-speculative decoding, exit after H layers.
- redundant: a copy whose layers H.. contribute nothing (their residual outputs zeroed: o_proj and
  down_proj for Llama), so exiting after H layers is exact: there speculation must pay.

Memory: peak key/value cache bytes per config (adalas: the preallocated buffers; transformers: the
keys and values its cache holds at the end), the fused weight copies of the fast path (held across
the timed calls, as an evaluation loop holds them: `Family.hold_fused`; a lone generate() call builds
and frees its own), and the process peak RSS (all models of the run together).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

PROMPTS = [
    "Give three tips for staying healthy.",
    "What is the capital of France, and why is it famous?",
    "Write a short poem about the sea.",
    "Explain what photosynthesis is to a ten-year-old.",
    "List four uses of a paperclip.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do I make a cup of green tea?",
    "Why is the sky blue?",
]
SPEC_KEYS = ("acceptance_rate", "tokens_per_round", "mean_draft_length", "draft_avg_layers", "verify_avg_layers",
             "rounds", "plain_tokens")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", default="smollm2-135m", help="hub id, local directory, or smollm2-135m")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per config (the median is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-redundant", action="store_true", help="skip the redundant-copy section")
    p.add_argument("--out", default=None, help="also write the JSON document here")
    return p


@dataclass
class Case:
    name: str
    run: Callable[[int], torch.Tensor]  # new tokens -> (B, T) ids
    stats: Callable[[], dict] = dict  # read right after the case's last timed run (models are shared)
    seconds: list[float] = field(default_factory=list)
    output: torch.Tensor | None = None
    stats_value: dict = field(default_factory=dict)


def hf_case(name: str, hf, enc: dict, pad_id: int, **gen) -> Case:
    def run(n: int) -> torch.Tensor:
        return hf.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id, **gen)

    def stats() -> dict:  # what its cache holds at the end: keys and values for every layer and position
        from adalas.families import family_for
        fam = family_for(hf)
        B, T = case.output.shape  # prompt + new tokens
        return {"kv_cache_bytes": 2 * fam.num_layers * B * fam.num_kv_heads * fam.head_dim * T * hf.dtype.itemsize}

    case = Case(name, run, stats)
    return case


def adalas_case(name: str, model, enc: dict, depth, pad_id: int, **gen) -> Case:
    def run(n: int) -> torch.Tensor:
        model.set_depth(depth)
        model.reset_usage()
        return model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id, **gen)

    def stats() -> dict:
        out = {"kv_cache_bytes": model.usage.last_cache_bytes, "avg_layers": round(model.avg_layers(), 3)}
        if "draft_depth" in gen:
            spec = model.speculative_stats()
            out.update({k: round(spec[k], 3) if isinstance(spec[k], float) else spec[k] for k in SPEC_KEYS})
            out["choice"] = spec["choices"][-1] if spec["choices"] else None
        return out

    return Case(name, run, stats)


def deleted(hf, keep: list[int]):
    """A copy of the transformers model with only the layers in `keep`."""
    from adalas.families import family_for
    m = copy.deepcopy(hf)
    family_for(m).set_layers(keep)
    return m


def redundant(hf, start: int):
    """A copy whose layers start.. write nothing into the residual stream (identity layers)."""
    from adalas.families import family_for
    m = copy.deepcopy(hf)
    fam = family_for(m)
    with torch.no_grad():
        for layer in list(fam.layers())[start:]:
            for proj in fam.residual_outputs(layer):
                for p in proj.parameters():
                    p.zero_()
    return m


def encode(tok, batch_size: int, device) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             if tok.chat_template else p for p in prompts]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def time_cases(cases: list[Case], new_tokens: int, repeats: int, label: str) -> None:
    for c in cases:  # warm-up: first-call allocations, fused weights, kernels
        c.run(min(4, new_tokens))
    for r in range(repeats):
        for c in cases:
            t = time.perf_counter()
            c.output = c.run(new_tokens)
            c.seconds.append(time.perf_counter() - t)
            if r == repeats - 1:
                c.stats_value = c.stats()
        print(f"[bench decode] {label}: repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)


def section(cases: list[Case], batch: int, new_tokens: int) -> dict:
    by = {c.name: c for c in cases}
    tps = {c.name: batch * new_tokens / statistics.median(c.seconds) for c in cases}
    return {
        "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
        # the fastest run too: on a shared machine a load spike can hit most repeats of one config
        "tokens_per_s_best": {c.name: round(batch * new_tokens / min(c.seconds), 2) for c in cases},
        "seconds": {c.name: [round(s, 3) for s in c.seconds] for c in cases},
        "stats": {c.name: c.stats_value for c in cases},
        "_tps": tps, "_by": by,
    }


def ratio(tps: dict, a: str, b: str) -> float | None:
    return round(tps[a] / tps[b], 3) if a in tps and b in tps else None


def same(by: dict, a: str, b: str) -> bool | None:
    if a not in by or b not in by:
        return None
    return bool(torch.equal(by[a].output.cpu(), by[b].output.cpu()))


def finish(sec: dict, ratios: dict[str, tuple[str, str]], identical: dict[str, tuple[str, str]]) -> dict:
    tps, by = sec.pop("_tps"), sec.pop("_by")
    sec["ratios"] = {k: ratio(tps, a, b) for k, (a, b) in ratios.items() if ratio(tps, a, b) is not None}
    sec["greedy_identical"] = {k: same(by, a, b) for k, (a, b) in identical.items() if same(by, a, b) is not None}
    return sec


def run(args: argparse.Namespace) -> int:
    import transformers

    from adalas import AdalasForCausalLM, DepthConfig
    from adalas.hub import load_tokenizer
    from adalas.io import atomic_write_text

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.new_tokens < 1 or args.repeats < 1 or any(b < 1 for b in args.batch_sizes):
        raise ValueError("--new-tokens, --repeats, --batch-sizes: must be >= 1")
    model = AdalasForCausalLM.from_pretrained(args.model).eval()
    held = contextlib.ExitStack()  # fused copies built once for every timed call (Family.hold_fused)
    held.enter_context(model.family.hold_fused())
    hf, tok = model.model, load_tokenizer(args.model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    L = model.num_layers
    H = L // 2
    skip_odd = list(range(1, L, 2))
    keep_even = [i for i in range(L) if i not in skip_odd]
    hf_skip, hf_exit = deleted(hf, keep_even), deleted(hf, list(range(H)))
    full, half_skip = DepthConfig(), DepthConfig(mode="static_skip", skip_layers=skip_odd)
    half_skip_kv_mask = DepthConfig(mode="static_skip", skip_layers=skip_odd, kv_fill="mask")
    half_skip_mask = DepthConfig(mode="static_skip", skip_layers=skip_odd, kv_fill="mask", skip_prompt=True)
    exit_half = DepthConfig(mode="early_exit", exit_after=H)
    per_sequence = DepthConfig(mode="random_budget", budget=H, seed=0)
    per_token = DepthConfig(mode="stochastic", skip_probs=[0.5] * L, seed=0)
    doc: dict[str, Any] = {
        "model": args.model, "layers": L, "half": H, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "device": str(model.device), "threads": torch.get_num_threads(), "prompts": PROMPTS,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "batches": {}, "redundant": {},
    }
    ratios = {
        "full_vs_hf": ("adalas_full", "hf_full"),
        "fast_path_gain": ("adalas_full", "adalas_full_plain_path"),
        "half_skip_vs_deleted": ("adalas_half_skip", "hf_half_deleted"),
        "half_skip_mask_vs_deleted": ("adalas_half_skip_mask", "hf_half_deleted"),
        "half_skip_propagate_vs_mask": ("adalas_half_skip", "adalas_half_skip_kv_mask"),
        "exit_half_vs_deleted": ("adalas_exit_half", "hf_exit_deleted"),
        "per_sequence_vs_deleted": ("adalas_per_sequence", "hf_half_deleted"),
        "per_sequence_vs_full": ("adalas_per_sequence", "adalas_full"),
        "per_token_vs_full": ("adalas_per_token", "adalas_full"),
        "half_skip_vs_full": ("adalas_half_skip", "adalas_full"),
        "spec_auto_vs_full": ("adalas_spec_auto", "adalas_full"),
        "spec_exit_half_vs_full": ("adalas_spec_exit_half", "adalas_full"),
        "spec_auto_vs_hf": ("adalas_spec_auto", "hf_full"),
        "spec_exit_half_vs_hf": ("adalas_spec_exit_half", "hf_full"),
        "spec_exit_half_k4_vs_hf": ("adalas_spec_exit_half_k4", "hf_full"),
        "spec_exit_half_k4_vs_full": ("adalas_spec_exit_half_k4", "adalas_full"),
        "hf_assistant_early_exit_vs_hf": ("hf_assistant_early_exit", "hf_full"),
        "spec_exit_half_vs_hf_assistant_early_exit": ("adalas_spec_exit_half", "hf_assistant_early_exit"),
        "spec_auto_vs_hf_assistant_early_exit": ("adalas_spec_auto", "hf_assistant_early_exit"),
    }
    identical = {
        "adalas_full=hf_full": ("adalas_full", "hf_full"),
        "adalas_full=plain_path": ("adalas_full", "adalas_full_plain_path"),
        "half_skip_mask=hf_half_deleted": ("adalas_half_skip_mask", "hf_half_deleted"),
        "half_skip_propagate=half_skip_kv_mask": ("adalas_half_skip", "adalas_half_skip_kv_mask"),
        "spec_auto=adalas_full": ("adalas_spec_auto", "adalas_full"),
        "spec_exit_half=adalas_full": ("adalas_spec_exit_half", "adalas_full"),
        "spec_exit_half_k4=adalas_full": ("adalas_spec_exit_half_k4", "adalas_full"),
        "hf_assistant_early_exit=hf_full": ("hf_assistant_early_exit", "hf_full"),
    }
    for B in args.batch_sizes:
        enc = encode(tok, B, model.device)
        cases = [
            hf_case("hf_full", hf, enc, pad_id),
            adalas_case("adalas_full", model, enc, full, pad_id),
            adalas_case("adalas_full_plain_path", model, enc, full, pad_id, _fast_path=False),
            hf_case("hf_half_deleted", hf_skip, enc, pad_id),
            adalas_case("adalas_half_skip", model, enc, half_skip, pad_id),
            adalas_case("adalas_half_skip_kv_mask", model, enc, half_skip_kv_mask, pad_id),
            adalas_case("adalas_half_skip_mask", model, enc, half_skip_mask, pad_id),
            hf_case("hf_exit_deleted", hf_exit, enc, pad_id),
            adalas_case("adalas_exit_half", model, enc, exit_half, pad_id),
            adalas_case("adalas_per_sequence", model, enc, per_sequence, pad_id),
            adalas_case("adalas_per_token", model, enc, per_token, pad_id),
            adalas_case("adalas_spec_auto", model, enc, full, pad_id, draft_depth="auto"),
            adalas_case("adalas_spec_exit_half", model, enc, full, pad_id, draft_depth=exit_half),
        ]
        if B == 1:
            cases.append(hf_case("hf_assistant_early_exit", hf, enc, pad_id, assistant_early_exit=H))
        time_cases(cases, args.new_tokens, args.repeats, f"batch {B}")
        doc["batches"][str(B)] = finish(section(cases, B, args.new_tokens), ratios, identical)

    if not args.no_redundant:
        del hf_skip, hf_exit
        red = AdalasForCausalLM.from_hf(redundant(hf, H)).eval()
        held.enter_context(red.family.hold_fused())
        for B in args.batch_sizes:
            enc = encode(tok, B, model.device)
            cases = [
                hf_case("hf_full", red.model, enc, pad_id),
                adalas_case("adalas_full", red, enc, full, pad_id),
                adalas_case("adalas_spec_auto", red, enc, full, pad_id, draft_depth="auto"),
                adalas_case("adalas_spec_exit_half", red, enc, full, pad_id, draft_depth=exit_half),
                adalas_case("adalas_spec_exit_half_k4", red, enc, full, pad_id, draft_depth=exit_half,
                            num_draft_tokens=4),
            ]
            if B == 1:
                cases.append(hf_case("hf_assistant_early_exit", red.model, enc, pad_id, assistant_early_exit=H))
            time_cases(cases, args.new_tokens, args.repeats, f"redundant, batch {B}")
            doc["redundant"][str(B)] = finish(section(cases, B, args.new_tokens), ratios, identical)
        fused = model.family.fused_bytes() + red.family.fused_bytes()
    else:
        fused = model.family.fused_bytes()

    doc["memory"] = {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "fused_weight_bytes": fused,
        "kv_cache_bytes": {f"batch {B}": {name: s.get("kv_cache_bytes") for name, s in sec["stats"].items()}
                           for B, sec in doc["batches"].items()},
        "skipped_layers": "a layer that a static route skips never stores a generated token (under either "
                          "kv_fill): its buffers hold the prompt only (nothing with skip_prompt); per-token and "
                          "per-sequence routes keep full buffers (shared slots; a ragged layout would slow every "
                          "step)",
    }
    held.close()
    doc["summary"] = summary(doc)
    text = json.dumps(doc, indent=1)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


def summary(doc: dict) -> dict:
    """The headline ratios, flattened (batch size in the key)."""
    out = {}
    for part, prefix in (("batches", ""), ("redundant", "redundant_")):
        for B, sec in doc[part].items():
            for k, v in sec["ratios"].items():
                out[f"{prefix}{k}@{B}"] = v
            out[f"{prefix}greedy_identical@{B}"] = all(sec["greedy_identical"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
