"""What `adalas adapt` was asked for (`AdaptSettings`, checked field by field as it is made), and the
constants every stage shares: the stage names, the record's file and version, the training recipe.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

STAGE_NAMES = ("data", "route", "train", "evaluate", "export")
RECORD_FILE = "adapt.json"
RECORD_VERSION = 1
FORMATS = ("hf", "gguf")
PROMPT_DEPTHS = ("route", "full")
# the repository's committed self-written rows (relative to its root), reused where their settings match
SELF_WRITTEN_ROWS = {"smollm2-135m": "data/synth/smollm2-135m.jsonl"}
# Rows shaped like real tasks (`adalas synth --shape`: a dialogue to summarise, an article, a text to work
# on), written in chunks of SHAPE_CHUNK rows with the settings of the embedded model's committed chunks
# (data/synth/README.md), so that it reuses them: chunk k (from 1) of the i-th shape here has seed 10 k + i,
# and each shape caps the text the model writes at its own number of tokens.
SHAPE_SOURCE_TOKENS = {"dialogue": 192, "article": 256, "input": 192}
SHAPE_CHUNK = 96
SHAPE_BATCH = 32
SELF_WRITTEN_SHAPES = {"smollm2-135m": "data/synth/shapes/{shape}.s{seed}.jsonl"}
# the training recipe (src/adalas/recipes/smollm2-135m-adapted-20.yaml, version 3): LoRA on every projection
# of a layer plus KL to the full-depth model on response tokens, from a cached top-k teacher; prompts up to
# 384 of 512 tokens, which an article needs
RECIPE = {"distill_alpha": 1.0, "distill_temperature": 1.0, "distill_top_k": 32, "lora_dropout": 0.0,
          "lr_scheduler_type": "cosine", "max_seq_length": 512, "prompt_fraction": 0.75, "save_steps": 40,
          "logging_steps": 10}


@dataclass(frozen=True)
class AdaptSettings:
    """What `adalas adapt` was asked for (flags of the same names, dashes for underscores)."""

    model: str
    layers: int
    out: str
    data: str | None = None
    tests: tuple[str, ...] = ()
    format: str = "hf"
    steps: int = 160
    seed: int = 0
    prompt_depth: str = "route"
    heldout: int = 96            # held-out rows (at most half of the data)
    route_rows: int = 32         # of them, the first K score the route search
    response_tokens: int = 32    # response tokens per row in the search
    max_candidates: int = 100    # routes the search scores at most
    synth_rows: int = 1600       # rows the model writes itself when no --data
    shapes: tuple[str, ...] = tuple(SHAPE_SOURCE_TOKENS)  # and rows of these shapes (none: plain rows only)
    shape_rows: int = 192        # per shape
    max_new_tokens: int = 64     # in evaluation
    eval_rows: int | None = None  # held-out rows evaluated (default: all the search did not use)
    looks: str | None = None     # a LOOKS.jsonl that logs each --test file's evaluation before it starts
    batch_size: int = 8
    learning_rate: float = 5e-4
    lora_r: int = 16
    gguf_dtype: str = "f16"
    speed_tokens: int = 32       # new tokens per timed generate() call
    speed_rounds: int = 3        # timed calls per model and batch size, alternating
    dtype: str = "float32"
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    command: str = field(default="", compare=False)  # how it was invoked (the record and the card say it)

    def __post_init__(self):
        counts = {"layers": 1, "steps": 1, "heldout": 1, "route_rows": 1, "response_tokens": 1, "max_candidates": 2,
                  "synth_rows": 2, "shape_rows": 2, "max_new_tokens": 1, "batch_size": 1, "lora_r": 1, "speed_tokens": 1,
                  "speed_rounds": 1, "eval_rows": 1}
        for name, least in counts.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= {least}, got {value}")
        unknown = [x for x in self.shapes if x not in SHAPE_SOURCE_TOKENS]
        if unknown or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"--shapes: a comma list of distinct shapes from {', '.join(SHAPE_SOURCE_TOKENS)}, or "
                             f"none; got {','.join(self.shapes)!r}")
        if self.format not in FORMATS:
            raise ValueError(f"--format: must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.prompt_depth not in PROMPT_DEPTHS:
            raise ValueError(f"--prompt-depth: must be one of {', '.join(PROMPT_DEPTHS)}, got {self.prompt_depth!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate: must be > 0, got {self.learning_rate}")
        from ..gguf_export import GGUF_DTYPES
        if self.gguf_dtype not in GGUF_DTYPES:
            raise ValueError(f"--gguf-dtype: must be one of {', '.join(GGUF_DTYPES)}, got {self.gguf_dtype!r}")

    @property
    def skip_prompt(self) -> bool:
        return self.prompt_depth == "route"


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def say(text: str) -> None:
    print(f"adalas adapt: {text}", file=sys.stderr, flush=True)
