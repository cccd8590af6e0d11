"""The LoRA quantities, each defined exactly once.

PEFT's LoRA adds ``scaling * B @ A`` to a frozen weight ``W0`` (``B``: d_out x r, ``A``: r x d_in), so a layer
computes ``y = W0 x + scaling * B (A x)``. Everything in SOPPU that needs the scaling, the dense delta or the
LoRA output (reading, training the examples, verification, export, serving) calls these functions.
Pure math: tensors in, tensors out; no I/O.
"""

from __future__ import annotations

import math

import torch

__all__ = ["delta_weight", "lora_output", "lora_scaling"]


def lora_scaling(lora_alpha: float, r: int, *, use_rslora: bool = False) -> float:
    """The factor PEFT applies to ``B @ A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def delta_weight(b: torch.Tensor, a: torch.Tensor, scaling: float) -> torch.Tensor:
    """The dense update ``scaling * B @ A`` (d_out x d_in). Only for small shapes, tests and audits:
    compression and serving work on the factors and never form this matrix."""
    return scaling * (b @ a)


def lora_output(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float | torch.Tensor) -> torch.Tensor:
    """``scaling * B (A x)`` for inputs ``x`` of shape (..., d_in).

    ``a``/``b`` are either one adapter's factors (r x d_in, d_out x r) or one adapter per batch row
    (n x r x d_in, n x d_out x r, with ``x`` of shape (n, ..., d_in) and ``scaling`` broadcastable, e.g. n x 1 x 1):
    matmul broadcasting applies each row's own factors.
    """
    return scaling * ((x @ a.transpose(-1, -2)) @ b.transpose(-1, -2))
