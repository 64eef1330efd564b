"""What training writes and reads back: checkpoints in our format, resuming, and adapter directories.

Its own module because the Trainer's `_save` and `_load_from_checkpoint`, `adalas study` (which finds a
run's latest checkpoint) and `adalas adapt` (which puts an adapter directory in place) all need it.

Notable:
- A checkpoint is `AdalasForCausalLM.save_pretrained`'s directory (safetensors, depth config,
  controllers), loadable by `AdalasForCausalLM.from_pretrained(dir)`.
- LoRA (peft) checkpoints hold the merged weights, computed without touching the live model
  (base + delta per adapted module), so a checkpoint loads like any other; for resuming they also
  hold the trainable tensors themselves (`adalas_trainable.safetensors`).
- `--resume_from_checkpoint true` takes the latest *complete* checkpoint in `--output_dir` (its
  trainer_state.json parses and its weights are there); a directory a killed run left half-written
  is skipped.
- An adapter directory (`save_adapter`: what `src/adalas/adapters/<alias>/` ships) is written into a
  temporary sibling and renamed into place (`replace_dir`).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DEPTH_FILE
from .io import atomic_save_tensors, atomic_write_json
from .model import CONTROLLERS_FILE, AdalasForCausalLM

TRAINABLE_FILE = "adalas_trainable.safetensors"  # LoRA runs: the trainable tensors, for resuming
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Models inside a peft wrapper

def unwrap(model: nn.Module) -> AdalasForCausalLM:
    """The AdalasForCausalLM inside a peft wrapper (or the model itself)."""
    while not isinstance(model, AdalasForCausalLM):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"not an adalas model: {type(model).__name__}")
    return model


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


# ---------------------------------------------------------------------------------------------
# Checkpoints in our format

def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """For a peft model, the wrapped Hugging Face model's state dict with every adapter merged in
    (base weight + delta, computed aside: the live model is not touched); None otherwise."""
    if not is_peft(model):
        return None
    hf = unwrap(model).model
    modules = dict(hf.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            owner, param = key.split(".base_layer.", 1)
            key = f"{owner}.{param}"
            if param == "weight":
                lora = modules[owner]
                for name in lora.active_adapters:
                    if name in lora.lora_A:
                        value = value + lora.get_delta_weight(name).to(value.dtype)
        out[key] = value.detach()
    return out


def save_model_dir(model: nn.Module, output_dir: str | Path) -> None:
    """`AdalasForCausalLM.save_pretrained` (safetensors, depth, controllers); LoRA merged."""
    output_dir = Path(output_dir)
    adalas = unwrap(model)
    merged = export_state_dict(model)
    if merged is None:
        adalas.save_pretrained(output_dir)
        return
    adalas.save_pretrained(output_dir, state_dict=merged)
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    atomic_save_tensors(output_dir / TRAINABLE_FILE, trainable)


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            return []
        files = [directory / s for s in shards]
        return files if all(f.is_file() for f in files) else []
    return []


def load_checkpoint_weights(model: nn.Module, directory: str | Path) -> None:
    """Load a checkpoint written by `save_model_dir` into the model being trained, in place."""
    from safetensors.torch import load_file

    directory = Path(directory)
    adalas = unwrap(model)
    if is_peft(model):
        f = directory / TRAINABLE_FILE
        if not f.is_file():
            raise ValueError(f"checkpoint {directory}: no {TRAINABLE_FILE}; it was not written by a LoRA run")
        result = model.load_state_dict(load_file(str(f)), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint {directory}: tensors this model does not have: {result.unexpected_keys[:3]}")
        return
    files = _weight_files(directory)
    if not files:
        raise ValueError(f"checkpoint {directory}: no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = adalas.model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {directory}: tensors this model does not have: {result.unexpected_keys[:3]}")
    current = adalas.model.state_dict()
    loaded = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in result.missing_keys if current[k].data_ptr() not in loaded]  # tied ones are loaded
    if missing:
        raise ValueError(f"checkpoint {directory}: missing tensors: {missing[:3]}")
    controllers = directory / CONTROLLERS_FILE
    if controllers.is_file():
        saved = load_file(str(controllers))
        adalas.controllers.load_state_dict({k.removeprefix("controllers."): v for k, v in saved.items()})


def is_complete_checkpoint(directory: Path) -> bool:
    """Trainer state written (it is written last) and parseable, depth config and weights present."""
    try:
        json.loads((directory / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not (directory / DEPTH_FILE).is_file():
        return False
    return bool(_weight_files(directory)) or (directory / TRAINABLE_FILE).is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the largest N (incomplete ones skipped)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    for _, path in sorted(found, reverse=True):
        if is_complete_checkpoint(path):
            return path
    return None


def checkpoint_step(directory: str | Path) -> int:
    """The optimizer step a complete checkpoint was written at."""
    return int(json.loads((Path(directory) / "trainer_state.json").read_text())["global_step"])


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`true`/`latest`: the latest complete checkpoint (None, and a note, when there is none yet);
    `false`/None: start fresh; else a checkpoint directory, which must be complete."""
    if value is None or value.strip().lower() in ("", "false", "no", "0"):
        return None
    if value.strip().lower() in ("true", "yes", "1", "latest"):
        found = latest_checkpoint(output_dir)
        if found is None:
            print(f"adalas: no complete checkpoint in {output_dir}; starting from the beginning", file=sys.stderr)
            return None
        return str(found)
    path = Path(value)
    if not is_complete_checkpoint(path):
        raise ValueError(f"--resume_from_checkpoint: {value!r} is not a complete checkpoint directory")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Adapter directories

def save_adapter(model: nn.Module, directory: Path, record: dict) -> None:
    """The LoRA adapter alone (fp16 safetensors, a few MB), its config, the depth config and how it
    was made: what `src/adalas/adapters/<alias>/` ships (see `adalas.adapters`). The four files are
    written into a temporary sibling directory that then takes the place of `directory`, so a save
    that fails part way never leaves an adapter without its depth config (which would load at full
    depth) or with another save's weights."""
    import shutil
    import tempfile

    from peft import get_peft_model_state_dict
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        # keys relative to the Hugging Face model (peft's own layout), not to our wrapper: the adapter then
        # also loads with plain peft onto the base checkpoint
        state = {k.replace("base_model.model.model.", "base_model.model.", 1):
                 v.detach().to(torch.float16).contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        atomic_save_tensors(tmp / "adapter_model.safetensors", state)
        config = model.peft_config["default"].to_dict()
        config["base_model_name_or_path"] = None
        atomic_write_json(tmp / "adapter_config.json", _jsonable(config))
        atomic_write_json(tmp / DEPTH_FILE, unwrap(model).depth.to_dict())
        atomic_write_json(tmp / "provenance.json", record)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put the directory `new` at `target` (a sibling), replacing what is there: renames only, so a
    reader sees the old directory or the new one, never a mix (for an instant, none)."""
    import shutil
    import tempfile

    if not target.exists():
        new.rename(target)
        return
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old = trash / target.name
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
