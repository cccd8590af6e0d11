"""Failpoints: named steps of a job where a fault drill kills the process with SIGKILL, as a crash or an
out-of-memory kill would, at exactly that step (as etcd's gofail does). Off unless ``SOPPU_FAILPOINTS`` names
them (comma separated); a step not named costs one set lookup. ``bench/kill_drill.py`` runs them.

========================  ================================================================
failpoint                 the process dies ...
========================  ================================================================
``job.running``           after the job's record says running, before anything is read
``publish.basis``         after a new basis is written, before the cohort state says so
``publish.core``          after the version's core is written
``publish.export``        after the version's PEFT export is written
``publish.manifest``      after the version's manifest is written, before the pointer moves
``publish.pointer``       after the pointer moved, before the job's record says done
``refit.published``       after a refit published every member, before the cohort state is saved
========================  ================================================================
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAILPOINTS", "failpoint"]

FAILPOINTS = (
    "job.running",
    "publish.basis",
    "publish.core",
    "publish.export",
    "publish.manifest",
    "publish.pointer",
    "refit.published",
)
_ARMED = frozenset(name for name in os.environ.get("SOPPU_FAILPOINTS", "").split(",") if name)


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if the drill armed ``name``."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
