"""Atomic writes (a result file is either complete or absent, never half-written), and output paths
checked before any work, so a typo fails in seconds and leaves nothing behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
