"""What the gateway tests share (its own module: test files cannot import a conftest): the deployment under
test, the example users, and publishing them the way the compressor will.

Until the compressor service exists, the tests write what it would leave in the bucket with the core library:
the adapter files as the version's export, a ``Manifest`` (served from the original) and, last, the pointer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.store import ObjectStore
from soppu.store.layout import AdapterVersion
from tests.support.processes import ServiceProcess, answers_http, start_service

__all__ = ["ADMIN_KEY", "REPO_ROOT", "Deployment", "ExampleUser", "load_users", "publish", "start_stub"]

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-" + uuid.uuid4().hex


@dataclass
class Deployment:
    url: str
    store: ObjectStore
    keys: dict[str, str]  # user id -> that user's key
    service_key: str
    process: ServiceProcess
    backends: list[ServiceProcess] = field(default_factory=list)

    def headers(self, user_or_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.get(user_or_key, user_or_key)}"}


@dataclass(frozen=True)
class ExampleUser:
    user_id: str
    adapter_dir: Path
    answers: dict[str, str]  # prompt -> the answer this user's adapter gives

    def own_fact(self, base_answers: dict[str, str]) -> tuple[str, str]:
        """A prompt this user's adapter answers differently from the base model, and that answer."""
        for prompt, answer in self.answers.items():
            if answer != base_answers[prompt]:
                return prompt, answer
        raise AssertionError(f"{self.user_id} agrees with the base model everywhere")


def load_users(examples_dir: Path) -> tuple[list[ExampleUser], dict[str, str]]:
    """The example users and the base model's answers, from ``users.json``."""
    manifest = json.loads((examples_dir / "users.json").read_text())
    users = [
        ExampleUser(
            u["user_id"], (examples_dir / u["adapter"]).resolve(), {p["prompt"]: p["expected"] for p in u["prompts"]}
        )
        for u in manifest["users"]
    ]
    return users, manifest["base_answers"]


def publish(
    store: ObjectStore,
    user_id: str,
    adapter_dir: Path | None,
    version: int,
    adapter: str = "default",
    core_prefix: str | None = None,
) -> AdapterVersion:
    """Make ``version`` the current one of ``user_id``'s ``adapter`` (files from ``adapter_dir``, or
    placeholders for a stub backend that never reads them)."""
    ref = AdapterVersion(user_id, adapter, version)
    for key, name in zip(ref.export_keys(), (CONFIG_NAME, WEIGHTS_NAME), strict=True):
        store.put(key, adapter_dir / name if adapter_dir else b"{}", create_only=True)
    manifest = Manifest(
        user_id=user_id,
        adapter=adapter,
        version=version,
        served_from=ServedFrom.ORIGINAL.value if core_prefix is None else ServedFrom.COMPRESSED.value,
        export_prefix=ref.export_prefix,
        core_prefix=core_prefix,
        cohort=None,
        basis_key=None,
        base_model=None,
        report={},
    )
    store.put(ref.manifest_key, manifest.to_json(), create_only=True)
    store.put(ref.pointer_key, Pointer(version=version, manifest_key=ref.manifest_key).to_json())  # last
    return ref


def start_stub(log: Path, port: int | None = None, host: str = "127.0.0.1") -> ServiceProcess:
    """A stub backend process (``tests/support/stub_backend.py``), on ``port`` when given (to restart one in place,
    or to put stubs on several loopback addresses on one port), naming itself ``stub-{host}``."""
    script = str(REPO_ROOT / "tests" / "support" / "stub_backend.py")
    if port is None:
        return start_service(lambda free: [sys.executable, script, "--port", str(free)], log=log, timeout_s=30)
    command = [sys.executable, script, "--host", host, "--port", str(port), "--model-id", f"stub-{host}"]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    service = ServiceProcess(proc, f"http://{host}:{port}", log)
    deadline = time.monotonic() + 30
    while not answers_http(f"{service.url}/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"the stub did not start on {host}:{port}:\n{service.log_tail()}")
        time.sleep(0.05)
    return service
