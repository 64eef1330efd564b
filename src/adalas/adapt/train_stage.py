"""Stage 3, `train`: `adalas train` on the route (LoRA on every weight matrix of a layer plus
self-distillation, the recipe in `settings.RECIPE`); the adapter goes to DIR/adapter with its provenance.
"""
from __future__ import annotations

import json
import shutil
import time
from typing import Sequence

import torch

from ..io import atomic_write_json, file_sha256
from .run import Run
from .settings import RECIPE


def lora_targets(model) -> list[str]:
    """The names of every weight matrix in a layer (nn.Linear, or GPT-2's Conv1D): LoRA on all of them."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    layer = model.family.layers()[0]
    return sorted({name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def train_inputs(run: Run) -> dict:
    s = run.s
    return {**run.identity(), "train_sha256": run.outputs("data")["train_sha256"], "skip": run.outputs("route")["skip"],
            "skip_prompt": s.skip_prompt, "steps": s.steps, "seed": s.seed, "batch_size": s.batch_size,
            "learning_rate": s.learning_rate, "lora_r": s.lora_r, "recipe": RECIPE}


def train_argv(run: Run, inputs: dict, targets: Sequence[str], resume: bool) -> list[str]:
    """`adalas train` flags for the route: LoRA on every projection + self-distillation (the recipe)."""
    s = run.s
    context = run.model().family.max_positions
    r = RECIPE
    argv = ["--model", s.model, "--data", str(run.path(run.outputs("data")["train"])),
            "--output_dir", str(run.path("train")), "--depth", run.depth(inputs["skip"]).to_json(),
            "--prompt_format", "auto",
            "--max_seq_length", str(r["max_seq_length"] if context is None else min(r["max_seq_length"], context)),
            "--prompt_fraction", str(r["prompt_fraction"]), "--dtype", s.dtype,
            "--distill", "true", "--distill_alpha", str(r["distill_alpha"]),
            "--distill_temperature", str(r["distill_temperature"]), "--distill_top_k", str(r["distill_top_k"]),
            "--lora_r", str(s.lora_r), "--lora_alpha", str(2 * s.lora_r), "--lora_dropout", str(r["lora_dropout"]),
            "--lora_target_modules", *targets,
            "--max_steps", str(s.steps), "--learning_rate", str(s.learning_rate),
            "--lr_scheduler_type", r["lr_scheduler_type"], "--warmup_steps", str(min(10, s.steps // 10)),
            "--per_device_train_batch_size", str(s.batch_size), "--logging_steps", str(r["logging_steps"]),
            "--save_strategy", "steps", "--save_steps", str(r["save_steps"]), "--save_total_limit", "1",
            "--report_to", "none", "--seed", str(s.seed), "--dataloader_pin_memory", "false",
            "--disable_tqdm", "false" if s.progress else "true"]
    if s.device.split(":")[0] == "cpu":
        argv += ["--use_cpu", "true"]
    if s.allow_pickle:
        argv += ["--allow_pickle", "true"]
    if s.trust_remote_code:
        argv += ["--trust_remote_code", "true"]
    if resume:
        argv += ["--resume_from_checkpoint", "true"]
    return argv


def stage_train(run: Run, inputs: dict, resume: bool) -> dict:
    """`adalas train` on the route; the adapter goes to DIR/adapter (the shipped-adapter layout) with
    provenance naming this command; the run's checkpoints and merged weights are then removed."""
    from ..checkpoints import replace_dir
    from ..train import run as train_run

    t0 = time.monotonic()
    targets = lora_targets(run.model())
    argv = train_argv(run, inputs, targets, resume)
    with torch.enable_grad():  # (a caller inside torch.no_grad() must not turn training off)
        train_run(argv)
    work = run.path("train")
    trained = json.loads((work / "adapter" / "provenance.json").read_text(encoding="utf-8"))
    tmp = run.path(".adapter.new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(work / "adapter", tmp)
    provenance = {"base_model": run.s.model, "command": run.s.command or "adalas adapt",
                  "recipe": "adalas adapt (recipe smollm2-135m-adapted-20's defaults)", "data": "data/train.jsonl",
                  "data_sha256": inputs["train_sha256"], "steps": trained["steps"],
                  "wall_s": round((run.record["stages"]["train"]["wall_s"] or 0.0) + time.monotonic() - t0, 1),
                  "train_command": trained["command"]}  # wall_s: this stage's attempts with these inputs
    atomic_write_json(tmp / "provenance.json", provenance)
    replace_dir(tmp, run.path("adapter"))
    for p in work.iterdir():  # the adapter is the output; the merged copy and the checkpoints are big
        if p.name.startswith("checkpoint-") or p.name == "adapter":
            shutil.rmtree(p)
        elif p.suffix == ".safetensors":
            p.unlink()
    return {"adapter": "adapter", "adapter_sha256": file_sha256(run.path("adapter/adapter_model.safetensors")),
            "steps": trained["steps"], "lora_targets": targets, "train_command": trained["command"]}
