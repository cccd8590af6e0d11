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
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _compression_cases import BASELINE_STEPS, LORA_RANK, MODULES
from _compression_quality import default_cache_dir, quality
from _compression_speed import speed
from _timing import emit_report

from soppu.compression.model import Mode
from soppu.examples.sets import BASES
from soppu.models import resolve_device


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
    args.cache_dir = args.cache_dir or default_cache_dir()
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
