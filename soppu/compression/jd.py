"""The joint-diagonalization solvers: shared orthonormal bases ``U``, ``V`` and per-adapter cores for one module.

For one module and N adapters (:class:`~soppu.compression.factors.FactorStack`) the fit minimises
``sum_i w_i ||W_i - U S_i V^T||_F^2`` with ``w_i = 1/||W_i||_F^2`` (a sum of relative errors). For orthonormal
bases the best cores are projections, so the fit maximises

    f(U, V) = sum_i w_i ||P_i||_F^2          (JD-Full, S_i = P_i = U^T W_i V)
    f(U, V) = sum_i w_i ||diag(P_i)||^2      (JD-Diag, s_i = diag(P_i))

``f`` is a convex quadratic in ``U`` for fixed ``V`` (and vice versa), so it lies above its linearisation:
maximising ``<G_U, U'>`` over orthonormal ``U'`` (the polar factor of ``G_U = sum_i w_i W_i V C_i^T``, with
``C_i = P_i`` or ``diag(diag(P_i))``) can only increase ``f``. Alternating the U and V steps is therefore a
majorize-maximize iteration whose objective never decreases; the history is kept so tests can check it.
For JD-Full only the span of ``U`` matters, so a QR would do; JD-Diag pairs column k of ``U`` with column k
of ``V``, which the polar factor respects, so both modes use it (a QR plus an R x R SVD: cheap).

Everything is computed on the factors (see ``factors``), in float32 with TF32 off, chunked over the adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from soppu.compression.factors import (
    FactorStack,
    auto_chunk_size,
    chunks,
    core_squared_norms,
    cores,
    exact_float32,
    left_gradient,
    left_products,
    relative_weights,
    right_gradient,
    right_products,
    squared_norms,
    sum_at_times,
    sum_b_times,
)
from soppu.compression.model import Mode, ModuleBasis
from soppu.compression.residual import relative_errors
from soppu.errors import CompressionError

__all__ = ["FitResult", "fit_module", "rank_cap"]

_DEFAULT_SEED = 0
# Below this objective value a relative change is meaningless (all adapters are zero).
_TINY = 1e-30


@dataclass(frozen=True)
class FitResult:
    """One module's fit. ``cores`` is N x R x R (full) or N x R (diag), in the stack's adapter order, with the
    LoRA scaling folded in. ``errors`` are relative Frobenius errors by the stable residual formula (float64
    when audited). ``history[k]`` is the objective after k U/V steps, normalised to the mean captured relative
    energy (1 - the mean squared relative error over the non-zero adapters): it never decreases."""

    basis: ModuleBasis
    cores: torch.Tensor
    errors: torch.Tensor
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False

    @property
    def rank(self) -> int:
        return self.basis.rank

    @property
    def worst_error(self) -> float:
        return float(self.errors.max()) if self.errors.numel() else 0.0


def rank_cap(d_out: int, d_in: int, ranks: Sequence[int], mode: Mode) -> int:
    """The largest useful rank. JD-Full is exact at ``R = sum of ranks`` (the bases span every adapter), so
    more only adds zeros; JD-Diag is not exact there (the adapters' subspaces are not mutually orthogonal)
    and can keep improving up to ``min(d_out, d_in)``."""
    full_span = min(d_out, d_in)
    return min(full_span, sum(ranks)) if mode == Mode.FULL else full_span


def _polar(g: torch.Tensor) -> torch.Tensor:
    """The orthonormal ``Q`` maximising ``tr(G^T Q)``: with ``G = Q_0 R_0`` and ``R_0 = X S Y^T``, it is
    ``Q_0 X Y^T``. Only an R x R SVD on top of a QR; a rank-deficient ``G`` still gives orthonormal columns."""
    q, r = torch.linalg.qr(g)
    x, _, yh = torch.linalg.svd(r)
    polar: torch.Tensor = q @ (x @ yh)
    return polar


def _per_adapter_bytes(stack: FactorStack, rank: int, mode: Mode) -> int:
    # The products A_i V and B_i^T U, their weighted versions, and (full) the R x R core and its product.
    core = rank * rank if mode == Mode.FULL else rank
    return stack.a.element_size() * (4 * stack.r_max * rank + 2 * core)


def _init_bases(
    stack: FactorStack, rank: int, weights: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A randomized range finder on the weighted Gram matrices, from the factors.

    ``U0 = orth(K_U Omega)`` with ``K_U = sum_i w_i W_i W_i^T`` (what the U step maximises for ``V = I``), then
    ``V0 = orth(K_V Psi)`` with ``K_V = sum_i w_i W_i^T U0 U0^T W_i`` (the best V for JD-Full given ``U0``).
    A single shared test matrix applied to the plain sum ``sum_i w_i W_i`` would lose directions where the
    adapters cancel; the Gram forms cannot cancel. Random draws are made on the CPU so a seed gives the same
    start on every device.
    """
    d_out, d_in = stack.shape
    omega = torch.randn(d_out, rank, generator=generator).to(device=stack.device, dtype=stack.dtype)
    psi = torch.randn(d_in, rank, generator=generator).to(device=stack.device, dtype=stack.dtype)
    g_u = torch.zeros(d_out, rank, device=stack.device, dtype=stack.dtype)
    for start, stop in chunks(stack.n, size):
        part = stack.chunk(start, stop)
        coef = (weights[start:stop] * part.scaling**2)[:, None, None]
        gram_a = part.a @ part.a.transpose(1, 2)
        # W_i W_i^T Omega = s_i^2 B_i (A_i A_i^T)(B_i^T Omega)
        g_u += sum_b_times(part, coef * (gram_a @ left_products(part, omega)))
    u = torch.linalg.qr(g_u).Q
    g_v = torch.zeros(d_in, rank, device=stack.device, dtype=stack.dtype)
    for start, stop in chunks(stack.n, size):
        part = stack.chunk(start, stop)
        coef = (weights[start:stop] * part.scaling**2)[:, None, None]
        btu = left_products(part, u)
        # W_i^T U0 U0^T W_i Psi = s_i^2 A_i^T (B_i^T U0)(B_i^T U0)^T (A_i Psi)
        g_v += sum_at_times(part, coef * (btu @ (btu.transpose(1, 2) @ right_products(part, psi))))
    return u, torch.linalg.qr(g_v).Q


def _cores_and_u_gradient(
    stack: FactorStack,
    v: torch.Tensor,
    weights: torch.Tensor,
    mode: Mode,
    size: int,
    btu_all: torch.Tensor,
    av_all: torch.Tensor,
    out_cores: torch.Tensor,
) -> tuple[float, torch.Tensor]:
    """At the current (U, V) (``btu_all`` holds ``B_i^T U``): the cores (into ``out_cores``), the objective
    ``sum_i w_i ||C_i||^2`` (accumulated in float64) and ``G_U``. Refreshes ``av_all`` with ``A_i V``."""
    g_u = torch.zeros(stack.shape[0], v.shape[1], device=stack.device, dtype=stack.dtype)
    objective = torch.zeros((), dtype=torch.float64, device=stack.device)
    for start, stop in chunks(stack.n, size):
        part, w = stack.chunk(start, stop), weights[start:stop]
        av_all[start:stop] = right_products(part, v)
        core = cores(part, btu_all[start:stop], av_all[start:stop], mode)
        out_cores[start:stop] = core
        objective += (w.double() * core_squared_norms(core, mode).double()).sum()
        g_u += left_gradient(part, av_all[start:stop], core, w, mode)
    return float(objective), g_u


def _v_gradient(
    stack: FactorStack,
    u: torch.Tensor,
    weights: torch.Tensor,
    mode: Mode,
    size: int,
    btu_all: torch.Tensor,
    av_all: torch.Tensor,
) -> torch.Tensor:
    """``G_V`` at the new U and the current V (``av_all`` holds ``A_i V``). Refreshes ``btu_all``."""
    g_v = torch.zeros(stack.shape[1], u.shape[1], device=stack.device, dtype=stack.dtype)
    for start, stop in chunks(stack.n, size):
        part, w = stack.chunk(start, stop), weights[start:stop]
        btu_all[start:stop] = left_products(part, u)
        core = cores(part, btu_all[start:stop], av_all[start:stop], mode)
        g_v += right_gradient(part, btu_all[start:stop], core, w, mode)
    return g_v


def fit_module(
    stack: FactorStack,
    rank: int,
    mode: Mode,
    *,
    tol: float = 1e-7,
    max_iter: int = 200,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    init: ModuleBasis | None = None,
    audit: bool = False,
) -> FitResult:
    """Fit shared bases of rank ``R = min(rank, rank_cap(...))`` and the cores of every adapter.

    Stops when the objective's relative change falls below ``tol`` or after ``max_iter`` U/V steps.
    ``chunk_size`` adapters are processed at a time (``None``: as many as fit a fixed memory budget);
    results do not depend on it beyond float rounding. ``generator`` seeds the random start (a fixed seed when
    ``None``); ``init`` starts from given bases instead (a warm start, e.g. in clustering). ``audit``
    recomputes the errors in float64. Runs on the stack's device.
    """
    mode = Mode(mode)
    if rank < 1:
        raise CompressionError("bad_rank", f"rank must be at least 1, got {rank}", rank=rank)
    if stack.n == 0:
        raise CompressionError("no_adapters", "no adapters to fit")
    d_out, d_in = stack.shape
    rank = min(rank, rank_cap(d_out, d_in, stack.ranks, mode))
    size = chunk_size or auto_chunk_size(stack.n, _per_adapter_bytes(stack, rank, mode))
    if generator is None:
        generator = torch.Generator().manual_seed(_DEFAULT_SEED)
    with exact_float32():
        sq_norms = torch.cat([squared_norms(stack.chunk(a, b)) for a, b in chunks(stack.n, size)])
        weights = relative_weights(sq_norms)
        total = max(float(weights.gt(0).sum()), 1.0)
        if init is not None:
            if init.rank != rank or init.shape != (d_out, d_in):
                raise ValueError(
                    f"init bases have rank {init.rank} and shape {init.shape}, need {rank} and {(d_out, d_in)}"
                )
            u = init.u.to(device=stack.device, dtype=stack.dtype)
            v = init.v.to(device=stack.device, dtype=stack.dtype)
        else:
            u, v = _init_bases(stack, rank, weights, size, generator)

        core_shape = (stack.n, rank, rank) if mode == Mode.FULL else (stack.n, rank)
        out_cores = torch.empty(core_shape, device=stack.device, dtype=stack.dtype)
        # A_i V and B_i^T U are each reused by the next half-step: N x r x R, small next to the factors.
        av_all = torch.empty(stack.n, stack.r_max, rank, device=stack.device, dtype=stack.dtype)
        btu_all = torch.cat([left_products(stack.chunk(a, b), u) for a, b in chunks(stack.n, size)])
        history: list[float] = []
        converged = False
        iterations = 0
        while True:
            objective, g_u = _cores_and_u_gradient(stack, v, weights, mode, size, btu_all, av_all, out_cores)
            history.append(objective / total)
            if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * max(abs(history[-1]), _TINY):
                converged = True
                break
            if iterations >= max_iter:
                break
            u = _polar(g_u)
            v = _polar(_v_gradient(stack, u, weights, mode, size, btu_all, av_all))
            iterations += 1

        basis = ModuleBasis(u, v)
        errors = relative_errors(
            stack,
            basis,
            out_cores,
            mode,
            chunk_size=chunk_size,
            dtype=torch.float64 if audit else stack.dtype,
            projection_cores=True,
        )
    return FitResult(basis, out_cores, errors, history, iterations, converged)
