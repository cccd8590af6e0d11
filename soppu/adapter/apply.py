"""Applying LoRA factors to a torch model without changing its weights, through forward hooks.

This is the readable reference path (the oracle that verification, the examples and the tests compare
against), not the serving path: each hooked ``nn.Linear`` returns ``W0 x + lora_output(x, A, B, scaling)``.
The factors can be swapped between forward passes (:meth:`LoraHooks.set`), which is how the example
generator trains many users' adapters in one batch (one adapter per batch row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType

import torch
from torch import nn

from soppu.adapter.model import LoraAdapter
from soppu.lora import lora_output

__all__ = ["Factors", "LoraHooks", "apply_adapter"]

# (A, B, scaling) for one module: A (r x d_in) and B (d_out x r), or per batch row (n x r x d_in, n x d_out x r).
Factors = tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]


class LoraHooks:
    """Forward hooks that add ``scaling * B (A x)`` to the output of the named modules. A context manager."""

    def __init__(self, model: nn.Module, factors: Mapping[str, Factors]) -> None:
        self.factors: dict[str, Factors] = dict(factors)
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook_for(name)) for name in self.factors]

    def _hook_for(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            a, b, scaling = self.factors[name]
            x = inputs[0]
            return output + lora_output(x.to(a.dtype), a, b, scaling).to(output.dtype)

        return hook

    def set(self, factors: Mapping[str, Factors]) -> None:
        """Replace the factors used from the next forward pass on (the set of modules stays the same)."""
        if factors.keys() != self.factors.keys():
            raise ValueError("LoraHooks.set must provide factors for exactly the hooked modules")
        self.factors = dict(factors)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> LoraHooks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def apply_adapter(model: nn.Module, adapter: LoraAdapter) -> LoraHooks:
    """Hook ``adapter`` into ``model`` (use as ``with apply_adapter(model, adapter): ...``)."""
    param = next(model.parameters())
    factors = {name: (m.a.to(param.device), m.b.to(param.device), m.scaling) for name, m in adapter.modules.items()}
    return LoraHooks(model, factors)
