"""Results on disk, in one place: the only atomic writer in the package.

- Atomic writes (`atomic_write_bytes`, `_text`, `_json`, `atomic_save_tensors`): a temporary file in the same directory,
  flushed and fsynced, then `os.replace`d, so a result file is either complete or absent.
- Output paths checked before any work (`check_output_dir`, `check_output_file`), so a typo fails
  in seconds and leaves nothing behind.
- JSONL rows (`dumps_row`, `read_jsonl`, `RowStore`): appended and flushed per batch, read back
  tolerantly (a torn last line is dropped), keyed so a resumed run skips what is done; the ranks of
  a sharded run write part files that `finish_shards` merges once every rank is done.
- Strict reading of a finished results file (`read_jsonl(..., strict=True, numbered=True)`,
  `require_field`, `require_number`): errors name the file, line and field.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written as `atomic_write_bytes` writes (streamed to disk, not held in memory)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_markers(path: str | os.PathLike, start: str, end: str) -> Path:
    """`path`, after a ValueError unless it is a text file with the line `start` and, after it, `end`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file, for the generated text")
    rest = path.read_text().partition(start)[2]
    if not rest or end not in rest:
        raise ValueError(f"{path}: generated text goes between the lines {start!r} and {end!r}; add them")
    return path


def write_between_markers(path: str | os.PathLike, start: str, end: str, text: str) -> None:
    """Replace what stands between the lines `start` and `end` of a text file (a README's generated tables),
    markers kept; ValueError when the file lacks them."""
    path = check_markers(path, start, end)
    head, _, rest = path.read_text().partition(start)
    atomic_write_text(path, f"{head}{start}\n{text.strip()}\n{end}{rest.partition(end)[2]}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path` and its parents that exists and is not a directory (None: there is none)."""
    for p in (path, *path.parents):
        if p.is_dir():
            return None
        if p.exists() or p.is_symlink():
            return p
    return None


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output directory that cannot be one (it, or a parent, is a file) before any work is
    done or anything is written. An existing directory is fine (results resume there)."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        what = "exists and is a file" if blocker == path else f"is inside {str(blocker)!r}, which is a file"
        raise ValueError(f"{flag}: {str(path)!r} {what}; pass a directory (new, or one holding earlier "
                         f"results of the same run)")
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out", example: str = "out.json") -> Path:
    """Refuse an output file path that is a directory or lies inside a file, before any work."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag}: {str(path)!r} is a directory; pass a file path, e.g. {str(path / example)!r}")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise ValueError(f"{flag}: {str(path)!r} is inside {str(blocker)!r}, which is a file; pass a path in a directory")
    return path


# -- JSONL rows: append and flush per batch, read back tolerantly, merge shards ---------------------

def dumps_row(row: dict) -> str:
    """One JSONL line. ensure_ascii=False leaves U+2028 and other Unicode line breaks unescaped in
    strings (a model may generate them), so readers split lines at "\n" only."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False)


def read_jsonl(path: Path, repair: bool = False, strict: bool = False, numbered: bool = False) -> list:
    """Rows of a JSONL file; a bad line raises ValueError naming the file and line.

    A file still being appended to (the default): [] when it is absent, and a torn last line (no
    newline, not valid JSON) is dropped, with `repair` cut from the file. A finished results file
    (`strict`, e.g. a sweep's): a missing or empty file raises, and so does a torn last line.
    `numbered`: (line number, row) pairs, for messages that name the line."""
    path = Path(path)
    if not path.is_file():
        if strict:
            raise ValueError(f"{path} not found")
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if tail.strip() and not strict:
        try:
            json.loads(tail)
            keep_tail = True
        except ValueError:
            keep_tail = False
        if repair:
            with open(path, "r+b") as f:
                if keep_tail:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(end)
        if not keep_tail:
            data = data[:end]
    rows: list = []
    for lineno, line in enumerate(data.decode("utf-8").split("\n"), 1):  # not splitlines: see dumps_row
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg}); fix or delete the line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row) if numbered else row)
    if strict and not rows:
        raise ValueError(f"{path} is empty")
    return rows


class RowStore:
    """Rows of one JSONL result file, keyed by `key_fields`, shared by the ranks of a run.

    With one rank, rows are appended to the file itself; with W ranks, each appends to
    `parts/<name>.rank<r>.jsonl` until `merge` folds the parts into the main file.
    """

    def __init__(self, out_dir: Path, name: str, key_fields: tuple[str, ...], rank: int = 0, world_size: int = 1):
        self.path = Path(out_dir) / name
        self.parts_dir = Path(out_dir) / "parts"
        self.key_fields = key_fields
        self.own = self.path if world_size == 1 else self.parts_dir / f"{self.path.stem}.rank{rank}.jsonl"
        self._rows: dict[tuple, dict] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        read_jsonl(self.own, repair=True)  # cut a torn last line before appending after it

    def key(self, row: dict) -> tuple:
        return tuple(row.get(k) for k in self.key_fields)

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{self.path.stem}.rank*.jsonl")) if self.parts_dir.is_dir() else []

    def rows(self) -> dict[tuple, dict]:
        """Every row written so far (main file, then parts), first occurrence of each key.

        Read from disk once, then kept up to date by `append`: rows other ranks write meanwhile
        are not seen, and need not be, since no two ranks share a batch."""
        if self._rows is None:
            self._rows = {}
            for f in [self.path, *self.part_files()]:
                for row in read_jsonl(f):
                    self._rows.setdefault(self.key(row), row)
        return self._rows

    def append(self, rows: Sequence[dict]) -> None:
        text = "".join(dumps_row(r) + "\n" for r in rows)
        if not text:
            return
        cache = self.rows()
        for r in rows:
            cache.setdefault(self.key(r), r)
        self.own.parent.mkdir(parents=True, exist_ok=True)
        with open(self.own, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def merge(self, order: dict[tuple, tuple]) -> None:
        """Fold the part files into the main file: its rows first, as they are; then the parts' new
        rows in plan `order` (rows the plan does not know last). Written atomically; parts removed."""
        parts = self.part_files()
        self._rows = None  # other ranks' rows: read again
        if not parts:
            return
        main = read_jsonl(self.path)
        seen = {self.key(r) for r in main}
        new: dict[tuple, dict] = {}
        for f in parts:
            for row in read_jsonl(f):
                k = self.key(row)
                if k not in seen:
                    new.setdefault(k, row)
        tail = sorted(new.items(), key=lambda kv: (0, order[kv[0]]) if kv[0] in order else (1,))
        atomic_write_text(self.path, "".join(dumps_row(r) + "\n" for r in [*main, *(r for _, r in tail)]))
        for f in parts:
            f.unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (released by the OS if the process dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def finish_shards(out_dir: Path, rank: int, world_size: int, fingerprint: str, merge: Callable[[], None]) -> bool:
    """Call `merge` once, when every rank is done; True in the process that ran it.

    torch.distributed initialized: barrier, rank 0 merges, barrier. Otherwise each rank leaves a
    done marker naming the plan, and the rank that finds all W markers merges under a file lock
    (so ranks may run at the same time or one after another, and a killed rank just reruns).
    """
    if world_size == 1:
        merge()
        return True
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        if rank == 0:
            merge()
        dist.barrier()
        return rank == 0
    parts = Path(out_dir) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parts / f"done.rank{rank}", fingerprint)

    def all_done() -> bool:
        for r in range(world_size):
            f = parts / f"done.rank{r}"
            if not f.is_file() or f.read_text() != fingerprint:
                return False
        return True

    if not all_done():
        return False
    with _file_lock(parts / "merge.lock"):
        if not all_done():  # another rank merged meanwhile
            return False
        merge()
        for r in range(world_size):
            (parts / f"done.rank{r}").unlink(missing_ok=True)
    return True


# -- strict reading of finished results ----------------------------------------------------------
def require_field(row: dict, key: str, where: str) -> Any:
    """row[key], or ValueError naming `where` when it is missing or null."""
    if row.get(key) is None:
        raise ValueError(f"{where}: missing field {key!r}")
    return row[key]


def require_number(row: dict, key: str, where: str) -> float:
    """row[key] as a finite float, or ValueError naming `where`."""
    x = require_field(row, key, where)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{where}: field {key!r} must be a finite number, got {x!r}")
    return float(x)


# -- what a file is ----------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
