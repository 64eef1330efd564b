"""Where adalas keeps what it caches (converted models, tokenized datasets): one function.

The directory is private (mode 0700: converted weights and tokenized data are nobody else's
business): created so when missing, and tightened when it is adalas' default location and looser.
A directory named by $ADALAS_CACHE that already exists is left as the user made it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE = 0o700


def cache_dir() -> Path:
    """$ADALAS_CACHE, else $XDG_CACHE_HOME/adalas, else ~/.cache/adalas; created private (0700)."""
    chosen = os.environ.get("ADALAS_CACHE")
    if chosen:
        return _private(Path(chosen), tighten=False)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return _private(Path(base) / "adalas", tighten=True)


def _private(path: Path, tighten: bool) -> Path:
    if not path.is_dir():
        path.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
        os.chmod(path, PRIVATE)  # mkdir's mode goes through the umask
    elif tighten and stat.S_IMODE(path.stat().st_mode) & 0o077:
        try:
            os.chmod(path, PRIVATE)
        except OSError:  # not ours to change (another user's): use it as it is
            pass
    return path
