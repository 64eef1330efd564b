"""Where rows come from: local JSON or JSON Lines files, hub datasets, and the packaged `builtin` set,
each read into a `SourceTable` of raw rows (which rows to use, in order, and how to name one in an
error); the fixed splits; a source's identity for caches.

Its own module because reading and splitting a source is independent of what a row means: `adalas.data`
maps these raw rows to `Example`s through a task's column map, and turns them into prompts and tokens.

Notable:
- Hub datasets without a test split (Alpaca, Dolly) get a fixed 70/15/15 split drawn from
  `split_seed=42` by hashing row indices, so it does not depend on any other seed or on library
  versions. Local files are used whole, in file order (or split by `validation_fraction`).
- A file is a JSON array of objects or JSON Lines, sniffed (`read_records`); errors name the file,
  the line or row, and what is wrong (`DataError`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import datasets

SPLIT_SEED = 42
SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}


class DataError(ValueError):
    """Bad data: the one-line message names the file, the row and the column."""


@dataclass(frozen=True)
class DatasetSpec:
    task: str
    config: str | None = None
    has_test_split: bool = True  # False: draw the 70/15/15 split from the train split


KNOWN_DATASETS: dict[str, DatasetSpec] = {  # keys lower-cased
    "tatsu-lab/alpaca": DatasetSpec("alpaca", has_test_split=False),
    "samsung/samsum": DatasetSpec("samsum"),
    "abisee/cnn_dailymail": DatasetSpec("cnn", config="3.0.0"),
    "databricks/databricks-dolly-15k": DatasetSpec("dolly", has_test_split=False),
}


def split_indices(n: int, seed: int = SPLIT_SEED,
                  fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> dict[str, list[int]]:
    """Deterministic disjoint splits of range(n): rows ordered by sha256(seed:index), then cut.

    Every split but the first gets round(fraction * n) rows; the first gets the rest. Hashing
    (not a seeded RNG) keeps the split identical across Python/NumPy versions.

    >>> {k: len(v) for k, v in split_indices(100).items()}
    {'train': 70, 'validation': 15, 'test': 15}
    """
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    names = list(fractions)
    sizes = [round(fractions[name] * n) for name in names[1:]]
    sizes.insert(0, n - sum(sizes))
    out, start = {}, 0
    for name, size in zip(names, sizes):
        out[name] = order[start:start + size]
        start += size
    return out


# ---------------------------------------------------------------------------------------------
# Reading sources

@dataclass(frozen=True)
class SourceTable:
    """Raw rows from one source, the row indices to use in order, and how to name a row in errors."""
    name: str
    rows: Sequence[Mapping[str, Any]]
    column_names: list[str]
    indices: list[int]
    where: Callable[[int], str]
    task: str | None = None
    skip_invalid: bool = False
    fingerprint: str | None = None  # a hub dataset's: what the datasets library derives from its files (revision)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _is_json_array(text: str, name: str) -> bool:
    """'[' first means a JSON array, except in a *.jsonl file that does not parse whole while every
    line after the first parses alone: JSON Lines whose first row is broken (reported by its line)."""
    text = text.lstrip()
    if not text.startswith("["):
        return False
    if not name.lower().endswith(".jsonl") or _parses(text):
        return True
    rest = [line for line in text.split("\n")[1:] if line.strip()]
    return not (rest and all(map(_parses, rest)))


def read_records(text: str, name: str) -> tuple[list[dict], list[str]]:
    """Parse a JSON array of objects or JSON Lines (sniffed: see `_is_json_array`).

    Returns the rows and a label for each (e.g. "line 3") for error messages. Lines end at "\n"
    only: U+2028 and other Unicode line breaks may sit unescaped inside a JSON string.
    """
    if _is_json_array(text, name):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {e.lineno}: invalid JSON: {e.msg}") from None
        labels = [f"row {i + 1}" for i in range(len(rows))]
    else:
        rows, labels = [], []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{name}: line {lineno}: invalid JSON: {e.msg}") from None
            labels.append(f"line {lineno}")
    for row, label in zip(rows, labels):
        if not isinstance(row, dict):
            raise DataError(f"{name}: {label}: expected a JSON object, got {type(row).__name__}")
    if not rows:
        raise DataError(f"{name}: no rows")
    return rows, labels


def _file_table(path: Path, name: str, split: str, validation_fraction: float | None, seed: int) -> SourceTable:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{name}: cannot read ({e}); --data takes a readable UTF-8 JSON or JSONL file, a hub "
                        f"dataset id, or builtin") from None
    rows, labels = read_records(text, name)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # union, in first-seen order
    indices = list(range(len(rows)))
    if validation_fraction is not None and split in ("train", "validation"):
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        fractions = {"train": 1 - validation_fraction, "validation": validation_fraction}
        indices = split_indices(len(rows), seed, fractions)[split]
    return SourceTable(name, rows, columns, indices, lambda i: f"{name}: {labels[i]}")


def _hub_table(name: str, split: str, seed: int, config: str | None) -> SourceTable:
    """A hub split; datasets without one (per the table, or per the hub) get the 70/15/15 split."""
    spec = KNOWN_DATASETS.get(name.lower())
    config = config or (spec.config if spec else None)
    try:
        if spec is not None:
            native = spec.has_test_split
        else:
            native = split in datasets.get_dataset_split_names(name, config)
        ds = datasets.load_dataset(name, config, split=split if native else "train")
    except Exception as e:  # network, missing dataset, bad config: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{name}: cannot load hub dataset ({type(e).__name__}: {msg})") from e
    if native:
        indices, source_split = list(range(len(ds))), split
    else:
        if split not in SPLIT_FRACTIONS:
            raise DataError(f"{name}: unknown split {split!r}; choose from {list(SPLIT_FRACTIONS)}")
        indices, source_split = split_indices(len(ds), seed)[split], "train"
    return SourceTable(name, ds, list(ds.column_names), indices,
                       lambda i: f"{name} ({source_split} split): row {i + 1}",
                       task=spec.task if spec else None, skip_invalid=True,
                       fingerprint=getattr(ds, "_fingerprint", None))


def builtin_path() -> Path:
    """The packaged `builtin` set's file (evaluation data only)."""
    return Path(str(resources.files("adalas") / "builtin_data" / "builtin.jsonl"))


def _local_path(data: str | os.PathLike) -> Path | None:
    """The file `data` names (`builtin`, an existing file, *.json(l), an explicit path); None: a hub id."""
    if str(data) == "builtin":
        return builtin_path()
    path = Path(data).expanduser()
    looks_local = (path.is_absolute() or str(data).startswith((".", "~"))
                   or path.suffix.lower() in (".json", ".jsonl"))
    return path if path.is_file() or looks_local else None


def open_table(data: str | os.PathLike, split: str, seed: int, validation_fraction: float | None,
               hub_config: str | None) -> SourceTable:
    """The rows `data` names: a local file or `builtin` (used whole, or split by `validation_fraction`),
    else a hub dataset's split."""
    path = _local_path(data)
    if path is None:
        return _hub_table(str(data), split, seed, hub_config)
    if str(data) == "builtin" and not path.is_file():
        raise DataError(f"builtin: the packaged data set is missing ({path})")
    return _file_table(path, str(data), split, validation_fraction, seed)


def source_identity(data: str | os.PathLike, hub_config: str | None, split: str, seed: int) -> dict:
    """What the cache key needs to know about a source: a local file's path, size and mtime (without
    reading it); a hub dataset's id, config and the fingerprint the datasets library gives the files
    it loaded (so a new revision of the same id is another source; the load is from its local cache)."""
    path = _local_path(data)
    if path is None:
        spec = KNOWN_DATASETS.get(str(data).lower())
        return {"hub": str(data), "config": hub_config or (spec.config if spec else None),
                "fingerprint": _hub_table(str(data), split, seed, hub_config).fingerprint}
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{data}: no such file") from None
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
