"""Export a static depth config as a plain transformers checkpoint, its skipped layers removed.

Notable:
- The result is an ordinary safetensors checkpoint (config with the new layer count, renumbered
  `layer_idx`, per-layer config lists such as `layer_types` narrowed; tokenizer copied when one is
  found): `AutoModelForCausalLM.from_pretrained(out)` loads it without adalas installed.
- Its logits equal adalas's for the same config with `skip_prompt=True`: a plain checkpoint runs
  every token, prompt included, through the kept layers. (kv_fill does not matter: no token runs a
  removed layer, so nothing ever reads its keys/values.)
- Static routes only (`full`, `static_skip`, `early_exit`, `route`); the others decide per token or
  per sequence and have no single set of layers to keep.
- Where the layer list lives and which config fields count layers is the family's business
  (`Family.set_layers`).
- Written to a temporary directory beside `out`, then renamed: `out` is complete or absent.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .config import DepthConfig
from .families import family_for

STATIC_MODES: tuple[str, ...] = ("full", "static_skip", "early_exit", "route")
EXPORT_FILE = "adalas_export.json"  # provenance: source, depth config, kept layers


def check_static(depth: DepthConfig) -> None:
    if depth.mode not in STATIC_MODES:
        raise ValueError(f"depth: mode {depth.mode!r} chooses layers per token or per sequence; export needs a "
                         f"static route ({', '.join(STATIC_MODES)})")


def kept_layers(depth: DepthConfig, num_layers: int) -> list[int]:
    """The layers a static route runs (0-based, in order)."""
    check_static(depth)
    depth.check_layers(num_layers)
    return [i for i, run in enumerate(depth.static_route(num_layers)) if run]


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing file or non-empty directory unless `overwrite`."""
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    kind = "directory is not empty" if out.is_dir() else "exists and is not a directory"
    raise ValueError(f"--out: {str(out)!r} {kind}; pass --overwrite to replace it")


def prune(hf: nn.Module, depth: DepthConfig) -> list[int]:
    """Remove the layers `depth` skips from `hf` in place; returns the kept layers' old indices."""
    family = family_for(hf)
    keep = kept_layers(depth, family.num_layers)
    family.set_layers(keep)
    return keep


def export_checkpoint(model: "str | os.PathLike | nn.Module", depth: "DepthConfig | dict | str | None",
                      out: "str | os.PathLike", overwrite: bool = False, tokenizer: Any = None,
                      **load_kwargs: Any) -> dict[str, Any]:
    """Write `model` with the layers `depth` skips removed to `out`; returns a summary.

    `model`: a hub id, a directory or `smollm2-135m` (loaded with `load_kwargs`: dtype, device,
    allow_pickle, ...), or an in-memory Hugging Face causal LM / AdalasForCausalLM (deep-copied
    first, so it is left as it was). `depth` None: the config saved beside the model (an adalas
    directory) or the AdalasForCausalLM's own. `tokenizer`: saved with it; by default the model
    directory's or hub id's tokenizer when one loads.
    """
    from .model import AdalasForCausalLM

    out = Path(out)
    source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    saved_depth = depth is None  # the config the model was trained (and evaluated) with
    if depth is None and isinstance(model, AdalasForCausalLM):
        depth = model.depth
    elif depth is None and isinstance(model, (str, os.PathLike)):
        from .hub import adapter_dir
        saved_in = adapter_dir(str(model)) or Path(model)  # an adapted alias keeps its depth with its adapter
        depth = DepthConfig.from_dir(saved_in) if saved_in.is_dir() else None
    if depth is None:
        raise ValueError("depth: required (static_skip, early_exit or route JSON)")
    depth = DepthConfig.parse(depth)
    check_static(depth)
    check_out(out, overwrite)

    if isinstance(model, (str, os.PathLike)):
        from .hub import load_hf_model
        hf, _ = load_hf_model(str(model), **load_kwargs)
        if tokenizer is None:
            tokenizer = _try_tokenizer(str(model), load_kwargs.get("trust_remote_code", False))
    else:
        hf = copy.deepcopy(model.model if isinstance(model, AdalasForCausalLM) else model)
    num_layers = family_for(hf).num_layers
    keep = prune(hf, depth)

    summary = {"out": str(out), "source": source, "depth": depth.to_dict(), "kept_layers": keep,
               "num_layers": len(keep), "source_num_layers": num_layers, "tokenizer": tokenizer is not None,
               "equals": f"adalas {source} with skip_prompt=true (the prompt also runs only the kept layers)"}
    if saved_depth and not depth.skip_prompt:
        # e.g. the shipped adapters, trained with the prompt at full depth: deleting the layers changes the
        # prompt's pass too, so the export is not the model whose scores were reported (measure it first)
        summary["warning"] = (f"{source} runs its prompt at full depth (skip_prompt=false), as it was trained and "
                              f"evaluated; this export runs the prompt on the kept layers too: a different model, "
                              f"whose quality was not measured")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _usual_permissions(tmp)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes a 0700 directory and transformers writes weights 0600: give the checkpoint the
    permissions the umask gives any new file, so it can be shared like one."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _try_tokenizer(name: str, trust_remote_code: bool):
    """The model's tokenizer, or None when it has none (a checkpoint without tokenizer files)."""
    from transformers import AutoTokenizer

    from .hub import resolve

    source, _ = resolve(name)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError):
        return None
