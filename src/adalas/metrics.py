"""Per-sequence columns beside ROUGE: FLOPs per generated token, and the teacher-forced metrics of
`adalas eval --metric nll,agreement` (and `adalas sweep --metric ...`).

- `flops_per_token` (every row): `adalas.cost` counts for the layers the row ran on its decode steps
  (its `layer_runs` / steps), attending on average to its prompt plus half its new tokens, plus the
  head (and the batch's confidence checks per token). A config's value is pooled over decode steps,
  as `avg_layers` is.
- `nll` (`--metric nll`): the mean negative log-likelihood, in nats per token, of the data's
  reference response followed by EOS (cut to `max_new_tokens` tokens), given the evaluation prompt,
  in one forward at the model's depth with labels -100 on the prompt: the prompt runs every layer
  (unless `skip_prompt`) and the response tokens follow the route, as in generation, so the first
  response token is predicted by the full-depth prompt, as the first generated token is.
- `top1_agreement` (`--metric agreement`): over the same positions, the fraction where the depth's
  most likely next token equals the full-depth model's (the same weights, `DepthConfig()`).

Both are means over a sequence's response tokens; a config's value is the mean over sequences (as
ROUGE). Teacher forcing on the reference scores every config on the same tokens, unlike ROUGE, which
scores each config's own output.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import DepthConfig
from .cost import generation_flops

METRICS = ("rouge", "nll", "agreement")  # what --metric takes; ROUGE is always computed
TEACHER_FORCED = ("nll", "agreement")
COLUMNS = {"nll": "nll", "agreement": "top1_agreement"}


def parse_metrics(text: str | Sequence[str] | None) -> list[str]:
    """`--metric` ("nll,agreement", a list, or None) -> the teacher-forced metrics asked for, in
    METRICS order ("rouge" is accepted and always on)."""
    if text is None:
        return []
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not any(names):
        raise ValueError(f"--metric: unknown metric(s) {', '.join(map(repr, unknown or names))}; allowed: "
                         f"{', '.join(METRICS)} (comma-separated)")
    return [m for m in TEACHER_FORCED if m in names]


def row_flops(model, layer_runs: Sequence[int], steps: int, prompt_tokens: int, output_tokens: int,
              head_evals_per_token: float = 0.0) -> float:
    """FLOPs per generated token of one row (see the module doc)."""
    if steps:
        usage = [r / steps for r in layer_runs]
    else:  # no decode step: the route it would have followed, if the depth fixes one
        route = model.depth.static_route(model.num_layers)
        usage = [float(r) for r in route] if route is not None else [0.0] * model.num_layers
    return generation_flops(model, None, usage, prompt_tokens, output_tokens, head_evals_per_token)


@torch.no_grad()
def teacher_forced(model, tokenizer, items: Sequence[Any], metrics: Sequence[str],
                   max_response_tokens: int) -> list[dict[str, float]]:
    """Per item (`EvalItem`: `input_ids` of the prompt, `reference`), the teacher-forced columns of
    `metrics` (a subset of TEACHER_FORCED) at the model's depth; see the module doc."""
    if not metrics:
        return [{} for _ in items]
    eos = tokenizer.eos_token_id
    context = model.family.max_positions
    seqs, starts = [], []
    for it in items:
        prompt = list(it.input_ids)
        room = max_response_tokens if context is None else min(max_response_tokens, context - len(prompt))
        response = tokenizer.encode(it.reference, add_special_tokens=False)
        response = (response[:max(room - 1, 0)] + [eos])[:room] if eos is not None else response[:room]
        if not response:
            raise ValueError(f"teacher-forced metrics: sequence {it.id!r} leaves no room for a response token")
        seqs.append(prompt + response)
        starts.append(len(prompt))
    T = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs], device=model.device)  # (B, T) left padding
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], device=model.device)
    labels = torch.full_like(ids, -100)
    for r, (s, start) in enumerate(zip(seqs, starts)):
        labels[r, T - len(s) + start:] = ids[r, T - len(s) + start:]
    target = labels[:, 1:]  # (B, T-1): the token each position predicts
    scored = target != -100
    row = torch.arange(len(seqs), device=ids.device)[:, None].expand_as(scored)[scored]  # (P,)
    n = scored.sum(1).clamp(min=1)

    def row_means(values: torch.Tensor) -> list[float]:  # (P,) per scored position -> per row
        return (torch.zeros(len(seqs), device=ids.device).index_add_(0, row, values.float()) / n).tolist()

    # the head only where a response token is predicted (response_logits): a long prompt needs none
    logits = _response_logits(model, ids, mask, labels)  # (P, V)
    out: list[dict[str, float]] = [{} for _ in items]
    if "nll" in metrics:
        for r, v in enumerate(row_means(F.cross_entropy(logits, target[scored], reduction="none"))):
            out[r]["nll"] = v
    if "agreement" in metrics:
        if model.depth.mode == "full":
            full = logits
        else:
            with model.temporary_depth(DepthConfig()):
                full = _response_logits(model, ids, mask, labels)
        for r, v in enumerate(row_means(logits.argmax(-1) == full.argmax(-1))):
            out[r]["top1_agreement"] = v
    return out


def _response_logits(model, ids, mask, labels) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, labels=labels, response_logits=True).logits.float()


def batch_columns(model, tokenizer, items: Sequence[Any], gens: Sequence[Any], metrics: Sequence[str],
                  max_new_tokens: int) -> list[dict[str, float]]:
    """The extra columns of one generated batch (`evaluate.Generation`s, right after `generate`):
    `flops_per_token` always, the teacher-forced `metrics` when asked."""
    head_evals = model.head_evaluations()  # this batch's confidence checks per token (0 for other modes)
    cols = teacher_forced(model, tokenizer, items, metrics, max_new_tokens)
    for c, g in zip(cols, gens):
        c["flops_per_token"] = row_flops(model, g.layer_runs, g.steps, g.prompt_tokens, g.output_tokens, head_evals)
    return cols


def summarize_columns(rows: Sequence[dict]) -> dict[str, float]:
    """A config's values of these columns, present in every row: `flops_per_token` pooled over decode
    steps (as avg_layers), `nll` and `top1_agreement` averaged over sequences."""
    out: dict[str, float] = {}
    if not rows:
        return out
    if all("flops_per_token" in r for r in rows):
        weights = [max(int(r["output_tokens"]) - 1, 0) for r in rows]
        total = sum(weights)
        out["flops_per_token"] = (sum(w * float(r["flops_per_token"]) for w, r in zip(weights, rows)) / total
                                  if total else sum(float(r["flops_per_token"]) for r in rows) / len(rows))
    for column in COLUMNS.values():
        if all(column in r for r in rows):
            out[column] = sum(float(r[column]) for r in rows) / len(rows)
    return out
