"""The speed half of ``bench/compression.py``: which cases run, each case's row (ours against both baselines, at a
fixed step count and at equal error), and the 128-module cohort, estimated or run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _compression_baselines import gram_baseline, svd_baseline
from _compression_cases import BASELINE_STEPS, LORA_RANK, MODULES, Case, random_stack, say, time_call
from _compression_ours import fit, ours_at_error, ours_converged, ours_fixed

__all__ = ["speed"]

# CPU default: one q and one k module at the realistic width, small N, plus the square d = 1024, N = 100 case the
# issue's target (>= 50x over the dense Gram at equal error) is stated for. (module, hidden, N).
CPU_CASES = (("q", 4096, 10), ("k", 4096, 10), ("q", 4096, 50), ("k", 4096, 50), ("q", 1024, 100))
GPU_NS = (10, 100, 1000)
QUICK_CASES = (("q", 256, 10),)


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
    say(f"[speed] {case.name}: {factor_bytes / 1e6:.0f} MB of factors")
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
    say(f"  ours: {row['ours_fixed']}\n  ours converged: {row['ours_converged']}")
    key = (case.shape, case.n)
    if args.baselines == "none":
        return row
    shared = args.baselines == "per-shape" and key in baselines
    if not shared:
        say("  gram baseline...")
        gram = gram_baseline(stack, args.R, BASELINE_STEPS, args.baseline_budget_s, seed, device)
        say(f"  gram: {gram}\n  svd baseline...")
        svd = svd_baseline(stack, args.R, BASELINE_STEPS, args.baseline_budget_s, seed, device)
        say(f"  svd: {svd}")
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
        say(f"  vs {label}: {row[f'vs_{label}']}")
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
            elapsed, _ = time_call(
                device, lambda stack=stack: fit(stack, args.R, args.seed, tol=0.0, max_iter=args.iterations)
            )
            fit_s += elapsed
            del stack
        say(f"[cohort] hidden {hidden} N={n}: layer {layer + 1}/{args.cohort_layers}, {fit_s:.1f} s of fits")
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
