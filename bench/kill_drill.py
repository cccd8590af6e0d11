"""Fault drill: the compressor killed with SIGKILL at each step of a job (``soppu.failpoints``), then restarted
on the same bucket. After each kill, every acknowledged upload must end served (or failed, with a reason), and
every user's pointer must name a complete version of their newest acknowledged upload (or of a later one whose
answer the kill cut off): never a mixed version (an object it names missing) and never an older one.

For each failpoint: a compressor with that failpoint armed takes two rounds of uploads from the example users
(the second round uploads other adapters, so an older version is told apart); it kills itself at the step (a
refit step needs a refit, which the second round's gate failures start). A clean compressor then resumes on the
same store. Prints one JSON object; exits 1 if any invariant fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _compressor_process import compressor_process
from _timing import machine

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from soppu.examples import ExamplesSpec, build_examples
from soppu.failpoints import FAILPOINTS
from soppu.registry import JobRecord, JobState
from soppu.registry.catalog import pending_jobs, read_manifest, read_pointer
from soppu.store import ObjectStore, open_store
from soppu.store.layout import AdapterVersion

REPO = Path(__file__).resolve().parents[1]
# The error gate alone (no base model): the drill is about processes, not quality. A refit at every original.
_SETTINGS = {"base_model": "none", "refit_after": "1"}
_SETTLE_TIMEOUT_S = 300.0
_POLL_S = 0.1


def _upload(client: httpx.Client, user: str, files: dict[str, bytes]) -> str | None:
    """The job id, or None when the service died before acknowledging (the upload may still have been stored)."""
    try:
        response = client.post(f"/v1/users/{user}/adapters", files={n: (n, d) for n, d in files.items()})
    except httpx.TransportError:
        return None
    return str(response.json()["job_id"]) if response.status_code == 202 else None


def _settle(store: ObjectStore, job_ids: list[str]) -> dict[str, JobRecord]:
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while True:
        jobs = {
            job_id: JobRecord.from_json(store.get(AdapterVersion.from_job_id(job_id).job_key).data)
            for job_id in job_ids
        }
        if not pending_jobs(store) and all(job.state in (JobState.DONE, JobState.FAILED) for job in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still pending after {_SETTLE_TIMEOUT_S:.0f} s: {pending_jobs(store)}")
        time.sleep(_POLL_S)


def _check_user(store: ObjectStore, user: str, allowed: list[dict[str, bytes]]) -> str | None:
    """What is wrong with what ``user`` is served, or None. ``allowed`` is the newest acknowledged upload and any
    sent after it that the kill left unanswered: the service may have stored one of those before dying, and then
    it is the newest and rightly served."""
    pointer = read_pointer(store, user, "default")
    if pointer is None:
        return "no pointer"
    version = AdapterVersion(user, "default", pointer.version)
    manifest = read_manifest(store, version)
    if manifest is None:
        return f"pointer names v{pointer.version}, which has no manifest"
    needed = [*version.export_keys()]
    if manifest.core_prefix is not None:
        needed.append(version.core_key)
    if manifest.basis_key is not None:
        needed.append(manifest.basis_key)
    missing = [key for key in needed if not store.exists(key)]
    if missing:
        return f"v{pointer.version} is mixed: {missing} missing"
    if store.get(version.original_keys()[1]).data not in [files[WEIGHTS_NAME] for files in allowed]:
        return f"v{pointer.version} is neither the newest acknowledged upload nor an unanswered later one"
    read_adapter(
        {n: store.get(k).data for n, k in zip((CONFIG_NAME, WEIGHTS_NAME), version.export_keys(), strict=True)}
    )
    return None


def drill(step: str, users: dict[str, dict[str, bytes]], work: Path, admin_key: str) -> dict[str, Any]:
    store_dir = work / step.replace(".", "-") / "store"
    store_dir.mkdir(parents=True)
    names = sorted(users)
    rounds = [dict(zip(names, (users[u] for u in names), strict=True))]
    rounds.append({u: users[names[(i + 1) % len(names)]] for i, u in enumerate(names)})  # other adapters
    acked: list[str] = []
    allowed: dict[str, list[dict[str, bytes]]] = {}
    headers = {"Authorization": f"Bearer {admin_key}"}
    with compressor_process(store_dir, admin_key, failpoints=step, **_SETTINGS) as (service, url):
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for uploads in rounds:
                for user, files in uploads.items():
                    if (job_id := _upload(client, user, files)) is not None:
                        acked.append(job_id)
                        allowed[user] = [files]
                    elif user in allowed:
                        allowed[user].append(files)
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        while service.alive() and time.monotonic() < deadline:
            store = open_store(str(store_dir))
            if not pending_jobs(store):
                break
            time.sleep(_POLL_S)
        killed = not service.alive()
    store = open_store(str(store_dir))
    left = len(pending_jobs(store))
    with compressor_process(store_dir, admin_key, **_SETTINGS):
        jobs = _settle(store, acked)
    wrong = {user: why for user, files in allowed.items() if (why := _check_user(store, user, files)) is not None}
    failed = {job_id: job.error for job_id, job in jobs.items() if job.state == JobState.FAILED}
    return {
        "failpoint": step,
        "killed": killed,
        "acknowledged": len(acked),
        "pending_after_kill": left,
        "done": sum(job.state == JobState.DONE for job in jobs.values()),
        "failed_with_reason": sum(bool(error and error.get("code")) for error in failed.values()),
        "failed_without_reason": sum(not (error and error.get("code")) for error in failed.values()),
        "users_wrong": wrong,
        "ok": killed and not wrong and all(error and error.get("code") for error in failed.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4, help="example users (default 4)")
    parser.add_argument(
        "--failpoints", default=",".join(FAILPOINTS), help=f"comma-separated steps (default: all of {FAILPOINTS})"
    )
    parser.add_argument("--quick", action="store_true", help="one step (publish.manifest), two users: a smoke run")
    args = parser.parse_args()
    steps = args.failpoints.split(",")
    if args.quick:
        args.users, steps = 2, ["publish.manifest"]
    unknown = sorted(set(steps) - set(FAILPOINTS))
    if unknown:
        parser.error(f"unknown failpoint(s) {unknown}; known: {FAILPOINTS}")
    started = time.perf_counter()
    cache = Path(os.environ.get("SOPPU_CACHE_DIR", REPO / ".cache" / "soppu"))
    examples = build_examples(ExamplesSpec(users=args.users), cache_dir=cache, progress=False)
    manifest = json.loads((examples / "users.json").read_text())
    users = {
        u["user_id"]: {n: (examples / u["adapter"] / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}
        for u in manifest["users"]
    }
    admin_key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="soppu-kill-drill-") as tmp:
        results = []
        for step in steps:
            results.append(drill(step, users, Path(tmp), admin_key))
            print(json.dumps(results[-1]), file=sys.stderr)
    report = {
        "benchmark": "kill_drill",
        "machine": machine(),
        "config": {"users": len(users), "failpoints": steps, "store": "local directory", "gate": "error cap only"},
        "drills": results,
        "ok": all(result["ok"] for result in results),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
