"""Many depth configurations over the same sequences: the rows behind every curve and the oracle.

Notable:
- Configs (`build_configs`): the full model; early exit after b layers; uniform skipping to b layers
  (`oracle.uniform_skip_route`: the smaller of {skipped, kept} spread evenly, layer 0 always kept;
  30 layers to 27 skips 5, 15 and 25); random routes with exactly b layers, drawn once from the
  seed (`oracle.random_routes`) and run as fixed routes; explicit routes; learned checkpoints
  (model directories with their own saved depth); `full_sample#s` for s in 1..K-1 (`null_k` = K): the
  full model sampled at temperature 0.7, top-p 0.9 with seed s, the oracle's null control (a
  per-sequence best of K full-depth alternatives, see `oracle.null_control`).
- Every config runs over the same batch plan (see `evaluate`), the full model first; the configs of one
  model go batch by batch, so that a prompt they all run at full depth is prefilled once
  (`adalas.prompt_reuse`: most of a config's time on long prompts). Rows are keyed
  by (config_id, id): a killed sweep resumes where it stopped, and a grown sweep (more sequences,
  more budgets) only runs what is new.
- `sweep.jsonl` is derived from `per_sequence.jsonl` (one row per finished config, in config order),
  rewritten atomically whenever a config finishes; it holds no timings, so the same command twice
  gives the same bytes. Every row carries `rougeL_ci95` (bootstrap over sequences). Timings go to
  `sweep_meta.json`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import DepthConfig, route_from_str, route_to_str
from .data import file_sha256
from .evaluate import (REFERENCES, EvalItem, Progress, Sampling, missing_items, plan_batches, plan_fingerprint,
                       resume_plan, run_depth, shard, summarize)
from .hub import weights_sha256
from .io import (RowStore, atomic_write_json, atomic_write_text, check_output_dir, dumps_row, finish_shards,
                 read_jsonl)
from .oracle import random_routes, route_to_skip_layers, uniform_skip_route
from .prompt_reuse import PromptReuse
from .run_settings import check_settings, run_identity, versions

STRATEGIES = ("full", "early_exit", "uniform_skip", "random_route", "learned", "sequence", "route", "full_sample")
BUDGET_STRATEGIES = ("early_exit", "uniform_skip", "random_route")  # chosen with --strategies


@dataclass(frozen=True)
class SweepConfig:
    config_id: str
    strategy: str
    budget: int | None  # layers the route keeps (None: decided per token, e.g. learned)
    depth: DepthConfig  # for a checkpoint: its own saved depth
    checkpoint: str | None = None  # a model directory to load for this config
    sampling: Sampling | None = None  # full_sample: sampled, not greedy
    # adapted: sha256 of the alias's adapter weights; learned: of the directory's weight files
    # (`hub.weights_sha256`): a replaced adapter, or a checkpoint retrained in place, is another model
    weights: str | None = None

    def definition(self) -> dict:
        """What the config id stands for (a rerun must agree)."""
        out = {"strategy": self.strategy, "depth": self.depth.to_dict(), "checkpoint": self.checkpoint}
        if self.sampling is not None:
            out["sampling"] = dataclasses.asdict(self.sampling)
        if self.weights is not None:
            out["weights"] = self.weights
        return out


def parse_budgets(text: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """"20,24,27" or ranges "20-30" / "20-30:2" (inclusive), mixed; sorted, unique, each in 1..L.

    >>> parse_budgets("20-24:2,27,30", 30)
    [20, 22, 24, 27, 30]
    """
    if text is None:
        return default_budgets(num_layers)
    if not isinstance(text, str):
        values = [int(b) for b in text]
    else:
        values = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
            if not m:
                raise ValueError(f"budgets: cannot read {part!r}; use e.g. 20,24,27 or 20-30:2")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            step = int(m.group(3)) if m.group(3) else 1
            if step < 1 or hi < lo:
                raise ValueError(f"budgets: bad range {part!r}")
            values += list(range(lo, hi + 1, step))
    if not values:
        raise ValueError("budgets: empty")
    for b in values:
        if not 1 <= b <= num_layers:
            raise ValueError(f"budgets: {b} is out of range for a model with {num_layers} layers (1..{num_layers})")
    return sorted(set(values))


def default_budgets(num_layers: int) -> list[int]:
    """About 2/3, 4/5 and 9/10 of the layers (20, 24, 27 of 30)."""
    return sorted({max(1, min(num_layers - 1, round(num_layers * f))) for f in (2 / 3, 0.8, 0.9)})


def parse_strategies(text: str | Sequence[str] | None) -> list[str]:
    names = list(BUDGET_STRATEGIES) if text is None else (
        [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text))
    for s in names:
        if s not in BUDGET_STRATEGIES + ("full",):
            raise ValueError(f"strategies: unknown {s!r}; choose from {', '.join(BUDGET_STRATEGIES)} "
                             f"(learned: --checkpoints; explicit routes: --routes)")
    return [s for s in names if s != "full"]


def build_configs(num_layers: int, strategies: Sequence[str] = BUDGET_STRATEGIES, budgets: Sequence[int] = (),
                  routes_per_budget: int = 0, seed: int = 0, keep_first: bool = False,
                  routes: Sequence[str] = (), checkpoints: Sequence[str] = (), null_k: int = 0,
                  adapted: Sequence[str] = ()) -> list[SweepConfig]:
    """The full model, then each strategy at each budget (< L: at L every strategy is the full
    model), then explicit routes, checkpoints and the null control's K - 1 sampled full-depth runs.
    Config ids: `full`, `early_exit@24`, `uniform_skip@24`, `random_route@24#0`, `route#0`,
    `learned:<directory name>`, `full_sample#1` ... `full_sample#<K-1>`; then each shipped adapted
    alias in `adapted` on its own depth, `adapted:<alias>` (with `route:<alias>`, the same route on the
    base model off the shelf, before it, so the two compare on the same sequences; left out when an
    earlier alias's `route:` config runs that route already, as for two training seeds of one route)."""
    L = num_layers
    if routes_per_budget < 0:
        raise ValueError(f"routes_per_budget: must be >= 0, got {routes_per_budget}")
    if null_k < 0 or null_k == 1:
        raise ValueError(f"null_k: must be 0 (no null control) or >= 2 (the greedy full model and K - 1 samples), "
                         f"got {null_k}")
    configs = [SweepConfig("full", "full", L, DepthConfig())]
    for b in sorted(set(budgets), reverse=True):
        if b >= L:
            continue
        if "early_exit" in strategies:
            configs.append(SweepConfig(f"early_exit@{b}", "early_exit", b, DepthConfig(mode="early_exit", exit_after=b)))
        if "uniform_skip" in strategies:
            skip = route_to_skip_layers(uniform_skip_route(L, b))
            configs.append(SweepConfig(f"uniform_skip@{b}", "uniform_skip", b,
                                       DepthConfig(mode="static_skip", skip_layers=skip)))
        if "random_route" in strategies:
            if keep_first and b == 1:
                drawn = [[i == 0 for i in range(L)]]
            else:
                drawn = random_routes(L, b, routes_per_budget, seed, keep_first=keep_first)
            for k, r in enumerate(drawn):
                configs.append(SweepConfig(f"random_route@{b}#{k}", "random_route", b, DepthConfig(mode="route", route=r)))
    for k, text in enumerate(routes):
        try:
            r = route_from_str(text.strip())
        except ValueError as e:
            raise ValueError(f"routes: {e}") from None
        if len(r) != L:
            raise ValueError(f"routes: {text!r} has {len(r)} entries; the model has {L} layers")
        configs.append(SweepConfig(f"route#{k}", "route", sum(r), DepthConfig(mode="route", route=r)))
    names: dict[str, int] = {}
    for d in checkpoints:
        p = Path(d)
        if not p.is_dir():
            raise ValueError(f"checkpoints: {d!r} is not a directory")
        name = p.resolve().name
        names[name] = names.get(name, 0) + 1
        cid = f"learned:{name}" if names[name] == 1 else f"learned:{name}#{names[name] - 1}"
        depth = DepthConfig.from_dir(p) or DepthConfig()  # what the directory restores; full if none
        n = checkpoint_num_layers(p)
        if n is not None and n != L:
            raise ValueError(f"checkpoints: {d!r} has {n} layers, the model {L}; a sweep compares depths of one "
                             f"model: pass checkpoints fine-tuned from --model")
        route = depth.static_route(L)
        configs.append(SweepConfig(cid, "learned", sum(route) if route else None, depth, checkpoint=str(p),
                                   weights=weights_sha256(p)))
    for s in range(1, null_k):
        configs.append(SweepConfig(f"full_sample#{s}", "full_sample", L, DepthConfig(), sampling=Sampling(seed=s)))
    for alias in adapted:
        shelf = {tuple(c.depth.route) for c in configs if c.config_id.startswith("route:")}
        configs += [c for c in adapted_configs(alias, L)
                    if not (c.config_id.startswith("route:") and tuple(c.depth.route) in shelf)]
    return configs


def drop_routes_made(configs: Sequence[SweepConfig], out_dir: str | Path) -> list[SweepConfig]:
    """The configs less each new `route:` config (a route off the shelf that `--adapted` adds) whose route
    a finished `route:` config of out_dir already ran under another alias's id: another seed or version
    of an adapter on the same route adds its adapted rows to a sweep, not the same route's rows again
    (as `build_configs` does within one call)."""
    out_dir = Path(out_dir)
    recorded = (json.loads((out_dir / "settings.json").read_text()).get("configs", {})
                if (out_dir / "settings.json").is_file() else {})
    counts: dict[str, int] = {}  # rows per config (sweep.jsonl lists the last call's configs only)
    for r in read_jsonl(out_dir / "per_sequence.jsonl") if (out_dir / "per_sequence.jsonl").is_file() else []:
        counts[r["config_id"]] = counts.get(r["config_id"], 0) + 1
    finished = {c for c, n in counts.items() if n == counts.get("full")}
    made = {json.dumps(recorded[c]["depth"], sort_keys=True) for c in finished
            if c.startswith("route:") and c in recorded}
    return [c for c in configs if not (c.config_id.startswith("route:") and c.config_id not in recorded
                                       and json.dumps(c.depth.to_dict(), sort_keys=True) in made)]


def adapted_configs(spec: str, num_layers: int) -> list[SweepConfig]:
    """`ALIAS`: a shipped adapted model on its own depth, `adapted:ALIAS`, and (for a static route)
    that route off the shelf, `route:ALIAS`. `ALIAS@B`: the alias with uniform skipping to B layers;
    `ALIAS@OTHER`: the alias on another shipped alias's route (the layer-dropout model on each
    route-specific adapter's route), `adapted:ALIAS@...`. Each `adapted:` config is defined with the
    sha256 of the alias's adapter weights, so a sweep directory refuses to resume over rows of an
    adapter that has since been replaced (the alias alone names no particular weights)."""
    from .hub import adapter_aliases, adapter_dir

    alias, _, where = spec.partition("@")

    def directory_of(name: str) -> Path:
        found = adapter_dir(name)
        if found is None:
            raise ValueError(f"adapted: {name!r} is not a shipped adapted model; shipped: "
                             f"{', '.join(adapter_aliases()) or 'none yet'}")
        return found

    directory = directory_of(alias)
    weights = file_sha256(directory / "adapter_model.safetensors")
    if where:
        if where.isdigit():
            b = int(where)
            if not 1 <= b <= num_layers:
                raise ValueError(f"adapted: {spec!r}: {b} is out of range for a model with {num_layers} layers")
            route = uniform_skip_route(num_layers, b)
        else:
            route = (DepthConfig.from_dir(directory_of(where)) or DepthConfig()).static_route(num_layers)
            if route is None:
                raise ValueError(f"adapted: {spec!r}: {where!r} has no static route to borrow")
        depth = DepthConfig(mode="route", route=route)
        return [SweepConfig(f"adapted:{spec}", "adapted", sum(route), depth, checkpoint=alias, weights=weights)]
    depth = DepthConfig.from_dir(directory) or DepthConfig()
    route = depth.static_route(num_layers)
    out = []
    if route is not None and not all(route):
        out.append(SweepConfig(f"route:{alias}", "route", sum(route), DepthConfig(mode="route", route=route)))
    out.append(SweepConfig(f"adapted:{alias}", "adapted", sum(route) if route else None, depth, checkpoint=alias,
                           weights=weights))
    return out


def checkpoint_num_layers(directory: Path) -> int | None:
    """The layer count a model directory's config.json records (None when it has none)."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(str(directory)).num_hidden_layers)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def sweep_row(cfg: SweepConfig, metrics: dict, num_layers: int, model_id: Any, data_id: Any, reference: str,
              data_sha256: str | None = None) -> dict:
    route = cfg.depth.static_route(num_layers)
    row = {"config_id": cfg.config_id, "strategy": cfg.strategy, "budget": cfg.budget,
           "route": route_to_str(route) if route else None, "depth": cfg.depth.to_dict(),
           "model": model_id, "data": data_id, "num_layers": num_layers, "reference": reference, **metrics}
    if data_sha256 is not None:  # a local file's bytes: the row names exactly what it was scored on
        row["data_sha256"] = data_sha256
    if cfg.checkpoint is not None:
        row["checkpoint"] = cfg.checkpoint
    if cfg.strategy == "adapted":
        row["model"] = cfg.checkpoint  # the row names the adapted model it ran
    if cfg.sampling is not None:
        row["sampling"] = dataclasses.asdict(cfg.sampling)
    return row


def run_sweep(model, tokenizer, items: Sequence[EvalItem], configs: Sequence[SweepConfig],
              out_dir: str | Path, *, max_new_tokens: int = 32, batch_size: int = 8, reference: str = "data",
              rank: int = 0, world_size: int = 1, model_id: Any = None, data_id: Any = None,
              settings: dict | None = None, load_checkpoint: Callable[[str], Any] | None = None,
              progress: bool = False, teacher_forced: Sequence[str] = (),
              reuse_prompts: bool = True) -> list[dict] | None:
    """Run every config over `items` into out_dir (resumable, shardable).

    Returns the sweep.jsonl rows in the process that wrote the final sweep.jsonl (one rank: always;
    W ranks: the one that merged), else None. `load_checkpoint(dir)` gives the model of a learned
    config (default: `AdalasForCausalLM.from_pretrained` on the main model's device and dtype).
    `teacher_forced`: columns of `adalas.metrics` ("nll", "agreement") on every row; `flops_per_token`
    is always there. The configs of one model go batch by batch, and those whose prompt runs at full
    depth prefill it once (`adalas.prompt_reuse`; `reuse_prompts=False`: each config prefills its own,
    the same rows, for benchmarks and tests).
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference: must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not items:
        raise ValueError("items: the evaluation set is empty")
    if not configs or configs[0].strategy != "full":
        raise ValueError("configs: the first must be the full model (build_configs does this)")
    ids = [c.config_id for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"configs: duplicate config ids {sorted({i for i in ids if ids.count(i) > 1})}")
    out_dir = check_output_dir(out_dir)
    plan_batches(items, batch_size)  # validated before anything is written
    t_start = time.perf_counter()
    L = model.num_layers
    check_settings(out_dir, sweep_settings(model_id, data_id, max_new_tokens, reference, settings,
                                           batch_size=batch_size, model=model),
                   {c.config_id: c.definition() for c in configs})
    plan = resume_plan(out_dir, items, batch_size)  # a grown set keeps the batches its rows were made in
    mine = shard(plan, rank, world_size)
    store = RowStore(out_dir, "per_sequence.jsonl", ("config_id", "id"), rank, world_size)
    done = set(store.rows())
    todo = sum(missing_items(mine, store, {"config_id": c.config_id}, done) for c in configs)
    bar = Progress(todo, progress, "sweep")
    timing = {c.config_id: 0.0 for c in configs}
    base_depth = model.depth
    references: dict[str, str] | None = {} if reference == "full" else None
    groups = _model_groups(configs)
    try:
        with model.family.hold_fused():  # the base model's fused weight copies serve every config
            for group in groups:
                if not any(missing_items(mine, store, {"config_id": c.config_id}) for c in group):
                    m = None  # nothing to make: a checkpoint is not even loaded
                elif group[0].checkpoint is not None:
                    m = (load_checkpoint or _default_loader(model))(group[0].checkpoint)
                    if m.num_layers != L:
                        raise ValueError(f"checkpoint {group[0].checkpoint!r} has {m.num_layers} layers, the model {L}")
                else:
                    m = model
                # batch by batch, each prompt is prefilled once for the whole group (rows identical either way)
                reuse = PromptReuse() if reuse_prompts else None
                for batch in mine:
                    for cfg in group:
                        if m is not None and m.depth != cfg.depth:  # a shipped model on another depth (`ALIAS@...`)
                            m.set_depth(cfg.depth)
                        own = "self" if cfg.strategy == "full" and reference == "full" else references
                        timing[cfg.config_id] += 0.0 if m is None else run_depth(
                            m, tokenizer, [batch], store, max_new_tokens=max_new_tokens, references=own,
                            extra={"config_id": cfg.config_id}, progress=bar, desc=cfg.config_id,
                            sampling=cfg.sampling, teacher_forced=teacher_forced, prompt_reuse=reuse)
                        if cfg.strategy == "full" and reference == "full":  # its output is the reference
                            rows = store.rows()
                            references.update({it.id: rows[("full", it.id)]["prediction"] for it in batch.items})
                if world_size == 1:
                    _write_sweep(out_dir, store, items, configs, L, model_id, data_id, reference, complete_only=True,
                                 data_sha256=(settings or {}).get("data_sha256"))
    finally:
        bar.close()
        model.set_depth(base_depth)
    order = {(c.config_id, it.id): (gi, b.index, ci, k)  # as one rank makes them: see the loop above
             for gi, group in enumerate(groups) for ci, c in enumerate(group)
             for b in plan for k, it in enumerate(b.items)}
    result: list[dict] = []

    def merge() -> None:
        store.merge(order)
        result.extend(_write_sweep(out_dir, store, items, configs, L, model_id, data_id, reference,
                                   complete_only=False, data_sha256=(settings or {}).get("data_sha256")))

    fingerprint = plan_fingerprint("sweep", [[it.id for it in b.items] for b in plan], ids, world_size)
    merged = finish_shards(out_dir, rank, world_size, fingerprint, merge)
    _write_meta(out_dir, rank, world_size, configs, items, timing, time.perf_counter() - t_start,
                max_new_tokens, batch_size, model_id, data_id, reference)
    return result if merged else None


def sweep_settings(model_id: Any, data_id: Any, max_new_tokens: int, reference: str,
                   settings: dict | None = None, *, batch_size: int | None = None, model=None) -> dict:
    """What every row of a sweep directory shares (settings.json's `settings`; a rerun must agree):
    with `batch_size` the batch plan (a row's batch companions), with `model` what its weights are
    and the device and dtype it runs in (`run_settings.run_identity`)."""
    out = {"model": model_id, "data": data_id, "max_new_tokens": max_new_tokens, "reference": reference}
    if batch_size is not None:
        out["batch_size"] = batch_size
    if model is not None:
        out.update(run_identity(model, model_id))
    return {**out, **(settings or {})}


def forget_configs(out_dir: str | Path, patterns: Sequence[str], configs: Sequence[SweepConfig],
                   settings: dict | None = None) -> list[str]:
    """Drop the rows and the recorded definitions of the configs (of `configs`) whose ids match a
    shell pattern (`adapted:smollm2-135m-dropout*`), so that the next run makes them again: after an
    adapter is retrained, without giving up the directory's other configs. Returns the ids dropped.
    `settings` (`sweep_settings` of the run that follows): a directory made with other settings, or
    with other definitions of the configs kept, is refused before anything is dropped.
    One process only: the files are rewritten (atomically) before any row is made."""
    import fnmatch

    ids = [c.config_id for c in configs]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [i for i in ids if fnmatch.fnmatchcase(i, pattern)]
        if not hits:
            raise ValueError(f"redo: {pattern!r} matches none of this sweep's configs ({', '.join(ids)})")
        chosen += [i for i in hits if i not in chosen]
    if "full" in chosen:
        raise ValueError("redo: not 'full', which every other row is scored against; use another --out instead")
    out_dir = Path(out_dir)
    if (out_dir / "parts").is_dir() and any((out_dir / "parts").iterdir()):
        raise ValueError(f"redo: {out_dir} has unmerged rank files (parts/); finish that run first")
    if settings is not None and out_dir.is_dir():
        check_settings(out_dir, settings, {c.config_id: c.definition() for c in configs if c.config_id not in chosen},
                       record=False)
    for name in ("per_sequence.jsonl", "sweep.jsonl"):
        rows = read_jsonl(out_dir / name, repair=True)
        kept = [r for r in rows if r.get("config_id") not in chosen]
        if len(kept) != len(rows):
            atomic_write_text(out_dir / name, "".join(dumps_row(r) + "\n" for r in kept))
    settings = out_dir / "settings.json"
    if settings.is_file():
        doc = json.loads(settings.read_text())
        if any(i in doc.get("configs", {}) for i in chosen):
            doc["configs"] = {k: v for k, v in doc["configs"].items() if k not in chosen}
            atomic_write_json(settings, doc)
    return chosen


def add_configs(out_dir: str | Path, items: Sequence[EvalItem], configs: Sequence[SweepConfig],
                added: Sequence[tuple[SweepConfig, list[dict]]], *, num_layers: int, model_id: Any = None,
                data_id: Any = None, reference: str = "data") -> list[dict]:
    """Add configs whose per-sequence rows were made without generating (the cross-fitted router's,
    a lookup of other configs' rows) to a finished sweep of `configs`: their definitions go into
    settings.json, their rows are appended (keys already present are kept), and sweep.jsonl is
    rewritten over `configs` then these. Returns the sweep.jsonl rows."""
    out_dir = Path(out_dir)
    old = json.loads((out_dir / "settings.json").read_text())
    check_settings(out_dir, old["settings"], {c.config_id: c.definition() for c, _ in added})
    store = RowStore(out_dir, "per_sequence.jsonl", ("config_id", "id"))
    done = set(store.rows())
    for cfg, rows in added:
        if any(r["config_id"] != cfg.config_id for r in rows):
            raise ValueError(f"rows: config {cfg.config_id!r} was given rows of another config")
        store.append([r for r in rows if store.key(r) not in done])
    return _write_sweep(out_dir, store, items, [*configs, *(c for c, _ in added)], num_layers, model_id, data_id,
                        reference, complete_only=False, data_sha256=old["settings"].get("data_sha256"))


def _write_sweep(out_dir: Path, store: RowStore, items: Sequence[EvalItem], configs: Sequence[SweepConfig],
                 num_layers: int, model_id: Any, data_id: Any, reference: str, complete_only: bool,
                 data_sha256: str | None = None) -> list[dict]:
    """sweep.jsonl from the per-sequence rows: one row per config that has every sequence."""
    rows = store.rows()
    out = []
    for cfg in configs:
        picked = [rows.get((cfg.config_id, it.id)) for it in items]
        if any(r is None for r in picked):
            if complete_only:
                continue
            raise ValueError(f"config {cfg.config_id!r}: {sum(r is None for r in picked)} sequence(s) missing "
                             f"after the merge")
        metrics = summarize(picked, num_layers, cfg.depth.static_route(num_layers))
        out.append(sweep_row(cfg, metrics, num_layers, model_id, data_id, reference, data_sha256))
    atomic_write_text(out_dir / "sweep.jsonl", "".join(dumps_row(r) + "\n" for r in out))
    return out


def _model_groups(configs: Sequence[SweepConfig]) -> list[list[SweepConfig]]:
    """The configs by the model they run on (the sweep's model, or one checkpoint), in order of first
    appearance: each group loads its model once and goes batch by batch through its configs, so that
    `PromptReuse` prefills each prompt once for all of them (the full model stays first)."""
    groups: dict[str | None, list[SweepConfig]] = {}
    for cfg in configs:
        groups.setdefault(cfg.checkpoint, []).append(cfg)
    return list(groups.values())


def _default_loader(model) -> Callable[[str], Any]:
    def load(directory: str):
        from .model import AdalasForCausalLM
        return AdalasForCausalLM.from_pretrained(directory, dtype=model.dtype).to(model.device)
    return load


def _write_meta(out_dir: Path, rank: int, world_size: int, configs: Sequence[SweepConfig], items, timing: dict,
                wall_s: float, max_new_tokens: int, batch_size: int, model_id, data_id, reference: str) -> None:
    """sweep_meta.json (rank 0) or sweep_meta.rank<r>.json: settings, versions, this run's timings."""
    name = "sweep_meta.json" if rank == 0 else f"parts/sweep_meta.rank{rank}.json"
    atomic_write_json(out_dir / name, {
        "model": model_id, "data": data_id, "n_sequences": len(items), "n_configs": len(configs),
        "configs": [c.config_id for c in configs], "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        "reference": reference, "rank": rank, "world_size": world_size, "versions": versions(),
        "wall_s": round(wall_s, 2), "generate_s": {k: round(v, 2) for k, v in timing.items()}})
