"""Adapter math for a batch in which every row may use a different adapter, and the layer that applies it.

Two fast paths, each beside the pure-torch reference the tests hold it to:

- **Plain LoRA** (:func:`gathered_lora_delta`): each row's factors are gathered into ``(n, r_max, d_in)`` /
  ``(n, d_out, r_max)`` stacks (lower ranks zero-padded, the scaling folded into B), and two batched matmuls
  apply them: ``B_i (A_i x)`` per row.
- **Shared basis** (:func:`shared_basis_delta`): rows whose adapters share one cohort basis ``U``, ``V`` pay one
  dense ``x V`` and one ``· U^T`` for all of them; only the R x R (or diagonal) core differs per row:
  ``U (S_i (V^T x))``.

Rows carry their adapter as a small integer slot into these stacks, built once per batch composition by the
runner; :class:`AdapterLinear` only reads the current :class:`BatchPlan`. Pure math: tensors in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from soppu.lora import lora_output

__all__ = [
    "AdapterLinear",
    "BatchPlan",
    "PlainGroup",
    "SharedGroup",
    "gathered_lora_delta",
    "reference_delta",
    "shared_basis_delta",
]


def gathered_lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row ``B_i (A_i x_i)``: ``x`` (n, T, d_in), ``a`` (n, r, d_in), ``b`` (n, d_out, r), scaling in ``b``."""
    return torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))


def shared_basis_delta(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, cores: torch.Tensor) -> torch.Tensor:
    """Per row ``U S_i V^T x_i``: ``x`` (n, T, d_in), ``u`` (d_out, R), ``v`` (d_in, R), ``cores`` (n, R, R) or
    (n, R) for diagonal cores. The two basis products are single dense matmuls over the whole group."""
    h = x @ v  # (n, T, R): shared by every row
    h = h * cores[:, None, :] if cores.dim() == 2 else torch.bmm(h, cores.transpose(1, 2))
    return h @ u.T


def reference_delta(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scaling: float) -> torch.Tensor:
    """One row's update the obvious way (the oracle for both fast paths): ``scaling * B (A x)``."""
    return lora_output(x, a, b, scaling)


@dataclass(frozen=True)
class PlainGroup:
    """Rows of the batch that use plain LoRA on one module, with their gathered factors."""

    rows: torch.Tensor  # (n,) long: batch row indices
    a: torch.Tensor  # (n, r_max, d_in)
    b: torch.Tensor  # (n, d_out, r_max), scaling folded in
    all_rows: bool = False  # rows == arange(batch): skip the gather/scatter

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return gathered_lora_delta(x, self.a, self.b)


@dataclass(frozen=True)
class SharedGroup:
    """Rows that use compressed adapters of one cohort basis on one module."""

    rows: torch.Tensor
    u: torch.Tensor  # (d_out, R)
    v: torch.Tensor  # (d_in, R)
    cores: torch.Tensor  # (n, R, R) or (n, R)
    all_rows: bool = False

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return shared_basis_delta(x, self.u, self.v, self.cores)


@dataclass
class BatchPlan:
    """For each adapted module (by its path in the model), the groups of rows and what they apply."""

    groups: dict[str, list[PlainGroup | SharedGroup]] = field(default_factory=dict)


class AdapterLinear(nn.Module):
    """A frozen ``nn.Linear`` plus whatever the current plan adds for each row of the batch.

    The plan lives in a holder shared by every wrapped layer, so switching batches is one assignment and
    the layers themselves keep no per-request state.
    """

    def __init__(self, name: str, base: nn.Linear, holder: PlanHolder) -> None:
        super().__init__()
        self.name = name
        self.base = base
        self.holder = holder

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight of its projections (dtype checks)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)  # nn.Module.__call__ is typed Any; through it so the base's hooks run
        groups = self.holder.plan.groups.get(self.name)
        if not groups:
            return y
        for group in groups:
            if group.all_rows:
                y = y + group.delta(x)
            else:
                y = y.index_add(0, group.rows, group.delta(x.index_select(0, group.rows)))
        return y


class PlanHolder:
    """The plan every :class:`AdapterLinear` of one model reads (empty: the base model for every row)."""

    def __init__(self) -> None:
        self.plan = BatchPlan()
