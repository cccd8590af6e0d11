"""Benchmark of the joint compression: the factor-space JD solver's speed against the two published baselines,
and what compression keeps of the example users' behaviour.

Speed (random fp32 adapters, r = 16, shared rank R = 64 by default). For each module case (q: hidden x hidden,
k and v: kv x hidden, o: hidden x hidden; N adapters) it times, on the chosen device:

- ours, ``soppu.compression.jd.fit_module`` JD-Full: exactly ``--iterations`` U/V steps (``tol=0``; median of
  ``--repeats`` after warm-up) and a run to the default tolerance. Times cover the whole call (randomized start,
  iterations, the stable error computation). ``gb_per_s`` is the bytes of all B and A factors x iterations /
  time: a lower bound on the traffic, since every step reads each factor twice;
- the dense Gram baseline (the original SOPPU release): form every ``W_i = s_i B_i A_i`` densely, accumulate
  ``K_U = sum_i w_i W_i W_i^T`` and ``K_V = sum_i w_i W_i^T W_i`` (d x d), 10 power-iteration steps
  ``U <- qr(K_U U)`` (and V), then dense cores ``S_i = U^T W_i V``;
- the exact-SVD baseline (the Compress-then-Serve reference code): alternately U = the top-R left singular vectors
  of the d_out x (N R) matrix ``[sqrt(w_i) W_i V]_i`` (built from the factors, ``torch.linalg.svd``), V likewise
  from ``[sqrt(w_i) W_i^T U]_i``, 10 steps, then the cores from the factors.

All three use the relative weights ``w_i = 1 / ||W_i||_F^2`` and report the mean and worst relative error by the
same stable residual formula. ``vs_gram`` / ``vs_svd`` give ``ratio_median`` (ours / baseline time), the error
difference, and ``equal_error``: the fewest of our iterations whose mean error is within ``--equal-slack`` of the
baseline's, timed afresh (found by galloping + bisection over ``max_iter``). A baseline run that would exceed
``--baseline-budget-s`` is timed on the part that fits (the first adapters' dense Gram work, the first SVD steps)
and extrapolated linearly; the rest is computed by an algebraically identical cheap route (the Gram terms from
the factors, the SVD after a QR of the factor stack) so its error is still the real 10-step error. Such entries
say ``extrapolated: true``. Baselines run once per module shape and N (v shares k's, o shares q's: the random
adapters are statistically identical). The 128-module cohort (32 layers x q, k, v, o) time is estimated as the
sum of the per-module times; ``--cohort`` runs it.

Quality (an example set: ``--base tiny``, 20 users with r = 8 LoRAs on q and v on the toy Llama, or ``--base
smollm2``, the shipped users on SmolLM2-135M-Instruct with mixed recipes, compressed per target-module group).
For JD-Full and JD-Diag at each R in ``--ranks`` and K in ``--clusters`` it compresses every user, exports the
plain-LoRA form (``to_lora``), and reports: the parameter compression ratio (``account``), mean and worst
relative error, the share of users whose greedy answers ALL survive and the share of answers that survive
(``check_examples``), and the KL / greedy agreement against the original adapters (``check_behaviour``, the
users.json prompts as probes).
``best_all_users_survive`` is the highest ratio at which every user keeps every answer.

Prints one JSON object to stdout; progress goes to stderr. Deterministic for a seed (per device).

    python bench/compression.py                        # CPU default: a few minutes on 2 cores
    python bench/compression.py --device cuda          # GPU default: q, k, v, o at d = 4096, N = 10, 100, 1000
    python bench/compression.py --quick                # smoke run (the test suite's)
    python bench/compression.py --quality-only --base smollm2 --modes full --clusters 1 --ranks 4 8 16
    python bench/compression.py --speed-only --d 4096 --modules q --n 100 --cohort
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from _timing import WARMUP, emit_report, percentile

from soppu.adapter import LoraAdapter, read_adapter
from soppu.compression.accounting import account
from soppu.compression.compress import compress
from soppu.compression.export import to_lora
from soppu.compression.factors import (
    FactorStack,
    exact_float32,
    left_products,
    project_cores,
    relative_weights,
    right_products,
    squared_norms,
)
from soppu.compression.jd import FitResult, fit_module
from soppu.compression.model import Mode, ModuleBasis
from soppu.compression.rank import RankPolicy
from soppu.compression.residual import relative_errors
from soppu.examples.check import check_examples
from soppu.examples.sets import BASES, build_example_set, default_users
from soppu.models import load_causal_lm, resolve_device
from soppu.verify.behaviour import check_behaviour

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULES = ("q", "k", "v", "o")
LORA_RANK = 16
LORA_ALPHA = 32
BASELINE_STEPS = 10
# CPU default: one q and one k module at the realistic width, small N, plus the square d = 1024, N = 100 case the
# issue's target (>= 50x over the dense Gram at equal error) is stated for. (module, hidden, N).
CPU_CASES = (("q", 4096, 10), ("k", 4096, 10), ("q", 4096, 50), ("k", 4096, 50), ("q", 1024, 100))
GPU_NS = (10, 100, 1000)
QUICK_CASES = (("q", 256, 10),)


@dataclass(frozen=True)
class Case:
    module: str
    hidden: int
    kv: int
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in): q and o are hidden x hidden, k and v kv x hidden."""
        return (self.kv if self.module in ("k", "v") else self.hidden), self.hidden

    @property
    def name(self) -> str:
        return f"{self.module}_{self.shape[0]}x{self.shape[1]}_n{self.n}"

    def seed(self, base: int) -> int:
        # Stable across runs and Python versions (unlike hash()), different for every case.
        return base + zlib.crc32(self.name.encode()) % 100_000


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` with the device's queue drained before and after (CUDA calls are asynchronous)."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_stack(case: Case, rank: int, device: torch.device, seed: int) -> FactorStack:
    """N random rank-``rank`` adapters for one module, fp32, generated on ``device`` from a seeded generator.

    A ~ N(0, 1/d_in) as PEFT's init scale, B ~ N(0, 1/r) times a per-adapter magnitude spread over two decades,
    so the relative weights matter as they do for independently trained adapters.
    """
    d_out, d_in = case.shape
    gen = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(case.n, rank, d_in, generator=gen, device=device) / math.sqrt(d_in)
    magnitude = 10 ** (2 * torch.rand(case.n, 1, 1, generator=gen, device=device) - 1)
    b_t = torch.randn(case.n, rank, d_out, generator=gen, device=device) * (magnitude / math.sqrt(rank))
    scaling = torch.full((case.n,), LORA_ALPHA / rank, device=device)
    return FactorStack(b_t, a, scaling, (rank,) * case.n)


def _errors(stack: FactorStack, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor) -> dict[str, float]:
    errors = relative_errors(stack, ModuleBasis(u, v), core, Mode.FULL)
    return {"error_mean": float(errors.mean()), "error_worst": float(errors.max())}


def _fit_errors(result: FitResult) -> dict[str, float]:
    return {"error_mean": float(result.errors.mean()), "error_worst": result.worst_error}


# ---------------------------------------------------------------------------------------------------- ours


def _fit(stack: FactorStack, rank: int, seed: int, **kwargs: Any) -> FitResult:
    return fit_module(stack, rank, Mode.FULL, generator=_generator(seed), **kwargs)


def ours_fixed(
    stack: FactorStack, rank: int, iterations: int, repeats: int, seed: int, device: torch.device
) -> dict[str, Any]:
    """Exactly ``iterations`` U/V steps (tol = 0 never stops early unless the objective is bit-stable)."""
    samples, result = [], None
    for index in range(WARMUP + repeats):
        elapsed, result = _timed(device, lambda: _fit(stack, rank, seed, tol=0.0, max_iter=iterations))
        if index >= WARMUP:
            samples.append(elapsed)
    assert result is not None
    row = _ours_row(stack, result, samples)
    # The fixed cost (randomized start, one objective evaluation, the stable errors) is what max_iter = 0 costs;
    # the rest divided by the steps is the per-step cost that N and d scale.
    start = percentile([_timed(device, lambda: _fit(stack, rank, seed, max_iter=0))[0] for _ in range(repeats)], 0.5)
    row["start_and_errors_s"] = round(start, 4)
    row["per_step_s"] = round(max(0.0, row["median_s"] - start) / max(1, result.iterations), 5)
    return row


def ours_converged(stack: FactorStack, rank: int, repeats: int, seed: int, device: torch.device) -> dict[str, Any]:
    """The library defaults (tol = 1e-7, max_iter = 200)."""
    runs = [_timed(device, lambda: _fit(stack, rank, seed)) for _ in range(repeats)]
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
        return float(_fit(stack, rank, seed, tol=0.0, max_iter=k).errors.mean())

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
    runs = [_timed(device, lambda: _fit(stack, rank, seed, tol=0.0, max_iter=k)) for _ in range(repeats)]
    median = percentile([s for s, _ in runs], 0.5)
    return {"target": round(target, 6), "iterations": k, "median_s": round(median, 4), **_fit_errors(runs[-1][1])}


# ------------------------------------------------------------------------------------------------ baselines


def _orthonormal(rows: int, rank: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, rank, generator=_generator(seed)).to(device)).Q


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

                elapsed, _ = _timed(device, dense)
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

        power_s, (u, v) = _timed(device, power)
        core = torch.empty(stack.n, rank, rank, device=device)
        core_s, core_done = 0.0, 0
        for i in range(stack.n):
            if core_done == 0 or core_s < budget_s:

                def dense_core(i: int = i) -> None:
                    core[i] = u.T @ (scaling[i] * stack.b_t[i].T @ stack.a[i]) @ v

                elapsed, _ = _timed(device, dense_core)
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

                elapsed, (u, v) = _timed(device, step)
                step_s, timed = step_s + elapsed, timed + 1
            else:
                u = cheap("b", stack.b_t, right_products(stack, v))
                v = cheap("a", stack.a, left_products(stack, u))
        core_s, core = _timed(device, lambda: project_cores(stack, ModuleBasis(u, v), Mode.FULL))
        return {
            "time_s": round(step_s * steps / timed + core_s, 3),
            "measured_s": round(step_s + core_s, 3),
            "extrapolated": timed < steps,
            "timed_steps": timed,
            "steps": steps,
            "float64_retries": retries[0],
            **_errors(stack, u, v, core),
        }


# ------------------------------------------------------------------------------------------------ speed


def _versus(ours: dict[str, Any], baseline: dict[str, Any], equal: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ratio_median": round(ours["median_s"] / baseline["time_s"], 5),
        "speedup": round(baseline["time_s"] / ours["median_s"], 1),
        "error_diff": round(ours["error_mean"] - baseline["error_mean"], 5),
        "equal_error": equal,
    }
    if equal is not None:
        equal["ratio_median"] = round(equal["median_s"] / baseline["time_s"], 5)
        equal["speedup"] = round(baseline["time_s"] / equal["median_s"], 1)
    return out


def speed_case(
    case: Case, args: argparse.Namespace, device: torch.device, baselines: dict[tuple[Any, ...], dict[str, Any]]
) -> dict[str, Any]:
    seed = case.seed(args.seed)
    stack = random_stack(case, LORA_RANK, device, seed)
    factor_bytes = (stack.b_t.numel() + stack.a.numel()) * stack.b_t.element_size()
    _say(f"[speed] {case.name}: {factor_bytes / 1e6:.0f} MB of factors")
    row: dict[str, Any] = {
        "case": case.name,
        "module": case.module,
        "shape": list(case.shape),
        "n": case.n,
        "r": LORA_RANK,
        "R": args.R,
        "factor_bytes": factor_bytes,
        "ours_fixed": ours_fixed(stack, args.R, args.iterations, args.repeats, seed, device),
    }
    row["ours_converged"] = ours_converged(stack, args.R, args.converged_repeats, seed, device)
    _say(f"  ours: {row['ours_fixed']}\n  ours converged: {row['ours_converged']}")
    key = (case.shape, case.n)
    if args.baselines == "none":
        return row
    shared = args.baselines == "per-shape" and key in baselines
    if not shared:
        _say("  gram baseline...")
        gram = gram_baseline(stack, args.R, BASELINE_STEPS, args.baseline_budget_s, seed, device)
        _say(f"  gram: {gram}\n  svd baseline...")
        svd = svd_baseline(stack, args.R, BASELINE_STEPS, args.baseline_budget_s, seed, device)
        _say(f"  svd: {svd}")
        baselines[key] = {"case": case.name, "gram": gram, "svd": svd}
    found = baselines[key]
    if shared:
        row["baselines_from"] = found["case"]
    else:
        row["gram"], row["svd"] = found["gram"], found["svd"]
    cap = max(row["ours_converged"]["iterations"], args.iterations)
    for label in ("gram", "svd"):
        target = found[label]["error_mean"] + args.equal_slack
        equal = ours_at_error(stack, args.R, target, cap, args.repeats, seed, device)
        row[f"vs_{label}"] = _versus(row["ours_fixed"], found[label], equal)
        _say(f"  vs {label}: {row[f'vs_{label}']}")
    del stack
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def cohort_estimates(rows: list[dict[str, Any]], layers: int) -> list[dict[str, Any]]:
    """Per (hidden, N): layers x the sum of the q, k, v, o per-module times, a missing module standing in by a
    measured one of the same shape (v by k, o by q)."""
    groups: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["shape"][1], row["n"]), {})[row["module"]] = row
    out = []
    for (hidden, n), measured in sorted(groups.items()):
        stand_in = {"q": ("q", "o"), "o": ("o", "q"), "k": ("k", "v"), "v": ("v", "k")}
        chosen = {m: next((measured[c] for c in stand_in[m] if c in measured), None) for m in MODULES}
        if any(row is None for row in chosen.values()):
            continue
        out.append(
            {
                "hidden": hidden,
                "n": n,
                "modules": layers * len(MODULES),
                "stand_ins": {m: row["module"] for m, row in chosen.items() if row and row["module"] != m},
                "fixed_iterations_s": round(layers * sum(r["ours_fixed"]["median_s"] for r in chosen.values()), 2),
                "converged_s": round(layers * sum(r["ours_converged"]["median_s"] for r in chosen.values()), 2),
            }
        )
    return out


def run_cohort(hidden: int, kv: int, n: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fit a whole cohort's modules one after another, as ``compress`` does (one stack on the device at a time);
    only the fits are timed, not the random generation."""
    fit_s, started = 0.0, time.perf_counter()
    for layer in range(args.cohort_layers):
        for module in MODULES:
            case = Case(module, hidden, kv, n)
            stack = random_stack(case, LORA_RANK, device, case.seed(args.seed) + 7919 * layer)
            elapsed, _ = _timed(
                device, lambda stack=stack: _fit(stack, args.R, args.seed, tol=0.0, max_iter=args.iterations)
            )
            fit_s += elapsed
            del stack
        _say(f"[cohort] hidden {hidden} N={n}: layer {layer + 1}/{args.cohort_layers}, {fit_s:.1f} s of fits")
    return {
        "hidden": hidden,
        "n": n,
        "modules": args.cohort_layers * len(MODULES),
        "iterations": args.iterations,
        "fit_s": round(fit_s, 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def speed_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    def kv(hidden: int) -> int:
        return args.kv or max(1, hidden // 4)

    if args.quick:
        return [Case(m, h, kv(h), n) for m, h, n in QUICK_CASES]
    if args.n is None and args.d is None and args.modules is None:
        if device.type == "cpu":
            return [Case(m, h, kv(h), n) for m, h, n in CPU_CASES]
        gpu = [Case(m, 4096, kv(4096), n) for n in GPU_NS for m in MODULES]
        return [*gpu, Case("q", 1024, kv(1024), 100)]
    ns = args.n or ([10, 50] if device.type == "cpu" else list(GPU_NS))
    modules = args.modules or (["q", "k"] if device.type == "cpu" else list(MODULES))
    return [Case(m, h, kv(h), n) for h in (args.d or [4096]) for n in ns for m in modules]


def speed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    baselines: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows = [speed_case(case, args, device, baselines) for case in speed_cases(args, device)]
    out: dict[str, Any] = {
        "cases": rows,
        "cohort_estimate": {"device": str(device), "groups": cohort_estimates(rows, args.cohort_layers)},
    }
    if args.cohort:
        hidden = (args.d or [4096])[0]
        ns = sorted({row["n"] for row in rows if row["shape"][1] == hidden}) or [10]
        out["cohort_measured"] = [run_cohort(hidden, args.kv or hidden // 4, n, args, device) for n in ns]
    return out


# ------------------------------------------------------------------------------------------------ quality


def _default_cache_dir() -> Path:
    # The Makefile exports SOPPU_CACHE_DIR=<repo>/.cache/soppu and the tests fall back to that same directory, so
    # the trained fixture is shared; soppu's own default (~/.cache/soppu) would retrain it for a plain run.
    return Path(os.environ.get("SOPPU_CACHE_DIR", REPO_ROOT / ".cache" / "soppu"))


def _compress_groups(
    pairs: list[tuple[str, LoraAdapter]], mode: Mode, rank: int, clusters: int, args: argparse.Namespace, device
) -> tuple[list[Any], list[Any]]:
    """Compress each group of adapters with the same target modules on its own (a cohort each, as the service
    does): one basis per module can only be shared by adapters that have that module. Returns the compressions
    and their accountings."""
    groups: dict[tuple[str, ...], list[tuple[str, LoraAdapter]]] = {}
    for name, adapter in pairs:
        groups.setdefault(tuple(sorted(adapter.modules)), []).append((name, adapter))
    originals = dict(pairs)
    compressions, accounts = [], []
    for members in groups.values():
        k = min(clusters, len(members))
        compression = compress(
            members, mode=mode, policy=RankPolicy.fixed(rank), clusters=k, device=device, seed=args.seed
        )
        compressions.append(compression)
        accounts.append(account(compression, [originals[a.name] for a in compression.adapters]))
    return compressions, accounts


def quality_row(
    directory: Path,
    pairs: list[tuple[str, LoraAdapter]],
    model: torch.nn.Module,
    tokenizer: Any,
    probes: list[str],
    mode: Mode,
    rank: int,
    clusters: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    originals = dict(pairs)
    elapsed, (compressions, accounts) = _timed(
        device, lambda: _compress_groups(pairs, mode, rank, clusters, args, device)
    )
    original_parameters = sum(a["original"]["parameters"] for a in accounts)
    ratio = original_parameters / sum(a["compressed"]["parameters"] for a in accounts)
    errors = [e for c in compressions for a in c.adapters for e in a.errors.values()]
    exports = {a.name: to_lora(c, a) for c in compressions for a in c.adapters}
    # check_examples loads the base model itself; the behaviour check reuses the one loaded model.
    checks = check_examples(directory, device=str(device), adapters=exports)
    users: dict[str, list[bool]] = {}
    for check in checks:
        users.setdefault(check.user_id, []).append(check.ok)
    behaviour = {}
    if not args.answers_only:
        adapters = check_behaviour(model, tokenizer, originals, exports, probes).adapters
        behaviour = {
            "kl_mean": round(sum(a.kl_mean for a in adapters) / len(adapters), 4),
            "kl_max": round(max(a.kl_max for a in adapters), 4),
            "agreement": round(sum(a.agreement for a in adapters) / len(adapters), 4),
            "behaviour_passed": round(sum(a.passed for a in adapters) / len(adapters), 3),
        }
    return {
        "mode": mode.value,
        "R": rank,
        "K": clusters,
        "cohorts": len(compressions),
        "bases_ranks": sorted({b.rank for c in compressions for k in c.clusters for b in k.bases.values()}),
        "ratio": round(ratio, 3),
        "error_mean": round(sum(errors) / len(errors), 4),
        "error_worst": round(max(errors), 4),
        "users_all_answers": round(sum(all(ok) for ok in users.values()) / len(users), 3),
        "answers": round(sum(c.ok for c in checks) / len(checks), 3),
        "held_out_answers": _share([c.ok for c in checks if c.held_out]),
        **behaviour,
        "compress_s": round(elapsed, 3),
    }


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    keep = [r for r in rows if r["users_all_answers"] == 1.0]
    best = max(keep, key=lambda r: r["ratio"], default=None)
    if best is None:
        return None
    # A ratio below 1 means the compressed form is larger than the originals: worth flagging, not hiding.
    return {**{k: best.get(k) for k in ("ratio", "mode", "R", "K", "kl_mean")}, "compresses": best["ratio"] > 1}


def quality(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    users = args.users or default_users(args.base)
    directory = build_example_set(
        args.base, users, args.cache_dir / "bench" / f"{args.base}-{users}", cache_dir=args.cache_dir, progress=True
    )
    manifest = json.loads((directory / "users.json").read_text())
    pairs = [
        (u["user_id"], read_adapter(directory / u["adapter"], expected_base_model=manifest["base_model_id"]))
        for u in manifest["users"]
    ]
    model, tokenizer = load_causal_lm(directory / manifest["base_model"], str(device))
    probes = sorted({p["prompt"] for u in manifest["users"] for p in u["prompts"]})
    reference = check_examples(directory, device=str(device))
    _say(
        f"[quality] {len(pairs)} users, {len(probes)} probes; originals answer {sum(c.ok for c in reference)}/"
        f"{len(reference)}"
    )
    rows = []
    ranks, clusters = ([8], [1]) if args.quick else (args.ranks, args.clusters)
    for mode in args.modes:
        for k in clusters:
            if k > len(pairs):
                continue
            for rank in ranks:
                row = quality_row(directory, pairs, model, tokenizer, probes, Mode(mode), rank, k, args, device)
                _say(f"[quality] {row}")
                rows.append(row)
    return {
        "base": args.base,
        "examples": str(directory),
        "users": len(pairs),
        "probes": probes,
        "originals_answers": round(sum(c.ok for c in reference) / len(reference), 3),
        "rows": rows,
        "best_all_users_survive": {
            "overall": _best(rows),
            **{mode: _best([r for r in rows if r["mode"] == mode]) for mode in args.modes},
        },
    }


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: N=10, d=256, one module; R=8, K=1")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--speed-only", action="store_true")
    only.add_argument("--quality-only", action="store_true")
    speed_group = parser.add_argument_group("speed")
    speed_group.add_argument("--n", type=int, nargs="+", help="adapter counts (default CPU 10 50, GPU 10 100 1000)")
    speed_group.add_argument("--d", type=int, nargs="+", help="hidden sizes (default 4096)")
    speed_group.add_argument("--kv", type=int, help="k/v output width (default hidden / 4)")
    speed_group.add_argument("--modules", nargs="+", choices=MODULES, help="default CPU q k, GPU q k v o")
    speed_group.add_argument("--R", type=int, default=64, help="shared rank (default 64)")
    speed_group.add_argument("--iterations", type=int, default=20, help="fixed U/V steps (default 20)")
    speed_group.add_argument("--repeats", type=int, default=3, help="timed runs of ours, median (default 3)")
    speed_group.add_argument(
        "--converged-repeats", type=int, default=1, help="timed runs of the (long) converged fit (default 1)"
    )
    speed_group.add_argument(
        "--baselines", choices=("per-shape", "all", "none"), default="per-shape", help="which cases run the baselines"
    )
    speed_group.add_argument(
        "--baseline-budget-s",
        type=float,
        help="time one baseline run at most this long, extrapolate the rest (default CPU 15, GPU 300)",
    )
    speed_group.add_argument("--equal-slack", type=float, default=1e-3, help="equal error = baseline + this")
    speed_group.add_argument("--cohort", action="store_true", help="run the 128-module cohort, not only estimate it")
    speed_group.add_argument("--cohort-layers", type=int, default=32, help="layers of the cohort (default 32)")
    quality_group = parser.add_argument_group("quality")
    quality_group.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 48])
    quality_group.add_argument("--clusters", type=int, nargs="+", default=[1, 2, 4])
    quality_group.add_argument("--modes", nargs="+", choices=[m.value for m in Mode], default=["full", "diag"])
    quality_group.add_argument("--base", default="tiny", choices=sorted(BASES), help="example set (default tiny)")
    quality_group.add_argument("--users", type=int, help="example users (default: tiny 20, smollm2 all shipped)")
    quality_group.add_argument(
        "--answers-only", action="store_true", help="skip the KL / agreement check (minutes on the SmolLM2 set)"
    )
    quality_group.add_argument("--cache-dir", type=Path, default=None, help="examples cache (default SOPPU_CACHE_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.R, args.iterations, args.repeats, args.converged_repeats, args.cohort_layers, args.users or 1) < 1:
        parser.error("--R, --iterations, --repeats, --converged-repeats, --cohort-layers and --users must be >= 1")
    device = resolve_device(args.device)
    if args.quick:
        args.repeats = 1
    if args.baseline_budget_s is None:
        args.baseline_budget_s = 15.0 if device.type == "cpu" else 300.0
    args.cache_dir = args.cache_dir or _default_cache_dir()
    started = time.perf_counter()
    body: dict[str, Any] = {}
    if not args.quality_only:
        body["speed"] = speed(args, device)
    if not args.speed_only:
        body["quality"] = quality(args, device)
    emit_report(
        "soppu.compression joint diagonalization: speed vs baselines, behaviour on the examples",
        {
            "device": str(device),
            "quick": args.quick,
            "r": LORA_RANK,
            "R": args.R,
            "iterations": args.iterations,
            "baseline_steps": BASELINE_STEPS,
            "repeats": args.repeats,
            "converged_repeats": args.converged_repeats,
            "baselines": args.baselines,
            "baseline_budget_s": args.baseline_budget_s,
            "equal_slack": args.equal_slack,
            "cohort_layers": args.cohort_layers,
            "ranks": [8] if args.quick else args.ranks,
            "clusters": [1] if args.quick else args.clusters,
            "modes": args.modes,
            "users": args.users,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        },
        {
            "ours": "fit_module JD-Full; ours_fixed: exactly `iterations` steps (tol=0), median of `repeats` after"
            " `warmup` runs; ours_converged: default tol 1e-7 / max_iter 200, median of `converged_repeats`; times"
            " include the start and the errors (start_and_errors_s: a max_iter=0 run; per_step_s: the rest of the"
            " fixed run per step)",
            "gb_per_s": "bytes of all B and A factors x iterations / time (each step reads them twice: a lower bound)",
            "gram": "dense W_i, K_U = sum w_i W_i W_i^T and K_V, 10 power-iteration steps, dense cores; run once",
            "svd": "alternating exact torch.linalg.svd of the d x (N R) stack [sqrt(w_i) W_i V]_i, 10 steps; run once",
            "extrapolated": "the baseline ran past baseline_budget_s: time is extrapolated linearly from the timed"
            " adapters/steps; the rest was computed by an identical cheap route, so errors are the real ones",
            "baselines_from": "baselines run once per (shape, N); this case compares with that case's baseline",
            "equal_error": "the fewest of our steps whose mean error <= baseline mean error + equal_slack, timed",
            "speedup": "baseline time / ours time",
            "error_diff": "ours mean relative error - the baseline's (negative: ours is better)",
            "cohort_estimate": "layers x (q + k + v + o) per-module times of ours on this device",
            "quality": "users_all_answers: share of users whose greedy answers all equal the expected ones;"
            " answers: share of answers; kl_mean/agreement: check_behaviour vs the originals on the probes",
        },
        body,
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
