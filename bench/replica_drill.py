"""Replica drill on real processes, no mocks: two compressors on one bucket, two gateways sharing per-user limits
and invalidations through one Redis, two engines; one of each killed with SIGKILL in the middle of uploads,
deletions, refits and generation load. ``tests/e2e/test_replica_drill.py`` runs it in quick sizes.

Topology (loopback): moto's S3 server (or a given endpoint), a fresh bucket, one ``redis-server``; two compressors
(short leases, so a dead one's job claims expire in seconds; the error gate alone, ``base_model=none``, as
``kill_drill.py``: the drill is about processes, not quality), both told both gateways and the Redis; two
gateways (``bench/drills.py``'s example engines behind both, per-user request limits on); two engines.

1. Keys for every user (admin, through a compressor); version 1 uploads spread over both compressors, waited
   for; every user answers 200 through both gateways.
2. Per-user limits across gateways: one user sends ``3 x burst`` requests, alternating gateways, back to back.
   Admitted must be at most ``burst + rate x elapsed``.
3. Chaos for ``--chaos-s``: new versions (another example adapter) uploaded through a random compressor (a client
   whose compressor is gone retries on the other with the same Idempotency-Key); users deleted (each after one
   more upload, which the deletion then races); explicit cohort refits; generation load through a random gateway
   (retried on the other on a connection error), deleted users asked for with a service key naming them; a poller
   reading every pointer. At a third of it a few uploads go to one compressor, which is then killed (SIGKILL)
   with jobs in its queue, with one gateway and one engine. The load goes on a while after the last deletion.
4. Settle: no job pending (the survivor claims the dead compressor's jobs once their claims expire).
5. Verdicts, each must be 0 (or empty):
   lost            acknowledged uploads neither done, failed with an error code, nor a deleted user's
   regressions     a pointer seen moving to a lower version (or vanishing, but for a deleted user)
   deleted_served  a 200 for a deleted user to a request sent after the deletion was acknowledged (in the chaos,
                   through either gateway; after settling, through the surviving one)
   resurrected     a deleted user's pointer read after the deletion was acknowledged
   behind          a surviving user whose pointer is below their newest acknowledged upload, or names other bytes
   unserved        a surviving user the surviving gateway does not answer 200 after settling
   limit_excess    step 2's admitted beyond its bound
   Counts and timings are reported, never judged.

    python bench/replica_drill.py            # full size
    python bench/replica_drill.py --quick    # the test suite's sizes

One JSON object on stdout (a summary on stderr); the exit status is 1 when a verdict fails (listed in ``failed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _drill_topology import DrillError, build_drill_examples
from _replica_phases import Drill
from _replica_topology import FULL, QUICK, ReplicaTopology, Sizes

__all__ = ["FULL", "QUICK", "ReplicaTopology", "Sizes", "failures", "run"]


# ---- the run and its report -----------------------------------------------------------------------------------


def run(examples: Path, workdir: Path, sizes: Sizes, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The whole drill on a fresh topology: the report, without the machine (see ``failures``)."""
    report: dict[str, Any] = {}
    with ReplicaTopology(examples, workdir, sizes, s3_endpoint) as top:
        drill = Drill(top, sizes)
        try:
            report["setup"] = drill.setup()
            report["limit"] = drill.limits()
            report["chaos"] = drill.chaos()
            report["settle_s"] = drill.settle()
            report["verdicts"] = drill.verdicts()
        except (DrillError, RuntimeError, httpx.HTTPError) as e:
            report["error"] = str(e)[-3000:]
        if failures(report):
            report["log_tails"] = top.log_tails()
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """The verdicts a report fails (empty: it passed)."""
    if "error" in report:
        return [f"drill error: {report['error']}"]
    found, v = [], report["verdicts"]
    for name in ("lost", "regressions", "deleted_served", "resurrected"):
        if v[name]:
            found.append(f"{name}: {v[name]}, e.g. {v[name + '_examples'][:2]}")
    for name in ("behind", "unserved"):
        if v[name]:
            found.append(f"{name}: {v[name][:3]}")
    if report["limit"]["limit_excess"]:
        found.append(f"limit_excess: {report['limit']}")
    return found


def _summary(report: dict[str, Any]) -> str:
    if "verdicts" not in report:
        return f"replica drill: FAILED {report['failed']}"
    c, v, limit = report["chaos"], report["verdicts"], report["limit"]
    return (
        f"replica drill: {'ok' if report['ok'] else 'FAILED'} in {report['wall_s']} s\n"
        f"  chaos {c['chaos_s']} s, killed {', '.join(c['kills'].values())} at {c['killed_at_s']} s: "
        f"{c['uploads_acked']} uploads, {c['deletions']} deletions, refits {c['refits']}, generations "
        f"{c['generations']}, deleted users asked {sum(c['deleted_user_probes'].values())} times\n"
        f"  settled in {report['settle_s']} s; the dead compressor's pending jobs: "
        f"{v['reclaim']['finished_after']} of {v['reclaim']['dead_compressors_jobs_pending_at_kill']} ended\n"
        f"  lost {v['lost']}, regressions {v['regressions']}, deleted served {v['deleted_served']}, resurrected "
        f"{v['resurrected']}, behind {len(v['behind'])}, unserved {len(v['unserved'])}; limit: "
        f"{limit['admitted']} of {limit['sent']} admitted (bound {limit['bound']}), excess {limit['limit_excess']}"
        + "".join(f"\n  FAILED {f}" for f in report["failed"])
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test suite's sizes")
    parser.add_argument("--users", type=int, help=f"drill users (default {FULL.users}; quick {QUICK.users})")
    parser.add_argument("--chaos-s", type=float, help=f"the chaos phase (default {FULL.chaos_s:g} s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = {"users": args.users, "chaos_s": args.chaos_s}
    sizes = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed,
                                **{k: v for k, v in chosen.items() if v is not None})  # fmt: skip
    if not 0 < sizes.deletions < sizes.users:
        parser.error(f"--users must be more than {sizes.deletions} (the users deleted)")
    started = time.perf_counter()
    from _timing import machine  # torch is imported here only: --help stays fast

    report: dict[str, Any] = {"benchmark": "replica_drill", "machine": machine(), "config": dataclasses.asdict(sizes)}
    with tempfile.TemporaryDirectory(prefix="replica-drill-") as tmp:
        examples = build_drill_examples(4, Path(tmp) / "examples")
        report.update(run(examples, Path(tmp), sizes))
    failed = failures(report)
    tails = report.pop("log_tails", None)
    report["notes"] = {
        "lost": "acknowledged uploads neither done, failed with an error code, nor a deleted user's; must be 0",
        "regressions": "a pointer seen moving to a lower version; must be 0",
        "deleted_served": "200s for a deleted user to requests sent after the deletion was acknowledged; must be 0",
        "limit_excess": "admitted beyond burst + rate x elapsed, one user alternating both gateways; must be 0",
        "reclaim": "the killed compressor's acknowledged jobs still pending at the kill, and how many then ended",
    }
    report.update({"failed": failed, "ok": not failed, "wall_s": round(time.perf_counter() - started, 1)})
    if tails:
        print(tails, file=sys.stderr)
    print(_summary(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
