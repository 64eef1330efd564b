"""Llama layout: Llama (2, 3), SmolLM2, Mistral, Qwen2, Qwen3 (RMSNorm pre-norm, rotary, grouped KV heads).

Covers q/k/v biases (Qwen2), explicit head_dim, Qwen3's per-head RMSNorm of queries and keys
(`q_norm`, `k_norm`, before the rotation), and sliding-window attention: Mistral's `sliding_window`
on every layer, Qwen2's and Qwen3's on the layers `layer_types` marks "sliding_attention" (only with
`use_sliding_window`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from torch import nn

from .base import Family, fused_matmul


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")

    mlp_matrices = 3  # gate, up, down

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
        if not all(_plain_rms(n) for n in (layer.input_layernorm, layer.post_attention_layernorm, *_qk_norms(attn))):
            return None
        return {"qkv": [attn.q_proj, attn.k_proj, attn.v_proj], "gate_up": [mlp.gate_proj, mlp.up_proj]}

    def attn_input(self, layer, h):
        if layer in self.active:  # one fused kernel instead of the module's six ops (same result)
            return _rms_norm(layer.input_layernorm, h)
        return layer.input_layernorm(h)

    def qkv(self, layer, x, rotary):
        attn = layer.self_attn
        fused = self.active.get(layer)
        if fused is not None:
            B, T, _ = x.shape
            H, Hkv, Dh = self.dims
            qkv = fused_matmul(x, *fused["qkv"]).view(B, T, H + 2 * Hkv, Dh)
            qk = qkv[:, :, :H + Hkv]
            if hasattr(attn, "q_norm"):  # Qwen3: each head's query and key RMS-normalized
                qk = torch.cat([_rms_norm(attn.q_norm, qk[:, :, :H]), _rms_norm(attn.k_norm, qk[:, :, H:])], dim=2)
            qk = _rotate(qk.transpose(1, 2), rotary)  # (B, H + Hkv, T, Dh): queries and keys in one rotation
            return qk[:, :H], qk[:, H:], qkv[:, :, H + Hkv:].transpose(1, 2)
        q = self._project(attn.q_proj, x, self.num_heads, getattr(attn, "q_norm", None))
        k = self._project(attn.k_proj, x, self.num_kv_heads, getattr(attn, "k_norm", None))
        v = self._project(attn.v_proj, x, self.num_kv_heads)
        return _rotate(q, rotary), _rotate(k, rotary), v

    def q(self, layer, x, rotary):
        attn = layer.self_attn
        return _rotate(self._project(attn.q_proj, x, self.num_heads, getattr(attn, "q_norm", None)), rotary)

    def kv(self, layer, x, rotary):
        attn = layer.self_attn
        fused = self.active.get(layer)
        if fused is not None:
            w, b = fused["qkv"]
            H, Hkv, Dh = self.dims
            kv = fused_matmul(x, w[:, H * Dh:], None if b is None else b[H * Dh:])  # the key/value columns only
            k, v = kv.view(*x.shape[:2], 2 * Hkv, Dh).chunk(2, dim=2)  # (B, T, Hkv, Dh) each
            if hasattr(attn, "k_norm"):
                k = _rms_norm(attn.k_norm, k)
            return _rotate(k.transpose(1, 2), rotary), v.transpose(1, 2)
        k = self._project(attn.k_proj, x, self.num_kv_heads, getattr(attn, "k_norm", None))
        return _rotate(k, rotary), self._project(attn.v_proj, x, self.num_kv_heads)

    def _project(self, proj, x, n_heads, norm=None):
        """(B, T, D) -> (B, n_heads, T, Dh), with a per-head norm first where the layer has one (as
        transformers applies Qwen3's q_norm / k_norm, on (B, T, heads, Dh))."""
        B, T, _ = x.shape
        y = proj(x).view(B, T, n_heads, self.head_dim)
        if norm is not None:
            y = norm(y)
        return y.transpose(1, 2)

    def sliding_windows(self):
        L = self.num_layers
        window = getattr(self.config, "sliding_window", None)
        if not window or getattr(self.config, "use_sliding_window", True) is False:
            return [None] * L
        if self.config.model_type == "mistral":  # every layer (MistralModel ignores layer_types)
            return [window] * L
        types = getattr(self.config, "layer_types", None) or ["sliding_attention"] * L
        return [window if t == "sliding_attention" else None for t in types]

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

    def gguf_tensors(self):
        """Llama proper (not Mistral, Qwen2 or Qwen3, which llama.cpp runs as other architectures), without
        biases: llama.cpp's `llama` layout. The head is written only when it is not the embedding."""
        cfg = self.config
        if cfg.model_type != "llama" or getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            return None
        m = self.hf.model
        out = [("token_embd.weight", m.embed_tokens.weight, None)]
        for i, layer in enumerate(m.layers):
            attn, mlp = layer.self_attn, layer.mlp
            out += [(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, None),
                    (f"blk.{i}.attn_q.weight", attn.q_proj.weight, self.num_heads),
                    (f"blk.{i}.attn_k.weight", attn.k_proj.weight, self.num_kv_heads),
                    (f"blk.{i}.attn_v.weight", attn.v_proj.weight, None),
                    (f"blk.{i}.attn_output.weight", attn.o_proj.weight, None),
                    (f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, None),
                    (f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight, None),
                    (f"blk.{i}.ffn_up.weight", mlp.up_proj.weight, None),
                    (f"blk.{i}.ffn_down.weight", mlp.down_proj.weight, None)]
        out.append(("output_norm.weight", m.norm.weight, None))
        head = self.hf.get_output_embeddings()
        if head.weight is not m.embed_tokens.weight:
            out.append(("output.weight", head.weight, None))
        return out


def _plain_rms(norm) -> bool:
    """A norm that `_rms_norm` computes exactly as its module does (transformers' Llama-style RMSNorm)."""
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon") and \
        getattr(norm, "weight", None) is not None and norm.weight.dim() == 1


def _qk_norms(attn) -> list:
    return [n for n in (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)) if n is not None]


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
