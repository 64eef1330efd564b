"""What the depth loop needs from an architecture, and nothing more.

adalas drives a Hugging Face model's submodules from outside (as LayerSkip does) instead of
calling its decoder layers: the loop must run one layer's key/value projection alone (KV
propagation), run a layer on a subset of rows, and write into its own preallocated cache, none of
which a Hugging Face layer call offers. Each family file says, in a few lines per method, how its
layer computes; the loop in `engine.py` is shared. Every reference to transformers internals lives
here, so a rename in a release is fixed in one place.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

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
        self._fused = weakref.WeakKeyDictionary()  # layer -> (source key, fused tensors), while a block holds them
        self._holds = 0  # open `hold_fused()` blocks (`fused_weights()` is one): the copies live until the last ends
        self.active: dict[nn.Module, dict] = {}  # inside `fused_weights()`: layer -> fused tensors
        self.dims: tuple[int, int, int] = (0, 0, 0)  # inside `fused_weights()`: (H, H_kv, Dh), read once
        self._windows: tuple[int | None, ...] | None = None  # `windows`, read from the config on first use

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

    @property
    def intermediate_size(self) -> int:
        return self.config.intermediate_size

    mlp_matrices: int = 2  # weight matrices in a layer's MLP (3 for a gated one)

    def head_macs(self) -> int:
        """Multiply-accumulates per token of `final()` + `head()` (the output projection's weights)."""
        return self.hf.get_output_embeddings().weight.numel()

    # -- exporting a static route as a plain checkpoint -------------------------------------------
    layer_count_fields: tuple[str, ...] = ("num_hidden_layers",)  # config fields holding L
    per_layer_fields: tuple[str, ...] = ("layer_types",)  # config lists with one entry per layer

    def _set_layer_list(self, layers: nn.ModuleList) -> None:
        raise NotImplementedError

    def set_layers(self, keep: list[int]) -> None:
        """Keep only the layers in `keep` (in place): renumber their `layer_idx`, update the config's
        layer count and per-layer lists. The model is then the plain checkpoint of that route."""
        old = self.layers()
        L = len(old)
        kept = nn.ModuleList([old[i] for i in keep])
        for new_idx, layer in enumerate(kept):
            for mod in layer.modules():
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = new_idx
        self._set_layer_list(kept)
        self._windows = None
        for name in self.layer_count_fields:
            setattr(self.config, name, len(keep))
        for name in self.per_layer_fields:
            values = getattr(self.config, name, None)
            if isinstance(values, (list, tuple)) and len(values) == L:
                setattr(self.config, name, [values[i] for i in keep])

    # -- llama.cpp's GGUF layout (adalas.gguf_export) ----------------------------------------------
    def gguf_tensors(self) -> list[tuple[str, torch.Tensor, int | None]] | None:
        """The weights under llama.cpp's tensor names, for a model llama.cpp runs as its `llama`
        architecture: (name, weight, heads), `heads` set on the query and key projections, whose rows
        llama.cpp wants permuted (with that head count) to its interleaved rotation. None: the model
        has no such layout (base: none)."""
        return None

    # -- decode fast path: fused projections -------------------------------------------------
    def residual_outputs(self, layer: nn.Module) -> list[nn.Module]:
        """The projections that write into the residual stream (attention output, MLP output).
        Zeroing them makes a pre-norm layer the identity (benchmarks build a "redundant" model so)."""
        raise NotImplementedError

    def fusion_groups(self, layer: nn.Module) -> dict[str, list[nn.Module]] | None:
        """Projections of one layer that read the same input and can run as one matmul
        (e.g. {"qkv": [q, k, v], "gate_up": [gate, up]}), or None. Base: none. The fused copy of a
        group is (weight (in, out), bias or None): `fused_matmul(x, *fused[name])`."""
        return None

    def _fused_for(self, layer: nn.Module) -> dict | None:
        """The layer's fused weights, built on first use and rebuilt when a source weight changes
        (in place, as an optimizer step does, or replaced). None where the projections are not plain
        nn.Linear (peft/LoRA or quantized wrappers) or something hooks the layer (hooks observe calls)."""
        groups = self.fusion_groups(layer)
        if groups is None or _hooked(layer):
            return None
        mods = [m for g in groups.values() for m in g]
        if any(type(m) is not nn.Linear for m in mods):
            return None

        def build() -> dict:
            fused = {}
            for name, g in groups.items():
                # (in_features, sum of out_features): decode multiplies (B*T, in) @ w with no transpose op
                w = torch.cat([m.weight.detach() for m in g]).t().contiguous()
                b = None
                if any(m.bias is not None for m in g):
                    b = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in g])
                fused[name] = (w, b)
            return fused
        return self._cached_copy(layer, mods, build)

    def _cached_copy(self, owner: nn.Module, sources: list[nn.Module], build) -> dict:
        """`build()`'s weight copies for `owner`, kept in `_fused` until a weight or bias of `sources`
        changes (in place, as an optimizer step does, or replaced)."""
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for m in sources for t in (m.weight, m.bias)
                    if t is not None)
        hit = self._fused.get(owner)
        if hit is None or hit[0] != key:
            hit = self._fused[owner] = (key, build())
        return hit[1]

    @contextmanager
    def hold_fused(self) -> Iterator[None]:
        """Keep the fused copies across the `fused_weights()` blocks (generate calls) inside this one,
        and free them when it ends. The copies are about 70% of a Llama layer again (an out-of-memory
        error for a large model on a GPU if kept), and rebuilding them costs about 0.3 s per call for
        the embedded model on a CPU: loops of many calls (evaluation, benchmarks) hold them."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self.release_fused()

    @contextmanager
    def fused_weights(self, enabled: bool = True) -> Iterator[None]:
        """Within this block, `qkv`/`kv`/`mlp` use fused weights where a layer allows it. Only for
        eval-mode, no-grad decoding: a training step must reach the original parameters. The copies
        are freed when the block ends, unless a `hold_fused()` block around it keeps them."""
        if not enabled or torch.is_grad_enabled() or self.hf.training:
            yield
            return
        with self.hold_fused():
            self.dims = (self.num_heads, self.num_kv_heads, self.head_dim)  # config reads are slow per layer
            active = {}
            for layer in self.layers():
                fused = self._fused_for(layer)
                if fused is not None:
                    active[layer] = fused
            self.active = active
            try:
                yield
            finally:
                self.active = {}

    def fused_bytes(self) -> int:
        """Memory held by fused weight copies (0 outside `fused_weights()` / `hold_fused()` blocks)."""
        return sum(t.numel() * t.element_size() for _, f in self._fused.values() for w, b in f.values()
                   for t in (w, b) if t is not None)

    def release_fused(self) -> None:
        self._fused = weakref.WeakKeyDictionary()

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
        """Keys and values only: all a skipped layer computes under KV propagation (in modes that
        decide per token)."""
        raise NotImplementedError

    def q(self, layer: nn.Module, x: torch.Tensor, rotary: Any) -> torch.Tensor:
        """Queries only, (B, H, T, Dh), position encoding applied: what a token that runs the layer
        adds to the keys/values every token computes (a teacher-forced pass that gathers runners).
        Base: from `qkv` (correct, computes keys/values again)."""
        return self.qkv(layer, x, rotary)[0]

    def sliding_windows(self) -> list[int | None]:
        """Per layer, its sliding attention window w (a query attends to the keys of the last w
        positions, itself included, as transformers' `sliding_window_overlay` counts cache slots), or
        None for plain causal attention. Base: none."""
        return [None] * self.num_layers

    @property
    def windows(self) -> tuple[int | None, ...]:
        """`sliding_windows()`, read once (set_layers re-reads it); () when no layer has a window."""
        if self._windows is None:
            w = tuple(self.sliding_windows())
            self._windows = w if any(x is not None for x in w) else ()
        return self._windows

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
        head = self.hf.lm_head
        if self.active and h.device.type == "cpu" and h.dtype == torch.float32 and type(head) is nn.Linear \
                and head.bias is None and not _hooked(head):
            return self._decode_head(head, h)
        return head(h)

    def _decode_head(self, head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """The head while decoding on a CPU, where the BLAS speed of this one (vocab x hidden) matmul
        depends on the layout (measured, fp32, 1 thread): one row is 1.8x faster against a (hidden,
        vocab) copy of the weight (kept like the fused layer weights), and 2..72 rows 1.2-2x faster
        as weight @ rows^T than as rows @ weight^T (what nn.Linear and transformers run)."""
        x = h.reshape(-1, h.shape[-1])
        if x.shape[0] == 1:
            copy = self._cached_copy(head, [head], lambda: {"head": (head.weight.detach().t().contiguous(), None)})
            y = torch.mm(x, copy["head"][0])
        else:
            y = torch.mm(head.weight, x.t()).t()
        return y.reshape(*h.shape[:-1], y.shape[-1])

    # -- helpers for subclasses -----------------------------------------------------------------
    residual_dropout: float = 0.0

    def _dropout(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.residual_dropout and layer.training:
            return F.dropout(x, p=self.residual_dropout, training=True)
        return x

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)


def fused_matmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(..., in) @ fused (in, out) weight (+ bias) -> (..., out), as one BLAS call."""
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.mm(x2, w) if b is None else torch.addmm(b, x2, w)
    return y.view(*x.shape[:-1], w.shape[1])


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would observe this module or a submodule (fusing would bypass them)."""
    from torch.nn.modules import module as torch_module
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def sinusoid(position_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position vectors, (B, T, dim): the controller's position input for rotary models."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=position_ids.device) / max(half, 1))
    angles = position_ids[..., None].float() * freqs  # (B, T, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half))
