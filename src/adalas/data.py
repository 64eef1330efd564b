"""Examples, prompt formats, and tokenization with label masks.

Notable:
- Every source (hub dataset, local JSON/JSONL file, the packaged `builtin` set: read and split by
  `adalas.data_sources`) is normalized into `Example(id, instruction, context, response, task)`
  through one column map per task, which the user can override (`columns={"instruction": "question"}`).
- A prompt is a list of segments: template text (kept whole) and content (instruction, context;
  truncatable). The prompt budget is floor(max_seq_length * prompt_fraction) tokens; content is cut
  to fit, so the response marker ("### Response:\n", or the chat generation prompt) always survives.
  The response gets the rest of the sequence and always ends with EOS.
- The prompt is tokenized as one string (the tokens a pretrained model expects) and the response
  separately, so the label mask is exact and training and generation see the same prompt tokens.
- Tokenized datasets are cached as Arrow files under `paths.cache_dir()/datasets/<sha256 key>`,
  written to a temporary directory and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, NamedTuple, Sequence

import datasets
import pyarrow as pa
import torch

from . import paths
from .data_sources import SPLIT_SEED, DataError, SourceTable, builtin_path, open_table, source_identity
from .io import file_sha256

logger = logging.getLogger(__name__)

PromptFormat = Literal["alpaca", "native", "chat", "auto"]
PROMPT_FORMATS = ("alpaca", "native", "chat", "auto")
FIELDS = ("id", "instruction", "context", "response")  # the keys a `columns` override may use
CACHE_VERSION = 1  # bump when tokenization changes, so old caches are not reused


@dataclass(frozen=True)
class Example:
    id: str           # the data's `id` column if present, else the row index
    instruction: str
    context: str      # Alpaca "input", Dolly "context", the SAMSum dialogue, the CNN article
    response: str     # the reference
    task: str         # which native template: "alpaca", "samsum", "cnn", "dolly"


# ---------------------------------------------------------------------------------------------
# Prompt templates, as segments

class Segment(NamedTuple):
    text: str
    content: bool  # True: instruction/context text that may be truncated; False: template text


ALPACA_INTRO = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n")
ALPACA_INTRO_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                           "provides further context. Write a response that appropriately completes "
                           "the request.\n\n")


def _alpaca_segments(ex: Example, context_header: str = "### Input:") -> list[Segment]:
    if not ex.context:
        return [Segment(ALPACA_INTRO + "### Instruction:\n", False), Segment(ex.instruction, True),
                Segment("\n\n### Response:\n", False)]
    return [Segment(ALPACA_INTRO_WITH_INPUT + "### Instruction:\n", False), Segment(ex.instruction, True),
            Segment(f"\n\n{context_header}\n", False), Segment(ex.context, True),
            Segment("\n\n### Response:\n", False)]


def _dolly_segments(ex: Example) -> list[Segment]:
    return _alpaca_segments(ex, context_header="### Context:")


def _summary_segments(header: str) -> Callable[[Example], list[Segment]]:
    """SAMSum and CNN/DailyMail prompts: the document under a header, then the summary marker."""
    def segments(ex: Example) -> list[Segment]:
        return [Segment(f"### {header}:\n", False), Segment(ex.context, True),
                Segment("\n\n### Summary:\n", False)]
    return segments


# ---------------------------------------------------------------------------------------------
# Tasks

@dataclass(frozen=True)
class TaskSpec:
    columns: Mapping[str, str]       # Example field -> source column
    required: tuple[str, ...]        # Example fields that must be non-empty strings
    native: Callable[[Example], list[Segment]]
    instruction: str = ""            # used when the data has no instruction column


TASKS: dict[str, TaskSpec] = {
    "alpaca": TaskSpec({"id": "id", "instruction": "instruction", "context": "input", "response": "output"},
                       ("instruction", "response"), _alpaca_segments),
    "samsum": TaskSpec({"id": "id", "context": "dialogue", "response": "summary"},
                       ("context", "response"), _summary_segments("Dialogue"),
                       instruction="Summarize the following dialogue."),
    "cnn": TaskSpec({"id": "id", "context": "article", "response": "highlights"},
                    ("context", "response"), _summary_segments("Article"),
                    instruction="Summarize the following news article."),
    "dolly": TaskSpec({"id": "id", "instruction": "instruction", "context": "context",
                       "response": "response"},
                      ("instruction", "response"), _dolly_segments),
}


def guess_task(column_names: Iterable[str], columns: Mapping[str, str] | None = None) -> str:
    """The task whose (overridden) column map best fits the columns present.

    A task fits when its required columns exist; among fitting tasks, the one with the most of its
    columns present wins (ties: table order, alpaca first).
    """
    present = set(column_names)
    best, best_score = None, -1
    for name, spec in TASKS.items():
        cmap = {**spec.columns, **(columns or {})}
        if not all(cmap[f] in present for f in spec.required):
            continue
        score = sum(src in present for src in cmap.values())
        if score > best_score:
            best, best_score = name, score
    if best is None:
        # name what the closest task lacks: the one with most of its required columns present
        def lacking(name: str) -> list[str]:
            cmap = {**TASKS[name].columns, **(columns or {})}
            return [cmap[f] for f in TASKS[name].required if cmap[f] not in present]
        near = min(TASKS, key=lambda name: len(lacking(name)))
        raise DataError(f"cannot tell the task from columns {sorted(present)}; expected Alpaca "
                        "(instruction, input, output), SAMSum (dialogue, summary), CNN (article, highlights) "
                        f"or Dolly (instruction, context, response) columns (closest: {near}, missing "
                        f"{', '.join(map(repr, lacking(near)))}), or pass columns=/task=")
    return best


TRAINING_FILE = "adalas_training.json"  # in a trained model directory: its `data` and `data_sha256`, and more


def data_sha256(data: str | os.PathLike) -> str | None:
    """sha256 of a local data file's bytes (the packaged file for `builtin`); None for hub datasets.
    Training records it in the model directory, and evaluation compares it (held-out or not)."""
    path = builtin_path() if str(data) == "builtin" else Path(data).expanduser()
    return file_sha256(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Rows -> Examples

def _field(row: Mapping[str, Any], column: str, where: str, required: bool) -> str:
    value = row.get(column)
    if value is None:
        if required:
            raise DataError(f"{where}: column '{column}' is missing")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{column}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{where}: column '{column}' is empty")
    return value


def _to_example(row: Mapping[str, Any], index: int, cmap: Mapping[str, str], task: str,
                required: set[str], where: str) -> Example:
    def value(name: str) -> str:
        if name in cmap:
            return _field(row, cmap[name], where, name in required)
        return TASKS[task].instruction if name == "instruction" else ""  # summaries: a fixed instruction

    raw_id = row.get(cmap["id"])
    return Example(id=str(index) if raw_id is None else str(raw_id), instruction=value("instruction"),
                   context=value("context"), response=value("response"), task=task)


def _column_map(table: SourceTable, task: str | None, columns: Mapping[str, str] | None) -> tuple[str, dict]:
    unknown = set(columns or {}) - set(FIELDS)
    if unknown:
        raise DataError(f"{table.name}: unknown key(s) in columns: {sorted(unknown)}; use {list(FIELDS)}")
    if not (task or table.task):
        try:
            task = guess_task(table.column_names, columns)
        except DataError as e:
            raise DataError(f"{table.name}: {e}") from None
    task = task or table.task
    if task not in TASKS:
        raise DataError(f"{table.name}: unknown task {task!r}; choose from {list(TASKS)}")
    return task, {**TASKS[task].columns, **(columns or {})}


def iter_examples(data: str | os.PathLike, split: str = "test", columns: Mapping[str, str] | None = None,
                  task: str | None = None, limit: int | None = None, *, split_seed: int = SPLIT_SEED,
                  validation_fraction: float | None = None, require_response: bool = True,
                  skip_invalid: bool | None = None, hub_config: str | None = None) -> Iterator[Example]:
    """Yield normalized Examples; see `load_examples`. Raises DataError if none are left."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    table = open_table(data, split, split_seed, validation_fraction, hub_config)
    task, cmap = _column_map(table, task, columns)
    required = set(TASKS[task].required) - ({"response"} if not require_response else set())
    missing = [f"'{cmap[f]}' ({f})" for f in sorted(required) if cmap[f] not in table.column_names]
    if missing:
        raise DataError(f"{table.name}: missing required column(s) {', '.join(missing)} for task "
                        f"'{task}'; columns present: {', '.join(table.column_names)}")
    skip = table.skip_invalid if skip_invalid is None else skip_invalid
    rows = table.rows.select(table.indices) if isinstance(table.rows, datasets.Dataset) else (
        table.rows[i] for i in table.indices)
    count, skipped = 0, []
    for index, row in zip(table.indices, rows):
        if limit is not None and count >= limit:
            break
        try:
            example = _to_example(row, index, cmap, task, required, table.where(index))
        except DataError as e:
            if not skip:
                raise
            skipped.append(str(e))
            continue
        count += 1
        yield example
    if skipped:
        logger.warning("%s: skipped %d invalid row(s), first: %s", table.name, len(skipped), skipped[0])
    if count == 0:
        raise DataError(f"{table.name}: no rows left (split {split!r}: {len(table.indices)} of {len(table.rows)} rows, "
                        f"limit={limit}, {len(skipped)} invalid row(s) skipped); a data set needs at least one")


def load_examples(data: str | os.PathLike, split: str = "test", columns: Mapping[str, str] | None = None,
                  task: str | None = None, limit: int | None = None, **kwargs) -> list[Example]:
    """Examples from a hub id, a local JSON/JSONL file, or `builtin`.

    Hub datasets: the named split; Alpaca and Dolly (no test split) use a fixed 70/15/15 split
    (`split_seed=42`). Local files and `builtin`: the whole file, in file order (for training,
    `validation_fraction=f` holds out a fraction for split="validation"). `limit=K`: the first K.
    Invalid rows raise DataError for local files and are skipped (with a warning) for hub data,
    unless `skip_invalid` says otherwise; `require_response=False` allows empty responses.
    """
    return list(iter_examples(data, split, columns, task, limit, **kwargs))


# ---------------------------------------------------------------------------------------------
# Prompts

def resolve_format(prompt_format: str, tokenizer=None) -> str:
    """`auto` -> `chat` when the tokenizer has a chat template, else `native`."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "auto":
        return "chat" if has_template else "native"
    if prompt_format == "chat" and not has_template:
        raise ValueError("prompt_format='chat' needs a tokenizer with a chat_template")
    return prompt_format


_SLOTS = {"instruction": "\ue000adalas-instruction\ue000", "context": "\ue000adalas-context\ue000"}


def _chat_segments(ex: Example, tokenizer) -> list[Segment]:
    """Render the chat template around placeholders, then put the content back as its own segments."""
    user = _SLOTS["instruction"] + (f"\n\n{_SLOTS['context']}" if ex.context else "")
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
    pattern = "(" + "|".join(map(re.escape, _SLOTS.values())) + ")"
    parts = re.split(pattern, text)
    slots = [p for p in parts if p in _SLOTS.values()]
    if slots != [_SLOTS["instruction"]] + ([_SLOTS["context"]] if ex.context else []):
        raise ValueError("the chat template does not place the user message verbatim; "
                         "use prompt_format='native' or 'alpaca'")
    content = {_SLOTS["instruction"]: ex.instruction, _SLOTS["context"]: ex.context}
    return [Segment(content[p], True) if p in content else Segment(p, False) for p in parts]


def _segments(example: Example, prompt_format: str, tokenizer=None) -> list[Segment]:
    fmt = resolve_format(prompt_format, tokenizer)
    if fmt == "chat":
        return _chat_segments(example, tokenizer)
    if fmt == "alpaca":
        return _alpaca_segments(example)
    return TASKS[example.task].native(example)


def build_prompt(example: Example, prompt_format: PromptFormat = "auto", tokenizer=None) -> str:
    """The full, untruncated prompt text, ending with the response marker."""
    return "".join(s.text for s in _segments(example, prompt_format, tokenizer))


# ---------------------------------------------------------------------------------------------
# Tokenization

def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by default (Llama, OPT do; GPT-2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer.encode("a")
    return len(ids) > len(tokenizer.encode("a", add_special_tokens=False)) and ids[0] == bos


def _share(lengths: list[int], budget: int) -> list[int]:
    """Split a token budget over content segments: short ones keep everything, long ones share the rest.

    >>> _share([20, 1000], 200), _share([300, 1000], 201)
    ([20, 180], [100, 101])
    """
    keep = [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for k, i in enumerate(order):
        keep[i] = min(lengths[i], budget // (len(order) - k))
        budget -= keep[i]
    return keep


def _cut(text: str, n_tokens: int, tokenizer) -> str:
    """The prefix of `text` that its first n_tokens tokens cover."""
    if n_tokens <= 0:
        return ""
    if tokenizer.is_fast:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if n_tokens >= len(offsets) else text[:offsets[n_tokens - 1][1]]
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n_tokens])


def _prompt_ids(example: Example, tokenizer, prompt_format: str, max_prompt_tokens: int | None) -> list[int]:
    """The prompt, tokenized as one string (as the model saw text in pretraining), its content cut to fit.

    Cutting: each content segment gets a share of the room the template leaves (`_share`), is cut
    to that many of its own tokens, and the whole is tokenized again; tokens merging across a
    boundary can move the count by one or two, so the room shrinks by the excess until it fits.
    """
    segments = _segments(example, prompt_format, tokenizer)
    bos_text = tokenizer.bos_token
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) and not (
        bos_text and segments[0].text.startswith(bos_text)) else []  # chat templates may write BOS

    def encode(texts: list[str]) -> list[int]:
        return bos + tokenizer.encode("".join(texts), add_special_tokens=False)

    ids = encode([s.text for s in segments])
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
        return ids
    lengths = [len(tokenizer.encode(s.text, add_special_tokens=False)) for s in segments]
    fixed = len(bos) + sum(n for n, s in zip(lengths, segments) if not s.content)
    room = max_prompt_tokens - fixed
    while room >= 0:
        keep = iter(_share([n for n, s in zip(lengths, segments) if s.content], room))
        ids = encode([_cut(s.text, next(keep), tokenizer) if s.content else s.text for s in segments])
        if len(ids) <= max_prompt_tokens:
            return ids
        room -= len(ids) - max_prompt_tokens
    raise ValueError(f"the prompt template alone takes {fixed} tokens, more than the prompt budget "
                     f"of {max_prompt_tokens}; raise max_seq_length or prompt_fraction")


def tokenize_prompt(example: Example, tokenizer, prompt_format: PromptFormat = "auto",
                    max_prompt_tokens: int | None = None) -> dict[str, list[int]]:
    """The prompt alone, for generation: same tokens and truncation as in `tokenize_example`."""
    ids = _prompt_ids(example, tokenizer, prompt_format, max_prompt_tokens)
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def prompt_budget(max_seq_length: int, prompt_fraction: float) -> int:
    """Tokens the prompt may take: floor(max_seq_length * prompt_fraction)."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be >= 2, got {max_seq_length}")
    if not 0 < prompt_fraction < 1:
        raise ValueError(f"prompt_fraction must be in (0, 1), got {prompt_fraction}")
    return math.floor(max_seq_length * prompt_fraction)


def tokenize_example(example: Example, tokenizer, prompt_format: PromptFormat = "auto",
                     max_seq_length: int = 512, prompt_fraction: float = 0.5) -> dict[str, list[int]]:
    """Prompt + response + EOS, with labels -100 on every prompt token.

    The prompt takes at most floor(max_seq_length * prompt_fraction) tokens (its content cut, its
    marker kept); the response takes the rest of max_seq_length and always ends with EOS.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one before tokenizing")
    prompt = _prompt_ids(example, tokenizer, prompt_format, prompt_budget(max_seq_length, prompt_fraction))
    room = max_seq_length - len(prompt) - 1  # -1: EOS
    response = tokenizer.encode(example.response, add_special_tokens=False)[:room] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + response, "attention_mask": [1] * (len(prompt) + len(response)),
            "labels": [-100] * len(prompt) + response}


# ---------------------------------------------------------------------------------------------
# Cached tokenized datasets

def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer_identity(tokenizer) -> dict:
    return {"name": tokenizer.name_or_path, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "vocab": _sha256(sorted(tokenizer.get_vocab().items())),
            "chat_template": _sha256(getattr(tokenizer, "chat_template", None)),
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "adds_bos": adds_bos(tokenizer)}


_ROW_SCHEMA = pa.schema([(name, pa.list_(pa.int32())) for name in ("input_ids", "attention_mask", "labels")])


def _write_arrow(path: Path, rows: Iterable[dict], batch_size: int = 1000) -> int:
    """Stream rows into an Arrow IPC file (the format datasets memory-maps), batch by batch."""
    n, batch = 0, []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, _ROW_SCHEMA) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=_ROW_SCHEMA))
                n, batch = n + len(batch), []
        if batch:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=_ROW_SCHEMA))
            n += len(batch)
    return n


def prepare_dataset(data: str | os.PathLike, tokenizer, split: str = "train",
                    prompt_format: PromptFormat = "auto",
                    max_seq_length: int = 512, prompt_fraction: float = 0.5,
                    columns: Mapping[str, str] | None = None, limit: int | None = None,
                    cache_dir: str | os.PathLike | None = None, *, task: str | None = None,
                    split_seed: int = SPLIT_SEED, validation_fraction: float | None = None,
                    hub_config: str | None = None, use_cache: bool = True) -> datasets.Dataset:
    """A datasets.Dataset of tokenized rows (input_ids, attention_mask, labels), cached on disk.

    The cache key is a sha256 of everything the rows depend on: the data's identity (hub id, config
    and the datasets library's fingerprint of its files, or a local file's path, size and mtime), the tokenizer (name, vocabulary, chat
    template), the prompt format, the lengths, columns, task, limit and split. The cache lives in
    `cache_dir` (default `paths.cache_dir()/"datasets"`); entries are written to a temporary
    directory and renamed, so concurrent ranks never read a half-written one.
    """
    prompt_budget(max_seq_length, prompt_fraction)  # validate before any I/O
    resolve_format(prompt_format, tokenizer)
    options = dict(split_seed=split_seed, validation_fraction=validation_fraction, hub_config=hub_config)

    def rows() -> Iterator[dict]:
        for ex in iter_examples(data, split, columns, task, limit, **options):
            yield tokenize_example(ex, tokenizer, prompt_format, max_seq_length, prompt_fraction)

    if not use_cache:
        return datasets.Dataset.from_list(list(rows()))

    key_inputs = {"version": CACHE_VERSION, "data": source_identity(data, hub_config, split, split_seed),
                  "tokenizer": _tokenizer_identity(tokenizer),
                  "split": split, "prompt_format": prompt_format, "max_seq_length": max_seq_length,
                  "prompt_fraction": prompt_fraction, "columns": dict(columns or {}), "task": task,
                  "limit": limit, **options}
    key = _sha256(key_inputs)
    root = Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir() / "datasets"
    final = root / key
    if not (final / "data.arrow").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=root))
        try:
            n = _write_arrow(tmp / "data.arrow", rows())
            (tmp / "meta.json").write_text(json.dumps({**key_inputs, "rows": n}, indent=1, default=str))
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / "data.arrow").is_file():  # not a lost race with another process
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("tokenized %s (%s) from %s", data, split, final)
    return datasets.Dataset.from_file(str(final / "data.arrow"))


# ---------------------------------------------------------------------------------------------
# Batching

@dataclass(frozen=True)
class PadCollator:
    """Pads input_ids / attention_mask / labels (when present) to the longest row, on one fixed side.

    Our own (rather than DataCollatorForSeq2Seq) so the side is explicit instead of following the
    tokenizer's mutable `padding_side`, and tokenizers without a pad token fall back to EOS.
    """
    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": -100}
        batch = {}
        for name, pad in pads.items():
            if name not in features[0]:
                continue
            rows = []
            for f in features:
                row, fill = list(f[name]), [pad] * (length - len(f[name]))
                rows.append(row + fill if self.padding_side == "right" else fill + row)
            batch[name] = torch.tensor(rows, dtype=torch.long)  # (B, T)
        return batch


def make_collator(tokenizer, padding_side: Literal["right", "left"] = "right",
                  pad_to_multiple_of: int | None = None) -> PadCollator:
    """Right padding for training; left for batched generation (prompts end at the same column)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad with")
    return PadCollator(pad, padding_side, pad_to_multiple_of)
