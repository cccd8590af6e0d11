"""The compressor as a real ``python -m compressor_service`` process: S3 on the session's moto server, a fresh
bucket per test module, the admin key set, one torch thread. Each test module starts the processes it needs
through :func:`start_compressor`."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from soppu.store import S3Store
from tests.compressor_service.compressor_client import ADMIN_KEY, Compressor, StartCompressor
from tests.support.processes import MOTO_ENV, ServiceProcess, start_service

REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 120.0  # importing torch and loading the base model on a busy 2-core box


def compressor_env(moto_server: str, bucket: str, **settings: str) -> dict[str, str]:
    env = {
        **MOTO_ENV,
        "OMP_NUM_THREADS": "1",  # tiny matrices: threads only add barriers on a shared box
        "S3_ENDPOINT_URL": moto_server,
        "SOPPU_STORE_URL": f"s3://{bucket}",
        "SOPPU_ADMIN_KEY": ADMIN_KEY,
        "SOPPU_COMPRESSOR_DEVICE": "cpu",
    }
    return env | {f"SOPPU_COMPRESSOR_{name.upper()}": value for name, value in settings.items()}


@pytest.fixture(scope="module")
def bucket() -> str:
    return f"compressor-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def start_compressor(
    tmp_path_factory: pytest.TempPathFactory, moto_server: str, examples_dir: Path, bucket: str
) -> Iterator[StartCompressor]:
    """Start a compressor on this module's bucket: ``start(base_model=True, endpoint=moto, **settings)``; every
    process started is stopped (or has been killed) at the end of the module."""
    started: list[ServiceProcess] = []
    users = json.loads((examples_dir / "users.json").read_text())

    def start(
        *, base_model: bool = True, endpoint: str | None = None, wait_ready: bool = True, **settings: str
    ) -> tuple[ServiceProcess, Compressor]:
        if base_model:
            settings = {"base_model": str(examples_dir / "base"), "base_model_id": users["base_model_id"], **settings}
        else:
            settings = {"base_model": "none", **settings}
        env = compressor_env(endpoint or moto_server, bucket, **settings)
        log = tmp_path_factory.mktemp("compressor") / "compressor_service.log"

        def command(port: int) -> list[str]:
            return [sys.executable, "-m", "compressor_service", "--port", str(port)]

        service = start_service(
            command,
            log=log,
            env=env,
            ready_path="/healthz",
            timeout_s=_START_TIMEOUT_S,
            cwd=REPO_ROOT,
        )
        started.append(service)
        if wait_ready:
            _wait_ready(service)
        store = S3Store(bucket, endpoint_url=endpoint or moto_server, access_key="testing", secret_key="testing")
        return service, Compressor(service.url, store)

    yield start
    for service in started:
        crashed = service.proc.poll() not in (None, 0, -9, -15)
        service.stop()
        if crashed:
            print(f"compressor exited during the tests; its log ({service.log}):\n{service.log_tail()}")


def _wait_ready(service: ServiceProcess, timeout_s: float = 30.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(service.url + "/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"compressor never became ready:\n{service.log_tail()}")
