"""A small HTTP client for the stack's APIs, on the standard library only (the core never depends on a web
framework or an HTTP client package): JSON requests, multipart adapter uploads, and polling a job."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["ApiError", "request", "upload_adapter", "wait_for_job"]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def request(method: str, url: str, *, key: str | None = None, body: Any = None, timeout: float = 60.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data is not None else {}
    return _send(urllib.request.Request(url, data=data, method=method, headers=headers), key, timeout)


def _send(req: urllib.request.Request, key: str | None, timeout: float) -> Any:
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        raise ApiError(e.code, body) from None
    return json.loads(raw) if raw else None


def upload_adapter(url: str, files: dict[str, bytes], *, key: str, name: str | None = None) -> Any:
    """POST the adapter's files as multipart parts (one part per file, plus the optional ``name`` field)."""
    boundary = f"soppu-{secrets.token_hex(12)}"
    chunks = []
    if name is not None:
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'.encode())
    for filename, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{filename}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(chunks), method="POST")
    req.add_header("content-type", f"multipart/form-data; boundary={boundary}")
    return _send(req, key, 120.0)


def wait_for_job(compressor: str, job_id: str, *, key: str, timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        job = request("GET", f"{compressor}/v1/jobs/{job_id}", key=key)
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)
