"""The two published baselines of the speed benchmark (``bench/compression.py`` describes them): the dense Gram
power iteration of the original SOPPU release and the Compress-then-Serve code's alternating exact SVD, each
timed within a budget and extrapolated past it, its error always the real one.
"""

from __future__ import annotations

from typing import Any

import torch
from _compression_cases import seeded_generator, time_call

from soppu.compression.factors import (
    FactorStack,
    exact_float32,
    left_products,
    project_cores,
    relative_weights,
    right_products,
    squared_norms,
)
from soppu.compression.model import Mode, ModuleBasis
from soppu.compression.residual import relative_errors

__all__ = ["gram_baseline", "svd_baseline"]


def _errors(stack: FactorStack, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor) -> dict[str, float]:
    errors = relative_errors(stack, ModuleBasis(u, v), core, Mode.FULL)
    return {"error_mean": float(errors.mean()), "error_worst": float(errors.max())}


def _orthonormal(rows: int, rank: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, rank, generator=seeded_generator(seed)).to(device)).Q


def gram_baseline(
    stack: FactorStack, rank: int, steps: int, budget_s: float, seed: int, device: torch.device
) -> dict[str, Any]:
    """The original release's dense d x d Gram power iteration (see the module docstring).

    The per-adapter dense work (forming W_i, its two Gram products, later its core) is timed while it stays
    within ``budget_s``; the remaining adapters contribute the same terms computed from the factors (untimed),
    and their time is extrapolated from the timed ones. The power iteration is always run and timed in full.
    """
    with exact_float32():
        weights = relative_weights(squared_norms(stack))
        coef = (weights * stack.scaling**2).tolist()
        scaling, w = stack.scaling.tolist(), weights.tolist()
        d_out, d_in = stack.shape
        k_u = torch.zeros(d_out, d_out, device=device)
        k_v = torch.zeros(d_in, d_in, device=device)
        gram_s, gram_done = 0.0, 0
        for i in range(stack.n):
            b_t, a = stack.b_t[i], stack.a[i]
            if gram_done == 0 or gram_s < budget_s:  # at least one timed, to extrapolate from

                def dense(i: int = i, b_t: torch.Tensor = b_t, a: torch.Tensor = a) -> None:
                    weight = scaling[i] * b_t.T @ a
                    k_u.addmm_(weight, weight.T, alpha=w[i])
                    k_v.addmm_(weight.T, weight, alpha=w[i])

                elapsed, _ = time_call(device, dense)
                gram_s, gram_done = gram_s + elapsed, gram_done + 1
            else:
                # W W^T = s^2 B (A A^T) B^T and W^T W = s^2 A^T (B^T B) A: the same matrices, cheaply.
                k_u.addmm_(b_t.T @ (a @ a.T), b_t, alpha=coef[i])
                k_v.addmm_(a.T @ (b_t @ b_t.T), a, alpha=coef[i])

        def power() -> tuple[torch.Tensor, torch.Tensor]:
            u, v = _orthonormal(d_out, rank, seed, device), _orthonormal(d_in, rank, seed + 1, device)
            for _ in range(steps):
                u = torch.linalg.qr(k_u @ u).Q
                v = torch.linalg.qr(k_v @ v).Q
            return u, v

        power_s, (u, v) = time_call(device, power)
        core = torch.empty(stack.n, rank, rank, device=device)
        core_s, core_done = 0.0, 0
        for i in range(stack.n):
            if core_done == 0 or core_s < budget_s:

                def dense_core(i: int = i) -> None:
                    core[i] = u.T @ (scaling[i] * stack.b_t[i].T @ stack.a[i]) @ v

                elapsed, _ = time_call(device, dense_core)
                core_s, core_done = core_s + elapsed, core_done + 1
            else:
                core[i] = project_cores(stack.chunk(i, i + 1), ModuleBasis(u, v), Mode.FULL)[0]
        total = gram_s * stack.n / gram_done + power_s + core_s * stack.n / core_done
        return {
            "time_s": round(total, 3),
            "measured_s": round(gram_s + power_s + core_s, 3),
            "extrapolated": gram_done < stack.n or core_done < stack.n,
            "timed_adapters": min(gram_done, core_done),
            "steps": steps,
            "gram_s": round(gram_s * stack.n / gram_done, 3),
            "power_s": round(power_s, 3),
            "cores_s": round(core_s * stack.n / core_done, 3),
            **_errors(stack, u, v, core),
        }


def _stacked(factor: torch.Tensor, coef: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
    """``[coef_i F_i^T P_i]_i`` as one d x (N R) matrix, from ``factor`` (N x r x d) and ``products`` (N x r x R):
    for the B side that is ``[sqrt(w_i) W_i V]_i`` (F_i^T = B_i, P_i = s_i A_i V folded with coef)."""
    n, _, d = factor.shape
    return torch.einsum("nrd,nrk->dnk", factor, coef[:, None, None] * products).reshape(d, n * products.shape[2])


def _top_left(m: torch.Tensor, rank: int, retries: list[int]) -> torch.Tensor:
    """The top-``rank`` left singular vectors. The stacked matrices have rank <= N r < N R, i.e. many zero singular
    values, on which LAPACK's float32 divide-and-conquer SVD now and then fails to converge: such a call is
    redone in float64 (counted in ``retries``, and its time counts against the baseline)."""
    try:
        return torch.linalg.svd(m, full_matrices=False).U[:, :rank]
    except torch.linalg.LinAlgError:
        retries[0] += 1
        return torch.linalg.svd(m.double(), full_matrices=False).U[:, :rank].to(m.dtype)


def svd_baseline(
    stack: FactorStack, rank: int, steps: int, budget_s: float, seed: int, device: torch.device
) -> dict[str, Any]:
    """The Compress-then-Serve reference code's alternating exact SVD (see the module docstring).

    Steps are timed while they stay within ``budget_s``; later steps use the same subspaces found cheaply (the
    d x (N R) matrix is ``Q (R_F blockdiag(coef_i P_i))`` with ``F = Q R_F`` the fixed factor stack, so its top
    left singular vectors are Q times those of a small matrix) and their time is extrapolated per step.
    """
    with exact_float32():
        coef = relative_weights(squared_norms(stack)).sqrt() * stack.scaling
        v = _orthonormal(stack.shape[1], rank, seed + 1, device)
        qr_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        retries = [0]

        def cheap(side: str, factor: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
            if side not in qr_cache:
                n, r, d = factor.shape
                qr_cache[side] = torch.linalg.qr(factor.reshape(n * r, d).T)  # Q: d x k, R_F: k x (N r)
            q, r_f = qr_cache[side]
            n, r, _ = factor.shape
            small = torch.einsum("knr,nrj->knj", r_f.reshape(-1, n, r), coef[:, None, None] * products)
            return q @ _top_left(small.reshape(small.shape[0], -1), rank, retries)

        step_s, timed = 0.0, 0
        for _ in range(steps):
            if timed == 0 or step_s < budget_s:

                def step(v: torch.Tensor = v) -> tuple[torch.Tensor, torch.Tensor]:
                    u = _top_left(_stacked(stack.b_t, coef, right_products(stack, v)), rank, retries)
                    return u, _top_left(_stacked(stack.a, coef, left_products(stack, u)), rank, retries)

                elapsed, (u, v) = time_call(device, step)
                step_s, timed = step_s + elapsed, timed + 1
            else:
                u = cheap("b", stack.b_t, right_products(stack, v))
                v = cheap("a", stack.a, left_products(stack, u))
        core_s, core = time_call(device, lambda: project_cores(stack, ModuleBasis(u, v), Mode.FULL))
        return {
            "time_s": round(step_s * steps / timed + core_s, 3),
            "measured_s": round(step_s + core_s, 3),
            "extrapolated": timed < steps,
            "timed_steps": timed,
            "steps": steps,
            "float64_retries": retries[0],
            **_errors(stack, u, v, core),
        }
