"""Training, run by run: each run trains into `<runs_dir>/<name>` through `adalas.train.run`, resumed
from its latest checkpoint, and is done once `<out>/train/<name>.json` records it (its command, data
hash, steps, wall time, the sha256 of its weights); a changed plan is refused rather than mixed.
`Stages` sums wall time per stage over invocations.

The records and the rows are committed, the weights are not (`runs_dir` is ignored): a fresh checkout
has a run's record without its directory. Nothing that only reads rows needs it (a sweep config is
built from the record, `learned_config`); what must run the model again (rows not made yet, a
held-out score) retrains it first (`ensure_weights`, deterministic at one thread), and refuses
weights that differ from the recorded ones rather than mix two models' rows."""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_json
from ..report import read_json
from .plan import Plan, Run


def run(argv: list[str]) -> None:
    """`adalas train` with these arguments, in this process."""
    from ..train import run as train

    train(argv)


def log(text: str) -> None:
    print(f"[study] {text}", flush=True)


class Stages:
    """Wall seconds per stage, summed over every invocation that did work (`<out>/stages.json`)."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.totals: dict[str, float] = read_json(self.path) or {}

    def add(self, name: str, seconds: float) -> None:
        self.totals = read_json(self.path) or {}  # another invocation (other experiments) may have added
        self.totals[name] = round(self.totals.get(name, 0.0) + seconds, 1)
        atomic_write_json(self.path, self.totals)


def record_path(plan: Plan, name: str) -> Path:
    return plan.out / "train" / f"{name}.json"


def check_training_data(plan: Plan, runs: Sequence[Run]) -> None:
    """Every run still to train has its local training data (before anything is written)."""
    from ..train_args import parse_args

    for r in runs:
        if record_path(plan, r.name).is_file():
            continue
        cfg, _ = parse_args(r.argv(plan.overrides, plan.runs_dir))
        data = Path(cfg.data).expanduser()
        if data.suffix in (".json", ".jsonl") and not data.is_file():
            raise ValueError(f"run {r.name}: training data {cfg.data!r} not found (data/synth/README.md says how to "
                             f"make the self-written data)")


# TrainingArguments that say where and how often a run was written and logged, not how it was trained
WHERE_ONLY = {"output_dir", "logging_dir", "report_to", "run_name", "resume_from_checkpoint", "disable_tqdm",
              "save_steps", "save_strategy", "save_total_limit", "logging_steps", "logging_strategy"}


def same_training(command: str, argv: list[str]) -> bool:
    """Whether a recorded `adalas train` command trains exactly as `argv` does, up to where and how
    often it wrote and logged (so a run trained by its recipe outside the study, e.g. a shipped
    adapter's or a route-choice candidate's, is adopted rather than trained again). Both are parsed as training parses them, recipes included."""
    from dataclasses import asdict

    from ..train_args import parse_args

    words = shlex.split(command)
    if words[:2] != ["adalas", "train"]:
        return False
    try:
        (a, ta), (b, tb) = parse_args(words[2:]), parse_args(argv)
    except ValueError:
        return False
    strip = lambda t: {k: v for k, v in t.to_dict().items() if k not in WHERE_ONLY}  # noqa: E731
    return asdict(a) == asdict(b) and strip(ta) == strip(tb)


def adapter_sha256(run_dir: Path) -> str | None:
    """The sha256 of a LoRA run's `adapter/adapter_model.safetensors` (what a shipped alias records)."""
    from ..data import file_sha256

    path = run_dir / "adapter" / "adapter_model.safetensors"
    return file_sha256(path) if path.is_file() else None


def read_records(plan: Plan, runs: Sequence[Run]) -> dict[str, dict]:
    """The records of those runs trained so far (any invocation), by name."""
    return {r.name: rec for r in runs if (rec := read_json(record_path(plan, r.name))) is not None}


def train_runs(plan: Plan, stages: Stages, runs: Sequence[Run]) -> dict[str, dict]:
    """Train every run whose record is missing, in order; returns their records by name.

    A run directory whose `adalas_training.json` already records this command, or one that trained
    exactly alike (`same_training`) to the same steps on the same data (hash), finished: it is adopted,
    not trained again; its record keeps the wall time and the command that made it (`adopted_from`)."""
    from ..data import TRAINING_FILE, data_sha256
    from ..checkpoints import latest_checkpoint
    from ..hub import weights_sha256
    from ..train_args import parse_args

    records = {}
    for r in runs:
        argv = r.argv(plan.overrides, plan.runs_dir)
        command = "adalas train " + shlex.join(argv)
        path, run_dir = record_path(plan, r.name), plan.runs_dir / r.name
        rec = read_json(path)
        if rec is not None:
            if rec.get("command") != command:
                raise ValueError(f"run {r.name}: {path} records another command: the plan changed; use another "
                                 f"--out, or delete {path} and {run_dir} to retrain it")
            records[r.name] = rec
            continue
        cfg, targs = parse_args(argv)
        made = read_json(run_dir / TRAINING_FILE) or {}
        resumed, adopted = None, None
        if made.get("command") != command:
            if (made.get("command") and made.get("steps") == targs.max_steps and same_training(made["command"], argv)
                    and made.get("data_sha256") == data_sha256(cfg.data)):
                adopted = made["command"]
                log(f"train {r.name}: adopting {run_dir} (made by `{adopted}`, which trains alike)")
            else:
                resumed = latest_checkpoint(run_dir)
                log(f"train {r.name}" + (f" (resuming from {resumed.name})" if resumed else "") + f": {command}")
                t0 = time.perf_counter()
                run(argv)
                stages.add(f"train:{r.name}", time.perf_counter() - t0)
                made = read_json(run_dir / TRAINING_FILE) or {}
        rec = {"name": r.name, "command": command, "recipe": r.recipe, "overrides": r.overrides,
               "output_dir": str(run_dir), "data": cfg.data, "data_sha256": made.get("data_sha256") or data_sha256(cfg.data),
               "steps": made.get("steps"), "wall_s": made.get("wall_s"),
               "resumed_from": resumed.name if resumed else None, "adopted_from": adopted,
               "depth": read_json(run_dir / "adalas_depth.json"), "cost_alpha": cfg.cost_alpha,
               "controller_learning_rate": cfg.controller_learning_rate, "seed": targs.seed,
               "adapter_sha256": adapter_sha256(run_dir), "weights_sha256": weights_sha256(run_dir),
               "cpu_capability": cpu_capability()}
        atomic_write_json(path, rec)
        records[r.name] = rec
    return records


def cpu_capability() -> str:
    """The vector kernels torch runs here (AVX2, AVX512, ...): fp32 training gives other weights under
    another (measured: a tiny LoRA run, 6 steps), generation so far the same tokens. `ATEN_CPU_CAPABILITY=avx2`
    pins it on any x86 machine of this workplace."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def trained(run_dir: Path) -> bool:
    """Whether a run's directory holds its finished model (training writes TRAINING_FILE last)."""
    from ..data import TRAINING_FILE

    return (run_dir / TRAINING_FILE).is_file()


def ensure_weights(plan: Plan, stages: Stages, runs: Sequence[Run]) -> None:
    """Retrain each recorded run whose directory lacks its model (a fresh checkout), and check that the
    weights came out as recorded: the rows made from the first training and those the second will make
    must come from one model."""
    from ..hub import weights_sha256

    for r in runs:
        run_dir = plan.runs_dir / r.name
        rec = read_json(record_path(plan, r.name))
        if rec is None or trained(run_dir):
            continue  # not trained yet (train_runs does it), or there
        if rec.get("cpu_capability") and rec["cpu_capability"] != cpu_capability():
            raise ValueError(f"run {r.name}: trained with CPU kernels {rec['cpu_capability']}, here {cpu_capability()}: "
                             f"training again would give other weights; set ATEN_CPU_CAPABILITY="
                             f"{rec['cpu_capability'].lower()} (before adalas starts) to train as it did")
        log(f"train {r.name} again: its record is here, its weights are not (a fresh checkout)")
        t0 = time.perf_counter()
        run(r.argv(plan.overrides, plan.runs_dir))
        stages.add(f"retrain:{r.name}", time.perf_counter() - t0)
        got = weights_sha256(run_dir)
        if rec.get("weights_sha256") and got != rec["weights_sha256"]:
            raise ValueError(f"run {r.name}: trained again, its weights (sha256 {got[:12]}) differ from the recorded "
                             f"{rec['weights_sha256'][:12]}; rows of two models would mix (train at one thread, "
                             f"as the first run did)")


def learned_config(plan: Plan, record: dict):
    """The sweep config of a trained run, from its record alone (`sweep.build_configs` reads the
    directory: the same id, depth and weights)."""
    from ..config import DepthConfig
    from ..sweep import SweepConfig

    depth = DepthConfig.parse(record.get("depth"))  # what the directory's adalas_depth.json restores
    route = depth.static_route(plan.layers)
    return SweepConfig(f"learned:{record['name']}", "learned", sum(route) if route else None, depth,
                       checkpoint=str(plan.runs_dir / record["name"]), weights=record.get("weights_sha256"))
