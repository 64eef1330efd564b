"""Where adalas keeps what it caches (converted models, tokenized datasets): one function."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$ADALAS_CACHE, else $XDG_CACHE_HOME/adalas, else ~/.cache/adalas."""
    if os.environ.get("ADALAS_CACHE"):
        return Path(os.environ["ADALAS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adalas"
