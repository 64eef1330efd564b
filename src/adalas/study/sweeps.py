"""Evaluation: sweeps over the built-in set, the three real test sets and the held-out rows.

Notable:
- One store of rows per (model sha256, evaluation set, cap, batch, dtype): `<store>/<sha12>/<set>-cap<c>
  -b<b>-float32`, a sweep directory (`adalas.sweep.run_sweep`: rows appended, a resumed run skips
  what is there). Every experiment that runs a config of that model on that set adds to it.
- A store lives in an ignored directory, so a fresh checkout starts it from its committed copy
  (`tasks.restore`); a real-task store that has none starts from the real-task rows (`shared_rows`,
  the committed rows of `adalas tasks run`) of the configs it shares with them when their settings
  are the same (model, weights, data, cap, batch, dtype, prompt format): those rows are not made again.
- Before a sweep of a real test set starts, its configs with missing rows are logged in `LOOKS.jsonl`
  (`tasks.log_looks`: a config already logged there is the same look and adds no line).
- A copy of each store without the data's text goes to `<out>/rows/...` (`tasks.publish`); the
  analysis reads those copies only.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .plan import Plan

DTYPE = "float32"  # reported evaluation stays fp32


@dataclass(frozen=True)
class EvalSet:
    name: str  # "builtin" (the plan's `eval` set), a real task's name, or "heldout"
    data: str  # what the loader reads
    max_new_tokens: int
    batch_size: int
    test: bool  # a real test set: looks logged, chosen candidates only


def eval_sets(plan: Plan) -> list[EvalSet]:
    """The plan's evaluation set (secondary), then the three real tasks (the verdicts' rows)."""
    from ..tasks import REAL_TASKS

    ev, tasks = plan.eval, plan.tasks
    out = [EvalSet("builtin", ev["data"], ev["max_new_tokens"], ev["batch_size"], False)]
    for name, t in REAL_TASKS.items():
        cap = tasks.caps[name] if tasks.caps else t.max_new_tokens
        out.append(EvalSet(name, str(tasks.data_dir / t.file), cap, tasks.batch_size, True))
    return out


def heldout_set(plan: Plan) -> EvalSet:
    return EvalSet("heldout", str(plan.heldout), plan.eval["max_new_tokens"], plan.eval["batch_size"], False)


def store_key(model_sha: str, es: EvalSet) -> str:
    return f"{model_sha[:12]}/{es.name}-cap{es.max_new_tokens}-b{es.batch_size}-{DTYPE}"


def rows_complete(sweep_dir: Path, n: int) -> set[str]:
    """The configs with all n rows in the sweep's per_sequence.jsonl."""
    from ..io import read_jsonl

    ids: dict[str, set] = {}
    if (sweep_dir / "per_sequence.jsonl").is_file():
        for r in read_jsonl(sweep_dir / "per_sequence.jsonl"):
            ids.setdefault(r["config_id"], set()).add(r["id"])
    return {c for c, seen in ids.items() if len(seen) == n}


def seed_store(source: Path, store: Path, settings: dict, configs: Sequence) -> list[str]:
    """Start an empty store from `source`'s rows of the configs defined alike there, when the two were
    made with the same settings (then the rows are the same rows: same batches, same weights).
    Returns the config ids copied."""
    from ..io import atomic_write_json, atomic_write_text, dumps_row, read_jsonl

    if (store / "settings.json").is_file() or not (source / "settings.json").is_file():
        return []
    recorded = json.loads((source / "settings.json").read_text())
    if recorded.get("settings") != settings:
        return []
    shared = {c.config_id: c.definition() for c in configs
              if recorded.get("configs", {}).get(c.config_id) == json.loads(json.dumps(c.definition()))}
    if not shared or not (source / "batches.json").is_file():
        return []
    store.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "batches.json", store / "batches.json")
    rows = [r for r in read_jsonl(source / "per_sequence.jsonl") if r["config_id"] in shared]
    atomic_write_text(store / "per_sequence.jsonl", "".join(dumps_row(r) + "\n" for r in rows))
    atomic_write_json(store / "settings.json", {"settings": settings,
                                                "configs": {k: recorded["configs"][k] for k in shared}})
    return sorted(shared)


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """One process at a time in a store (two lanes of the study may sweep the same model and set)."""
    import fcntl

    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.parent / f".{store.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Evaluator:
    """The evaluation sets and the models, loaded once and only when a sweep has rows to make."""

    def __init__(self, plan: Plan, device: str = "cpu", progress: bool = False,
                 retrain: Callable[[list[str]], None] | None = None):
        """`retrain(names)`: train those runs of the plan again whose weights are missing
        (`runs.ensure_weights`), called before their model runs (`ensure`)."""
        self.plan, self.device, self.progress, self.retrain = plan, device, progress, retrain
        self._tok, self._items, self._models = None, {}, {}

    def sha(self, model_path: str) -> str | None:
        """The sha256 of a model's weights (`hub.model_sha256`); for a run of the plan whose directory a
        fresh checkout lacks, its record's."""
        from ..hub import model_sha256
        from ..report import read_json
        from .runs import record_path, trained

        p = Path(model_path)
        if p.parent == self.plan.runs_dir and not trained(p):
            return (read_json(record_path(self.plan, p.name)) or {}).get("weights_sha256")
        return model_sha256(model_path)

    def ensure(self, paths: Sequence[str]) -> None:
        """Before these models run: the runs of the plan among them that a fresh checkout lacks are
        trained again (`retrain` skips those that are there)."""
        names = [Path(x).name for x in paths if Path(x).parent == self.plan.runs_dir]
        if names and self.retrain is not None:
            self.retrain(names)

    @property
    def tokenizer(self):
        if self._tok is None:
            from ..hub import load_tokenizer
            self._tok = load_tokenizer(self.plan.model)
        return self._tok

    def model(self, path: str):
        if path not in self._models:
            from ..model import AdalasForCausalLM
            self._models = {path: AdalasForCausalLM.from_pretrained(path, device=self.device)}  # one at a time
        return self._models[path]

    def items(self, es: EvalSet):
        if es.name not in self._items:
            from ..evaluate import load_items
            self._items[es.name] = load_items(es.data, self.tokenizer, prompt_format=self.plan.eval["prompt_format"],
                                              max_new_tokens=es.max_new_tokens)
        return self._items[es.name]

    def published(self, model_path: str, es: EvalSet) -> Path:
        return self.plan.out / "rows" / store_key(self.sha(model_path), es)

    def sweep(self, model_path: str, configs: Sequence, es: EvalSet, why: str) -> bool:
        """Run `configs` (the first: the model at full depth) of the model at `model_path` over `es` into
        its store, the look logged first for a test set, and publish the store without the data's text
        (`published`); returns whether any row was made."""
        sha = self.sha(model_path)
        store = self.plan.store / store_key(sha, es)
        with store_lock(store):  # another invocation (the other lane) may add to the same store
            return self._sweep(model_path, sha, store, configs, es, why)

    def _sweep(self, model_path: str, sha: str, store: Path, configs: Sequence, es: EvalSet, why: str) -> bool:
        from ..data import data_sha256
        from ..sweep import run_sweep, sweep_settings
        from ..tasks import git_commit, log_looks, look_identities, publish, restore

        out = self.plan.out / "rows" / store_key(sha, es)
        restore(out, store)  # a fresh checkout: the rows made before are committed, not in the store
        items = self.items(es)
        todo = [c for c in configs if c.config_id not in rows_complete(store, len(items))]
        if todo:
            self.ensure([model_path])
            model = self.model(model_path)
            data_id = {"name": es.data, "split": "test"}
            settings = {"prompt_format": self.plan.eval["prompt_format"], "max_prompt_tokens": None, "dtype": DTYPE,
                        **({"data_sha256": d} if (d := data_sha256(es.data)) else {})}
            full = sweep_settings(model_path, data_id, es.max_new_tokens, "data", settings,
                                  batch_size=es.batch_size, model=model)
            if es.test and self.plan.shared_rows is not None:
                seed_store(self.plan.shared_rows / es.name, store, full, configs)
                todo = [c for c in configs if c.config_id not in rows_complete(store, len(items))]
            self.ensure([c.checkpoint for c in todo if c.checkpoint])
            if es.test and todo:
                log_looks(self.plan.looks, es.name, settings.get("data_sha256") or "",
                          look_identities(todo, self.plan.layers, sha), why, git_commit(), changed=self.changed(es, todo))
            run_sweep(model, self.tokenizer, items, configs, store, max_new_tokens=es.max_new_tokens,
                      batch_size=es.batch_size, model_id=model_path, data_id=data_id, settings=settings,
                      progress=self.progress)
        if todo or not (out / "per_sequence.jsonl").is_file():
            publish(store, out)
        return bool(todo)

    def changed(self, es: EvalSet, configs: Sequence) -> list[str]:
        """The config ids the real-task runs (`shared_rows`) made with another definition: new candidates
        under old names (a shipped route replaced since), each a new look."""
        from ..run_settings import changed_definitions

        if self.plan.shared_rows is None:
            return []
        return changed_definitions(self.plan.shared_rows / es.name, {c.config_id: c.definition() for c in configs})

    def timed(self, stages, stage: str, model_path: str, configs: Sequence, es: EvalSet, why: str) -> None:
        """`sweep`, its wall time added to `stages` when it made rows."""
        import time

        t0 = time.perf_counter()
        if self.sweep(model_path, configs, es, why):
            stages.add(stage, time.perf_counter() - t0)
