"""The stages in order (`STAGES`: each stage's inputs and its work) and `run_adapt`, which runs or resumes
them: a stage done with the same inputs is skipped, one left running with the same inputs resumes its
own work, any other is cleared and run from the start.
"""
from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import asdict
from typing import Callable, Sequence

from .checks import check_settings
from .data_stage import data_inputs, stage_data
from .evaluate_stage import evaluate_inputs, stage_evaluate
from .export_stage import export_inputs, stage_export
from .report import write_report
from .route_stage import route_inputs, stage_route
from .run import Run, read_record
from .settings import RECORD_VERSION, STAGE_NAMES, AdaptSettings, say, sha256_json
from .train_stage import stage_train, train_inputs


STAGES: dict[str, tuple[Callable[[Run], dict], Callable[[Run, dict, bool], dict]]] = {
    "data": (data_inputs, stage_data),
    "route": (route_inputs, stage_route),
    "train": (train_inputs, stage_train),
    "evaluate": (evaluate_inputs, stage_evaluate),
    "export": (export_inputs, stage_export),
}
WORK_DIRS = {"data": ("data",), "route": ("route.json",), "train": ("train", "adapter"),
             "evaluate": ("evaluate", "evaluation.json", "report.md"), "export": ("export",)}


def _new_stage() -> dict:
    return {"status": "pending", "inputs": None, "inputs_sha256": None, "wall_s": None, "outputs": {}}


def run_adapt(s: AdaptSettings) -> dict:
    """Run (or resume) every stage into `s.out`; returns the record (`adapt.json`)."""
    checked = check_settings(s)  # nothing is written before this passes
    run = Run(s, checked)
    run.out.mkdir(parents=True, exist_ok=True)
    record = read_record(run.out) or {}
    stages = {name: {**_new_stage(), **record.get("stages", {}).get(name, {})} for name in STAGE_NAMES}
    run.record = {"version": RECORD_VERSION, "command": s.command, "model": s.model, "layers": s.layers,
                  "num_layers": run.num_layers,
                  "settings": {k: v for k, v in asdict(s).items() if k not in ("command", "progress")},
                  "stages": stages}
    for i, name in enumerate(STAGE_NAMES, start=1):
        make_inputs, stage = STAGES[name]
        inputs = make_inputs(run)  # includes the sha256 of what the stages before made
        sha = sha256_json(inputs)
        st = stages[name]
        if st["status"] == "done" and st["inputs_sha256"] == sha:
            say(f"[{i}/{len(STAGE_NAMES)}] {name}: done (inputs unchanged)")
            continue
        resume = st["status"] == "running" and st["inputs_sha256"] == sha
        if not resume:
            for p in WORK_DIRS[name]:
                target = run.path(p)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        spent = (st["wall_s"] or 0.0) if resume else 0.0
        stages[name] = {"status": "running", "inputs": inputs, "inputs_sha256": sha, "wall_s": spent, "outputs": {}}
        run.save()
        say(f"[{i}/{len(STAGE_NAMES)}] {name}: {'resuming' if resume else 'running'}")
        t0 = time.monotonic()
        try:
            outputs = stage(run, inputs, resume)
        finally:
            stages[name]["wall_s"] = round(spent + time.monotonic() - t0, 1)
            run.save()
        stages[name].update(status="done", outputs=outputs)
        run.save()
        if stages["evaluate"]["status"] == "done":
            write_report(run)
    if stages["evaluate"]["status"] == "done":
        write_report(run)
    return run.record


def command_line(argv: Sequence[str]) -> str:
    return "adalas adapt " + shlex.join(list(argv))
