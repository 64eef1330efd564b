"""The three real test sets and the new-token cap of each (results/tasks/PROTOCOL.md), as plain data.

Kept apart from `adalas.tasks` (which reads the files and logs looks) so that the lowest layers can use
the caps without loading anything: `synth_shapes` gives each input shape its real task's cap, so that
held-out rows compare a config with full depth exactly as the test sets do.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RealTask:
    name: str
    file: str  # inside the shared data directory
    max_new_tokens: int  # fixed once, the same for every config (PROTOCOL.md)
    shape: str  # the input shape of `adalas synth --shape` whose rows stand in for this task


REAL_TASKS: dict[str, RealTask] = {t.name: t for t in (
    RealTask("samsum", "samsum.test.jsonl", 48, "dialogue"),
    RealTask("cnn_dailymail", "cnn_dailymail.test.jsonl", 64, "article"),
    RealTask("user_oriented", "user_oriented.test.jsonl", 64, "input"),
)}
