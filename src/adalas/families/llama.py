"""Llama layout: Llama, SmolLM2, Mistral, Qwen2 (RMSNorm pre-norm, rotary, grouped KV heads).

Covers q/k/v biases (Qwen2) and explicit head_dim. Not covered: Mistral's sliding window (applied
only to sequences longer than the window), Qwen3's q/k norms.
"""
from __future__ import annotations

import torch

from .base import Family


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")

    def layers(self):
        return self.hf.model.layers

    @property
    def num_kv_heads(self) -> int:
        return self.config.num_key_value_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads

    def token_embedding(self, input_ids):
        return self.hf.model.embed_tokens(input_ids)

    def embed(self, input_ids, position_ids):
        return self.hf.model.embed_tokens(input_ids)

    def rotary(self, h, position_ids):
        return self.hf.model.rotary_emb(h, position_ids)  # (cos, sin), each (B, T, Dh)

    def attn_input(self, layer, h):
        return layer.input_layernorm(h)

    def qkv(self, layer, x, rotary):
        attn = layer.self_attn
        q = self._heads(attn.q_proj(x), self.num_heads)
        k = self._heads(attn.k_proj(x), self.num_kv_heads)
        v = self._heads(attn.v_proj(x), self.num_kv_heads)
        q, k = _rotate(q, rotary), _rotate(k, rotary)
        return q, k, v

    def kv(self, layer, x, rotary):
        attn = layer.self_attn
        k = self._heads(attn.k_proj(x), self.num_kv_heads)
        v = self._heads(attn.v_proj(x), self.num_kv_heads)
        return _rotate(k, rotary), v

    def attn_scale(self, layer):
        return layer.self_attn.scaling

    def attn_dropout(self, layer):
        return getattr(self.config, "attention_dropout", 0.0) if layer.training else 0.0

    def attn_output(self, layer, o):
        return layer.self_attn.o_proj(o)

    def mlp(self, layer, h):
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def final(self, h):
        return self.hf.model.norm(h)


def _rotate(x: torch.Tensor, rotary) -> torch.Tensor:
    """Rotary position embedding, as transformers' apply_rotary_pos_emb, on one tensor."""
    cos, sin = rotary
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, Dh)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
