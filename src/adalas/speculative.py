"""Self-speculative decoding: draft with a shallower route of the same model, verify with its own depth.

    model.generate(ids, attention_mask=mask, draft_depth=DepthConfig(mode="early_exit", exit_after=15),
                   num_draft_tokens=4)            # or draft_depth="auto", num_draft_tokens=None
    model.speculative_stats()                     # draft / verify layers per token, acceptance

Notable:
- The target is the model's own depth (a static route: full, static_skip, early_exit, route); the
  draft is a static route that runs a subset of the target's layers.
- Exact reuse (as LayerSkip): below `first`, the first layer where draft and target differ, a
  drafted token's states and keys/values are the target's own. A round feeds the pending token and
  k drafts through the draft route (plus the lower layers of the last draft), then verifies all k+1
  tokens in one pass through the target's layers `first`..L-1 only, starting from the saved states.
  For an early-exit draft after E layers, verification runs exactly layers E..L-1.
- One shared cache: the draft writes its slots; verification rewinds and rewrites them from `first`
  up; rejected slots are truncated. Rows of a batch accept different numbers of tokens: the cache
  keeps the longest acceptance and the other rows' rejected slots become holes (masked like left
  padding; position ids stay per row), so no row recomputes anything.
- Greedy: accept while a draft equals the target's argmax, then take the target's token, so the
  output is the target's greedy output token for token. Sampling: standard speculative acceptance
  (accept with min(1, p/q), else resample from max(0, p - q)), so tokens follow the target's
  distribution after temperature / top-k / top-p (applied to both).
- "auto" (as SWIFT calibrates off-the-shelf models on their context, here with early exits as the
  candidate drafts): the full-depth prefill already computes every layer's state for the prompt, so
  each candidate exit's agreement with the final layer on the last prompt positions costs one head
  evaluation. A cost model (`adalas.cost.CostModel`) turns agreement into expected speedup; the best
  (exit, k) wins, or plain decoding when none is predicted to pay. Each round re-estimates the
  acceptance rate and re-chooses k; "auto" falls back to plain decoding once speculation stops paying.
  All decisions depend on the model's shapes and the tokens only, never on timings, so a seeded
  sampling run is reproducible.
- Counting: `model.speculative_stats()` reports draft and verify layer runs per generated token
  separately, with the acceptance rate (`usage.SpeculativeStats`); `layer_usage()` counts only plain
  decode steps.
- Read in this order: choosing the draft (`choose_draft`), one draft-and-verify round
  (`_draft_and_verify`), recording a round (`_record_round`), then the loop (`generate_speculative`).
  It builds on the engine's depth loop run by `DecodePlan`s (`adalas.engine`, `adalas.actions`), never on
  the model's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import LogitsProcessorList

from .cache import KVCache
from .config import DepthConfig
from .cost import CostModel
from .actions import RUN, SKIP, DecodePlan
from .engine import cached_step, depth_pass, new_cache, positions_from_mask, prefill
from .usage import SpeculativeStats

K_MAX = 8  # longest draft
# "auto": candidate exits (fractions of L) and the prompt positions (over all rows) it compares them
# on. Calibration costs one head evaluation per candidate and position (a few percent of a short
# generation on a CPU), so both are few.
EXIT_FRACTIONS = (0.5, 2 / 3, 0.75, 5 / 6)
CALIBRATION_POSITIONS = 16
PAYS = 1.05  # speculate only where the cost model predicts at least this speedup (its error margin)
PRIOR_WEIGHT = 4.0  # pseudo-observations behind the calibrated acceptance rate
UNCALIBRATED_ACCEPTANCE = 0.5  # prior for a draft the prompt cannot calibrate (one that skips inside)


def _pass(cost: CostModel, actions: list[int], rows: int, head: bool) -> float:
    """The cost model's time for one pass of a plan's actions over `rows` rows."""
    return cost.pass_cost(sum(a == RUN for a in actions), 0, rows, head)  # a skipped layer computes nothing


@dataclass
class Draft:
    """A draft route against the target plan: its plan, where it diverges (`first`), and its costs."""

    route: list[bool]
    plan: DecodePlan
    first: int
    exit_after: int | None  # E when the draft is the target truncated after E layers (calibratable)

    @classmethod
    def build(cls, route: list[bool], target: DecodePlan) -> "Draft":
        first = next(i for i, (d, t) in enumerate(zip(route, target.actions)) if d != (t == RUN))
        actions = target.actions[:first] + [RUN if r else SKIP for r in route[first:]]
        truncated = not any(route[first:])
        return cls(route, target.with_actions(actions), first, first if truncated else None)

    def speedup(self, target: DecodePlan, cost: CostModel, batch: int, alpha: float, k: int) -> float:
        """Expected plain-decoding time per token over speculative time per token: a round of k
        drafts yields (1 - alpha^(k+1)) / (1 - alpha) tokens when each draft is accepted with
        probability alpha (the last one is the target's own)."""
        tokens = k + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
        draft = _pass(cost, self.plan.actions, batch, head=True)
        low = _pass(cost, self.plan.actions[:self.first], batch, head=False)
        verify = _pass(cost, target.actions[self.first:], batch * (k + 1), head=True)
        plain = _pass(cost, target.actions, batch, head=True)
        return tokens * plain / (k * draft + low + verify)

    def best_k(self, target: DecodePlan, cost: CostModel, batch: int, alpha: float) -> tuple[int, float]:
        return max(((k, self.speedup(target, cost, batch, alpha, k)) for k in range(1, K_MAX + 1)),
                   key=lambda ks: ks[1])


# -- choosing the draft ---------------------------------------------------------------------------
def _target_route(model) -> list[bool]:
    route = model.depth.static_route(model.num_layers)
    if route is None:
        raise ValueError(f"draft_depth: self-speculative decoding verifies with the model's own depth, which must "
                         f"be a static route (full, static_skip, early_exit, route); it is {model.depth.mode!r}")
    return route


def _fixed_draft(model, draft_depth: Any, target: DecodePlan, target_route: list[bool]) -> Draft:
    cfg = DepthConfig.parse(draft_depth)
    cfg.check_layers(model.num_layers)
    route = cfg.static_route(model.num_layers)
    if route is None:
        raise ValueError(f"draft_depth: must be a static route (static_skip, early_exit, route), got mode {cfg.mode!r}")
    if any(d and not t for d, t in zip(route, target_route)):
        raise ValueError("draft_depth: the draft runs a layer the model's depth skips; it must run a subset of them")
    if route == target_route:
        raise ValueError("draft_depth: the draft runs every layer the model's depth runs; nothing to gain")
    return Draft.build(route, target)


def _exit_candidates(target: DecodePlan, target_route: list[bool]) -> dict[int, Draft]:
    """"auto": the target truncated after E layers, for E at EXIT_FRACTIONS of the depth."""
    L = len(target_route)
    out = {}
    for f in EXIT_FRACTIONS:
        E = max(1, min(L - 1, round(L * f)))
        route = [r and i < E for i, r in enumerate(target_route)]
        if any(route) and route != target_route:
            out[E] = Draft.build(route, target)
    return out


def _agreement(model, final: torch.Tensor, states: dict[int, torch.Tensor],
               attention_mask: torch.Tensor) -> dict[int, float]:
    """Per exit E: the fraction of the last prompt positions where the head on the state after E
    layers picks the same token as on the final state. final, states: (B, T, D)."""
    B = final.shape[0]
    P = max(1, min(final.shape[1], CALIBRATION_POSITIONS // B))
    real = attention_mask[:, -P:].bool()  # (B, P); left padding: the last positions are the real ones
    rows = [final[:, -P:][real]] + [states[E][:, -P:][real] for E in states]  # each (N, D)
    picks = model.logits_from_state(torch.cat(rows)).argmax(-1).view(len(rows), -1)  # (1 + C, N)
    return {E: float((picks[1 + j] == picks[0]).float().mean()) for j, E in enumerate(states)}


@dataclass
class DraftChoice:
    """What `choose_draft` settles before decoding: the target plan, the draft (None: plain decoding)
    with its length `k`, the acceptance rate `alpha` and predicted speedup `best` behind it, and the
    prefill (its cache, with room for `spare` drafted slots, and its final states (B, T, D))."""

    target: DecodePlan
    draft: Draft | None
    k: int
    alpha: float
    best: float
    auto: bool
    cost: CostModel
    cache: KVCache
    final: torch.Tensor
    positions: torch.Tensor  # (B, T) of the prompt
    spare: int  # longest draft the output and the cache have room for


def choose_draft(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, draft_depth: Any,
                 num_draft_tokens: int | None, max_new_tokens: int, stats: SpeculativeStats) -> DraftChoice:
    """Prefill at the target's depth, keeping the state after each calibratable exit (free: the prompt
    runs every layer), then choose the draft and its length by the best predicted speedup ("auto":
    among early exits, or none when none pays). The choice is recorded in `stats.choices`."""
    auto = isinstance(draft_depth, str) and draft_depth.strip() == "auto"
    device = input_ids.device
    B, T0 = input_ids.shape
    target_route = _target_route(model)
    target = DecodePlan.static(target_route, device)
    cost = CostModel.of(model)
    candidates = _exit_candidates(target, target_route) if auto else {None: _fixed_draft(model, draft_depth, target,
                                                                                         target_route)}

    def ceiling(d: Draft) -> float:  # speedup at acceptance 1 with the best k: a candidate must pass this
        return d.best_k(target, cost, B, 1.0)[1] if num_draft_tokens is None else \
            d.speedup(target, cost, B, 1.0, num_draft_tokens)
    if auto:
        candidates = {E: d for E, d in candidates.items() if ceiling(d) >= PAYS}
    calibrate = {d.exit_after: None for d in candidates.values() if d.exit_after is not None}
    positions = positions_from_mask(attention_mask)
    row_ids = torch.arange(B, device=device)
    K = num_draft_tokens or K_MAX
    cache = new_cache(model, B, T0 + max_new_tokens + K + 1, prompt_length=T0)
    final = prefill(model, cache, input_ids, positions, attention_mask, row_ids, capture=calibrate or None)
    agreement = _agreement(model, final, calibrate, attention_mask) if calibrate else {}

    draft, k, alpha, best = None, 0, 0.0, 0.0
    for d in candidates.values():
        a = agreement.get(d.exit_after, UNCALIBRATED_ACCEPTANCE)
        kk, s = (num_draft_tokens, d.speedup(target, cost, B, a, num_draft_tokens)) if num_draft_tokens else \
            d.best_k(target, cost, B, a)
        if draft is None or s > best:
            draft, k, alpha, best = d, kk, a, s
    if auto and best < PAYS:
        draft = None  # plain decoding: no candidate pays
    stats.choices.append({"draft_route": None if draft is None else [i for i, r in enumerate(draft.route) if r],
                          "exit_after": None if draft is None else draft.exit_after,
                          "num_draft_tokens": k if draft is not None else 0,
                          "predicted_speedup": round(best, 3), "agreement": agreement, "fallback": draft is None})
    return DraftChoice(target, draft, k, alpha, best, auto, cost, cache, final, positions, K)


# -- token selection --------------------------------------------------------------------------------
class _Selector:
    """Greedy or sampled tokens from logits (B, n, V), with min_new_tokens' EOS ban applied to
    position j when the row has produced fewer than min_new_tokens tokens before it."""

    def __init__(self, do_sample: bool, warpers: LogitsProcessorList, min_new_tokens: int,
                 eos_t: torch.Tensor | None, generator: torch.Generator | None):
        self.do_sample, self.warpers, self.min_new, self.eos_t = do_sample, warpers, min_new_tokens, eos_t
        self.generator = generator

    def scores(self, logits: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(B, n, V) float scores after the EOS ban and the warpers (probabilities when sampling)."""
        B, n, V = logits.shape
        logits = logits.float()
        if self.min_new and self.eos_t is not None:
            ban = count[:, None] + torch.arange(n, device=logits.device) < self.min_new  # (B, n)
            logits = logits.clone()
            logits[..., self.eos_t] = logits[..., self.eos_t].masked_fill(ban[..., None], float("-inf"))
        if not self.do_sample:
            return logits
        scores = self.warpers(None, logits.reshape(B * n, V)) if self.warpers else logits.reshape(B * n, V)
        return scores.softmax(-1).view(B, n, V)

    def pick(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, V) scores -> (B,) tokens."""
        if not self.do_sample:
            return scores.argmax(-1)
        return torch.multinomial(scores, 1, generator=self.generator).squeeze(1)

    def accept(self, drafts: torch.Tensor, q: torch.Tensor | None, p: torch.Tensor):
        """drafts (B, k), draft scores q (B, k, V) when sampling, target scores p (B, k+1, V) ->
        (accepted count n (B,), the target's token after them (B,))."""
        B, k = drafts.shape
        if not self.do_sample:
            target = p.argmax(-1)  # (B, k+1)
            n = (drafts == target[:, :k]).long().cumprod(1).sum(1)  # (B,) leading matches
            return n, target.gather(1, n[:, None]).squeeze(1)
        p_d = p[:, :k].gather(2, drafts[..., None]).squeeze(-1)  # (B, k)
        q_d = q.gather(2, drafts[..., None]).squeeze(-1)
        u = torch.rand(B, k, generator=self.generator, device=p.device)
        n = (u * q_d <= p_d).long().cumprod(1).sum(1)  # accept with probability min(1, p/q)
        q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], 1)  # (B, k+1, V): no draft after the last
        idx = n[:, None, None].expand(B, 1, p.shape[-1])
        p_n, q_n = p.gather(1, idx).squeeze(1), q_pad.gather(1, idx).squeeze(1)  # (B, V)
        resid = (p_n - q_n).clamp(min=0)
        resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p_n)  # p == q: resample from p
        return n, torch.multinomial(resid, 1, generator=self.generator).squeeze(1)


class _Output:
    """The token ids being written: (B, T0 + max_new_tokens + spare + 1) with room for the rejected
    tail of a round, tokens generated per row (`count`) and finished rows."""

    def __init__(self, input_ids: torch.Tensor, max_new_tokens: int, spare: int, pad_token_id: int,
                 eos_t: torch.Tensor | None):
        B, T0 = input_ids.shape
        device = input_ids.device
        self.T0, self.max_new_tokens, self.eos_t = T0, max_new_tokens, eos_t
        self.ids = torch.full((B, T0 + max_new_tokens + spare + 1), pad_token_id, dtype=input_ids.dtype, device=device)
        self.ids[:, :T0] = input_ids
        self.count = torch.zeros(B, dtype=torch.long, device=device)  # tokens generated per row
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.arange = torch.arange(spare + 1, device=device)

    def emit(self, new: torch.Tensor, take: torch.Tensor) -> None:
        """Write new (B, n) tokens, the first take[r] of row r; stop rows at EOS or max_new_tokens."""
        n = new.shape[1]
        j = self.arange[:n]
        take = torch.minimum(take, self.max_new_tokens - self.count).masked_fill(self.finished, 0)
        if self.eos_t is not None:
            is_eos = torch.isin(new, self.eos_t) & (j < take[:, None])  # (B, n)
            first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), n)
            take = torch.minimum(take, first_eos + 1)
            self.finished = self.finished | is_eos.any(1)
        keep = j < take[:, None]  # (B, n)
        cols = self.T0 + self.count[:, None] + j  # distinct columns; the spare ones absorb what is not kept
        self.ids.scatter_(1, cols, torch.where(keep, new, self.ids.gather(1, cols)))
        self.count.add_(take)
        self.finished = self.finished | (self.count >= self.max_new_tokens)

    def result(self) -> torch.Tensor:
        return self.ids[:, :self.T0 + int(self.count.max())]


# -- one draft-and-verify round ----------------------------------------------------------------------
@dataclass
class Round:
    """What a round did: per row, accepted drafts `n` (B,) and the token after them (B,); over active
    rows, `rows`, `accepted`, `rejected` (rows that rejected a draft), `produced` tokens, and the
    fewest / most drafts a row accepted."""

    n: torch.Tensor
    last_token: torch.Tensor
    rows: int
    accepted: int
    rejected: int
    produced: int
    n_min: int
    n_max: int


def _draft_and_verify(model, cache: KVCache, draft: Draft, target: DecodePlan, select: _Selector, out: _Output,
                      token: torch.Tensor, next_pos: torch.Tensor, k_now: int, row_ids: torch.Tensor,
                      ones: torch.Tensor) -> Round:
    """Feed the pending `token` (B,) and k_now drafts through the draft route, keeping each fed token's
    state entering layer `draft.first` (the last draft needs only its lower layers); verify all k_now+1
    tokens through the target's layers first..L-1 over the slots just drafted; accept, trim the cache
    to the longest acceptance (holes for the rows that accepted fewer) and write the new tokens."""
    finished, count = out.finished, out.count
    active = ~finished
    S = cache.length
    cache.ensure(S + k_now + 1)
    lows, drafts, qs = [], [], []
    feed = token
    for j in range(k_now + 1):
        cap = {draft.first: None}
        cache.append_mask(ones, all_valid=True)
        last = j == k_now  # the last draft only needs its lower layers (for verification)
        h = depth_pass(model, draft.plan, (next_pos + j)[:, None], feed[:, None], cache=cache, row_ids=row_ids,
                       stop=draft.first if last else None, capture=cap).h
        cache.advance(1)
        lows.append(cap[draft.first])
        if not last:
            q = select.scores(model.logits_from_state(h[:, -1:]), count + j)[:, 0]  # (B, V)
            feed = select.pick(q)
            drafts.append(feed)
            qs.append(q)
    cache.rewind(S)
    vpos = next_pos[:, None] + out.arange[:k_now + 1]  # (B, k+1)
    h = depth_pass(model, target, vpos, h=torch.cat(lows, 1), cache=cache, row_ids=row_ids, start=draft.first).h
    cache.advance(k_now + 1)
    p = select.scores(model.logits_from_state(h), count)  # (B, k+1, V)
    D = torch.stack(drafts, 1)  # (B, k)
    n, last_token = select.accept(D, torch.stack(qs, 1) if select.do_sample else None, p)
    new = torch.cat([D, D[:, :1]], 1).scatter(1, n[:, None], last_token[:, None])  # (B, k+1)
    n_act = n.masked_fill(finished, 0)
    n_max, n_min, rows, acc, rejected, produced = torch.stack([
        n_act.max(), n.masked_fill(finished, k_now).min(), active.sum(), n_act.sum(), ((n < k_now) & active).sum(),
        torch.minimum(n + 1, out.max_new_tokens - count).masked_fill(finished, 0).sum()]).tolist()
    # Keep slots S..S+n_max; a row that accepted fewer has holes after its own tokens.
    cache.truncate(S + n_max + 1)
    if n_min < n_max:
        cache.invalidate(S, out.arange[:n_max + 1][None] <= n_act[:, None])  # keep (B, n_max + 1)
    out.emit(new, n + 1)
    return Round(n, last_token, rows, acc, rejected, produced, n_min, n_max)


def _record_round(stats: SpeculativeStats, r: Round, draft: Draft, target: DecodePlan, k_now: int) -> None:
    """Count a round: acceptance, tokens, and layer runs (draft work: the draft route for k_now tokens
    plus the lower layers of the last; verify work: the target's layers first..L-1 for k_now+1)."""
    stats.rounds += 1
    stats.ragged_rounds += r.n_min < r.n_max
    stats.drafted += r.rows * k_now
    stats.accepted += r.accepted
    stats.round_tokens += r.produced
    stats.draft_lengths.append(k_now)
    for i, a in enumerate(draft.plan.actions):
        if a == RUN:
            stats.draft_runs[i] += r.rows * (k_now + (i < draft.first))
    for i in range(draft.first, len(target.actions)):
        if target.actions[i] == RUN:
            stats.verify_runs[i] += r.rows * (k_now + 1)


# -- the loop ---------------------------------------------------------------------------------------
def generate_speculative(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         draft_depth: Any, num_draft_tokens: int | None, max_new_tokens: int, min_new_tokens: int,
                         do_sample: bool, warpers: LogitsProcessorList, eos: list[int], pad_token_id: int,
                         generator: torch.Generator | None, plain: Callable | None = None) -> torch.Tensor:
    """Returns (B, T_prompt + n_new) token ids, as `generation.generate` (which validates the options).
    `plain((cache, final states))`: the plain decoding loop, for when "auto" finds no draft that pays
    (it continues from this prefill, so falling back costs only the calibration)."""
    if num_draft_tokens is not None and (isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int)
                                         or not 1 <= num_draft_tokens <= 64):
        raise ValueError(f"num_draft_tokens: must be an integer in 1..64 or None (adaptive), got {num_draft_tokens!r}")
    usage = model.usage
    stats = usage.speculative_stats()
    choice = choose_draft(model, input_ids, attention_mask, draft_depth, num_draft_tokens, max_new_tokens, stats)
    target, draft, k, alpha, cache = choice.target, choice.draft, choice.k, choice.alpha, choice.cache
    B, device = input_ids.shape[0], input_ids.device
    if draft is None and plain is not None:
        before = usage.tokens
        ids = plain((cache, choice.final))
        stats.plain_tokens += B + int(usage.tokens - before)  # the prefill's token, then each step's rows
        usage.last_cache_bytes = cache.peak_bytes
        return ids
    acc_prior = alpha * PRIOR_WEIGHT  # running acceptance: (accepted + prior) / (drafted-and-judged + weight)
    acc_seen, judged = 0.0, 0.0

    eos_t = torch.tensor(eos, device=device, dtype=torch.long) if eos else None
    select = _Selector(do_sample, warpers, min_new_tokens, eos_t, generator)
    out = _Output(input_ids, max_new_tokens, choice.spare, pad_token_id, eos_t)
    ones = torch.ones(B, 1, dtype=attention_mask.dtype, device=device)
    row_steps = torch.zeros(B, dtype=torch.long, device=device)  # plain decode steps per active row
    row_ids = torch.arange(B, device=device)

    token = select.pick(select.scores(model.logits_from_state(choice.final[:, -1:]), out.count)[:, 0])  # (B,) pending
    out.emit(token[:, None], torch.ones_like(out.count))
    next_pos = choice.positions[:, -1] + 1  # position of the pending token
    while not bool(out.finished.all()):
        token = torch.where(out.finished, torch.full_like(token, pad_token_id), token)
        active = ~out.finished
        left = int((max_new_tokens - out.count).masked_fill(out.finished, 0).max())  # tokens the furthest row needs
        k_now = min(k, left - 1) if draft is not None else 0
        if k_now < 1:  # a plain decode step (counted in layer_usage)
            usage.add_tokens(int(active.sum()))
            row_steps += active
            cache.ensure(cache.length + 1)
            h = cached_step(model, target, cache, next_pos[:, None], token[:, None], ones, all_valid=True,
                            row_ids=row_ids)
            token = select.pick(select.scores(model.logits_from_state(h[:, -1:]), out.count)[:, 0])
            stats.plain_tokens += int(torch.minimum(active.long(), max_new_tokens - out.count).sum())
            out.emit(token[:, None], torch.ones_like(out.count))
            next_pos = next_pos + 1
            continue

        r = _draft_and_verify(model, cache, draft, target, select, out, token, next_pos, k_now, row_ids, ones)
        token, next_pos = r.last_token, next_pos + r.n + 1
        _record_round(stats, r, draft, target, k_now)
        # the next round's length from the running acceptance rate
        acc_seen, judged = acc_seen + r.accepted, judged + r.accepted + r.rejected
        alpha = (acc_seen + acc_prior) / (judged + PRIOR_WEIGHT)
        if num_draft_tokens is None:
            k, best = draft.best_k(target, choice.cost, B, alpha)
        else:
            best = draft.speedup(target, choice.cost, B, alpha, k)
        if choice.auto and best < 1.0:
            draft = None  # speculation stopped paying: plain decoding from here on
            stats.choices[-1]["fell_back_after_rounds"] = stats.rounds
    usage.add_routes(target.routes, row_steps)
    usage.last_cache_bytes = cache.peak_bytes
    return out.result()
