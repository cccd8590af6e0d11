"""``bench/replica_drill.py`` in its quick sizes, on real processes (the session's moto server, one redis-server, two
compressors, two gateways, two engines on the example model): with one of each killed by SIGKILL among uploads,
deletions, refits and generation load, no acknowledged upload is lost, no pointer moves back, no deleted user is
served, one user's request limit holds across both gateways, and every other user is served their newest upload.

Nothing here is timed: the drill's timeouts are hang guards, and the times it measures are reported, never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# bench/ is no package (a namespace import): its scripts put bench/ on sys.path for their own imports.
from bench import replica_drill

pytestmark = pytest.mark.slow


def test_replicas_killed_mid_chaos_lose_nothing_and_serve_no_deleted_user(
    examples_dir: Path, moto_server: str, tmp_path: Path
) -> None:
    report = replica_drill.run(examples_dir, tmp_path, replica_drill.QUICK, s3_endpoint=moto_server)
    assert replica_drill.failures(report) == [], f"{report}\n{report.get('log_tails', '')}"
    verdicts, limit, chaos = report["verdicts"], report["limit"], report["chaos"]
    counts = {name: verdicts[name] for name in ("lost", "regressions", "deleted_served", "resurrected")}
    assert counts == dict.fromkeys(counts, 0), verdicts
    assert (verdicts["behind"], verdicts["unserved"]) == ([], []), verdicts
    # The limit was reached (the user sent three bursts) and held across both gateways, sharing it through Redis.
    assert limit["refused"].get("http_429:rate_limited", 0) > 0 and limit["limit_excess"] == 0, limit
    assert limit["gateway_limits"] == ["shared", "shared"], limit
    # The faults happened inside the load: one of each kind killed, uploads and a deletion acknowledged.
    assert set(chaos["kills"]) == {"compressor", "gateway", "engine"}, chaos
    assert chaos["uploads_acked"] > 0 and chaos["deletions"] == replica_drill.QUICK.deletions, chaos
    assert chaos["generations"].get("ok", 0) > 0, chaos
    reclaim = verdicts["reclaim"]  # the dead compressor's queued jobs, every one ended by the survivor
    assert reclaim["finished_after"] == reclaim["dead_compressors_jobs_pending_at_kill"], reclaim
