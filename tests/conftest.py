"""Shared pytest fixtures: a real moto S3 server process, object stores on both backends, and the example
base model with its users' adapters.

The S3 tests talk HTTP to a standalone ``moto_server`` process rather than patching boto3 in-process, so
they exercise the same client code, retries and error parsing a MinIO deployment would.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import boto3
import pytest
import torch

from soppu.examples import ExamplesSpec, build_examples
from soppu.examples.smollm2_set import build_smollm2_examples
from soppu.store import LocalStore, ObjectStore, S3Store
from tests.lorax_contract.export_audit import audit_store, local_stores
from tests.support.processes import MOTO_ENV, ServiceProcess, serving, start_service

REPO_ROOT = Path(__file__).resolve().parents[1]
# The examples cache is shared with `make demo` (same SOPPU_CACHE_DIR), so the base model trains once.
EXAMPLES_CACHE = Path(os.environ.get("SOPPU_CACHE_DIR", REPO_ROOT / ".cache" / "soppu"))
EXAMPLE_USERS = 4
_MOTO_START_TIMEOUT_S = 30.0
_CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}


def _moto_command(port: int) -> list[str]:
    # moto's app with atomic writes (soppu_web.s3_server): replicas' conditional writes race on it as on S3.
    return [sys.executable, "-m", "soppu_web.s3_server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server running as a separate process for the whole session."""
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    service = start_service(_moto_command, log=log, ready_path="/moto-api/", timeout_s=_MOTO_START_TIMEOUT_S)
    try:
        yield service.url
        buckets = boto3.client(
            "s3",
            endpoint_url=service.url,
            aws_access_key_id=_CREDENTIALS["access_key"],
            aws_secret_access_key=_CREDENTIALS["secret_key"],
            region_name=_CREDENTIALS["region"],
        ).list_buckets()["Buckets"]
        _audit_exports(S3Store(b["Name"], endpoint_url=service.url, **_CREDENTIALS) for b in buckets)
    finally:
        service.stop()


def _audit_exports(stores: Iterable[ObjectStore]) -> None:
    """Fail the session if any export a pipeline published would not load on LoRAX as what was stored
    (tests/lorax_contract/export_audit.py): every export of the whole suite, not only those a test looked at."""
    checked, problems = 0, []
    for store in stores:
        count, found = audit_store(store, repr(store))
        checked, problems = checked + count, problems + found
    print(f"export audit: {checked} published export(s) checked against LoRAX's reading")  # shown with -s
    assert not problems, "exports LoRAX would not serve as stored:\n" + "\n".join(problems[:20])


@pytest.fixture(scope="session", autouse=True)
def audit_local_exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the session's end, the export audit over every local store the tests wrote under pytest's temp dir."""
    yield
    _audit_exports(local_stores(tmp_path_factory.getbasetemp()))


@pytest.fixture
def s3_store(moto_server: str) -> S3Store:
    """An S3Store on a fresh, uniquely named bucket of the session's moto server."""
    store = S3Store(f"test-{uuid.uuid4().hex[:16]}", endpoint_url=moto_server, **_CREDENTIALS)
    store.ensure_bucket()
    return store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each backend in turn, so one test body checks that both keep the same semantics."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example fixture (tiny Llama + one adapter per user + users.json), built once per session."""
    return build_examples(
        ExamplesSpec(users=EXAMPLE_USERS), tmp_path_factory.mktemp("examples") / "set", cache_dir=EXAMPLES_CACHE
    )


@pytest.fixture(scope="session")
def examples_cache() -> Path:
    return EXAMPLES_CACHE


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real example base (converted once per cache) with the first four shipped users: one per recipe."""
    return build_smollm2_examples(4, tmp_path_factory.mktemp("smollm2") / "set", cache_dir=EXAMPLES_CACHE)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run a test with one torch thread: for tiny matrices thread barriers cost more than the math, and on a busy
    2-core machine a descheduled OpenMP thread stalls every op (runs went from 0.03 s to 8 s at random)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


_ENGINE_START_TIMEOUT_S = 120.0  # loading torch and the model on a busy 2-core box


@pytest.fixture(scope="session")
def engine_process(
    tmp_path_factory: pytest.TempPathFactory, examples_dir: Path, moto_server: str
) -> Iterator[ServiceProcess]:
    """One real ``python -m inference_service`` process for the session (the engine's own tests and the
    gateway's share it), serving ``examples_dir/base`` on the CPU with S3 pointed at the moto server."""
    log = tmp_path_factory.mktemp("engine") / "inference_service.log"
    env = {
        "OMP_NUM_THREADS": "1",  # tiny matrices: threads only add barriers on a shared box
        "S3_ENDPOINT_URL": moto_server,
        **MOTO_ENV,
        # The engine reads nothing it is not told to: the buckets the tests create (s3_store's test-*, the
        # gateway tests' gw-*) and the example users' adapters.
        "SOPPU_ENGINE_S3_BUCKETS": json.dumps(["test-*", "gw-*"]),
        "SOPPU_ENGINE_LOCAL_ADAPTER_ROOTS": json.dumps([str(examples_dir)]),
    }
    model = str(examples_dir / "base")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "inference_service", "--port", str(port), "--model", model, "--device", "cpu"]

    service = start_service(command, log=log, env=env, timeout_s=_ENGINE_START_TIMEOUT_S, cwd=REPO_ROOT)
    with serving(service, "inference_service"):
        yield service
