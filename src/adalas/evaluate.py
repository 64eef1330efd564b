"""Generation on an evaluation set: ROUGE, layers used, one JSONL row per sequence.

Notable:
- One evaluation loop serves `adalas eval` (one depth -> metrics.json) and `adalas sweep` (many depths ->
  sweep.jsonl). Prompts are tokenized once, sorted by length and cut into fixed batches
  (`plan_batches`); the plan depends only on the sequences and the batch size, so a rerun, a
  resumed run and a sharded run see the same batches. It is recorded in DIR/batches.json: a grown
  set keeps the recorded batches and cuts only its new sequences into new ones, so rows already
  written never sit beside rows of another plan. Rank r of W takes batches r, r + W, ...,
  so every row has the same batch companions however many ranks run, and the same predictions.
- Resume: rows are appended and flushed per batch (`io.RowStore`), keyed by (config_id, id) or id; a
  rerun skips the keys present. A batch with only some rows present is generated again whole (same
  companions, same predictions) and only the missing rows are written. A torn last line (a kill
  during a write) is cut off before appending.
- Sharding: with W > 1 ranks each rank appends to its own part file under `parts/`; the last rank
  to finish merges the parts into the main file in plan order (the order one rank would have
  written) under a file lock, or rank 0 after a barrier when torch.distributed is initialized
  (`io.finish_shards`).
- Layers used per sequence are counted as `layer_usage()` counts them (decode steps only: a row
  that generates n tokens is counted on n - 1 steps): a row that follows one route (static modes;
  `random_budget` and `sequence`: the route `generate()` chose for it) counts route x steps, and
  its row has a `route` column; the per-token modes (learned, stochastic), the `layer_gates` of one
  teacher-forced forward over prompt + generated tokens (labels -100 on the prompt alone, so the
  forward's prompt, and the random keys read from it, are the prefill's), which equal the decode
  decisions since cached decoding equals recomputation. Every batch is checked against the model's
  own counters: a mismatch, only possible on a float near-tie of a learned controller, is a
  `LayerCountWarning` (an error in the tests).
- ROUGE: rouge-score, no stemmer, rouge1 / rouge2 / rougeL F1 per sequence, averaged, with the
  percentile-bootstrap interval of rougeL's mean (`rougeL_ci95`, see `adalas.stats`).
- Sampling (`Sampling`): the oracle's null control generates at full depth with temperature 0.7,
  top-p 0.9 (top-k off) and a seed; everything else is greedy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import DepthConfig
from .data import (TRAINING_FILE, Example, build_prompt, data_sha256, load_examples, make_collator, resolve_format,
                   tokenize_prompt)
from .io import RowStore, atomic_write_json, check_output_dir, finish_shards
from .metrics import batch_columns, summarize_columns
from .prompt_reuse import PromptReuse
from .routers import chosen_routes
from .run_settings import check_settings, run_identity, versions
from .stats import bootstrap_ci

logger = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
REFERENCES = ("data", "full")


# ---------------------------------------------------------------------------------------------
# ROUGE

_SCORER = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """F1 of rouge1, rouge2 and rougeL (not Lsum) for one sequence, and rougeL's precision and
    recall (F against a short reference mixes content with length: recall says how much of the
    reference the output covers, precision how much of the output is in it); rouge-score, no stemmer."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer
        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    scores = _SCORER.score(reference, prediction)  # rouge-score takes (target, prediction)
    out = {name: scores[name].fmeasure for name in ROUGE_TYPES}
    out.update(rougeL_precision=scores["rougeL"].precision, rougeL_recall=scores["rougeL"].recall)
    return out


# ---------------------------------------------------------------------------------------------
# Sequences and the batch plan

@dataclass(frozen=True)
class EvalItem:
    index: int  # position in the evaluation set
    id: str
    prompt: str
    reference: str
    input_ids: tuple[int, ...]


LONG_PROMPTS = ("refuse", "truncate")  # a prompt that does not fit the model's context with the new tokens


def context_length(model) -> int | None:
    """Positions the model attends over (prompt + generated tokens), when its config says."""
    return model.family.max_positions


def make_items(examples: Sequence[Example], tokenizer, *, prompt_format: str = "auto",
               max_prompt_tokens: int | None = None, context: int | None = None, max_new_tokens: int = 0,
               long_prompts: str = "refuse", source: str = "data") -> list[EvalItem]:
    """Examples tokenized for generation (prompt only), each fitted to the model's context.

    A prompt longer than `context - max_new_tokens` tokens (after `max_prompt_tokens`) is refused
    (ValueError naming the row; the default) or, with long_prompts="truncate", has its content cut
    to fit, as `max_prompt_tokens` cuts it (the template and response marker stay), with a warning.
    """
    if long_prompts not in LONG_PROMPTS:
        raise ValueError(f"long_prompts: must be one of {', '.join(LONG_PROMPTS)}, got {long_prompts!r}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens: must be >= 1, got {max_prompt_tokens}")
    room = None
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens: {max_new_tokens} new tokens leave no room for a prompt in the "
                             f"model's context of {context} positions; ask for fewer")
    fmt = resolve_format(prompt_format, tokenizer)
    items, seen, cut = [], set(), []
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise ValueError(f"{source}: duplicate id {ex.id!r} (ids key the result rows)")
        seen.add(ex.id)
        ids = tokenize_prompt(ex, tokenizer, fmt)["input_ids"]
        limit = max_prompt_tokens  # the user's cut, if any
        if room is not None and len(ids) > room and (limit is None or limit > room):
            if long_prompts == "refuse":
                raise ValueError(f"{source}: the prompt with id {ex.id!r} has {len(ids)} tokens; with "
                                 f"{max_new_tokens} new tokens the model's context of {context} positions leaves "
                                 f"room for {room}; pass --long-prompts truncate to cut long prompts to fit (with a "
                                 f"warning), or lower --max-prompt-tokens or --max-new-tokens")
            limit = room
            cut.append(ex.id)
        text = build_prompt(ex, fmt, tokenizer)
        if limit is not None and len(ids) > limit:
            try:
                ids = tokenize_prompt(ex, tokenizer, fmt, limit)["input_ids"]
            except ValueError:  # the template alone does not fit
                raise ValueError(f"{source}: the prompt with id {ex.id!r} cannot be cut to {limit} tokens: its "
                                 f"template alone is longer; raise --max-prompt-tokens or lower "
                                 f"--max-new-tokens") from None
            text = tokenizer.decode(ids)  # cut to fit: record what the model saw
        items.append(EvalItem(i, str(ex.id), text, ex.response, tuple(ids)))
    if cut:
        logger.warning("warning: %s: cut %d prompt(s) to %d tokens to fit the model's context of %d positions "
                       "with %d new tokens (--long-prompts truncate); first: id %r",
                       source, len(cut), room, context, max_new_tokens, cut[0])
    return items


def load_items(data: str, tokenizer, *, split: str = "test", limit: int | None = None,
               prompt_format: str = "auto", max_prompt_tokens: int | None = None, context: int | None = None,
               max_new_tokens: int = 0, long_prompts: str = "refuse") -> list[EvalItem]:
    """The evaluation set, tokenized for generation (prompt only); see `make_items` for `context`."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit: must be >= 1, got {limit}")
    return make_items(load_examples(data, split=split, limit=limit), tokenizer, prompt_format=prompt_format,
                      max_prompt_tokens=max_prompt_tokens, context=context, max_new_tokens=max_new_tokens,
                      long_prompts=long_prompts, source=f"data {data!r}")


@dataclass(frozen=True)
class Batch:
    index: int  # position in the plan
    items: tuple[EvalItem, ...]


def plan_batches(items: Sequence[EvalItem], batch_size: int,
                 recorded: Sequence[Sequence[str]] = ()) -> list[Batch]:
    """Batches of similar prompt length (less padding), in a fixed order: sorted by (length, index).

    `recorded`: the batches (lists of ids) of an earlier run into the same directory. Each one whose
    sequences are all still here is kept as it was, first and in its order; only the other sequences
    are cut into new batches. A grown set then never re-cuts the batches that made the rows already
    written (a row's prediction depends on its batch companions)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    by_id = {it.id: it for it in items}
    kept = [tuple(by_id[i] for i in ids) for ids in recorded if ids and all(i in by_id for i in ids)]
    taken = {it.id for batch in kept for it in batch}
    order = sorted((it for it in items if it.id not in taken), key=lambda it: (len(it.input_ids), it.index))
    cut = [tuple(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]
    return [Batch(b, batch) for b, batch in enumerate(kept + cut)]


PLAN_FILE = "batches.json"  # the batch plan a directory's rows were made in (see plan_batches)


def resume_plan(out_dir: Path, items: Sequence[EvalItem], batch_size: int) -> list[Batch]:
    """The directory's batch plan for `items`: its recorded batches kept, new sequences in new
    batches; recorded (atomically) before any row is generated."""
    path = Path(out_dir) / PLAN_FILE
    recorded = json.loads(path.read_text())["batches"] if path.is_file() else []
    plan = plan_batches(items, batch_size, recorded)
    ids = [[it.id for it in b.items] for b in plan]
    known = {tuple(b) for b in recorded}
    merged = recorded + [b for b in ids if tuple(b) not in known]  # batches of sequences left out stay recorded
    if merged != recorded:
        atomic_write_json(path, {"batch_size": batch_size, "batches": merged})
    return plan


def shard(batches: Sequence[Batch], rank: int, world_size: int) -> list[Batch]:
    """Rank r of W takes batches r, r + W, ... (whole batches: companions never change)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")
    return [b for b in batches if b.index % world_size == rank]


def rank_device(device: str, rank: int, world_size: int) -> str:
    """With several ranks on CUDA, each rank takes the GPU LOCAL_RANK (else its rank)."""
    if world_size > 1 and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    return device


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialized, else RANK / WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE: must be integers") from None


# ---------------------------------------------------------------------------------------------
# Generation with per-row layer counts

@dataclass
class Generation:
    prediction: str
    prompt_tokens: int
    output_tokens: int  # generated tokens up to and including the first EOS
    steps: int  # decode steps counted for this row: output_tokens - 1
    layer_runs: list[int]  # per layer, how many of those steps ran it
    route: str | None = None  # "1101...": the one route this row followed (None: decided per token)
    stopped: bool = False  # the row produced EOS within the cap (False: it ran to max_new_tokens)


@dataclass(frozen=True)
class Sampling:
    """Sampled instead of greedy generation (the null control's full-depth alternatives)."""

    seed: int
    temperature: float = 0.7
    top_p: float = 0.9

    def generate_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0, "seed": self.seed}


class LayerCountWarning(UserWarning):
    """Per-row layer counts disagree with the model's own counters."""


def _eos_ids(model) -> list[int]:
    eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


@torch.no_grad()
def generate_batch(model, tokenizer, items: Sequence[EvalItem], max_new_tokens: int,
                   sampling: Sampling | None = None, prompt_reuse: PromptReuse | None = None) -> list[Generation]:
    """Greedy (or `sampling`) generation for one batch (left padding) at the model's current depth.
    `prompt_reuse`: serves the batch's full-depth prefill from an earlier config (`adalas.prompt_reuse`)."""
    collate = make_collator(tokenizer, "left")
    enc = collate([{"input_ids": list(it.input_ids), "attention_mask": [1] * len(it.input_ids)} for it in items])
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    model.reset_usage()
    options = sampling.generate_kwargs() if sampling is not None else {"do_sample": False}
    if prompt_reuse is not None:
        options["_prompt_reuse"] = prompt_reuse
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **options)
    new = out[:, ids.shape[1]:].cpu()  # (B, n_new)
    eos = _eos_ids(model)
    lengths, stopped = [], []
    for row in new.tolist():
        n, stop = len(row), False
        for j, t in enumerate(row):
            if t in eos:
                n, stop = j + 1, True
                break
        lengths.append(n)
        stopped.append(stop)
    steps = torch.tensor([max(n - 1, 0) for n in lengths])  # (B,)
    routes = row_routes(model, len(items))  # (B, L) or None
    runs = row_layer_runs(model, ids, mask, new, steps, routes)  # (B, L)
    _check_against_counters(model, runs, steps)
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new.tolist(), lengths)]
    route_strs = [None] * len(items) if routes is None else ["".join("1" if x else "0" for x in r) for r in routes.tolist()]
    return [Generation(t, len(it.input_ids), n, int(s), r, rt, stop) for t, it, n, s, r, rt, stop in
            zip(texts, items, lengths, steps.tolist(), runs.tolist(), route_strs, stopped)]


def row_routes(model, batch_size: int) -> torch.Tensor | None:
    """(B, L) bool: each row's route when the depth gives a sequence one route (static modes; for
    random_budget and sequence, the routes the last `generate()` chose), else None (per token)."""
    route = model.depth.static_route(model.num_layers)
    if route is not None:
        return torch.tensor(route, dtype=torch.bool)[None, :].expand(batch_size, -1)
    chosen = chosen_routes(model.router)
    if chosen is not None and chosen.shape[0] != batch_size:
        raise AssertionError(f"the router holds routes for {chosen.shape[0]} rows, the batch has {batch_size}")
    return None if chosen is None else chosen.cpu()


def row_layer_runs(model, ids: torch.Tensor, mask: torch.Tensor, new: torch.Tensor, steps: torch.Tensor,
                   routes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) per row and layer, the counted decode steps that ran the layer (see the module doc).
    `routes` (B, L): each row's one route (`row_routes`); None: read per token from a forward."""
    if routes is not None:
        return routes.long() * steps[:, None]
    # per-token routes: one teacher-forced forward; token j of the output is the input of decode step j.
    # Every generated position has a label (the last token, never fed back, and pads after a row
    # finished are simply not counted): the forward's prompt tokens are the prefill's.
    T0, n_new = ids.shape[1], new.shape[1]
    j = torch.arange(n_new)[None, :]
    counted = j < steps[:, None]  # (B, n_new)
    real = j < (steps + 1)[:, None]  # (B, n_new) generated tokens before padding
    full = torch.cat([ids.cpu(), new], dim=1).to(model.device)  # (B, T0 + n_new)
    attention = torch.cat([mask.cpu(), real.long()], dim=1).to(model.device)
    labels = torch.cat([torch.full_like(ids.cpu(), -100), new], dim=1).to(model.device)
    out = model(input_ids=full, attention_mask=attention, labels=labels)
    gates = out.layer_gates[:, T0:].detach().cpu() > 0.5  # (B, n_new, L)
    return (gates & counted[..., None]).sum(dim=1).long()


def _check_against_counters(model, runs: torch.Tensor, steps: torch.Tensor) -> None:
    total = int(steps.sum())
    if total == 0:
        return
    ours = (runs.sum(0).double() / total).tolist()
    theirs = model.layer_usage()
    if any(abs(a - b) > 1e-6 for a, b in zip(ours, theirs)):
        warnings.warn(f"per-row layer counts disagree with the model's counters ({sum(ours):.4f} vs "
                      f"{sum(theirs):.4f} layers per token); a learned controller near a tie can do this",
                      LayerCountWarning, stacklevel=2)


def plan_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Evaluating a model on its own training data



def training_data_warning(model: str, data: str, split: str = "test") -> str | None:
    """A warning when `model` is a directory whose `adalas_training.json` names the data being
    evaluated: the same file (by sha256), the same local file or `builtin` by name (used whole for
    both), or the same hub dataset and split. None otherwise."""
    record_path = Path(str(model)).expanduser() / TRAINING_FILE
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return f"warning: {record_path} is not valid JSON; cannot tell what the model was trained on"
    trained = record.get("data")
    sha = data_sha256(data)
    same = (sha is not None and sha == record.get("data_sha256")) or (
        trained == data and (sha is not None or record.get("split") == split))
    if not same:
        return None
    return (f"warning: {model} was trained on {trained!r} ({TRAINING_FILE}), the data it is evaluated on "
            f"({data!r}); its scores are not held-out numbers")


# ---------------------------------------------------------------------------------------------
# Running one depth over the plan, and summarizing rows

def make_row(item: EvalItem, gen: Generation, reference: str, static: bool, fallback_layers: float,
             extra: dict | None = None) -> dict:
    """One per_sequence.jsonl row. `fallback_layers`: layers_used of a row with no counted decode step."""
    scores = rouge(gen.prediction, reference)
    layers_used = sum(gen.layer_runs) / gen.steps if gen.steps else fallback_layers
    row = {"id": item.id, "prompt": item.prompt, "reference": reference, "prediction": gen.prediction,
           **scores, "layers_used": layers_used, "prompt_tokens": gen.prompt_tokens,
           "output_tokens": gen.output_tokens, "stopped": gen.stopped, **(extra or {})}
    if gen.route is not None:
        row["route"] = gen.route
    if not static:
        row["layer_runs"] = gen.layer_runs  # per layer, decode steps of this row that ran it
    return row


class Progress:
    """A tqdm bar over sequences (a null object when progress is off)."""

    def __init__(self, total: int, enabled: bool, desc: str = ""):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="seq", dynamic_ncols=True)

    def update(self, n: int, desc: str | None = None) -> None:
        if self.bar is not None:
            if desc is not None:
                self.bar.set_description(desc, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def missing_items(batches: Sequence[Batch], store: RowStore, extra: dict | None = None,
                  done: set | None = None) -> int:
    """How many rows of `batches` the store lacks."""
    done = set(store.rows()) if done is None else done
    return sum(store.key({**(extra or {}), "id": it.id}) not in done for b in batches for it in b.items)


def run_depth(model, tokenizer, batches: Sequence[Batch], store: RowStore, *, max_new_tokens: int,
              references: dict[str, str] | str | None = None, extra: dict | None = None,
              progress: Progress | None = None, desc: str = "", sampling: Sampling | None = None,
              teacher_forced: Sequence[str] = (), prompt_reuse: PromptReuse | None = None) -> float:
    """Generate the rows of `batches` that `store` lacks, at the model's current depth; returns seconds.

    references: None (the data's), {id: text}, or "self" (the full model scored against its own output).
    sampling: sample (the null control's alternatives) instead of greedy decoding.
    teacher_forced: metrics of `adalas.metrics` ("nll", "agreement") added to each row (after the timing).
    prompt_reuse: see `generate_batch`.
    """
    model.eval()
    static = model.depth.static_route(model.num_layers) is not None
    done = set(store.rows())
    extra = extra or {}
    seconds = 0.0
    with model.family.hold_fused():  # the fused weight copies built once for every batch's generate()
        for batch in batches:
            missing = {it.id for it in batch.items if store.key({**extra, "id": it.id}) not in done}
            if not missing:
                continue
            t0 = time.perf_counter()
            # the whole batch, so every row keeps its companions
            gens = generate_batch(model, tokenizer, batch.items, max_new_tokens, sampling, prompt_reuse)
            seconds += time.perf_counter() - t0
            fallback = _fallback_layers(model)
            columns = batch_columns(model, tokenizer, batch.items, gens, teacher_forced,
                                    max_new_tokens)  # adalas.metrics
            rows = [make_row(it, g, _reference(references, it, g), static, fallback, {**extra, **c})
                    for it, g, c in zip(batch.items, gens, columns) if it.id in missing]
            store.append(rows)
            done.update(store.key(r) for r in rows)
            if progress is not None:
                progress.update(len(rows), desc)
    return seconds


def _reference(references: dict[str, str] | str | None, item: EvalItem, gen: Generation) -> str:
    if references is None:
        return item.reference
    if references == "self":
        return gen.prediction
    return references[item.id]


def _fallback_layers(model) -> float:
    """layers_used of a row with no counted step: its route's depth (static), else the batch mean."""
    route = model.depth.static_route(model.num_layers)
    if route is not None:
        return float(sum(route))
    usage = model.layer_usage()
    return float(sum(usage)) if any(usage) else float(model.num_layers)


def summarize(rows: Sequence[dict], num_layers: int, route: Sequence[bool] | None = None) -> dict:
    """Mean ROUGE F1 over rows, with the bootstrap interval of rougeL's (`rougeL_ci95`), rougeL's
    precision and recall, the mean generated tokens and the share of rows that stopped before the
    cap (`stop_share`); layer usage pooled over every counted token (as `layer_usage()`).
    Rows written before precision, recall and `stopped` were recorded get P/R from their prediction
    and reference; their `stop_share` is None (a row at the cap may or may not have ended on EOS)."""
    if not rows:
        raise ValueError("summarize: no rows")
    n = len(rows)
    runs = [0.0] * num_layers
    steps = 0
    for row in rows:
        s = max(int(row["output_tokens"]) - 1, 0)
        steps += s
        row_runs = row.get("layer_runs")
        if row_runs is None:
            if route is None:
                raise ValueError(f"row {row.get('id')!r} has no layer_runs and its config no static route")
            row_runs = [s if keep else 0 for keep in route]
        runs = [a + b for a, b in zip(runs, row_runs)]
    usage = [r / steps for r in runs] if steps else [0.0] * num_layers
    out = {name: sum(float(r[name]) for r in rows) / n for name in ROUGE_TYPES}
    out["rougeL_ci95"] = bootstrap_ci([float(r["rougeL"]) for r in rows])
    for name in ("rougeL_precision", "rougeL_recall"):
        out[name] = sum(float(r[name]) if name in r else rouge(r["prediction"], r["reference"])[name]
                        for r in rows) / n
    stops = [r.get("stopped") for r in rows]
    out.update(avg_layers=sum(usage), layer_usage=usage, n=n,
               output_tokens=sum(int(r["output_tokens"]) for r in rows) / n,
               stop_share=None if None in stops else sum(map(bool, stops)) / n)
    out.update(summarize_columns(rows))  # flops_per_token, nll, top1_agreement (adalas.metrics)
    return out


# ---------------------------------------------------------------------------------------------
# `adalas eval`

def run_eval(model, tokenizer, items: Sequence[EvalItem], out_dir: str | os.PathLike, *, max_new_tokens: int,
             batch_size: int, reference: str = "data", rank: int = 0, world_size: int = 1,
             identity: dict | None = None, progress: bool = False, teacher_forced: Sequence[str] = ()) -> dict | None:
    """Evaluate the model's current depth on `items` into out_dir; the metrics in the process that
    wrote metrics.json (the merging rank), else None. `teacher_forced`: see `adalas.metrics`."""
    if reference not in REFERENCES:
        raise ValueError(f"reference: must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not items:
        raise ValueError("items: the evaluation set is empty")
    out_dir = check_output_dir(out_dir)
    plan_batches(items, batch_size)  # validated before anything is written
    t0 = time.perf_counter()
    identity = dict(identity or {})
    depth = model.depth
    generation = {"max_new_tokens": max_new_tokens, "do_sample": False, "batch_size": batch_size,
                  "reference": reference, **identity.pop("generation", {})}
    settings = {"model": identity.get("model"), "data": identity.get("data"), "depth": depth.to_dict(),
                "max_new_tokens": max_new_tokens, "reference": reference, "batch_size": batch_size,
                **run_identity(model, identity.get("model")),
                **{k: v for k, v in generation.items() if k in ("prompt_format", "max_prompt_tokens")},
                **({"metrics": list(teacher_forced)} if teacher_forced else {}),
                **({"data_sha256": identity["data_sha256"]} if identity.get("data_sha256") else {})}
    check_settings(out_dir, settings)
    plan = resume_plan(out_dir, items, batch_size)
    mine = shard(plan, rank, world_size)
    store = RowStore(out_dir, "per_sequence.jsonl", ("id",), rank, world_size)
    ref_store = RowStore(out_dir, "full_reference.jsonl", ("id",), rank, world_size) if reference == "full" else None
    todo = missing_items(mine, store) + (missing_items(mine, ref_store) if ref_store is not None else 0)
    bar = Progress(todo, progress)
    try:
        references = None
        if ref_store is not None:  # the full model's own output, generated once and kept in out_dir
            model.set_depth(DepthConfig())
            run_depth(model, tokenizer, mine, ref_store, max_new_tokens=max_new_tokens, progress=bar,
                      desc="full-depth reference")
            model.set_depth(depth)
            references = {k[0]: r["prediction"] for k, r in ref_store.rows().items()}
        run_depth(model, tokenizer, mine, store, max_new_tokens=max_new_tokens, references=references,
                  progress=bar, desc="eval", teacher_forced=teacher_forced)
    finally:
        bar.close()
        model.set_depth(depth)
    order = {(it.id,): (b.index, k) for b in plan for k, it in enumerate(b.items)}
    result: dict = {}

    def merge() -> None:
        store.merge(order)
        if ref_store is not None:
            ref_store.merge(order)
        rows = store.rows()
        picked = [rows[(it.id,)] for it in items if (it.id,) in rows]
        if len(picked) < len(items):
            raise ValueError(f"{store.path}: {len(items) - len(picked)} sequence(s) missing after the merge")
        metrics = summarize(picked, model.num_layers, depth.static_route(model.num_layers))
        result.update(metrics, depth=depth.to_dict(), generation=generation, versions=versions(),
                      num_layers=model.num_layers, wall_s=round(time.perf_counter() - t0, 2),
                      world_size=world_size, **identity)
        atomic_write_json(out_dir / "metrics.json", result)

    fingerprint = plan_fingerprint("eval", [[it.id for it in b.items] for b in plan], world_size)
    return result if finish_shards(out_dir, rank, world_size, fingerprint, merge) else None


def write_stdout_summary(metrics: dict, keys: Sequence[str] = ("rouge1", "rouge2", "rougeL", "avg_layers", "n")) -> None:
    sys.stdout.write(json.dumps({k: (round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k])
                                 for k in keys if k in metrics}) + "\n")
