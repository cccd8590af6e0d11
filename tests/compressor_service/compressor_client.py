"""Talking to a compressor process in the tests: multipart bodies written byte for byte (so hostile part names,
NUL included, reach the server as they are), uploads, waiting on jobs, and listing the bucket.
(Its own module: test files cannot import a conftest.)"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.store import S3Store
from tests.support.processes import ServiceProcess

ADMIN_KEY = "test-admin-key-not-a-secret"
JOB_TIMEOUT_S = 60.0


@dataclass
class Compressor:
    url: str
    store: S3Store  # the service's bucket, read directly by the tests

    def client(self, key: str | None = ADMIN_KEY, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def keys(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.store.list(prefix)]


# start_compressor's type (the fixture of conftest.py): start(base_model=True, endpoint=None, **settings)
StartCompressor = Callable[..., tuple[ServiceProcess, Compressor]]


def multipart(parts: Iterable[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(body, content type) for (field, filename or None for a text field, data) parts, names written raw."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename.encode("utf-8", "surrogateescape") + b'"'
        body += f"--{boundary}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def file_parts(files: Mapping[str, bytes]) -> list[tuple[str, str | None, bytes]]:
    """Each file as a part named (field and file name) after it, as ``curl -F name=@file`` sends it."""
    return [(name, name, data) for name, data in files.items()]


def adapter_files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


def upload(
    client: httpx.Client,
    user_id: str,
    parts: list[tuple[str, str | None, bytes]],
    *,
    name: str | None = None,
    idempotency_key: str | None = None,
) -> httpx.Response:
    if name is not None:
        parts = [*parts, ("name", None, name.encode())]
    body, content_type = multipart(parts)
    headers = {"Content-Type": content_type}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return client.post(f"/v1/users/{user_id}/adapters", content=body, headers=headers)


def paused_upload(
    compressor: Compressor,
    key: str,
    user_id: str,
    parts: list[tuple[str, str | None, bytes]],
    started: threading.Event,
    go: threading.Event,
) -> httpx.Response:
    """Upload whose body stops halfway until ``go`` is set (the service is still reading it meanwhile)."""
    body, content_type = multipart(parts)

    def stream() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        started.set()  # the headers (and so the key) and half the body are on their way
        assert go.wait(60)
        yield body[len(body) // 2 :]

    with compressor.client(key, timeout=90) as client:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        return client.post(f"/v1/users/{user_id}/adapters", content=stream(), headers=headers)


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, object]:
    """The job once it is done or failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, object] = response.json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout_s}s"
        time.sleep(0.05)


def wait_until_idle(compressor: Compressor, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Until no job record in the bucket is queued or running (refits included)."""
    from soppu.registry.catalog import pending_jobs

    deadline = time.monotonic() + timeout_s
    while pending_jobs(compressor.store):
        assert time.monotonic() < deadline, f"jobs still pending after {timeout_s}s"
        time.sleep(0.1)
