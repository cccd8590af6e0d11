"""Clustering whole adapters (all their modules together) into K groups that share bases: Lloyd's algorithm.

An adapter's distance to a cluster is how badly that cluster's bases reconstruct it: the mean over modules of
the squared relative error of its projection ``S = U^T W V`` (:func:`assignment_errors`). Rounds alternate

1. fit each cluster's bases, module by module (``jd.fit_module``, warm-started from the previous round);
2. move every adapter to the cluster that reconstructs it best;

until no adapter moves or a round cap. The start is k-means++-style seeding with a seeded generator: the
first seed uniformly, each next one with probability proportional to its distance to the nearest seed, where
the distance to a seed adapter is the projection error onto that adapter's own column and row spaces. A
cluster left empty takes the adapter its own cluster fits worst (from a cluster with more than one member).
Pure math on :class:`~soppu.compression.factors.FactorStack` s; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from soppu.compression.factors import (
    FactorStack,
    auto_chunk_size,
    chunks,
    core_squared_norms,
    project_cores,
    squared_norms,
)
from soppu.compression.jd import FitResult, fit_module, rank_cap
from soppu.compression.model import Mode, ModuleBasis
from soppu.compression.residual import energy_errors_sq
from soppu.errors import CompressionError

__all__ = ["Clustering", "assignment_errors", "cluster_adapters"]

_MAX_ROUNDS = 20


@dataclass(frozen=True)
class Clustering:
    """Lloyd's result. ``fits[k][module]`` was fitted on ``members(k)`` in that order (its core rows follow
    it); ``assignments[i]`` is adapter i's cluster. ``stable``: the last round moved nobody."""

    assignments: list[int]
    fits: list[dict[str, FitResult]]
    rounds: int
    stable: bool

    def members(self, cluster: int) -> list[int]:
        return _members(self.assignments, cluster)


def _projection_errors_sq(stack: FactorStack, sq_norms: torch.Tensor, basis: ModuleBasis, mode: Mode) -> torch.Tensor:
    """Squared relative error of each adapter's projection onto ``basis`` (N), chunked over adapters."""
    core_size = basis.rank * basis.rank if mode == Mode.FULL else basis.rank
    per_adapter = stack.a.element_size() * (2 * stack.r_max * basis.rank + core_size)
    out = torch.empty(stack.n, dtype=stack.dtype, device=stack.device)
    for start, stop in chunks(stack.n, auto_chunk_size(stack.n, per_adapter)):
        core = project_cores(stack.chunk(start, stop), basis, mode)
        out[start:stop] = energy_errors_sq(sq_norms[start:stop], core_squared_norms(core, mode))
    return out


def assignment_errors(
    stacks: Mapping[str, FactorStack], bases: Sequence[Mapping[str, ModuleBasis]], mode: Mode
) -> torch.Tensor:
    """N x K: for adapter i and cluster k, the mean over modules of the squared relative error of projecting
    adapter i onto cluster k's bases (the cheap energy formula: this only ranks clusters)."""
    sq_norms = {module: squared_norms(stack) for module, stack in stacks.items()}
    n, device = next(iter(stacks.values())).n, next(iter(stacks.values())).device
    columns = []
    for cluster_bases in bases:
        total = torch.zeros(n, dtype=torch.float64, device=device)
        for module, stack in stacks.items():
            total += _projection_errors_sq(stack, sq_norms[module], cluster_bases[module], mode).double()
        columns.append(total / len(stacks))
    return torch.stack(columns, dim=1).cpu()


def _own_bases(stacks: Mapping[str, FactorStack], j: int) -> dict[str, ModuleBasis]:
    """Adapter j's own column and row spaces per module (its true rank, not the padding)."""
    out = {}
    for module, stack in stacks.items():
        r = stack.ranks[j]
        out[module] = ModuleBasis(torch.linalg.qr(stack.b_t[j, :r].T).Q, torch.linalg.qr(stack.a[j, :r].T).Q)
    return out


def _seed(stacks: Mapping[str, FactorStack], k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding; returns the N x k distances to the chosen seeds (seed j's own column is ~0)."""
    n = next(iter(stacks.values())).n
    seeds = [int(torch.randint(n, (1,), generator=generator))]
    columns = [assignment_errors(stacks, [_own_bases(stacks, seeds[0])], Mode.FULL)[:, 0]]
    while len(seeds) < k:
        weight = torch.stack(columns, dim=1).min(dim=1).values.clamp_min(0.0)
        weight[seeds] = 0.0
        if float(weight.sum()) > 0:
            nxt = int(torch.multinomial(weight / weight.sum(), 1, generator=generator))
        else:  # every adapter already lies in a seed's spaces: any unused one will do
            nxt = next(i for i in range(n) if i not in seeds)
        seeds.append(nxt)
        columns.append(assignment_errors(stacks, [_own_bases(stacks, nxt)], Mode.FULL)[:, 0])
    distances = torch.stack(columns, dim=1)
    for c, i in enumerate(seeds):
        distances[i, c] = -1.0  # a seed starts in its own cluster, whatever the ties
    return distances


def _assign(errors: torch.Tensor) -> list[int]:
    """Each adapter to its best cluster, then every empty cluster takes the worst-fitted adapter of a cluster
    with more than one member (so no cluster is ever left without bases)."""
    k = errors.shape[1]
    assignments = [int(c) for c in errors.argmin(dim=1)]
    for empty in range(k):
        if empty in assignments:
            continue
        counts = [assignments.count(c) for c in range(k)]
        movable = [i for i, c in enumerate(assignments) if counts[c] > 1]
        worst = max(movable, key=lambda i: (float(errors[i, assignments[i]]), -i))
        assignments[worst] = empty
    return assignments


def _members(assignments: Sequence[int], cluster: int) -> list[int]:
    return [i for i, c in enumerate(assignments) if c == cluster]


def _fit_cluster(
    stacks: Mapping[str, FactorStack],
    members: list[int],
    ranks: Mapping[str, int],
    mode: Mode,
    previous: Mapping[str, FitResult] | None,
    *,
    tol: float,
    max_iter: int,
    chunk_size: int | None,
    seed: int,
    audit: bool,
) -> dict[str, FitResult]:
    """One cluster's bases, module by module."""
    out = {}
    for module, stack in stacks.items():
        part = stack.select(members)
        rank = min(ranks[module], rank_cap(*part.shape, part.ranks, mode))
        # Warm start from last round's bases (Lloyd moves few adapters per round) when the rank still matches.
        warm = previous[module].basis if previous is not None and previous[module].rank == rank else None
        out[module] = fit_module(
            part,
            rank,
            mode,
            tol=tol,
            max_iter=max_iter,
            chunk_size=chunk_size,
            generator=torch.Generator().manual_seed(seed),
            init=warm,
            audit=audit,
        )
    return out


def cluster_adapters(
    stacks: Mapping[str, FactorStack],
    k: int,
    ranks: Mapping[str, int],
    mode: Mode,
    *,
    tol: float = 1e-7,
    max_iter: int = 200,
    chunk_size: int | None = None,
    seed: int = 0,
    max_rounds: int = _MAX_ROUNDS,
    audit: bool = False,
) -> Clustering:
    """Lloyd's algorithm over whole adapters into ``k`` clusters, fitting each module at ``ranks[module]``
    (capped per cluster by what its members can use). ``tol``, ``max_iter``, ``chunk_size`` and ``audit`` go to
    every fit; ``seed`` seeds the seeding and every fit's random start."""
    mode = Mode(mode)
    n = next(iter(stacks.values())).n
    if not 1 <= k <= n:
        raise CompressionError("bad_clusters", f"the number of clusters must lie in 1..{n} (N adapters), got {k}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    generator = torch.Generator().manual_seed(seed)
    assignments = _assign(_seed(stacks, k, generator)) if k > 1 else [0] * n
    previous: list[dict[str, FitResult]] | None = None
    for round_ in range(1, max_rounds + 1):
        fits = [
            _fit_cluster(
                stacks,
                _members(assignments, c),
                ranks,
                mode,
                previous[c] if previous else None,
                tol=tol,
                max_iter=max_iter,
                chunk_size=chunk_size,
                seed=seed,
                audit=audit,
            )
            for c in range(k)
        ]
        if k == 1:
            return Clustering(assignments, fits, round_, True)
        moved = _assign(assignment_errors(stacks, [{m: f.basis for m, f in cf.items()} for cf in fits], mode))
        if moved == assignments or round_ == max_rounds:
            # Out of rounds, keep the assignment the fits were made for (a consistent Lloyd state).
            return Clustering(assignments, fits, round_, moved == assignments)
        assignments, previous = moved, fits
    raise AssertionError("unreachable: max_rounds >= 1")
