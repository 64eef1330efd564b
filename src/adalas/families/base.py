"""What the depth loop needs from an architecture, and nothing more.

adalas drives a Hugging Face model's submodules from outside (as LayerSkip does) instead of
calling its decoder layers: the loop must run one layer's key/value projection alone (KV
propagation), run a layer on a subset of rows, and write into its own preallocated cache, none of
which a Hugging Face layer call offers. Each family file says, in a few lines per method, how its
layer computes; the loop in `model.py` is shared. Every reference to transformers internals lives
here, so a rename in a release is fixed in one place.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Family:
    """Base class: one subclass per layout; `model_types` are the configs it accepts."""

    name: str = ""
    model_types: tuple[str, ...] = ()

    def __init__(self, hf: nn.Module):
        self.hf = hf
        self.config = hf.config

    # -- structure ----------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    # -- embeddings ---------------------------------------------------------------------------
    def token_embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The raw token embedding (a controller input)."""
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The decoder's input state, (B, T, D)."""
        raise NotImplementedError

    def position_signal(self, position_ids: torch.Tensor) -> torch.Tensor:
        """A per-position vector for controllers: the learned position embedding, or a sinusoid."""
        return sinusoid(position_ids, self.hidden_size)

    def rotary(self, h: torch.Tensor, position_ids: torch.Tensor) -> Any:
        """Per-forward position data the attention needs (rotary cos/sin), or None."""
        return None

    # -- one layer ----------------------------------------------------------------------------
    def attn_input(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """What the attention's projections read (the pre-norm output, or h itself for post-LN)."""
        raise NotImplementedError

    def qkv(self, layer: nn.Module, x: torch.Tensor, rotary: Any):
        """Queries, keys, values as (B, H, T, Dh), position encoding applied."""
        raise NotImplementedError

    def kv(self, layer: nn.Module, x: torch.Tensor, rotary: Any):
        """Keys and values only: all a skipped layer computes under KV propagation."""
        raise NotImplementedError

    def attn_scale(self, layer: nn.Module) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def attn_dropout(self, layer: nn.Module) -> float:
        return 0.0

    def attn_output(self, layer: nn.Module, o: torch.Tensor) -> torch.Tensor:
        """Output projection of the attention; o is (B, T, H * Dh)."""
        raise NotImplementedError

    def after_attention(self, layer: nn.Module, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Residual (and post-norm where the layout has one)."""
        return h + self._dropout(layer, a)

    def mlp(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The feed-forward half of the layer, residual included."""
        raise NotImplementedError

    # -- top ------------------------------------------------------------------------------------
    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm (and output projection) before the head."""
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(h)

    # -- helpers for subclasses -----------------------------------------------------------------
    residual_dropout: float = 0.0

    def _dropout(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.residual_dropout and layer.training:
            return F.dropout(x, p=self.residual_dropout, training=True)
        return x

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)


def sinusoid(position_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position vectors, (B, T, dim): the controller's position input for rotary models."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=position_ids.device) / max(half, 1))
    angles = position_ids[..., None].float() * freqs  # (B, T, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half))
