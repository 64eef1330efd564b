"""GPT-2: learned positions, pre-LN, fused c_attn (Conv1D) projections."""
from __future__ import annotations

from .base import Family


class GPT2Family(Family):
    name = "gpt2"
    model_types = ("gpt2",)

    def __init__(self, hf):
        super().__init__(hf)
        self.residual_dropout = self.config.resid_pdrop

    @property
    def hidden_size(self) -> int:
        return self.config.n_embd

    @property
    def num_heads(self) -> int:
        return self.config.n_head

    @property
    def max_positions(self):
        return self.config.n_positions

    layer_count_fields = ("n_layer",)

    @property
    def intermediate_size(self) -> int:
        return self.config.n_inner or 4 * self.hidden_size

    def layers(self):
        return self.hf.transformer.h

    def _set_layer_list(self, layers):
        self.hf.transformer.h = layers

    def set_layers(self, keep):
        # this option scales layer i's attention by 1 / (i + 1): renumbered layers would change it
        if self.config.scale_attn_by_inverse_layer_idx and list(keep) != list(range(len(keep))):
            raise ValueError("depth: this GPT-2 model scales attention by layer index "
                             "(scale_attn_by_inverse_layer_idx); only trailing layers can be removed")
        super().set_layers(keep)

    def token_embedding(self, input_ids):
        return self.hf.transformer.wte(input_ids)

    def embed(self, input_ids, position_ids):
        return self.hf.transformer.drop(self.token_embedding(input_ids) + self.position_signal(position_ids))

    def position_signal(self, position_ids):
        return self.hf.transformer.wpe(position_ids)

    def attn_input(self, layer, h):
        return layer.ln_1(h)

    def qkv(self, layer, x, rotary):
        q, k, v = layer.attn.c_attn(x).split(self.hidden_size, dim=2)
        return self._heads(q, self.num_heads), self._heads(k, self.num_heads), self._heads(v, self.num_heads)

    def kv(self, layer, x, rotary):
        # c_attn is one fused projection; slice out the key/value columns so q is never computed.
        w, b = layer.attn.c_attn.weight, layer.attn.c_attn.bias  # Conv1D: (D, 3D), (3D,)
        D = self.hidden_size
        kv = x @ w[:, D:] + b[D:]
        k, v = kv.split(D, dim=2)
        return self._heads(k, self.num_heads), self._heads(v, self.num_heads)

    def attn_scale(self, layer):
        return layer.attn.scaling

    def attn_dropout(self, layer):
        return self.config.attn_pdrop if layer.training else 0.0

    def residual_outputs(self, layer):
        return [layer.attn.c_proj, layer.mlp.c_proj]

    def attn_output(self, layer, o):
        return layer.attn.c_proj(o)

    def mlp(self, layer, h):
        return h + self._dropout(layer, layer.mlp(layer.ln_2(h)))

    def final(self, h):
        return self.hf.transformer.ln_f(h)
