"""Targets from a sweep: the per-sequence score table of its fixed routes, labels, and the split.

Pure numpy. `load_sweep` reads `sweep.jsonl` + `per_sequence.jsonl` (the `adalas sweep` format);
`route_labels` gives each sequence the cheapest route within a tolerance of its best (or of full
depth); `split_ids` splits by sequence, deterministically by seed.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import route_from_str
from ..io import read_jsonl, require_field, require_number
from ..oracle import early_exit_route, uniform_skip_route

ROUTE_STRATEGIES = ("full", "uniform_skip", "random_route", "early_exit")  # fixed routes: the candidates
TARGETS = ("score", "agreement")  # what the controller learns: ROUGE-L vs the reference, or vs full depth's output


@dataclass
class SweepTable:
    """Per-sequence scores of the fixed-route configs of a sweep, over the sequences scored under all."""

    ids: list[str]  # (N,) sequence ids
    config_ids: list[Any]  # (K,)
    strategies: list[str]  # (K,)
    routes: list[list[bool]]  # (K, L)
    scores: np.ndarray  # (N, K) rougeL
    layers: np.ndarray  # (N, K) layers used
    prompts: dict[str, str]  # id -> prompt text
    num_layers: int
    model: Any = None
    data: Any = None
    predictions: list[list[str]] | None = None  # (N, K) generated texts, when the sweep has them
    weights: np.ndarray | None = None  # (N,) decode steps at full depth (the unit of avg_layers), when known
    _agreement: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def full_index(self) -> int | None:
        return next((k for k, s in enumerate(self.strategies) if s == "full"), None)

    @property
    def costs(self) -> np.ndarray:
        """(K,) layers of each route."""
        return np.array([sum(r) for r in self.routes], dtype=np.float64)

    def agreement(self) -> np.ndarray:
        """(N, K) ROUGE-L F1 of each route's output against the full-depth output of the same sequence.

        A less noisy training target than the score against the reference: a route that reproduces
        the full model's output scores what the full model scores.
        """
        if self._agreement is None:
            if self.predictions is None:
                raise ValueError("target: 'agreement' needs the sweep's `prediction` column")
            from rouge_score import rouge_scorer

            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
            f = self.full_index
            self._agreement = np.array([[1.0 if k == f else scorer.score(row[f], p)["rougeL"].fmeasure
                                         for k, p in enumerate(row)] for row in self.predictions])
        return self._agreement

    def target(self, name: str) -> np.ndarray:
        """(N, K) what a controller learns to predict: `score` (ROUGE-L against the reference) or `agreement`."""
        if name not in TARGETS:
            raise ValueError(f"target: must be one of {', '.join(TARGETS)}, got {name!r}")
        return self.scores if name == "score" else self.agreement()

    def avg_depth(self, rows: np.ndarray, cols: np.ndarray | int) -> float:
        """Average layers of column `cols` (one per row, or one for all) over `rows`, in the unit of
        `avg_layers`: each sequence weighs its decode steps at full depth (equal weights if unknown)."""
        x = np.broadcast_to(self.layers[rows, cols], (len(rows),))
        w = None if self.weights is None else self.weights[rows]
        return float(np.average(x, weights=w)) if w is not None and w.sum() > 0 else float(x.mean())

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        pos = {sid: i for i, sid in enumerate(self.ids)}
        missing = [sid for sid in ids if sid not in pos]
        if missing:
            raise ValueError(f"sequence id(s) not in the sweep (or not scored under every route): {missing[:5]}")
        return np.array([pos[sid] for sid in ids], dtype=np.int64)

    def columns(self, config_ids: Sequence[Any]) -> np.ndarray:
        pos = {cid: k for k, cid in enumerate(self.config_ids)}
        missing = [cid for cid in config_ids if cid not in pos]
        if missing:
            raise ValueError(f"config(s) {missing} of the router are not in the sweep")
        return np.array([pos[cid] for cid in config_ids], dtype=np.int64)


def _config_route(row: dict, where: str) -> list[bool] | None:
    """The fixed route of a sweep config: its `route` string, else derived from strategy and budget."""
    if row.get("route"):
        route = row["route"]
        return route_from_str(route) if isinstance(route, str) else [bool(r) for r in route]
    L = row.get("num_layers")
    if row["strategy"] == "full" and L:
        return [True] * int(L)
    if row.get("budget") is not None and L:
        if row["strategy"] == "uniform_skip":
            return uniform_skip_route(int(L), int(row["budget"]))
        if row["strategy"] == "early_exit":
            return early_exit_route(int(L), int(row["budget"]))
    raise ValueError(f"{where}: config {row['config_id']!r} has no `route` (and none follows from strategy/budget)")


def load_sweep(sweep_dir: str | os.PathLike, strategies: Sequence[str] | None = None) -> SweepTable:
    """The score table of a sweep directory (`sweep.jsonl` + `per_sequence.jsonl`).

    Candidates are the configs with a fixed route (strategies `full`, `uniform_skip`, `random_route`,
    `early_exit`; `strategies` narrows them; `full` is always kept). Sequences enter only if
    scored under every candidate.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep: directory {sweep_dir} does not exist")
    wanted = set(ROUTE_STRATEGIES if strategies is None else strategies) | {"full"}
    unknown = wanted - set(ROUTE_STRATEGIES)
    if unknown:
        raise ValueError(f"strategies: {sorted(unknown)} are not fixed-route strategies "
                         f"({', '.join(ROUTE_STRATEGIES)})")
    configs: dict[Any, dict] = {}
    num_layers = None
    for lineno, row in read_jsonl(sweep_dir / "sweep.jsonl", strict=True, numbered=True):
        where = f"{sweep_dir / 'sweep.jsonl'}:{lineno}"
        require_field(row, "config_id", where)
        if require_field(row, "strategy", where) not in wanted:
            continue
        route = _config_route(row, where)
        num_layers = num_layers or len(route)
        if len(route) != num_layers:
            raise ValueError(f"{where}: route has {len(route)} layers, other configs {num_layers}")
        configs[row["config_id"]] = dict(row, _route=route)
    if not configs:
        raise ValueError(f"{sweep_dir / 'sweep.jsonl'}: no config with a fixed route")
    score: dict[tuple, float] = {}
    predictions: dict[tuple, str] = {}
    cost: dict[tuple, float] = {}
    steps: dict[str, float] = {}  # decode steps at full depth
    prompts: dict[str, str] = {}
    order: dict[str, None] = {}
    model = None
    for lineno, row in read_jsonl(sweep_dir / "per_sequence.jsonl", strict=True, numbered=True):
        where = f"{sweep_dir / 'per_sequence.jsonl'}:{lineno}"
        cid, sid = require_field(row, "config_id", where), str(require_field(row, "id", where))
        if cid not in configs:
            continue
        score[cid, sid] = require_number(row, "rougeL", where)
        cost[cid, sid] = (require_number(row, "layers_used", where) if row.get("layers_used") is not None
                          else float(sum(configs[cid]["_route"])))
        if row.get("prompt") is not None:
            prompts.setdefault(sid, row["prompt"])
        if row.get("prediction") is not None:
            predictions[cid, sid] = row["prediction"]
        if configs[cid]["strategy"] == "full" and row.get("output_tokens") is not None:
            steps[sid] = max(require_number(row, "output_tokens", where) - 1, 0.0)
        model = model if model is not None else row.get("model")
        order.setdefault(sid, None)
    kept = [cid for cid in configs if any((cid, sid) in score for sid in order)]
    if not any(configs[c]["strategy"] == "full" for c in kept):
        raise ValueError(f"{sweep_dir}: no per-sequence rows for a full-depth config (needed as the reference)")
    ids = [sid for sid in order if all((cid, sid) in score for cid in kept)]
    if not ids:
        raise ValueError(f"{sweep_dir}: no sequence is scored under every fixed-route config")
    return SweepTable(
        ids=ids, config_ids=kept, strategies=[configs[c]["strategy"] for c in kept],
        routes=[configs[c]["_route"] for c in kept],
        scores=np.array([[score[c, s] for c in kept] for s in ids]),
        layers=np.array([[cost[c, s] for c in kept] for s in ids]),
        prompts=prompts, num_layers=num_layers, model=model,
        data=next((c.get("data") for c in configs.values() if c.get("data") is not None), None),
        predictions=([[predictions[c, s] for c in kept] for s in ids]
                     if all((c, s) in predictions for c in kept for s in ids) else None),
        weights=np.array([steps[s] for s in ids]) if all(s in steps for s in ids) else None)


def route_labels(scores: Any, costs: Any, tolerance: float = 0.0, reference: str = "best",
                 full_index: int | None = None) -> np.ndarray:
    """(N,) for each sequence, the cheapest route whose score is >= ref - tolerance.

    ref is the sequence's best score over all routes (`reference="best"`) or its full-depth score
    (`"full"`, column `full_index`). Ties in cost go to the higher score, then the lower index.

    >>> route_labels([[0.5, 0.48, 0.2]], [30, 24, 20], tolerance=0.05).tolist()
    [1]
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.broadcast_to(np.asarray(costs, dtype=np.float64), s.shape)
    if reference == "best":
        ref = s.max(axis=1)
    elif reference == "full":
        if full_index is None:
            raise ValueError("reference: 'full' needs the full-depth column (full_index)")
        ref = s[:, full_index]
    else:
        raise ValueError(f"reference: must be 'best' or 'full', got {reference!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance: must be >= 0, got {tolerance}")
    ok = s >= ref[:, None] - tolerance - 1e-12
    # lexicographic: cost ascending, score descending, index ascending
    key = np.where(ok, c, np.inf)
    labels = np.empty(len(s), dtype=np.int64)
    for i in range(len(s)):
        cand = np.flatnonzero(key[i] == key[i].min())
        labels[i] = cand[np.argmax(s[i, cand])]
    return labels


def split_ids(ids: Sequence[str], seed: int = 0, val_fraction: float = 0.2,
              test_fraction: float = 0.3) -> dict[str, list[str]]:
    """Deterministic split by sequence: ids ordered by a hash of (seed, id), then cut by fraction.

    The order does not depend on which other ids are present, so a sequence keeps its side when a
    sweep grows. Each part keeps the input order.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name}: must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must leave training sequences")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ids: duplicates")
    ranked = sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n_test = int(round(len(ids) * test_fraction))
    n_val = int(round(len(ids) * val_fraction))
    test, val = set(ranked[:n_test]), set(ranked[n_test:n_test + n_val])
    return {"train": [s for s in ids if s not in test and s not in val],
            "val": [s for s in ids if s in val], "test": [s for s in ids if s in test]}
