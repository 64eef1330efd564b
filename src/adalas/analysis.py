"""Hidden-state similarity across depth: how far each depth config's states drift from the full model's.

Teacher-forced: each sequence is prompt + reference (labels -100 on the prompt, so the prompt runs
every layer, as in generation; `skip_prompt` stays False), and only the reference tokens are
compared. For each config and each depth l (0 = the embeddings, l = after layer l-1), the cosine
similarity between the config's state and the full model's at the same depth, averaged over
tokens pooled across sequences. `final` is depth L (what the final norm and the head read; states
are compared before the final norm); `mean` is the mean over depths 1..L. The full model's own
drift is there too: `consecutive[l]` = cos(h_l, h_{l+1}), `to_final[l]` = cos(h_l, h_L).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .config import DepthConfig
from .data import Example, make_collator, resolve_format, tokenize_example


def label_states(hidden_states: Sequence[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
    """Per depth 0..L, the (N, D) states of the label tokens (labels != -100), in fp64 for the sums."""
    keep = labels.ne(-100)  # (B, T) reference tokens
    return [h[keep].double() for h in hidden_states]


def layer_cosines(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """(L,): for the states per depth 0..L ((N, D) each), the sum over tokens of cos(h_l, h_{l+1}), the
    state entering layer l against the state leaving it. Block influence of layer l is 1 - its mean."""
    return torch.stack([F.cosine_similarity(a, b, dim=-1).sum() for a, b in zip(states, states[1:])])


def _label_states(model, batch: dict) -> list[torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                output_hidden_states=True, response_logits=True)  # its logits go unread: compute the fewest
    return label_states(out.hidden_states, batch["labels"])


@torch.no_grad()
def hidden_similarity(model, tokenizer, examples: Sequence[Example], configs: Sequence, *, batch_size: int = 8,
                      prompt_format: str = "auto", max_seq_length: int = 256) -> dict:
    """The similarity document (see the module doc). `configs`: objects with config_id, strategy,
    budget and depth (e.g. `sweep.SweepConfig`); a `full` config among them is skipped."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    configs = [c for c in configs if c.strategy != "full"]
    L = model.num_layers
    fmt = resolve_format(prompt_format, tokenizer)
    rows = [tokenize_example(ex, tokenizer, fmt, max_seq_length) for ex in examples]
    collate = make_collator(tokenizer, "right")
    base = model.depth
    model.eval()
    sims = {c.config_id: torch.zeros(L + 1, dtype=torch.float64) for c in configs}
    consecutive = torch.zeros(L, dtype=torch.float64)
    to_final = torch.zeros(L + 1, dtype=torch.float64)
    n_tokens = 0
    try:
        for s in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(rows[s:s + batch_size]).items()}
            model.set_depth(DepthConfig())
            full = _label_states(model, batch)
            n_tokens += full[0].shape[0]
            consecutive += layer_cosines(full)
            to_final += torch.stack([F.cosine_similarity(a, full[-1], dim=-1).sum() for a in full])
            for c in configs:
                model.set_depth(c.depth)
                states = _label_states(model, batch)
                sims[c.config_id] += torch.stack([F.cosine_similarity(a, b, dim=-1).sum() for a, b in zip(states, full)])
    finally:
        model.set_depth(base)
    if n_tokens == 0:
        raise ValueError("hidden_similarity: no reference tokens to compare")
    out_configs = []
    for c in configs:
        per_layer = (sims[c.config_id] / n_tokens).tolist()
        route = c.depth.static_route(L)
        out_configs.append({"config_id": c.config_id, "strategy": c.strategy, "budget": c.budget,
                            "route": None if route is None else "".join("1" if r else "0" for r in route),
                            "per_layer": per_layer, "final": per_layer[-1], "mean": sum(per_layer[1:]) / L})
    return {"num_layers": L, "n_sequences": len(rows), "n_tokens": n_tokens, "max_seq_length": max_seq_length,
            "prompt_format": fmt, "layers": list(range(L + 1)),
            "full": {"consecutive": (consecutive / n_tokens).tolist(), "to_final": (to_final / n_tokens).tolist()},
            "configs": out_configs}
