"""What the rows of a result directory depend on besides their inputs, recorded in its settings.json,
and the check that keeps a rerun from mixing rows made another way.

Its own module because `adalas eval` and `adalas sweep` (and the study and `reproduce` records) share it:
- `run_identity`: the device type and dtype the model runs in, and what its weights are (a hash of
  the files, or a hub model's revision).
- `check_settings`: a directory whose rows were made with other settings, or another definition of
  a config id, is refused; keys that later versions added (`LATER_SETTINGS`, `LATER_DEFINITION`) are
  accepted when an older directory lacks them, so committed directories keep resuming.
- `versions`: the package versions a result records.
"""
from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .hub import model_sha256
from .io import atomic_write_json


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("adalas", "torch", "transformers", "rouge-score"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# Keys recorded since later versions (the batch plan, the weights, device and dtype, a data file's
# bytes): a settings.json or config definition written before one existed lacks it and still resumes
# (the key is then recorded); a key recorded with another value is refused, as any other.
LATER_SETTINGS = frozenset({"batch_size", "device", "dtype", "model_sha256", "model_revision", "data_sha256"})
LATER_DEFINITION = frozenset({"weights"})


def run_identity(model, model_id: Any) -> dict:
    """What rows depend on besides the flags: the device type and dtype the model runs in, and what
    its weights are (`hub.model_sha256` of `model_id`: a directory's weight files, the embedded
    model's GGUF, an adapted alias's adapter; a hub model's revision, from its config)."""
    out = {"device": model.device.type, "dtype": str(model.dtype).removeprefix("torch.")}
    sha = model_sha256(model_id) if isinstance(model_id, str) else None
    if sha:
        out["model_sha256"] = sha
    revision = getattr(model.config, "_commit_hash", None)
    if revision:
        out["model_revision"] = revision
    return out


def _differing(old: dict, new: dict, later: frozenset) -> list[str]:
    """Keys whose values differ, a key of `later` that `old` lacks excepted."""
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not (k in later and k not in old)]


def changed_definitions(out_dir: Path, configs: dict[str, Any]) -> list[str]:
    """The config ids (of config id -> definition) that out_dir/settings.json records with another
    definition: rows of an adapter since replaced, or of a route borrowed from one."""
    path = Path(out_dir) / "settings.json"
    recorded = json.loads(path.read_text()).get("configs", {}) if path.is_file() else {}
    return [cid for cid, definition in configs.items()
            if cid in recorded and _differing(recorded[cid], definition, LATER_DEFINITION)]


def check_settings(out_dir: Path, settings: dict, configs: dict[str, Any] | None = None, record: bool = True) -> None:
    """Record `settings` (and config ids -> definitions) in out_dir/settings.json, refusing a
    directory whose rows were made with other settings or another definition of a config id
    (LATER_SETTINGS / LATER_DEFINITION: a key recorded before it existed is accepted).
    `record=False` only checks (before rows are dropped for a redo)."""
    path = Path(out_dir) / "settings.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None:
        recorded = old.get("settings", {})
        diff = _differing(recorded, settings, LATER_SETTINGS)
        if diff:
            k = diff[0]
            raise ValueError(f"{out_dir} holds results made with {k}={recorded.get(k)!r}, not "
                             f"{settings.get(k)!r}; use another --out or delete that directory")
    merged = dict((old or {}).get("configs", {}))
    for cid, definition in (configs or {}).items():
        diff = _differing(merged[cid], definition, LATER_DEFINITION) if cid in merged else []
        if diff:
            was, now = merged[cid].get("weights"), definition.get("weights")  # adapters', checkpoints' weights
            if "weights" in diff:
                raise ValueError(f"{out_dir}: the rows of config {cid!r} were made with other weights "
                                 f"(sha256 {str(was)[:12]}, now {str(now)[:12]}); "
                                 f"make them again with `adalas sweep ... --redo {cid!r}`, or use another --out")
            raise ValueError(f"{out_dir}: config {cid!r} was defined as {merged[cid]} in an earlier run, now as "
                             f"{definition}; use another --out or the same --seed/--keep-first")
        merged[cid] = definition
    doc = {"settings": settings, "configs": merged}
    if record and doc != old:
        atomic_write_json(path, doc)
