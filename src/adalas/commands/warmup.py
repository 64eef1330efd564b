"""`adalas warmup`: train only the skip controllers of a learned depth; the backbone (and the head,
unless `--train_head`) stays frozen. Same flags and recipes as `adalas train`."""
from __future__ import annotations


def main(argv: list[str]) -> int:
    from ..train import run

    return run(argv, warmup=True)
