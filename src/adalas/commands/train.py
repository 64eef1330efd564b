"""`adalas train`: fine-tune with a depth mode on the Hugging Face Trainer.

Every TrainingArguments flag, plus adalas' own (`--model`, `--data`, `--depth`, `--recipe`,
`--freeze_skipped`, `--cost_alpha`, `--lora_r`, ...); `adalas train --help` lists them all.
Runs under `torchrun --nproc_per_node N -m adalas train ...` and `accelerate launch` unchanged.
"""
from __future__ import annotations


def main(argv: list[str]) -> int:
    from ..train import run

    return run(argv, warmup=False)
