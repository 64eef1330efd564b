"""Model families: where a layout keeps its layers and how one layer computes."""
from __future__ import annotations

from torch import nn

from .base import Family
from .gpt2 import GPT2Family
from .llama import LlamaFamily
from .opt import OPTFamily

FAMILIES: tuple[type[Family], ...] = (OPTFamily, LlamaFamily, GPT2Family)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_for(hf: nn.Module) -> Family:
    """The family that drives this Hugging Face causal LM; ValueError for other architectures."""
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam(hf)
    raise ValueError(f"unsupported architecture {model_type!r}; supported model types: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")


__all__ = ["Family", "FAMILIES", "SUPPORTED_MODEL_TYPES", "family_for"]
