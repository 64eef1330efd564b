"""Evaluation: sweeps over the same sequences (`adalas.sweep.run_sweep`, rows appended and skipped when
present). `<out>/adapted` holds the base model at full depth and at the E1 routes and every E1/E2
checkpoint at its saved depth; E3's sweep of the dropout model is `e3.e3_configs`'. A stage whose rows
are all there loads no model (`sweep_complete`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .plan import Plan
from .runs import record_path


def rows_complete(sweep_dir: Path, n: int) -> set[str]:
    """The configs with all n rows in the sweep's per_sequence.jsonl."""
    from ..io import read_jsonl

    ids: dict[str, set] = {}
    if (sweep_dir / "per_sequence.jsonl").is_file():
        for r in read_jsonl(sweep_dir / "per_sequence.jsonl"):
            ids.setdefault(r["config_id"], set()).add(r["id"])
    return {c for c, seen in ids.items() if len(seen) == n}


def sweep_complete(sweep_dir: Path, config_ids: Sequence[str], n: int) -> bool:
    """Whether every config has its n rows in per_sequence.jsonl and its line in sweep.jsonl (then no
    model needs loading)."""
    from ..io import read_jsonl

    if not (sweep_dir / "sweep.jsonl").is_file():
        return False
    summarized = {r["config_id"] for r in read_jsonl(sweep_dir / "sweep.jsonl")}
    return set(config_ids) <= summarized & rows_complete(sweep_dir, n)


class Evaluator:
    """The evaluation set and the models, loaded once and only when a stage has rows to make."""

    def __init__(self, plan: Plan, device: str = "cpu", progress: bool = False):
        self.plan, self.device, self.progress = plan, device, progress
        self._tok, self._items, self._models = None, None, {}
        self.data_id = {"name": plan.eval["data"], "split": "test"}
        self.settings = {"prompt_format": plan.eval["prompt_format"], "max_prompt_tokens": None, "dtype": "float32"}

    @property
    def tokenizer(self):
        if self._tok is None:
            from ..hub import load_tokenizer
            self._tok = load_tokenizer(self.plan.model)
        return self._tok

    def model(self, path: str):
        if path not in self._models:
            from ..model import AdalasForCausalLM
            if Path(path).parent == self.plan.runs_dir and not Path(path).is_dir():
                raise ValueError(f"{path}: the run's model directory is gone but its rows are missing; delete "
                                 f"{record_path(self.plan, Path(path).name)} to retrain it")
            self._models = {path: AdalasForCausalLM.from_pretrained(path, device=self.device)}  # one at a time
        return self._models[path]

    @property
    def items(self):
        if self._items is None:
            from ..evaluate import load_items
            ev = self.plan.eval
            self._items = load_items(ev["data"], self.tokenizer, limit=ev["limit"], prompt_format=ev["prompt_format"],
                                     max_new_tokens=ev["max_new_tokens"])
        return self._items

    def sweep(self, model_path: str, configs, out: Path) -> list[dict]:
        from ..sweep import run_sweep

        ev = self.plan.eval
        return run_sweep(self.model(model_path), self.tokenizer, self.items, configs, out,
                         max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"], model_id=model_path,
                         data_id=self.data_id, settings=self.settings, progress=self.progress)


def adapted_configs(plan: Plan, records: dict[str, dict]) -> list:
    """The base model at full depth and at each E1 run's own depth (off the shelf), then every E1 and
    E2 checkpoint at its saved depth (config ids `base@<run>`, `learned:<run>`): those of `records`."""
    from ..config import DepthConfig
    from ..sweep import SweepConfig

    e1, e2 = plan.experiments["E1"], plan.experiments["E2"]
    e1_names = [n for p in e1["pairs"] for n in (p["skip"], p["exit"]) if n in records]
    names = e1_names + [n for n in [*e2["hidden_states"], *e2["fixed"]] if n in records]
    configs = [SweepConfig("full", "full", None, DepthConfig())]
    for n in e1_names:
        depth = DepthConfig.parse(json.dumps(records[n]["depth"]))
        strategy = "early_exit" if depth.mode == "early_exit" else "route"
        configs.append(SweepConfig(f"base@{n}", strategy, None, depth))
    for n in dict.fromkeys(names):
        depth = DepthConfig.parse(json.dumps(records[n]["depth"]))
        configs.append(SweepConfig(f"learned:{n}", "learned", None, depth, checkpoint=str(plan.runs_dir / n)))
    return configs


def with_budgets(configs: list, num_layers: int) -> list:
    """Fill each config's budget from its static route (None for per-token modes)."""
    from dataclasses import replace

    out = []
    for c in configs:
        route = c.depth.static_route(num_layers)
        out.append(replace(c, budget=sum(route) if route else (num_layers if c.strategy == "full" else None)))
    return out


def model_layers(path: str) -> int:
    from transformers import AutoConfig

    from ..hub import resolve

    return int(AutoConfig.from_pretrained(resolve(path)[0]).num_hidden_layers)
