"""The data the compression layer passes around: shared bases, per-adapter cores, and a whole compression.

A compression of N adapters holds, for each of its K clusters (K = 1 without clustering), one
:class:`ModuleBasis` per target module: ``U`` (d_out x R) and ``V`` (d_in x R) with orthonormal columns. Each
adapter belongs to one cluster and keeps, per module, a core ``S``: an R x R matrix (JD-Full) or a length-R
vector, the diagonal of ``S`` (JD-Diag). The adapter's update is then ``W ~ U S V^T``, with the LoRA
scaling already folded into ``S`` (so the served scaling is 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

__all__ = ["Cluster", "CompressedAdapter", "Compression", "Mode", "ModuleBasis"]


class Mode(StrEnum):
    FULL = "full"  # S_i is a full R x R matrix
    DIAG = "diag"  # S_i is diagonal (stored as its length-R diagonal)


@dataclass(frozen=True)
class ModuleBasis:
    """The shared bases of one module in one cluster."""

    u: torch.Tensor  # d_out x R, orthonormal columns
    v: torch.Tensor  # d_in x R, orthonormal columns

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the module's weight."""
        return self.u.shape[0], self.v.shape[0]


@dataclass(frozen=True)
class Cluster:
    """One cluster's shared bases, one per target module."""

    bases: dict[str, ModuleBasis]


@dataclass(frozen=True)
class CompressedAdapter:
    """One adapter in compressed form."""

    name: str
    cluster: int  # index into Compression.clusters
    cores: dict[str, torch.Tensor]  # module -> R x R (full) or R (diag); scaling folded in
    source_ranks: dict[str, int]  # module -> the original LoRA rank r
    source_scalings: dict[str, float]  # module -> the original LoRA scaling (already folded into the core)
    errors: dict[str, float] = field(default_factory=dict)  # module -> relative Frobenius error


@dataclass(frozen=True)
class Compression:
    """N adapters compressed jointly: K clusters of shared bases plus one compressed form per adapter."""

    mode: Mode
    base_model: str | None
    target_modules: tuple[str, ...] | str
    clusters: list[Cluster]
    adapters: list[CompressedAdapter]

    def basis(self, adapter: CompressedAdapter, module: str) -> ModuleBasis:
        return self.clusters[adapter.cluster].bases[module]

    def adapter(self, name: str) -> CompressedAdapter:
        for candidate in self.adapters:
            if candidate.name == name:
                return candidate
        raise KeyError(name)
