"""The in-memory form of a validated LoRA adapter: per module, the factors and the scaling PEFT applies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from soppu.adapter.config import AdapterConfig
from soppu.lora import delta_weight

__all__ = ["LoraAdapter", "LoraModule", "tensor_key"]

_PREFIX = "base_model.model."


def tensor_key(module: str, factor: str) -> str:
    """The name PEFT gives a factor in ``adapter_model.safetensors``; ``factor`` is ``lora_A`` or ``lora_B``."""
    return f"{_PREFIX}{module}.{factor}.weight"


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: ``W = scaling * B @ A`` with B (d_out x r) and A (r x d_in)."""

    b: torch.Tensor
    a: torch.Tensor
    scaling: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the adapted weight."""
        return self.b.shape[0], self.a.shape[1]

    def delta(self) -> torch.Tensor:
        return delta_weight(self.b, self.a, self.scaling)


@dataclass(frozen=True)
class LoraAdapter:
    """A validated PEFT LoRA adapter. ``modules`` maps a module path (``model.layers.0.self_attn.q_proj``)
    to its factors; the iteration order is sorted by module path."""

    config: AdapterConfig
    modules: dict[str, LoraModule] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        return self.config.base_model_name_or_path

    def __iter__(self) -> Iterator[tuple[str, LoraModule]]:
        return iter(sorted(self.modules.items()))

    def num_parameters(self) -> int:
        return sum(m.a.numel() + m.b.numel() for m in self.modules.values())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoraAdapter:
        """A copy with every factor moved/cast (e.g. upcast bf16 to fp32 before any linear algebra)."""
        moved = {
            name: LoraModule(m.b.to(device=device, dtype=dtype), m.a.to(device=device, dtype=dtype), m.scaling)
            for name, m in self.modules.items()
        }
        return LoraAdapter(self.config, moved)
