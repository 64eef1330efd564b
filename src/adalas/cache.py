"""A preallocated key/value cache for the depth loop.

One (B, H_kv, T_max, Dh) tensor pair per layer, allocated once per generation; all rows share the
write position (prompts are left-padded). Under `kv_fill="mask"` a (L, B, T_max) bool tensor records
which (layer, token) pairs hold keys/values; attention at layer i ignores the others.
Memory: `kv_fill="mask"` keeps the same buffers (positions are shared across layers and rows, so
freeing a skipped slot would need a ragged layout that slows every step); it saves compute, not memory.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype, device: torch.device, track_stored: bool = False):
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.key_valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)  # attention mask
        self.stored = (torch.zeros(num_layers, batch_size, max_length, dtype=torch.bool, device=device)
                       if track_stored else None)
        self.length = 0
        self.max_length = max_length

    def append_mask(self, attention_mask: torch.Tensor) -> None:
        """Record which of the next positions are real tokens (before the layers write there)."""
        T = attention_mask.shape[1]
        if self.length + T > self.max_length:
            raise ValueError(f"cache: {self.length + T} positions exceed the preallocated {self.max_length}")
        self.key_valid[:, self.length:self.length + T] = attention_mask.bool()

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        s, e = self.length, self.length + k.shape[2]
        if rows is None:
            self.keys[layer][:, :, s:e] = k
            self.values[layer][:, :, s:e] = v
        else:
            self.keys[layer][rows, :, s:e] = k
            self.values[layer][rows, :, s:e] = v

    def read(self, layer: int, end: int, rows: torch.Tensor | None = None):
        if rows is None:
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        return self.keys[layer][rows, :, :end], self.values[layer][rows, :, :end]

    def mark_stored(self, layer: int, stored: torch.Tensor | bool, T: int, rows: torch.Tensor | None = None) -> None:
        if self.stored is None:
            return
        s, e = self.length, self.length + T
        if rows is None:
            self.stored[layer, :, s:e] = stored
        else:
            self.stored[layer, rows, s:e] = stored

    def stored_keys(self, layer: int, end: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.stored[layer, :, :end]
        return mask if rows is None else mask[rows]

    def advance(self, T: int) -> None:
        self.length += T

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (rejected speculative tokens)."""
        self.key_valid[:, length:] = False
        if self.stored is not None:
            self.stored[:, :, length:] = False
        self.length = length
