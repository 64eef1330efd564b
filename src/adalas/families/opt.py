"""OPT: the pre-LN layout (125m, 1.3b, ...) and the post-LN 350m layout with embedding projections."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Family


class OPTFamily(Family):
    name = "opt"
    model_types = ("opt",)

    def __init__(self, hf):
        super().__init__(hf)
        self.decoder = hf.model.decoder
        self.pre_norm = self.config.do_layer_norm_before
        self.residual_dropout = self.config.dropout

    def layers(self):
        return self.decoder.layers

    def _set_layer_list(self, layers):
        self.decoder.layers = layers

    @property
    def intermediate_size(self) -> int:
        return self.config.ffn_dim

    def head_macs(self) -> int:
        out = self.decoder.project_out
        return super().head_macs() + (out.weight.numel() if out is not None else 0)

    def token_embedding(self, input_ids):
        return self.decoder.embed_tokens(input_ids)

    def embed(self, input_ids, position_ids):
        h = self.decoder.embed_tokens(input_ids)
        if self.decoder.project_in is not None:
            h = self.decoder.project_in(h)
        return h + self.position_signal(position_ids)

    def position_signal(self, position_ids):
        table = self.decoder.embed_positions
        return F.embedding(position_ids + table.offset, table.weight)

    def attn_input(self, layer, h):
        return layer.self_attn_layer_norm(h) if self.pre_norm else h

    def qkv(self, layer, x, rotary):
        k, v = self.kv(layer, x, rotary)
        return self.q(layer, x, rotary), k, v

    def q(self, layer, x, rotary):
        return self._heads(layer.self_attn.q_proj(x), self.num_heads)

    def kv(self, layer, x, rotary):
        attn = layer.self_attn
        return self._heads(attn.k_proj(x), self.num_heads), self._heads(attn.v_proj(x), self.num_heads)

    def attn_scale(self, layer):
        return layer.self_attn.scaling

    def attn_dropout(self, layer):
        return self.config.attention_dropout if layer.training else 0.0

    def residual_outputs(self, layer):
        return [layer.self_attn.out_proj, layer.fc2]

    def attn_output(self, layer, o):
        return layer.self_attn.out_proj(o)

    def after_attention(self, layer, h, a):
        h = h + self._dropout(layer, a)
        return h if self.pre_norm else layer.self_attn_layer_norm(h)

    def mlp(self, layer, h):
        x = layer.final_layer_norm(h) if self.pre_norm else h
        x = layer.fc2(layer.activation_fn(layer.fc1(x)))
        h = h + self._dropout(layer, x)
        return h if self.pre_norm else layer.final_layer_norm(h)

    def final(self, h):
        if self.decoder.final_layer_norm is not None:
            h = self.decoder.final_layer_norm(h)
        if self.decoder.project_out is not None:
            h = self.decoder.project_out(h)
        return h
