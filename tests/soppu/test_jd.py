"""The compression math on synthetic factors: factor-space formulas against dense matrices, the JD solvers
(exactness, monotone objective, orthonormal bases, relative weighting, chunking, audit), and the stable
residual formula against the cancelling one."""

from __future__ import annotations

import pytest
import torch

from soppu.adapter import LoraModule
from soppu.compression import Mode, ModuleBasis, fit_module
from soppu.compression.factors import (
    core_delta,
    core_to_factors,
    cores,
    left_products,
    project_cores,
    relative_weights,
    right_products,
    squared_norms,
    stack_modules,
)
from soppu.compression.jd import rank_cap
from soppu.compression.residual import naive_relative_errors, relative_errors
from soppu.errors import CompressionError

D_OUT, D_IN = 40, 48


# These matrices are tiny: thread barriers cost more than the math (see the fixture's docstring).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _modules(ranks: list[int], *, seed: int = 0, d_out: int = D_OUT, d_in: int = D_IN) -> list[LoraModule]:
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraModule(b=torch.randn(d_out, r, generator=gen), a=torch.randn(r, d_in, generator=gen), scaling=16 / r)
        for r in ranks
    ]


def _dense(modules: list[LoraModule]) -> torch.Tensor:
    return torch.stack([m.delta() for m in modules]).double()


def _orthonormal(d: int, r: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(seed))).Q


def _dense_errors(modules: list[LoraModule], basis: ModuleBasis, core: torch.Tensor, mode: Mode) -> torch.Tensor:
    w = _dense(modules)
    approx = torch.stack([core_delta(basis, c, mode) for c in core]).double()
    return (w - approx).flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1)


def test_factor_formulas_match_dense_matrices_with_mixed_ranks() -> None:
    modules = _modules([2, 5, 3])
    stack = stack_modules(modules, device="cpu")
    assert stack.r_max == 5 and stack.ranks == (2, 5, 3)
    w = _dense(modules)
    torch.testing.assert_close(squared_norms(stack).double(), w.pow(2).sum(dim=(1, 2)), rtol=1e-5, atol=0)
    u, v = _orthonormal(D_OUT, 6, 1), _orthonormal(D_IN, 6, 2)
    p = cores(stack, left_products(stack, u), right_products(stack, v), Mode.FULL)
    expected = u.double().T @ w @ v.double()
    torch.testing.assert_close(p.double(), expected, rtol=1e-4, atol=1e-4)
    diag = cores(stack, left_products(stack, u), right_products(stack, v), Mode.DIAG)
    torch.testing.assert_close(diag.double(), torch.diagonal(expected, dim1=1, dim2=2), rtol=1e-4, atol=1e-4)


def test_core_to_factors_is_u_s_v_transposed() -> None:
    basis = ModuleBasis(_orthonormal(D_OUT, 4, 3), _orthonormal(D_IN, 4, 4))
    s = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    b, a = core_to_factors(basis, s, Mode.FULL)
    assert b.shape == (D_OUT, 4) and a.shape == (4, D_IN)
    torch.testing.assert_close(core_delta(basis, s, Mode.FULL), basis.u @ s @ basis.v.T)
    d = s[0]
    torch.testing.assert_close(core_delta(basis, d, Mode.DIAG), basis.u @ torch.diag(d) @ basis.v.T)


def test_zero_adapter_gets_zero_weight_and_zero_error() -> None:
    modules = [*_modules([3, 3]), LoraModule(torch.zeros(D_OUT, 3), torch.randn(3, D_IN), 2.0)]
    stack = stack_modules(modules, device="cpu")
    assert relative_weights(squared_norms(stack))[2] == 0
    result = fit_module(stack, 4, Mode.FULL)
    assert result.errors[2] == 0 and torch.isfinite(result.errors).all()


@pytest.mark.parametrize("mode", [Mode.FULL, Mode.DIAG])
def test_objective_never_decreases_and_bases_stay_orthonormal(mode: Mode) -> None:
    stack = stack_modules(_modules([4] * 8, seed=1), device="cpu")
    result = fit_module(stack, 6, mode, max_iter=60)
    history = torch.tensor(result.history, dtype=torch.float64)
    assert len(history) >= 3
    # Majorize-maximize: each step can only increase f; allow float32 rounding of the objective itself.
    assert (history.diff() >= -1e-6).all(), history.diff().min()
    assert history[-1] > history[0]
    eye = torch.eye(result.rank)
    torch.testing.assert_close(result.basis.u.T @ result.basis.u, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.basis.v.T @ result.basis.v, eye, atol=1e-5, rtol=0)
    # The reported errors are the errors of U S V^T, and the objective is 1 - mean squared error.
    errors = _dense_errors(_modules([4] * 8, seed=1), result.basis, result.cores, mode)
    torch.testing.assert_close(result.errors.double(), errors, atol=1e-5, rtol=1e-4)
    assert abs((1 - errors.pow(2).mean()) - history[-1]) < 1e-5


def test_rank_covering_every_adapter_is_exact_and_capped() -> None:
    modules = _modules([4, 2, 3], seed=2)
    stack = stack_modules(modules, device="cpu")
    result = fit_module(stack, 1000, Mode.FULL)
    assert result.rank == rank_cap(D_OUT, D_IN, stack.ranks, Mode.FULL) == 9
    assert result.worst_error < 1e-5
    assert _dense_errors(modules, result.basis, result.cores, Mode.FULL).max() < 1e-5
    assert rank_cap(D_OUT, D_IN, stack.ranks, Mode.DIAG) == D_OUT


def test_one_adapter_matches_the_truncated_svd() -> None:
    (module,) = _modules([6], seed=3)
    result = fit_module(stack_modules([module], device="cpu"), 2, Mode.FULL)
    sigma = torch.linalg.svdvals(module.delta().double())
    best = sigma[2:].pow(2).sum().sqrt() / sigma.pow(2).sum().sqrt()  # Eckart-Young
    assert abs(float(result.errors[0]) - float(best)) < 1e-5


def test_weights_make_the_objective_relative() -> None:
    modules = _modules([4] * 6, seed=4)
    loud = [LoraModule(modules[0].b, modules[0].a, modules[0].scaling * 1000), *modules[1:]]
    quiet_fit = fit_module(stack_modules(modules, device="cpu"), 6, Mode.FULL)
    loud_fit = fit_module(stack_modules(loud, device="cpu"), 6, Mode.FULL)
    # A 1000x louder adapter changes nothing (up to where each run stops): every adapter counts by its
    # relative error, so the loud one is not reconstructed better than the rest.
    torch.testing.assert_close(loud_fit.errors, quiet_fit.errors, atol=1e-3, rtol=0)
    assert abs(loud_fit.history[-1] - quiet_fit.history[-1]) < 1e-5
    assert float(loud_fit.errors[0]) > 0.5


def test_chunked_equals_unchunked() -> None:
    stack = stack_modules(_modules([3, 4, 2, 4, 3], seed=5), device="cpu")
    whole = fit_module(stack, 5, Mode.FULL, max_iter=30)
    chunked = fit_module(stack, 5, Mode.FULL, max_iter=30, chunk_size=2)
    torch.testing.assert_close(chunked.basis.u, whole.basis.u, atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked.cores, whole.cores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked.errors, whole.errors, atol=1e-5, rtol=0)


def test_same_seed_same_fit_and_warm_start_keeps_the_fit() -> None:
    stack = stack_modules(_modules([4] * 5, seed=6), device="cpu")
    first = fit_module(stack, 5, Mode.DIAG, generator=torch.Generator().manual_seed(7))
    again = fit_module(stack, 5, Mode.DIAG, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.basis.u, again.basis.u) and torch.equal(first.cores, again.cores)
    warm = fit_module(stack, 5, Mode.DIAG, init=first.basis)
    assert warm.history[0] >= first.history[-1] - 1e-6


def test_float64_audit_agrees() -> None:
    stack = stack_modules(_modules([4] * 5, seed=8), device="cpu")
    plain = fit_module(stack, 6, Mode.FULL)
    audited = fit_module(stack, 6, Mode.FULL, audit=True)
    assert audited.errors.dtype == torch.float64
    torch.testing.assert_close(audited.errors.float(), plain.errors, atol=1e-6, rtol=1e-5)


def test_stable_residual_keeps_tiny_errors_that_the_energy_formula_loses() -> None:
    # W = U M V^T + delta u_perp v_perp^T: the bases capture all but a known relative error of 1e-5.
    gen = torch.Generator().manual_seed(9)
    u_all, v_all = _orthonormal(D_OUT, 5, 10), _orthonormal(D_IN, 5, 11)
    u, v = u_all[:, :4], v_all[:, :4]
    m_b, m_a = torch.randn(4, 4, generator=gen), torch.randn(4, 4, generator=gen)
    in_span = (u.double() @ m_b.double() @ m_a.double() @ v.double().T).norm()
    target = 1e-5
    delta = float(target * in_span / (1 - target**2) ** 0.5)
    b = torch.cat([u @ m_b, delta * u_all[:, 4:]], dim=1)
    a = torch.cat([m_a @ v.T, v_all[:, 4:].T], dim=0)
    stack = stack_modules([LoraModule(b, a, 1.0)], device="cpu")
    basis = ModuleBasis(u, v)
    core = project_cores(stack, basis, Mode.FULL)
    exact = float(relative_errors(stack, basis, core, Mode.FULL, dtype=torch.float64)[0])
    stable = float(relative_errors(stack, basis, core, Mode.FULL)[0])
    naive = float(naive_relative_errors(squared_norms(stack), core.pow(2).sum(dim=(1, 2)))[0])
    assert abs(exact - target) < 1e-7
    assert abs(stable - target) < 0.01 * target
    assert abs(naive - target) > 0.5 * target  # float32 cancellation: 0 or ~3e-4, never 1e-5


def test_bad_rank_and_empty_stack() -> None:
    stack = stack_modules(_modules([2, 2]), device="cpu")
    with pytest.raises(CompressionError) as info:
        fit_module(stack, 0, Mode.FULL)
    assert info.value.code == "bad_rank"
    with pytest.raises(CompressionError) as info:
        fit_module(stack.chunk(0, 0), 2, Mode.FULL)
    assert info.value.code == "no_adapters"


def test_bf16_factors_are_upcast_when_stacked() -> None:
    modules = [LoraModule(m.b.bfloat16(), m.a.bfloat16(), m.scaling) for m in _modules([3, 3], seed=12)]
    stack = stack_modules(modules, device="cpu")
    assert stack.dtype == torch.float32
    assert fit_module(stack, 6, Mode.FULL).worst_error < 1e-5
