"""Relative reconstruction errors ``||W_i - U S_i V^T||_F / ||W_i||_F``, computed stably from the factors.

With orthonormal bases and the projection core, ``e_i^2 = 1 - ||S_i||^2 / ||W_i||^2``
(:func:`energy_errors_sq`). That is cheap and fine for comparing candidates (clustering does), but it subtracts
two nearly equal numbers: in float32 any error below ~3e-4 (the square root of the unit roundoff) drowns in
rounding. The reported errors use the residual's factorisation instead (:func:`relative_errors`)::

    W_i - U S_i V^T = [s_i B_i, -U S_i] [A_i; V^T] = L_i M_i,    M_i^T = Q_i R_i (thin QR, d_in x (r + R))
    ||W_i - U S_i V^T||_F = ||L_i M_i||_F = ||L_i R_i^T Q_i^T||_F = ||L_i R_i^T||_F

so the residual is formed in a rotated basis, entry by entry, at O(d (r + R)^2) per adapter, and small errors
keep their relative accuracy. (A second QR of ``L_i`` would give the same norm at more cost: ``||L R^T||`` is
already the norm of a d_out x (r + R) matrix.) Householder QR is backward stable column by column, so the very
different scales of ``A_i`` and ``V^T`` do not matter. Batched over adapters and chunked over N.
"""

from __future__ import annotations

import torch

from soppu.compression.factors import (
    FactorStack,
    auto_chunk_size,
    chunks,
    core_squared_norms,
    core_to_factors,
    squared_norms,
)
from soppu.compression.model import Mode, ModuleBasis

__all__ = ["STABLE_BELOW", "energy_errors_sq", "naive_relative_errors", "relative_errors"]

# float32 rounding moves e^2 = 1 - ||S||^2/||W||^2 by ~1e-6 at most, i.e. under 0.05% of e^2 at e = 0.05:
# above this the cheap formula is as good as the stable one.
STABLE_BELOW = 0.05


def energy_errors_sq(sq_norms: torch.Tensor, core_sq_norms: torch.Tensor) -> torch.Tensor:
    """``e_i^2 = 1 - ||S_i||^2 / ||W_i||^2`` (valid for orthonormal bases and projection cores); 0 for a zero
    adapter. Cheap but cancels badly for small errors: for ranking, not for reporting."""
    positive = sq_norms > 0
    ratio = core_sq_norms / torch.where(positive, sq_norms, 1.0)
    return torch.where(positive, (1.0 - ratio).clamp_min(0.0), 0.0)


def naive_relative_errors(sq_norms: torch.Tensor, core_sq_norms: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - ||S||^2/||W||^2)``: the cancelling formula, kept to show (in tests) why it is not used."""
    return energy_errors_sq(sq_norms, core_sq_norms).sqrt()


def _residual_norms(stack: FactorStack, basis: ModuleBasis, core: torch.Tensor, mode: Mode) -> torch.Tensor:
    """``||W_i - U S_i V^T||_F`` for every adapter of ``stack`` (all tensors already in the working dtype)."""
    n = stack.n
    b_new, _ = core_to_factors(basis, core, mode)  # U S_i: n x d_out x R
    left = torch.cat([stack.scaling[:, None, None] * stack.b_t.transpose(1, 2), -b_new], dim=2)
    right_t = torch.cat([stack.a.transpose(1, 2), basis.v.expand(n, -1, -1)], dim=2)
    # Only R is needed: mode="r" skips forming Q (half the memory and work).
    r_right = torch.linalg.qr(right_t, mode="r").R
    norms: torch.Tensor = torch.linalg.matrix_norm(left @ r_right.transpose(1, 2))
    return norms


def relative_errors(
    stack: FactorStack,
    basis: ModuleBasis,
    core: torch.Tensor,
    mode: Mode,
    *,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    projection_cores: bool = False,
) -> torch.Tensor:
    """The relative error of every adapter (N, in ``dtype``) by the stable residual formula; 0 for a zero
    adapter. ``dtype=torch.float64`` audits a float32 result: the same factors, bases and cores, recomputed
    in double precision chunk by chunk.

    ``projection_cores=True`` promises the cores are the projections ``U^T W_i V`` (or their diagonals) on
    orthonormal bases, as a fit returns them. Then the energy formula is exact up to rounding, and rounding only
    matters for small errors: adapters whose energy error is at least :data:`STABLE_BELOW` keep it, and only
    the rest pay for the residual's QR (most of a fit's cost at large N otherwise).
    """
    if projection_cores and dtype == stack.dtype:
        energy = energy_errors_sq(squared_norms(stack), core_squared_norms(core, mode)).sqrt().to(dtype)
        small = (energy < STABLE_BELOW).nonzero().flatten()
        if len(small):
            picked = FactorStack(
                stack.b_t[small], stack.a[small], stack.scaling[small], tuple(stack.ranks[i] for i in small.tolist())
            )
            energy[small] = relative_errors(picked, basis, core[small], mode, chunk_size=chunk_size, dtype=dtype)
        return energy
    d_out, d_in = stack.shape
    width = stack.r_max + basis.rank
    itemsize = torch.empty((), dtype=dtype).element_size()
    # Per adapter: the left block, -U S, the right block, QR's working copy of it, and the product.
    per_adapter = itemsize * width * (3 * d_out + 2 * d_in)
    size = chunk_size or auto_chunk_size(stack.n, per_adapter)
    work_basis = ModuleBasis(basis.u.to(dtype), basis.v.to(dtype))
    out = torch.empty(stack.n, dtype=dtype, device=stack.device)
    for start, stop in chunks(stack.n, size):
        part = stack.chunk(start, stop).to(dtype=dtype)
        norms = squared_norms(part).sqrt()
        residual = _residual_norms(part, work_basis, core[start:stop].to(dtype), mode)
        out[start:stop] = torch.where(norms > 0, residual / torch.where(norms > 0, norms, 1.0), 0.0)
    return out
