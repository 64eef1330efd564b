"""Llama layout: Llama, SmolLM2, Mistral, Qwen2 (RMSNorm pre-norm, rotary, grouped KV heads).

Covers q/k/v biases (Qwen2) and explicit head_dim. Not covered: Mistral's sliding window (applied
only to sequences longer than the window), Qwen3's q/k norms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from torch import nn

from .base import Family, fused_matmul


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")

    mlp_matrices = 3  # gate, up, down

    def __init__(self, hf):
        super().__init__(hf)
        self._kv_stacks: dict[tuple, tuple] = {}  # skipped layers -> stacked key/value weights (kv_many)

    def layers(self):
        return self.hf.model.layers

    def _set_layer_list(self, layers):
        self.hf.model.layers = layers

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
        cos, sin = self.hf.model.rotary_emb(h, position_ids)  # (B, T, Dh) each
        half = sin.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # rotate_half's sign, folded in once per step
        return cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, Dh): broadcast over heads

    def residual_outputs(self, layer):
        return [layer.self_attn.o_proj, layer.mlp.down_proj]

    def fusion_groups(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return None
        if type(mlp.down_proj) is not nn.Linear:  # `mlp` multiplies by its weight directly (a LoRA wrapper would be skipped)
            return None
        if not all(_plain_rms(n) for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return None
        return {"qkv": [attn.q_proj, attn.k_proj, attn.v_proj], "gate_up": [mlp.gate_proj, mlp.up_proj]}

    def attn_input(self, layer, h):
        if layer in self.active:  # one fused kernel instead of the module's six ops (same result)
            return _rms_norm(layer.input_layernorm, h)
        return layer.input_layernorm(h)

    def qkv(self, layer, x, rotary):
        fused = self.active.get(layer)
        if fused is not None:
            B, T, _ = x.shape
            H, Hkv, Dh = self.dims
            qkv = fused_matmul(x, *fused["qkv"]).view(B, T, H + 2 * Hkv, Dh).transpose(1, 2)
            qk = _rotate(qkv[:, :H + Hkv], rotary)  # (B, H + Hkv, T, Dh): queries and keys in one rotation
            return qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
        attn = layer.self_attn
        q = self._heads(attn.q_proj(x), self.num_heads)
        k = self._heads(attn.k_proj(x), self.num_kv_heads)
        v = self._heads(attn.v_proj(x), self.num_kv_heads)
        q, k = _rotate(q, rotary), _rotate(k, rotary)
        return q, k, v

    def kv(self, layer, x, rotary):
        fused = self.active.get(layer)
        if fused is not None:
            w, b = fused["qkv"]
            H, Hkv, Dh = self.dims
            kv = fused_matmul(x, w[:, H * Dh:], None if b is None else b[H * Dh:])  # the key/value columns only
            k, v = kv.view(*x.shape[:2], 2 * Hkv, Dh).transpose(1, 2).chunk(2, dim=1)  # (B, Hkv, T, Dh) each
            return _rotate(k, rotary), v
        attn = layer.self_attn
        k = self._heads(attn.k_proj(x), self.num_kv_heads)
        v = self._heads(attn.v_proj(x), self.num_kv_heads)
        return _rotate(k, rotary), v

    def kv_many(self, layers, h, rotary):
        fused = [self.active.get(layer) for layer in layers]
        norms = [layer.input_layernorm for layer in layers]
        if any(f is None for f in fused) or len({n.variance_epsilon for n in norms}) != 1 or h.dtype != torch.float32:
            return super().kv_many(layers, h, rotary)
        w, b, norm_w = self._kv_stack(layers, [f["qkv"] for f in fused])
        n, B, T, D = h.shape
        H, Hkv, Dh = self.dims
        x = F.rms_norm(h, (D,), None, norms[0].variance_epsilon) * norm_w  # as each layer's norm, bitwise
        kv = torch.bmm(x.view(n, B * T, D), w) if b is None else torch.baddbmm(b, x.view(n, B * T, D), w)
        k, v = kv.view(n, B, T, 2 * Hkv, Dh).transpose(2, 3).chunk(2, dim=2)  # (n, B, Hkv, T, Dh) each
        return _rotate(k, rotary), v

    def _kv_stack(self, layers, sources):
        """Stacked key/value columns of the layers' fused weights (n, D, 2 Hkv Dh), biases and norm
        weights, rebuilt when a layer's fused weights are."""
        key = tuple(id(layer) for layer in layers)
        hit = self._kv_stacks.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], sources)):
            q_dim = self.dims[0] * self.dims[2]
            w = torch.stack([wq[:, q_dim:] for wq, _ in sources])
            b = None if sources[0][1] is None else torch.stack([bq[None, q_dim:] for _, bq in sources])
            norm_w = torch.stack([layer.input_layernorm.weight.detach() for layer in layers])[:, None, None]
            if len(self._kv_stacks) >= 4:  # a few routes at a time; drop the oldest
                self._kv_stacks.pop(next(iter(self._kv_stacks)))
            hit = self._kv_stacks[key] = (list(sources), w, b, norm_w)
        return hit[1:]

    def release_fused(self):
        super().release_fused()
        self._kv_stacks.clear()

    def attn_scale(self, layer):
        return layer.self_attn.scaling

    def attn_dropout(self, layer):
        return getattr(self.config, "attention_dropout", 0.0) if layer.training else 0.0

    def attn_output(self, layer, o):
        return layer.self_attn.o_proj(o)

    def mlp(self, layer, h):
        fused = self.active.get(layer)
        if fused is not None:
            x = _rms_norm(layer.post_attention_layernorm, h)
            # CPU BLAS (measured, fp32): the fused (in, out) gate/up copy wins for one row, but from two
            # rows on the module's own (out, in) weights are 1.2-1.5x faster for this wide matrix
            if x.shape[0] * x.shape[1] > 1 and x.device.type == "cpu":
                gate, up = layer.mlp.gate_proj(x), layer.mlp.up_proj(x)
            else:
                gate, up = fused_matmul(x, *fused["gate_up"]).chunk(2, dim=-1)
            act = F.silu if type(layer.mlp.act_fn) is nn.SiLU else layer.mlp.act_fn
            down = layer.mlp.down_proj
            y = (act(gate) * up).view(-1, gate.shape[-1])  # (B*T, I)
            h2 = h.reshape(-1, h.shape[-1]) if down.bias is None else h.reshape(-1, h.shape[-1]) + down.bias
            return torch.addmm(h2, y, down.weight.t()).view(h.shape)  # residual added inside the matmul
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def final(self, h):
        return self.hf.model.norm(h)


def _plain_rms(norm) -> bool:
    """A norm that `_rms_norm` computes exactly as its module does (transformers' Llama-style RMSNorm)."""
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon") and \
        getattr(norm, "weight", None) is not None and norm.weight.dim() == 1


def _rms_norm(norm, h: torch.Tensor) -> torch.Tensor:
    if h.dtype != torch.float32:  # the module upcasts half precision; keep its exact arithmetic
        return norm(h)
    return F.rms_norm(h, (h.shape[-1],), norm.weight, norm.variance_epsilon)


def _rotate(x: torch.Tensor, rotary) -> torch.Tensor:
    """Rotary position embedding on (B, H, T, Dh), as transformers' apply_rotary_pos_emb:
    x * cos + rotate_half(x) * sin, where rotate_half(x) * sin = roll(x) * (sin with its first half
    negated), bitwise the same in four ops instead of nine."""
    cos, sin = rotary
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
