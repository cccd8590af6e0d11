"""The running batch's key/value cache: rows join and leave at token boundaries.

Rows are left-padded to a common length; ``mask`` (rows x length, 1 = real token) tells attention which
columns to ignore. Rotary position embeddings are already applied to cached keys, so padding never changes a
row's positions: each row's next position is its own count of real tokens.

Works on Hugging Face's ``DynamicCache`` through its per-layer ``keys``/``values`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin

__all__ = ["BatchKV", "new_cache", "zero_pad"]


def new_cache() -> DynamicCache:
    return DynamicCache()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = []
    for layer in cache.layers:
        # Attention layers after a prefill, the only kind the runner's models have (no linear attention).
        if not isinstance(layer, CacheLayerMixin) or layer.keys is None or layer.values is None:
            raise TypeError(f"a cache layer without keys and values: {type(layer).__name__}")
        layers.append((layer.keys, layer.values))
    return layers


def _from_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=layers)


def zero_pad(t: torch.Tensor, length: int, dim: int, *, left: bool) -> torch.Tensor:
    """``t`` grown to ``length`` along ``dim`` with zeros, before (``left``) or after its data."""
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    zeros = t.new_zeros(shape)
    return torch.cat([zeros, t] if left else [t, zeros], dim=dim)


@dataclass
class BatchKV:
    """The cache of the running batch, its padding mask, and each row's next position."""

    cache: DynamicCache
    mask: torch.Tensor  # (rows, length) long
    positions: torch.Tensor  # (rows,) long

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask and position ids for one more token per row; extends the mask for that token."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask, self.positions[:, None]

    def advance(self) -> None:
        self.positions = self.positions + 1

    def merge(self, other: BatchKV) -> BatchKV:
        """This batch's rows, then ``other``'s, left-padded to a common length."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        layers = [
            (
                torch.cat([zero_pad(k1, length, 2, left=True), zero_pad(k2, length, 2, left=True)]),
                torch.cat([zero_pad(v1, length, 2, left=True), zero_pad(v2, length, 2, left=True)]),
            )
            for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True)
        ]
        mask = torch.cat([zero_pad(self.mask, length, 1, left=True), zero_pad(other.mask, length, 1, left=True)])
        return BatchKV(_from_layers(layers), mask, torch.cat([self.positions, other.positions]))

    def select(self, rows: torch.Tensor) -> BatchKV:
        """Keep only ``rows`` (in that order), dropping leading columns that are padding in every kept row."""
        mask = self.mask.index_select(0, rows)
        real = mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else mask.shape[1]
        layers = [
            (k.index_select(0, rows)[:, :, start:], v.index_select(0, rows)[:, :, start:])
            for k, v in _layers(self.cache)
        ]
        return BatchKV(_from_layers(layers), mask[:, start:].contiguous(), self.positions.index_select(0, rows))
