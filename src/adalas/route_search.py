"""Route search: which N of a model's L layers to keep, scored teacher-forced against the full model.

Notable:
- Rows: prompt + the row's response, cut to its first `response_tokens` tokens. On self-written rows
  (`adalas synth`) the response is the full-depth model's own greedy answer, so a candidate is
  scored on the text the full model writes. Route choices are made on held-out rows, never on
  evaluation data (the command refuses `builtin` and test files).
- One full-depth forward per batch of rows, once: the full model's log-probabilities at the response
  positions are cached, and the block influence of each layer (1 - cos of its input and output state
  on the response tokens, `adalas.analysis`) is read from the same forward's hidden states.
- A candidate is one forward per batch: `static_skip` with `skip_prompt=True` by default (the prompt
  follows the route, as the adapted model will run it); `skip_prompt=False` keeps the prompt at full
  depth (labels -100 on it).
- Score: per row, the mean over its response positions of KL(full || route), then the mean over rows
  (lower is better; the search objective, `score_name` "kl"); top-1 agreement with the full model,
  averaged the same way (as `adalas.metrics`), is reported beside it.
- Search, bounded by `max_candidates` distinct routes scored (baselines included): the uniform route
  and the route of least block influence (the start); a greedy descent from full depth, dropping one
  layer at a time among the `greedy_width` least influential ones still kept; then first-improvement
  swaps of a kept layer for a skipped one (lowest influence kept for highest influence skipped
  first) from the best route so far, until the budget is spent or no swap improves. Deterministic:
  no random draws, ties keep the earlier route.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .analysis import label_states, layer_cosines
from .config import DepthConfig, route_to_str
from .data import Example, PadCollator, data_sha256, resolve_format, tokenize_example
from .oracle import uniform_skip_route

HEALING_STRENGTHS = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # ridge, in units of the mean Gram eigenvalue
SCORE_NAME = "kl"  # the objective: mean KL(full || route) over response tokens, lower is better
# the held-out self-written rows of the embedded model, relative to the repository root (data/synth/README.md)
HELDOUT_ROWS = {"smollm2-135m": "data/synth/smollm2-135m.heldout.jsonl"}


def choice_data(model: str, data: str | None, split: str = "validation") -> str:
    """The rows a route is chosen on: `data`, else the embedded model's held-out self-written rows.

    Choices are never made on evaluation data: `builtin` (or a copy of it), a file named as a test
    split (`samsum.test.jsonl`, `test.json`, `dev_test.jsonl`: a name part `test`) and a hub
    dataset's test split are refused.
    """
    if data is None:
        default = HELDOUT_ROWS.get(model)
        if default is None:
            raise ValueError(f"--data: required for model {model!r}: held-out rows the model wrote itself "
                             f"(adalas synth --model {model} ...), not evaluation data")
        if not Path(default).is_file():
            raise ValueError(f"--data: {model}'s held-out rows {default} are not here; run from the adalas "
                             f"repository or pass --data FILE")
        return default
    refusal = "route choices are made on held-out rows, never on evaluation data"
    if str(data) == "builtin" or (Path(data).is_file() and data_sha256(data) == data_sha256("builtin")):
        raise ValueError(f"--data: {data} is the built-in evaluation set; {refusal}")
    if "test" in re.split(r"[._\-]+", Path(data).name.lower()):
        raise ValueError(f"--data: {data} is named as a test split; {refusal}")
    local = Path(data).expanduser().is_file() or Path(data).suffix.lower() in (".json", ".jsonl")
    if not local and split == "test":
        raise ValueError(f"--split: test; {refusal} (use validation or train)")
    return str(data)


@dataclass(frozen=True)
class RouteScore:
    """One scored candidate: the layers it skips, its scores, and the search phase that proposed it."""

    skip: tuple[int, ...]
    kl: float
    top1_agreement: float
    phase: str

    def as_dict(self, num_layers: int) -> dict:
        return {"skip": list(self.skip), "route": route_to_str(skip_to_route(num_layers, self.skip)),
                "score": self.kl, "kl": self.kl, "top1_agreement": self.top1_agreement, "phase": self.phase}


def skip_to_route(num_layers: int, skip: Sequence[int]) -> list[bool]:
    skipped = set(skip)
    return [i not in skipped for i in range(num_layers)]


def prepare_rows(examples: Sequence[Example], tokenizer, *, response_tokens: int | None = 32,
                 prompt_format: str = "auto", max_seq_length: int = 512) -> list[dict[str, list[int]]]:
    """Tokenized rows (`input_ids`, `labels` -100 on the prompt) as training tokenizes them, each cut
    to its first `response_tokens` response tokens (None: all, EOS included)."""
    if response_tokens is not None and response_tokens < 1:
        raise ValueError(f"response_tokens: must be >= 1, got {response_tokens}")
    fmt = resolve_format(prompt_format, tokenizer)
    rows = []
    for ex in examples:
        row = tokenize_example(ex, tokenizer, fmt, max_seq_length)
        start = sum(1 for x in row["labels"] if x == -100)
        end = len(row["input_ids"]) if response_tokens is None else start + response_tokens
        rows.append({"input_ids": row["input_ids"][:end], "labels": row["labels"][:end]})
    return rows


class RouteScorer:
    """Scores routes on fixed rows against the model at full depth (see the module doc).

    `rows`: dicts with `input_ids` and `labels` (-100 on the prompt; at least one response token
    each). Calling it with a list of layers to skip returns a `RouteScore`; a route already scored is
    answered from memory (`scored`), without a forward.
    """

    def __init__(self, model, rows: Sequence[dict], *, pad_token_id: int, batch_size: int = 8,
                 skip_prompt: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if not rows:
            raise ValueError("route search: no rows to score on")
        for i, r in enumerate(rows):
            if not any(x != -100 for x in r["labels"][1:]):
                raise ValueError(f"route search: row {i} has no response token to score")
        self.model = model
        self.num_layers = model.num_layers
        self.skip_prompt = skip_prompt
        collate = PadCollator(pad_token_id, "right")
        by_length = sorted(rows, key=lambda r: len(r["input_ids"]))  # little padding; scores are per row
        self.batches = [{k: v.to(model.device) for k, v in collate(
            [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]}
             for r in by_length[s:s + batch_size]]).items()} for s in range(0, len(rows), batch_size)]
        self.n_rows = len(rows)
        self.scored: dict[tuple[int, ...], RouteScore] = {}
        self._full_logp: list[torch.Tensor] = []  # per batch, (P, V): full-depth log-probs at scored positions
        self._full_top: list[torch.Tensor] = []  # per batch, (P,)
        self._row_of: list[torch.Tensor] = []  # per batch, (P,): the row (within the batch) of each position
        self._full_head_input: list[torch.Tensor] = []  # per batch, (P, D): what the head reads at full depth
        cosines = torch.zeros(self.num_layers, dtype=torch.float64)
        n_states = 0
        with torch.no_grad(), self.model.temporary_depth(DepthConfig()):
            for b in self.batches:
                out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                                 response_logits=True, output_hidden_states=True)
                scored = b["labels"][:, 1:].ne(-100)  # (B, T-1): positions that predict a response token
                logp = F.log_softmax(out.logits.float(), dim=-1)  # (P, V): the logits at those positions
                self._full_logp.append(logp)
                self._full_top.append(logp.argmax(-1))
                self._row_of.append(torch.arange(scored.shape[0], device=scored.device)[:, None]
                                    .expand_as(scored)[scored])
                self._full_head_input.append(self.model.family.final(out.hidden_states[-1])[:, :-1][scored].float())
                states = label_states(out.hidden_states, b["labels"])  # per depth, (N, D) response tokens
                cosines += layer_cosines(states).cpu()
                n_states += states[0].shape[0]
        self.n_tokens = sum(int(t.numel()) for t in self._full_top)
        # 1 - mean cos(state entering layer i, state leaving it): how much layer i changes the state
        self.block_influence: list[float] = (1 - cosines / n_states).tolist()

    @torch.no_grad()
    def __call__(self, skip: Sequence[int], phase: str = "") -> RouteScore:
        key = tuple(sorted(set(int(i) for i in skip)))
        if key in self.scored:
            return self.scored[key]
        depth = (DepthConfig(mode="static_skip", skip_layers=list(key), skip_prompt=self.skip_prompt) if key
                 else DepthConfig())
        kl_sum = torch.zeros((), dtype=torch.float64)
        agree_sum = torch.zeros((), dtype=torch.float64)
        with self.model.temporary_depth(depth):
            for b, full_logp, full_top, row_of in zip(self.batches, self._full_logp, self._full_top, self._row_of):
                # labels mark the prompt, which runs every layer unless skip_prompt (then they change
                # nothing); the head runs only where a label follows, the positions scored
                logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                                    response_logits=True).logits
                logp = F.log_softmax(logits.float(), dim=-1)  # (P, V)
                kl = (full_logp.exp() * (full_logp - logp)).sum(-1).double()  # (P,) KL(full || route)
                agree = logp.argmax(-1).eq(full_top).double()  # (P,)
                n = torch.bincount(row_of, minlength=b["input_ids"].shape[0]).double()  # (B,) positions per row
                kl_sum += (torch.zeros_like(n).index_add_(0, row_of, kl) / n).sum().cpu()
                agree_sum += (torch.zeros_like(n).index_add_(0, row_of, agree) / n).sum().cpu()
        result = RouteScore(key, float(kl_sum) / self.n_rows, float(agree_sum) / self.n_rows, phase)
        self.scored[key] = result
        return result

    @torch.no_grad()
    def healed_kl(self, skip: Sequence[int], folds: int = 2,
                  strengths: Sequence[float] = HEALING_STRENGTHS) -> float:
        """Mean KL(full || route) per row, as `__call__` gives it, after a linear correction of what the
        head reads: the route's head input plus a ridge-regressed map of it onto the full model's, fitted
        on the other rows (`folds` groups of rows, each scored by the map fitted without it). A
        training-free guess at how much a small adaptation recovers (ReplaceMe, Shopkhoev et al. 2025,
        replaces pruned blocks by such a map); the rank study (data/synth/route-choice/) measures whether
        it ranks trained routes better than the plain KL.

        The map shrinks towards the identity: its ridge strength (`strengths`, in units of the mean
        eigenvalue of the inputs' Gram matrix) is chosen inside the fitting rows by the same
        cross-fitting, with "no correction" always a candidate. A first version fitted all 577
        coefficients per output freely on ~770 positions and scored a searched route 3.86 against a
        plain 1.08; now a route with nothing a map can learn scores its plain KL."""
        x, y, row = self._head_inputs(skip)
        full_logp = torch.cat(self._full_logp)
        kl = self._cross_fitted_kl(x, y, full_logp, row, folds, lambda fit: self._chosen_strength(
            x[fit], y[fit], full_logp[fit], row[fit] // folds, folds, strengths))
        return _row_mean(kl, row)

    def _head_inputs(self, skip: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At the scored positions: what the head reads on the route (P, D) and at full depth (P, D),
        both float64, and the row of each position (P,), numbered over all batches."""
        key = tuple(sorted(set(int(i) for i in skip)))
        depth = (DepthConfig(mode="static_skip", skip_layers=list(key), skip_prompt=self.skip_prompt) if key
                 else DepthConfig())
        states, rows, offset = [], [], 0
        with torch.no_grad(), self.model.temporary_depth(depth):
            for b, row_of in zip(self.batches, self._row_of):
                out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                                 response_logits=True, output_hidden_states=True)
                scored = b["labels"][:, 1:].ne(-100)
                states.append(self.model.family.final(out.hidden_states[-1])[:, :-1][scored].float())
                rows.append(row_of + offset)
                offset += scored.shape[0]
        return torch.cat(states).double(), torch.cat(self._full_head_input).double(), torch.cat(rows)

    def _kl(self, head_input: torch.Tensor, full_logp: torch.Tensor) -> torch.Tensor:
        """KL(full || head(head_input)) per position, float64."""
        logp = F.log_softmax(self.model.family.head(head_input.float()).float(), dim=-1)
        return (full_logp.exp() * (full_logp - logp)).sum(-1).double()

    def _cross_fitted_kl(self, x, y, full_logp, row, folds: int, strength_for) -> torch.Tensor:
        """KL per position, each fold's positions (rows `row % folds`) corrected by the map fitted on the
        other folds' positions, at the strength `strength_for(fit)` gives for those (`fit`: their mask);
        no correction where no other fold has positions."""
        fold = row % folds
        kl = torch.empty(len(x), dtype=torch.float64, device=x.device)
        for k in range(folds):
            fit, held = fold != k, fold == k
            if held.any():
                strength = strength_for(fit) if fit.any() else float("inf")
                kl[held] = self._kl(healed_head_input(x[fit], y[fit], x[held], strength), full_logp[held])
        return kl

    def _chosen_strength(self, x, y, full_logp, row, folds: int, strengths: Sequence[float]) -> float:
        """The strength (inf: no correction) whose cross-fitted mean KL per row on these positions is
        lowest; ties go to the stronger shrinkage."""
        candidates = (float("inf"), *sorted(strengths, reverse=True))
        scores = [_row_mean(self._cross_fitted_kl(x, y, full_logp, row, folds, lambda fit, s=s: s), row)
                  for s in candidates]
        return candidates[scores.index(min(scores))]


def healed_head_input(x_fit: torch.Tensor, y_fit: torch.Tensor, x: torch.Tensor, strength: float) -> torch.Tensor:
    """x + [x, 1] @ W, W the ridge regression of the residual y - x on [x, 1] over the fitting positions,
    with penalty `strength` times the mean eigenvalue of their Gram matrix (inf: W = 0, the identity)."""
    if strength == float("inf"):
        return x
    a = torch.cat([x_fit, torch.ones(len(x_fit), 1, dtype=x_fit.dtype, device=x_fit.device)], 1)
    gram = a.T @ a
    gram += strength * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram, a.T @ (y_fit - x_fit))  # (D + 1, D)
    return x + torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) @ w


def _row_mean(per_position: torch.Tensor, row: torch.Tensor) -> float:
    """The mean over rows of the mean over each row's positions (rows numbered 0..R-1, some may be absent)."""
    n = torch.bincount(row).double()
    sums = torch.zeros_like(n).index_add_(0, row, per_position.double())
    present = n > 0
    return float((sums[present] / n[present]).mean())


class _Progress:
    """A tqdm bar over candidates (a null object when progress is off)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="route search", unit="route", dynamic_ncols=True)

    def update(self, searched: int, best: RouteScore | None) -> None:
        if self.bar is not None:
            if best is not None:
                self.bar.set_postfix(kl=f"{best.kl:.4f}", top1=f"{best.top1_agreement:.3f}", refresh=False)
            self.bar.update(searched - self.bar.n)

    def close(self, searched: int) -> None:
        if self.bar is not None:
            self.bar.total = searched
            self.bar.refresh()
            self.bar.close()


def default_greedy_width(num_layers: int, keep: int, max_candidates: int) -> int:
    """About a third of the budget (less the two baselines) for the greedy descent: the width that
    spends it over the L - N drops (0: no greedy descent, when fewer than two candidates a step fit).
    The swaps get the rest: on the embedded model (30 -> 20 layers) they improved on the greedy
    descent's end, which was the first swap from the block-influence route.

    >>> default_greedy_width(30, 20, 100), default_greedy_width(30, 24, 40), default_greedy_width(30, 20, 40)
    (3, 2, 0)
    """
    width = (max_candidates - 2) // 3 // (num_layers - keep)
    return width if width >= 2 else 0


def search_route(scorer: RouteScorer, keep: int, *, max_candidates: int = 40, greedy_width: int | None = None,
                 progress: bool = False) -> dict:
    """The route search (see the module doc): the best route keeping `keep` layers, with its evidence.

    Returns `keep`, `skip`, `score` (mean KL to full depth), `score_name`, `kl`, `top1_agreement`,
    `searched` (distinct routes scored, at most `max_candidates`), `baseline` (`uniform`,
    `block_influence`: each a scored route), `block_influence` (per layer), `greedy_width`, `rows`,
    `scored_tokens`, `skip_prompt`, `depth` (the found route as a DepthConfig dict) and `candidates`
    (every route scored, in order, with its phase).
    """
    L = scorer.num_layers
    if not 1 <= keep <= L - 1:
        raise ValueError(f"--layers: must be in 1..{L - 1} (the model has {L} layers), got {keep}")
    if max_candidates < 2:
        raise ValueError(f"--max-candidates: must be >= 2 (the two baselines), got {max_candidates}")
    n_skip = L - keep
    width = default_greedy_width(L, keep, max_candidates) if greedy_width is None else greedy_width
    if width < 0:
        raise ValueError(f"--greedy-width: must be >= 0, got {width}")
    t0 = time.perf_counter()
    bi = scorer.block_influence
    by_influence = sorted(range(L), key=lambda i: (bi[i], i))  # least influential first
    order: list[tuple[int, ...]] = []  # the routes this search scored, in order: `searched`
    bar = _Progress(max_candidates, progress)

    def score(skip: Sequence[int], phase: str) -> RouteScore | None:
        """The route's score; None when it is new and the budget is spent."""
        key = tuple(sorted(skip))
        if key not in order:
            if len(order) >= max_candidates:
                return None
            order.append(key)
        r = scorer(key, phase)
        bar.update(len(order), best)
        return r

    best: RouteScore | None = None  # the best route keeping `keep` layers so far
    try:
        best = start = score(by_influence[:n_skip], "block_influence")
        uniform = score([i for i, run in enumerate(uniform_skip_route(L, keep)) if not run], "uniform")
        # greedy descent from full depth: drop the layer whose removal costs least, among the `width`
        # least influential layers still kept
        if width:
            skipped: list[int] = []
            for _ in range(n_skip):
                kept = [i for i in by_influence if i not in skipped]
                tried = [r for r in (score(skipped + [i], "greedy") for i in kept[:width]) if r is not None]
                if not tried:
                    break
                greedy = min(tried, key=lambda r: r.kl)  # min keeps the first of equals
                skipped = list(greedy.skip)
            if len(skipped) == n_skip and greedy.kl < best.kl:
                best = greedy
        # swaps from the best route so far: a kept layer out, a skipped layer in; first improvement
        improved = True
        while improved:
            improved = False
            skipped_set = set(best.skip)
            kept = [i for i in range(L) if i not in skipped_set]
            pairs = sorted(((k, s) for k in kept for s in best.skip), key=lambda p: (bi[p[0]] - bi[p[1]], p))
            for k, s in pairs:
                r = score(sorted(skipped_set - {s} | {k}), "swap")
                if r is None:
                    break
                if r.kl < best.kl:
                    best, improved = r, True
                    break
    finally:
        bar.close(len(order))
    as_dict = lambda r: r.as_dict(L)  # noqa: E731
    return {"keep": keep, "skip": list(best.skip), "score": best.kl, "score_name": SCORE_NAME, "kl": best.kl,
            "top1_agreement": best.top1_agreement, "searched": len(order), "max_candidates": max_candidates,
            "baseline": {"uniform": as_dict(uniform), "block_influence": as_dict(start)},
            "block_influence": bi, "greedy_width": width, "num_layers": L, "rows": scorer.n_rows,
            "scored_tokens": scorer.n_tokens, "skip_prompt": scorer.skip_prompt,
            "depth": DepthConfig(mode="static_skip", skip_layers=list(best.skip),
                                 skip_prompt=scorer.skip_prompt).to_dict(),
            "candidates": [as_dict(scorer.scored[k]) for k in order],
            "search_wall_s": round(time.perf_counter() - t0, 2)}
