"""What `adalas synth --shape dialogue|article|input` asks the model to write, and how its texts are
made into rows: pure text rules, no model.

A 135M model rarely ends a whole chat or article by itself: it repeats, or runs on. Dropping every
such text left 2 rows of 24 dialogues and none of 16 articles in a smoke check, so a text that runs
past its cap is cut at its last whole message (a dialogue) or its last whole sentence (the other
shapes) and kept if what remains passes the filters (a text that loops, a word 8-gram twice, is
dropped by `adalas.synth`). A dialogue keeps only its 'Name: message' lines (the model mixes in
stage directions and sign-offs). The texts are sampled with a mild repetition penalty (the answers are not: they are the
model's own greedy answers, the teacher's behaviour).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from importlib import resources
from typing import NamedTuple, Sequence

from .data import TASKS
from .real_tasks import REAL_TASKS

SHAPES = ("plain", "dialogue", "article", "input")
MAX_SOURCE_TOKENS = 320
SOURCE_WORDS = {"dialogue": (30, 250), "article": (80, 400), "input": (20, 200)}  # (min, max) words of the text
# sampling a whole text at 1.0 gives SmolLM2-135M mostly word salad; at 0.7 its chats and articles read as such
SHAPE_TEMPERATURE = 0.7
# at 1.0 most of its texts loop until the cap; 1.15 roughly doubled the share that ended (16 chats, one seed)
SHAPE_REPETITION_PENALTY = 1.15
# the answer cap of a shape is its real task's new-token cap (results/tasks/PROTOCOL.md): held-out rows
# then compare a config with full depth exactly as the test sets do
SHAPE_ANSWER_TOKENS = {t.shape: t.max_new_tokens for t in REAL_TASKS.values()}


class Request(NamedTuple):
    """One row to write: what the model is asked to write, and the instruction the row will carry."""
    prompt: str
    instruction: str


@functools.cache
def _shapes_file() -> dict:
    import yaml

    return yaml.safe_load((resources.files("adalas") / "synth_shapes.yaml").read_text(encoding="utf-8"))


def shape_definition(shape: str) -> dict:
    """What a shape draws from: names, topics, its prompt, kinds and instructions."""
    if shape not in SHAPES or shape == "plain":
        raise ValueError(f"shape: choose from {', '.join(SHAPES[1:])}, got {shape!r}")
    spec = _shapes_file()
    section = spec[shape]
    return {"names": list(spec["names"]), "topics": list(spec["topics"]), "prompt": section["prompt"],
            "kinds": list(section.get("kinds", [])),
            "instructions": list(section["operations"]) if "operations" in section else [
                TASKS[section["task"]].instruction]}


def shape_digest(shape: str) -> str:
    return hashlib.sha256(json.dumps(shape_definition(shape), sort_keys=True).encode()).hexdigest()


def _draw(options: Sequence[str], seed: int, round_index: int, row: int, what: str) -> str:
    """One of `options`, from (seed, round, row, what) alone (not Python's random: no version drift)."""
    digest = hashlib.sha256(f"adalas-synth-shape:{seed}:{round_index}:{row}:{what}".encode()).digest()
    return options[int.from_bytes(digest[:8], "little") % len(options)]


def shape_requests(shape: str, seed: int, batch_size: int, round_index: int) -> list[Request]:
    """The round's `batch_size` requests: names, topic, kind and instruction drawn per row."""
    spec = shape_definition(shape)
    requests = []
    for j in range(batch_size):
        key = (seed, round_index, j)
        name1 = _draw(spec["names"], *key, "name1")
        fields = {"name1": name1, "name2": _draw([n for n in spec["names"] if n != name1], *key, "name2"),
                  "topic": _draw(spec["topics"], *key, "topic")}
        if spec["kinds"]:
            fields["kind"] = _draw(spec["kinds"], *key, "kind")
        requests.append(Request(spec["prompt"].format(**fields), _draw(spec["instructions"], *key, "instruction")))
    return requests


# ---------------------------------------------------------------------------------------------
# From the model's text to a row's input

_SPEAKER = re.compile(r"[^\s:][^:\n]{0,39}: \S")
_NAME_THEN_SPACES = re.compile(r"^([^\s:][^:\n]{0,39}):\s+")  # 'Ben:  hello' -> 'Ben: hello'
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def well_formed(shape: str, text: str) -> bool:
    """A dialogue is lines of 'Name: message' (every non-empty line), from two speakers or more."""
    if shape != "dialogue":
        return True
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2 or not all(_SPEAKER.match(line) for line in lines):
        return False
    return len({line.split(":", 1)[0] for line in lines}) >= 2


def messages(text: str, finished: bool) -> str:
    """A dialogue's 'Name: message' lines, one a line (SAMSum has no blank lines); the last line of a
    text cut by its cap is dropped (it stops mid-message)."""
    lines = [_NAME_THEN_SPACES.sub(r"\1: ", line.strip(), count=1) for line in text.split("\n") if line.strip()]
    if not finished:
        lines = lines[:-1]
    return "\n".join(line for line in lines if _SPEAKER.match(line))


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end ('' if it has none): what a text cut by its cap keeps."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()].strip() if ends else ""


def source_text(shape: str, text: str, finished: bool) -> str:
    """The row's input from the model's text: a dialogue's messages, or (cut by the cap) whole sentences."""
    if shape == "dialogue":
        return messages(text, finished)
    return text.strip() if finished else whole_sentences(text)
