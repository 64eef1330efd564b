"""Choices on held-out self-written rows: each trained candidate scored by the loss it was trained on.

Why: every choice of the study (E1's route or way to adapt an exit, E2's controller learning rate)
is made on rows that no test set contributed to, with a score that needs no generation:
- `kd`: the distillation loss (KL to the base model at full depth over the teacher's top k, as in
  training, `adalas.distill`) on the response tokens of the plan's `heldout` rows, teacher-forced;
- `cost`: the mean share of layers run by those tokens (the cost loss' term), `loss` = kd + alpha cost;
- `usage_eval` / `usage_train`: per layer, the share of response tokens that ran it with the argmax
  gates of evaluation and with the Gumbel samples of training (E2 reports both).
The teacher's top k is cached once per (model, rows) by `distill.teacher_cache`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .plan import Plan, Run


def _rows(plan: Plan, run: Run):
    """The held-out rows tokenized as the run's training rows are, and their collator and settings."""
    from ..data import make_collator, prepare_dataset
    from ..hub import load_tokenizer
    from ..train_args import parse_args

    cfg, _ = parse_args(run.argv(plan.overrides, plan.runs_dir))
    tok = load_tokenizer(plan.model)
    ds = prepare_dataset(str(plan.heldout), tok, split="train", prompt_format=cfg.prompt_format,
                         max_seq_length=cfg.max_seq_length, prompt_fraction=cfg.prompt_fraction)
    return ds, make_collator(tok), cfg


def _batches(ds, collate, size: int = 8):
    for start in range(0, len(ds), size):
        examples = list(range(start, min(start + size, len(ds))))
        rows = [ds[i] for i in examples]
        yield examples, collate([{c: r[c] for c in ("input_ids", "attention_mask", "labels")} for r in rows])


@torch.no_grad()
def _usage(model, ds, collate, training: bool) -> list[float]:
    """Per layer, the share of response tokens whose gate ran it (argmax in eval, Gumbel in training)."""
    model.train(training)
    torch.manual_seed(0)
    total, count = None, 0
    for _, batch in _batches(ds, collate):
        gates = model(**batch).layer_gates[batch["labels"].ne(-100)].float()  # (N, L)
        total = gates.sum(0) if total is None else total + gates.sum(0)
        count += gates.shape[0]
    model.eval()
    return [float(x) / max(count, 1) for x in total]


@torch.no_grad()
def score_runs(plan: Plan, runs: Sequence[Run], alphas: dict[str, float] | None = None,
               usage: bool = False) -> dict[str, dict]:
    """{run name: {"kd", "cost", "loss", "tokens"[, "usage_eval", "usage_train"]}} on the held-out rows;
    `alphas`: each run's cost weight in `loss` (default 0). The runs share one recipe's tokenization."""
    from ..distill import kl_topk, teacher_cache
    from ..model import AdalasForCausalLM

    ds, collate, cfg = _rows(plan, runs[0])
    k, temperature = cfg.distill_top_k or 32, cfg.distill_temperature
    teacher = AdalasForCausalLM.from_pretrained(plan.model)
    cache = teacher_cache(teacher, ds, collate, k, temperature, progress=False)
    del teacher
    out = {}
    for run in runs:
        model = AdalasForCausalLM.from_pretrained(str(plan.runs_dir / run.name)).eval()
        kl_sum, cost_sum, n = 0.0, 0.0, 0
        for examples, batch in _batches(ds, collate):
            res = model(**batch, response_logits=True)
            index, logp = cache.rows(examples)
            kl_sum += float(kl_topk(res.logits, index, logp, temperature).sum())
            cost_sum += float(res.layer_gates[batch["labels"].ne(-100)].float().mean(-1).sum())
            n += res.logits.shape[0]
        alpha = (alphas or {}).get(run.name, 0.0)
        kd, cost = temperature ** 2 * kl_sum / n, cost_sum / n
        out[run.name] = {"kd": kd, "cost": cost, "loss": kd + alpha * cost, "alpha": alpha, "tokens": n}
        if usage:
            out[run.name].update(usage_eval=_usage(model, ds, collate, False),
                                 usage_train=_usage(model, ds, collate, True))
        del model
    return out


def heldout_sha256(plan: Plan) -> str:
    from ..data import file_sha256

    return file_sha256(Path(plan.heldout))
