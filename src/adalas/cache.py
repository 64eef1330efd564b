"""A preallocated key/value cache for the depth loop.

One (B, H_kv, T_max, Dh) tensor pair per layer (views of one (L, B, H_kv, T_max, Dh) pair when all
layers have the same length: one allocation), allocated once per generation; all rows share the
write position ("slot"; prompts are left-padded, so a row's slot and its position id differ). A
(B, T_max) bool mask, `key_valid`, says which slots hold real tokens: left padding, and the holes a
batched self-speculative round leaves where a row accepted fewer drafted tokens than another.

Under `kv_fill="mask"` in a mode that decides per token (`DepthConfig.masks_skipped_kv`) a
(L, B, T_max) bool tensor records which (layer, token) pairs hold keys and values; attention at layer
i ignores the others. (With one route per sequence no token ever attends to a skipped one, so
nothing needs recording.)

Memory: a layer that a *static* route skips never stores a generated token (under either `kv_fill`:
nothing would read it), so its buffers hold only the prompt (or nothing, with `skip_prompt=True`):
`layer_lengths` sizes each layer's buffers (early exit after half the layers then needs about half
the cache). Routes that vary per token or per sequence keep full buffers: positions are shared
across rows, so freeing a skipped slot would need a ragged layout that slows every step; there it
saves compute, not memory.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype, device: torch.device, track_stored: bool = False,
                 layer_lengths: list[int] | None = None):
        self.layer_lengths = list(layer_lengths) if layer_lengths is not None else [max_length] * num_layers
        if all(n == max_length for n in self.layer_lengths):
            self._stack(torch.zeros(num_layers, batch_size, num_kv_heads, max_length, head_dim, dtype=dtype,
                                    device=device))
        else:
            self.all_keys = self.all_values = None
            self.keys = [torch.zeros(batch_size, num_kv_heads, n, head_dim, dtype=dtype, device=device)
                         for n in self.layer_lengths]
            self.values = [torch.zeros_like(k) for k in self.keys]
        self.key_valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)  # attention mask
        self.stored = (torch.zeros(num_layers, batch_size, max_length, dtype=torch.bool, device=device)
                       if track_stored else None)
        self.length = 0
        self.max_length = max_length
        self.has_holes = False  # some slot before `length` is not a real token (padding or a rejected draft)
        self.peak_bytes = self.nbytes

    def _stack(self, keys: torch.Tensor, values: torch.Tensor | None = None) -> None:
        self.all_keys = keys  # (L, B, H_kv, T_max, Dh)
        self.all_values = torch.zeros_like(keys) if values is None else values
        self.keys, self.values = list(self.all_keys.unbind(0)), list(self.all_values.unbind(0))

    @property
    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (the masks are not counted: a few bits per slot)."""
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def append_mask(self, attention_mask: torch.Tensor, all_valid: bool | None = None) -> None:
        """Record which of the next positions are real tokens (before the layers write there).
        `all_valid=True` tells that the mask has no zero (skips a device sync)."""
        T = attention_mask.shape[1]
        if self.length + T > self.max_length:
            raise ValueError(f"cache: {self.length + T} positions exceed the preallocated {self.max_length}")
        self.key_valid[:, self.length:self.length + T] = attention_mask.bool()
        if all_valid is None:
            all_valid = bool(attention_mask.bool().all())
        self.has_holes = self.has_holes or not all_valid

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        s, e = self.length, self.length + k.shape[2]
        if rows is None:
            self.keys[layer].narrow(2, s, e - s).copy_(k)
            self.values[layer].narrow(2, s, e - s).copy_(v)
        else:
            self.keys[layer][rows, :, s:e] = k
            self.values[layer][rows, :, s:e] = v

    def read(self, layer: int, end: int, rows: torch.Tensor | None = None):
        if rows is None:
            return self.keys[layer].narrow(2, 0, end), self.values[layer].narrow(2, 0, end)
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

    def rewind(self, length: int) -> None:
        """Move the write position back without forgetting anything: the next step rewrites the
        slots from `length` on (self-speculative verification over already drafted slots)."""
        self.length = length

    def truncate(self, length: int) -> None:
        """Forget slots from `length` on (rejected speculative tokens)."""
        self.key_valid[:, length:] = False
        if self.stored is not None:
            self.stored[:, :, length:] = False
        self.length = length

    def invalidate(self, start: int, keep: torch.Tensor) -> None:
        """Slots start..start+n-1 stay real only where `keep` (B, n) is True: the holes a batched
        self-speculative round leaves in rows that accepted fewer tokens than others."""
        n = keep.shape[1]
        self.key_valid[:, start:start + n] &= keep
        self.has_holes = True

    def ensure(self, length: int) -> None:
        """Room for `length` slots: reallocate (doubling) and copy when the buffers are too short.
        Only full-length layers grow; a layer sized for the prompt alone never receives new tokens."""
        if length <= self.max_length:
            return
        new = max(length, 2 * self.max_length)
        grow = new - self.max_length

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = grow
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        full = [n == self.max_length for n in self.layer_lengths]
        if self.all_keys is not None:
            self._stack(pad(self.all_keys, 3), pad(self.all_values, 3))
        else:
            self.keys = [pad(k, 2) if f else k for k, f in zip(self.keys, full)]
            self.values = [pad(v, 2) if f else v for v, f in zip(self.values, full)]
        self.layer_lengths = [new if f else n for n, f in zip(self.layer_lengths, full)]
        self.key_valid = pad(self.key_valid, 1)
        if self.stored is not None:
            self.stored = pad(self.stored, 2)
        self.max_length = new
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
