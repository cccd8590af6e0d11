"""One module's LoRA factors stacked across N adapters, and every quantity the compression needs from them.

Adapter ``i`` contributes ``W_i = s_i B_i A_i`` (B_i: d_out x r_i, A_i: r_i x d_in). Nothing here ever forms a
d_out x d_in matrix: norms, projections and gradients are contractions of the factors with the bases, so
their cost is O(N r d R) and their memory O(N r R). The formulas, each defined once:

- ``||W_i||_F^2 = s_i^2 tr((B_i^T B_i)(A_i A_i^T))``                       (:func:`squared_norms`)
- ``P_i = U^T W_i V = s_i (U^T B_i)(A_i V)``; JD-Diag keeps ``diag(P_i)``   (:func:`cores`)
- ``sum_i c_i W_i V C_i^T = sum_i c_i s_i B_i ((A_i V) C_i^T)``             (:func:`left_gradient`)
- ``sum_i c_i W_i^T U C_i = sum_i c_i s_i A_i^T ((B_i^T U) C_i)``           (:func:`right_gradient`)
- the compressed update ``U S V^T`` and its plain-LoRA factors ``B' = U S``, ``A' = V^T``
  (:func:`core_to_factors`, :func:`core_delta`)
- relative weights ``w_i = 1 / ||W_i||_F^2`` (:func:`relative_weights`)

It also owns the numerics all of that runs under (:func:`exact_float32`). Pure math: tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from soppu.adapter.model import LoraModule
from soppu.compression.model import Mode, ModuleBasis

__all__ = [
    "FactorStack",
    "auto_chunk_size",
    "chunks",
    "core_delta",
    "core_squared_norms",
    "core_to_factors",
    "cores",
    "exact_float32",
    "left_gradient",
    "left_products",
    "project_cores",
    "relative_weights",
    "right_gradient",
    "right_products",
    "squared_norms",
    "stack_modules",
    "sum_at_times",
    "sum_b_times",
]

# Working memory one chunk of adapters may take for its intermediates. Small next to any GPU and to a
# laptop's RAM; chunks of this size are still big enough for the batched matmuls to run at full speed.
CHUNK_BUDGET_BYTES = 256 * 2**20


@contextmanager
def exact_float32() -> Iterator[None]:
    """Run the block with true float32 matmuls: TF32 (CUDA) and reduced-precision float32 matmuls (CPU
    oneDNN) off, restoring the caller's settings afterwards.

    TF32 keeps 10 mantissa bits: relative errors of 1e-3 would swamp the errors we report (and the
    monotonicity of the fit). The settings are process-global, so concurrent threads share them.
    """
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


@dataclass(frozen=True)
class FactorStack:
    """One module's factors for N adapters, zero-padded to the largest rank.

    ``b_t`` holds ``B_i^T`` (N x r_max x d_out) and ``a`` holds ``A_i`` (N x r_max x d_in): both keep the rank
    next to the adapter axis, so ``(N r_max) x d`` views of them feed single large matmuls. Padding rows are
    zero in both, so they contribute nothing to any product. ``scaling`` is ``s_i`` (N).
    """

    b_t: torch.Tensor
    a: torch.Tensor
    scaling: torch.Tensor
    ranks: tuple[int, ...]

    @property
    def n(self) -> int:
        return self.a.shape[0]

    @property
    def r_max(self) -> int:
        return self.a.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the module's weight."""
        return self.b_t.shape[2], self.a.shape[2]

    @property
    def device(self) -> torch.device:
        return self.a.device

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    def chunk(self, start: int, stop: int) -> FactorStack:
        """Adapters ``start:stop`` (views, no copy)."""
        return FactorStack(self.b_t[start:stop], self.a[start:stop], self.scaling[start:stop], self.ranks[start:stop])

    def select(self, indices: Sequence[int]) -> FactorStack:
        """The adapters at ``indices``, in that order (a copy)."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        return FactorStack(
            self.b_t.index_select(0, index),
            self.a.index_select(0, index),
            self.scaling.index_select(0, index),
            tuple(self.ranks[i] for i in indices),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FactorStack:
        return FactorStack(
            self.b_t.to(device=device, dtype=dtype),
            self.a.to(device=device, dtype=dtype),
            self.scaling.to(device=device, dtype=dtype),
            self.ranks,
        )


def stack_modules(
    modules: Sequence[LoraModule], *, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> FactorStack:
    """Stack one module's factors from N adapters onto ``device`` in ``dtype`` (bf16/fp16 factors are upcast
    adapter by adapter, so no full-size low-precision copy is made on the device)."""
    if not modules:
        raise ValueError("no modules to stack")
    shape = modules[0].shape
    for m in modules:
        if m.shape != shape:
            raise ValueError(f"module shapes differ: {m.shape} vs {shape}")
    n, r_max = len(modules), max(m.rank for m in modules)
    b_t = torch.zeros(n, r_max, shape[0], device=device, dtype=dtype)
    a = torch.zeros(n, r_max, shape[1], device=device, dtype=dtype)
    for i, m in enumerate(modules):
        b_t[i, : m.rank].copy_(m.b.T)
        a[i, : m.rank].copy_(m.a)
    scaling = torch.tensor([float(m.scaling) for m in modules], device=device, dtype=dtype)
    return FactorStack(b_t, a, scaling, tuple(m.rank for m in modules))


def auto_chunk_size(n: int, bytes_per_adapter: int, budget: int = CHUNK_BUDGET_BYTES) -> int:
    """How many adapters one chunk may hold so its intermediates stay within ``budget`` bytes."""
    return max(1, min(n, budget // max(1, bytes_per_adapter)))


def chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``0..n`` in steps of ``chunk_size``."""
    for start in range(0, n, chunk_size):
        yield start, min(n, start + chunk_size)


def squared_norms(stack: FactorStack) -> torch.Tensor:
    """``||W_i||_F^2 = s_i^2 tr((B_i^T B_i)(A_i A_i^T))`` (N), from r x r Gram matrices only."""
    gram_b = stack.b_t @ stack.b_t.transpose(1, 2)
    gram_a = stack.a @ stack.a.transpose(1, 2)
    # Both Grams are symmetric, so the trace of their product is the sum of their elementwise product.
    return stack.scaling**2 * (gram_b * gram_a).sum(dim=(1, 2))


def relative_weights(sq_norms: torch.Tensor) -> torch.Tensor:
    """``w_i = 1 / ||W_i||_F^2``, so the objective sums RELATIVE errors; a zero adapter gets weight 0 (it has
    nothing to reconstruct and must not divide by zero)."""
    positive = sq_norms > 0
    return torch.where(positive, 1.0 / torch.where(positive, sq_norms, 1.0), 0.0)


def left_products(stack: FactorStack, u: torch.Tensor) -> torch.Tensor:
    """``B_i^T U`` (N x r_max x R) as one (N r_max) x d_out by d_out x R matmul."""
    n, r, d_out = stack.b_t.shape
    return (stack.b_t.reshape(n * r, d_out) @ u).reshape(n, r, -1)


def right_products(stack: FactorStack, v: torch.Tensor) -> torch.Tensor:
    """``A_i V`` (N x r_max x R) as one (N r_max) x d_in by d_in x R matmul."""
    n, r, d_in = stack.a.shape
    return (stack.a.reshape(n * r, d_in) @ v).reshape(n, r, -1)


def cores(stack: FactorStack, btu: torch.Tensor, av: torch.Tensor, mode: Mode) -> torch.Tensor:
    """The best cores for the bases: ``P_i = U^T W_i V = s_i (B_i^T U)^T (A_i V)`` (N x R x R) for JD-Full, its
    diagonal (N x R) for JD-Diag, from the products ``btu = B_i^T U`` and ``av = A_i V``."""
    if mode == Mode.DIAG:
        # diag(P_i)_k = s_i sum_j (B_i^T U)_jk (A_i V)_jk: no R x R matrix needed.
        return stack.scaling[:, None] * (btu * av).sum(dim=1)
    return stack.scaling[:, None, None] * (btu.transpose(1, 2) @ av)


def project_cores(stack: FactorStack, basis: ModuleBasis, mode: Mode) -> torch.Tensor:
    """The cores of the adapters projected onto existing bases (no refit): ``U^T W_i V`` or its diagonal."""
    u = basis.u.to(device=stack.device, dtype=stack.dtype)
    v = basis.v.to(device=stack.device, dtype=stack.dtype)
    return cores(stack, left_products(stack, u), right_products(stack, v), mode)


def core_squared_norms(core: torch.Tensor, mode: Mode) -> torch.Tensor:
    """``||S_i||_F^2`` for a batch of cores (N x R x R full, N x R diag)."""
    return core.pow(2).sum(dim=(1, 2) if mode == Mode.FULL else 1)


def sum_b_times(stack: FactorStack, m: torch.Tensor) -> torch.Tensor:
    """``sum_i B_i m_i`` (d_out x R) for ``m``: N x r_max x R, as one matmul over the (N r_max) axis."""
    n, r, d_out = stack.b_t.shape
    return stack.b_t.reshape(n * r, d_out).T @ m.reshape(n * r, -1)


def sum_at_times(stack: FactorStack, m: torch.Tensor) -> torch.Tensor:
    """``sum_i A_i^T m_i`` (d_in x R) for ``m``: N x r_max x R, as one matmul over the (N r_max) axis."""
    n, r, d_in = stack.a.shape
    return stack.a.reshape(n * r, d_in).T @ m.reshape(n * r, -1)


def left_gradient(
    stack: FactorStack, av: torch.Tensor, core: torch.Tensor, coef: torch.Tensor, mode: Mode
) -> torch.Tensor:
    """``sum_i coef_i W_i V C_i^T = sum_i coef_i s_i B_i ((A_i V) C_i^T)`` (d_out x R), with ``C_i`` the core
    as a matrix (``diag(core_i)`` for JD-Diag)."""
    factor = (coef * stack.scaling)[:, None, None]
    m = av * core[:, None, :] if mode == Mode.DIAG else av @ core.transpose(1, 2)
    return sum_b_times(stack, factor * m)


def right_gradient(
    stack: FactorStack, btu: torch.Tensor, core: torch.Tensor, coef: torch.Tensor, mode: Mode
) -> torch.Tensor:
    """``sum_i coef_i W_i^T U C_i = sum_i coef_i s_i A_i^T ((B_i^T U) C_i)`` (d_in x R)."""
    factor = (coef * stack.scaling)[:, None, None]
    m = btu * core[:, None, :] if mode == Mode.DIAG else btu @ core
    return sum_at_times(stack, factor * m)


def core_to_factors(basis: ModuleBasis, core: torch.Tensor, mode: Mode) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-LoRA factors of the compressed update: ``B' = U S`` (or ``U diag(s)``), ``A' = V^T``, so that
    ``B' A' = U S V^T`` with scaling 1. ``core`` may carry leading batch dimensions (then so does ``B'``)."""
    u = basis.u.to(core.dtype)
    b = u * core.unsqueeze(-2) if mode == Mode.DIAG else u @ core
    return b, basis.v.to(core.dtype).T


def core_delta(basis: ModuleBasis, core: torch.Tensor, mode: Mode) -> torch.Tensor:
    """The dense compressed update ``U S V^T`` (d_out x d_in). Only for small shapes, tests and audits."""
    b, a = core_to_factors(basis, core, mode)
    return b @ a
