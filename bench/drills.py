"""Fault drills on real processes, no mocks: an engine killed (SIGKILL) mid-stream, and the gateway killed and
restarted on its port under load. This module owns the drills' topology, their client side (the verdict on every
answer) and their report; ``tests/e2e/test_serving_drills.py`` runs the same functions in quick sizes.

Topology: moto's S3 server (or a given endpoint); a fresh bucket holding each example user's adapter as the
compressor publishes it (export, manifest, then pointer) and a user key; two engines (``python -m
inference_service``, the tiny example model) reading adapters from it; a gateway in front. Clients speak HTTP to
the gateway only, and every answer is compared with its user's answer before any fault (greedy decoding: the same
request gives the same text), so another user's adapter or the base model answering is ``wrong``. Verdicts:

    ok       200, or a complete stream, with the user's reference answer
    wrong    200, or a complete stream, with other text; a cut stream's tokens off the reference     must be 0
    clean    an SSE error event with an error_type; a 5xx with a JSON error_type before any byte, a 503 with
             Retry-After; in the gateway drill, a refused or broken connection (the client may retry)
    unclean  anything else: a 503 without Retry-After, a stream ending with neither its final event nor an
             error event (truncated, looking like success), a broken connection while the gateway is up  must be 0
    hang     no end within --hang-s (the clients' read timeout)                                  must be 0

``engine_kill``: a user's long stream (``ignore_eos_token``) runs through the gateway; after a few tokens the
engine the gateway counts it in flight on is killed, while bystanders send short requests for every user and a
few more streams for that user open just before (they meet the kill before their headers). The long stream must
end with an error event, its tokens a prefix of the reference; the gateway must stay up and serve the user again
(recovery: kill to first right answer); the engine is restarted (not in --quick) and every user then served
right. With ``--engines 1`` (the e2e stack's shape) nothing fails over: the engine restarts at once.

``gateway_restart``: workers send steady load (short requests, some streamed); once a third is done the gateway
is killed and started again on its port. A request that fails cleanly is sent again after a back-off, as a
client would (every try is counted); each must end right, and every user be served right afterwards.

    python bench/drills.py            # both drills at full size
    python bench/drills.py --quick    # the test suite's sizes

One JSON object goes to stdout; the exit status is 1 when an invariant fails (listed under ``failed``).
Timings (recovery, restarts) are reported, never judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _drill_client import FULL, QUICK, Sizes, fetch, take_references
from _drill_faults import engine_kill_drill, gateway_restart_drill
from _drill_topology import DrillError, DrillUser, Topology, base_url, build_drill_examples, kill

__all__ = [
    "FULL",
    "QUICK",
    "DrillError",
    "DrillUser",
    "Sizes",
    "Topology",
    "base_url",
    "build_drill_examples",
    "engine_kill_drill",
    "failures",
    "fetch",
    "gateway_restart_drill",
    "kill",
    "take_references",
]


# ---- invariants and the report --------------------------------------------------------------------------------


def _tally_failures(name: str, part: dict[str, Any]) -> Iterator[str]:
    if part["wrong_answers"]:
        yield f"{name}: {part['wrong_answers']} wrong answers, e.g. {part['wrong_examples'][:2]}"
    if part["unclean_failures"]:
        yield f"{name}: unclean failures {part['unclean_failures']}"
    if part["hangs"]:
        yield f"{name}: {part['hangs']} hangs"


def failures(drill: str, result: dict[str, Any]) -> list[str]:
    """The invariants a drill's result breaks (empty: it passed)."""
    found: list[str] = []
    for part in ("during", "load", "after"):
        if part in result:
            found += _tally_failures(f"{drill}.{part}", result[part])
    if not result["after"]["every_user_served_right"]:
        found.append(f"{drill}: not every user was served right after the fault")
    if result["recovery_s"] is None:
        found.append(f"{drill}: no right answer after the fault")
    if not result["gateway_alive"]:
        found.append(f"{drill}: the gateway is not running")
    if drill == "engine_kill":
        victim = result["victim"]
        if victim["end"] != "clean" or not victim["detail"].startswith(("stream_error:", "http_5")):
            found.append(f"engine_kill: the victim's stream did not end cleanly: {victim}")
        restart = result["engine_restart"]
        if restart is not None and not restart["requests_served_after_restart"]:
            found.append("engine_kill: the restarted engine served nothing")
    if drill == "gateway_restart":
        load = result["load"]
        if load["workers_still_running"] or load["requests"] != load["requests_planned"]:
            found.append(f"gateway_restart: {load['requests']} of {load['requests_planned']} requests done")
        if not (result["ok_sent_before_the_kill"] and result["ok_sent_after_the_kill"]):
            found.append("gateway_restart: the kill did not land inside the load")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test suite's sizes, and no engine restart")
    parser.add_argument("--users", type=int, default=4, help="example users published (distinct adapters)")
    parser.add_argument("--engines", type=int, default=2, choices=[1, 2], help="with 1, nothing fails over")
    parser.add_argument("--load-requests", type=int, help=f"gateway drill requests (default {FULL.load_requests})")
    parser.add_argument("--load-workers", type=int, help=f"concurrent clients (default {FULL.load_workers})")
    parser.add_argument("--hang-s", type=float, help=f"a request unanswered this long hangs (default {FULL.hang_s})")
    parser.add_argument("--tolerate", action="append", default=[], metavar="KIND",
                        help="count this unclean kind as clean, e.g. http_503:no_backend:no_retry_after")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    chosen = {"load_requests": args.load_requests, "load_workers": args.load_workers, "hang_s": args.hang_s}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    sizes = dataclasses.replace(sizes, seed=args.seed, tolerated=tuple(args.tolerate), **chosen)
    started = time.perf_counter()
    from _timing import machine  # torch is imported here only: --help stays fast

    config = {**dataclasses.asdict(sizes), "users": args.users, "engines": args.engines}
    report: dict[str, Any] = {"benchmark": "drills", "machine": machine(), "config": config}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        examples = build_drill_examples(args.users, Path(tmp) / "examples")
        with Topology(examples, Path(tmp), engines=args.engines) as top:
            try:
                take_references(top, sizes)
                for name, drill in (("engine_kill", engine_kill_drill), ("gateway_restart", gateway_restart_drill)):
                    report[name] = drill(top, sizes)
                    failed += failures(name, report[name])
                    print(json.dumps({name: report[name]}), file=sys.stderr)
            except RuntimeError as e:  # DrillError, or a restarted process that never came back
                failed.append(f"drill error: {e}")
            if failed:
                print(top.log_tails(), file=sys.stderr)
    report["notes"] = {
        "clean_failures": "by kind: stream_error:<error_type>, http_<status>:<error_type>, connection:<httpx error>",
        "recovery_s": "from the SIGKILL to the first right answer (the victim's user; anyone for the gateway)",
        "wrong_answers": "answers that differ from the user's own before the fault; must be 0",
        "hangs": "requests without an end within hang_s; must be 0",
    }
    report.update({"failed": failed, "ok": not failed, "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
