"""GPT-2: learned positions, pre-LN, fused c_attn (Conv1D) projections."""
from __future__ import annotations

from transformers.pytorch_utils import Conv1D

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

    def q(self, layer, x, rotary):
        return self._heads(self._c_attn(layer, x, 0, 1), self.num_heads)

    def kv(self, layer, x, rotary):
        k, v = self._c_attn(layer, x, 1, 3).split(self.hidden_size, dim=2)
        return self._heads(k, self.num_heads), self._heads(v, self.num_heads)

    def _c_attn(self, layer, x, start, stop):
        """Columns [start * D, stop * D) of the fused c_attn projection (queries 0-1, keys/values 1-3),
        without computing the others where c_attn is a plain Conv1D; through the module otherwise
        (a peft/LoRA wrapper adds its own term, which slicing the base weight would miss)."""
        c_attn, D = layer.attn.c_attn, self.hidden_size
        if type(c_attn) is not Conv1D or c_attn._forward_hooks or c_attn._forward_pre_hooks:
            return c_attn(x)[..., start * D:stop * D]
        return x @ c_attn.weight[:, start * D:stop * D] + c_attn.bias[start * D:stop * D]  # Conv1D: (D, 3D), (3D,)

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
