"""Timing a per-sequence router: greedy decoding at full depth against `generate_grouped`, on the same
prompts. An evaluation, not inference: `adalas train-router --speed`, `adalas study` (E4) and
`benchmarks/sequence_speed.py` call it."""
from __future__ import annotations

import time
from typing import Sequence

from ..config import DepthConfig
from .controller import batches, left_pad
from .router import generate_grouped


def measure_speed(model, prompts: Sequence[Sequence[int]], batch_size: int, max_new_tokens: int, repeats: int = 2,
                  eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    """Greedy generation of the same prompts at full depth (batched, shortest first) and with
    `generate_grouped` (the model in sequence mode). The two alternate `repeats` times and each keeps
    its fastest run (the machine may be shared). Tokens count up to each row's EOS; `speedup_wall`
    compares the seconds for the same prompts, `speedup_tokens_per_s` the rates."""
    prompts = [list(p) for p in prompts]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

    def upto_eos(seq: list[int]) -> list[int]:
        return seq[:seq.index(eos_token_id) + 1] if eos_token_id in seq else seq

    def full_depth() -> tuple[float, list[list[int]]]:
        out_rows: list[list[int]] = [[] for _ in prompts]
        with model.temporary_depth(DepthConfig(kv_fill=model.depth.kv_fill)):
            t0 = time.perf_counter()
            for idx in batches(order, batch_size):
                ids, mask = left_pad([prompts[i] for i in idx])
                out = model.generate(input_ids=ids, attention_mask=mask, **kw)
                for r, i in enumerate(idx):
                    out_rows[i] = upto_eos(out[r, ids.shape[1]:].tolist())
            return time.perf_counter() - t0, out_rows

    full_s, grouped_s = float("inf"), float("inf")
    with model.family.hold_fused():  # fused copies built once for both sides' calls, not per call
        for _ in range(repeats):
            s, full_out = full_depth()
            full_s = min(full_s, s)
            model.reset_usage()
            g = generate_grouped(model, prompts, batch_size=batch_size, **kw)
            if g.feature_seconds + g.generate_seconds < grouped_s:
                grouped_s, grouped, usage = g.feature_seconds + g.generate_seconds, g, model.avg_layers()
    seqs = [upto_eos(s) for s in grouped.sequences]
    full_tokens, seq_tokens = sum(map(len, full_out)), sum(map(len, seqs))
    groups: dict[str, int] = {}
    for c in grouped.choices:
        groups[grouped.routes[c]] = groups.get(grouped.routes[c], 0) + 1
    return {
        "n": len(prompts), "batch_size": batch_size, "max_new_tokens": max_new_tokens, "repeats": repeats,
        "full": {"seconds": full_s, "tokens": full_tokens, "tokens_per_s": full_tokens / full_s},
        "sequence": {"seconds": grouped_s, "feature_seconds": grouped.feature_seconds,
                     "generate_seconds": grouped.generate_seconds, "tokens": seq_tokens,
                     "tokens_per_s": seq_tokens / grouped_s, "avg_layers": grouped.avg_layers,
                     "measured_avg_layers": usage, "groups": groups},
        "speedup_tokens_per_s": (seq_tokens / grouped_s) / (full_tokens / full_s),
        "speedup_wall": full_s / grouped_s,
        "routes": [grouped.routes[c] for c in grouped.choices], "sequences": seqs, "full_sequences": full_out,
    }
