"""Our solver in the speed benchmark (``bench/compression.py``): ``fit_module`` JD-Full timed for a fixed number of
U/V steps, to convergence, and to a given mean error.
"""

from __future__ import annotations

from typing import Any

import torch
from _compression_cases import seeded_generator, time_call
from _timing import WARMUP, percentile

from soppu.compression.factors import FactorStack
from soppu.compression.jd import FitResult, fit_module
from soppu.compression.model import Mode

__all__ = ["fit", "ours_at_error", "ours_converged", "ours_fixed"]


def _fit_errors(result: FitResult) -> dict[str, float]:
    return {"error_mean": float(result.errors.mean()), "error_worst": result.worst_error}


def fit(stack: FactorStack, rank: int, seed: int, **kwargs: Any) -> FitResult:
    return fit_module(stack, rank, Mode.FULL, generator=seeded_generator(seed), **kwargs)


def ours_fixed(
    stack: FactorStack, rank: int, iterations: int, repeats: int, seed: int, device: torch.device
) -> dict[str, Any]:
    """Exactly ``iterations`` U/V steps (tol = 0 never stops early unless the objective is bit-stable)."""
    samples, result = [], None
    for index in range(WARMUP + repeats):
        elapsed, result = time_call(device, lambda: fit(stack, rank, seed, tol=0.0, max_iter=iterations))
        if index >= WARMUP:
            samples.append(elapsed)
    assert result is not None
    row = _ours_row(stack, result, samples)
    # The fixed cost (randomized start, one objective evaluation, the stable errors) is what max_iter = 0 costs;
    # the rest divided by the steps is the per-step cost that N and d scale.
    start = percentile([time_call(device, lambda: fit(stack, rank, seed, max_iter=0))[0] for _ in range(repeats)], 0.5)
    row["start_and_errors_s"] = round(start, 4)
    row["per_step_s"] = round(max(0.0, row["median_s"] - start) / max(1, result.iterations), 5)
    return row


def ours_converged(stack: FactorStack, rank: int, repeats: int, seed: int, device: torch.device) -> dict[str, Any]:
    """The library defaults (tol = 1e-7, max_iter = 200)."""
    runs = [time_call(device, lambda: fit(stack, rank, seed)) for _ in range(repeats)]
    return {**_ours_row(stack, runs[-1][1], [s for s, _ in runs]), "converged": runs[-1][1].converged}


def _ours_row(stack: FactorStack, result: FitResult, samples: list[float]) -> dict[str, Any]:
    median = percentile(samples, 0.5)
    factor_bytes = (stack.b_t.numel() + stack.a.numel()) * stack.b_t.element_size()
    return {
        "iterations": result.iterations,
        "R": result.rank,
        "median_s": round(median, 4),
        "p90_s": round(percentile(samples, 0.9), 4),
        "gb_per_s": round(factor_bytes * result.iterations / median / 1e9, 2) if median > 0 else None,
        **_fit_errors(result),
    }


def ours_at_error(
    stack: FactorStack, rank: int, target: float, cap: int, repeats: int, seed: int, device: torch.device
) -> dict[str, Any] | None:
    """Our time to reach a mean relative error <= ``target``: the fewest U/V steps that get there, found by
    galloping then bisecting over ``max_iter`` (the fit is deterministic, so k steps are a prefix of k + 1),
    then timed afresh. None when even ``cap`` steps do not reach it."""

    def mean_error(k: int) -> float:
        return float(fit(stack, rank, seed, tol=0.0, max_iter=k).errors.mean())

    failed, k = -1, 0  # invariant: the error after `failed` steps misses the target (-1: none known)
    while mean_error(k) > target:
        if k >= cap:
            return None
        failed, k = k, min(cap, max(1, 2 * k))
    while k - failed > 1:
        mid = (failed + k) // 2
        if mean_error(mid) <= target:
            k = mid
        else:
            failed = mid
    runs = [time_call(device, lambda: fit(stack, rank, seed, tol=0.0, max_iter=k)) for _ in range(repeats)]
    median = percentile([s for s, _ in runs], 0.5)
    return {"target": round(target, 6), "iterations": k, "median_s": round(median, 4), **_fit_errors(runs[-1][1])}
