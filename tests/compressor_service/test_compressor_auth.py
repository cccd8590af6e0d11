"""Who may do what (compressor_service.access), and the error body of bad requests, against a real compressor
process: admin, service, the user, another user, no key, a bad key and a revoked key on upload, reads, deletes,
keys and refits; and what an anonymous caller's body costs (nothing is read before the key is checked)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.compressor_service.compressor_client import (
    ADMIN_KEY,
    Compressor,
    StartCompressor,
    file_parts,
    upload,
    wait_until_idle,
)
from tests.support.adapter_factory import make_files, parts


@pytest.fixture(scope="module")
def compressor(start_compressor: StartCompressor) -> Compressor:
    return start_compressor(base_model=False)[1]


def _toy_parts() -> list[tuple[str, str | None, bytes]]:
    """A small valid adapter (the core's test builder's)."""
    return file_parts(parts(make_files(seed=7)))


def test_auth_matrix(compressor: Compressor) -> None:
    with compressor.client() as admin:
        service_key = admin.post("/v1/keys", json={"role": "service"}).json()
        alice_key = admin.post("/v1/users/alice/keys").json()
        bob_key = admin.post("/v1/users/bob/keys").json()
        revoked = admin.post("/v1/users/alice/keys").json()
        assert admin.delete(f"/v1/keys/{revoked['key_id']}").status_code == 200
        assert admin.delete(f"/v1/keys/{revoked['key_id']}").status_code == 404
    assert service_key["role"] == "service" and service_key["user_id"] is None
    assert alice_key["role"] == "user" and alice_key["user_id"] == "alice" and alice_key["key"].startswith("sk-soppu-")
    who = {
        "admin": ADMIN_KEY,
        "service": service_key["key"],
        "alice": alice_key["key"],
        "bob": bob_key["key"],
        "none": None,
        "bad": "sk-soppu-0123456789abcdef.wrong",
        "revoked": revoked["key"],
    }
    denied = {"bob": 403, "none": 401, "bad": 401, "revoked": 401}

    def status(name: str, method: str, path: str, **kwargs: Any) -> int:
        with compressor.client(who[name]) as client:
            response = client.request(method, path, **kwargs)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}, response.text
            return response.status_code

    for name in ("admin", "service", "alice", *denied):
        before = compressor.keys("originals/alice/")
        with compressor.client(who[name]) as client:
            code = upload(client, "alice", _toy_parts(), name=f"by-{name}").status_code
        assert code == denied.get(name, 202), name
        assert (compressor.keys("originals/alice/") == before) == (name in denied), name
        for path in ("/v1/users/alice/adapters", "/v1/jobs/alice~by-admin~v00000001"):
            assert status(name, "GET", path) == denied.get(name, 200), (name, path)

    with compressor.client() as client:  # the key also works as X-API-Key
        assert client.get("/v1/users/alice/adapters", headers={"Authorization": "", "X-API-Key": ADMIN_KEY}).is_success
    wait_until_idle(compressor)
    # Deleting an adapter: its user or an admin; a service key only uploads and reads.
    for name, expected in (("service", 403), ("bob", 403), ("none", 401), ("alice", 200)):
        assert status(name, "DELETE", "/v1/users/alice/adapters/by-alice") == expected, name
    assert status("admin", "DELETE", "/v1/users/alice/adapters/by-service") == 200
    assert status("admin", "DELETE", "/v1/users/alice/adapters/by-service") == 404
    # Users as a whole, keys and refits: admin only.
    for name in ("service", "alice", "bob", "none"):
        expected = 401 if name == "none" else 403
        assert status(name, "DELETE", "/v1/users/alice") == expected, name
        assert status(name, "POST", "/v1/users/alice/keys") == expected, name
        assert status(name, "POST", "/v1/keys", json={"role": "service"}) == expected, name
        assert status(name, "DELETE", f"/v1/keys/{alice_key['key_id']}") == expected, name
        assert status(name, "POST", "/v1/cohorts/c-000000000000/refit") == expected, name
    assert status("admin", "POST", "/v1/cohorts/c-000000000000/refit") == 404
    assert status("admin", "POST", "/v1/keys", json={"role": "admin"}) == 422
    assert status("admin", "GET", "/v1/users/_alice/adapters") == 422


def test_bad_requests_answer_the_error_body(compressor: Compressor) -> None:
    with compressor.client() as client:
        cases = [
            (client.post("/v1/users/alice/adapters", json={"x": 1}), 415, "unsupported_media_type"),
            (upload(client, "alice", _toy_parts(), name="../up"), 422, "invalid_name"),
            (upload(client, "-alice", _toy_parts()), 422, "invalid_name"),
            (upload(client, "alice", [*_toy_parts(), ("extra", None, b"1")]), 400, "bad_request"),
            (client.get("/v1/jobs/not-a-job"), 404, "not_found"),
            (client.get("/v1/jobs/alice~nothing~v00000001"), 404, "not_found"),
            (client.get("/no/such/route"), 404, "not_found"),
            (client.delete("/v1/users/alice/adapters/nothing"), 404, "not_found"),
        ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def _raw(compressor: Compressor, head: str, body: bytes) -> tuple[int, dict[str, Any], bytes]:
    """Send a request head and the start of a body, then only read: (status, error body, raw head)."""
    host, port = compressor.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # timeout: a hang guard only
        sock.sendall(f"{head}host: {host}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):  # the server answers, then closes: the rest of the body is never read
            answer += chunk
    raw_head, _, content = answer.partition(b"\r\n\r\n")
    return int(raw_head.split(b" ")[1]), json.loads(content)["error"], raw_head.lower()


def test_a_key_request_body_is_read_only_from_an_admin(compressor: Compressor) -> None:
    # Chunked, unauthenticated, and never finished: the 401 comes without waiting for the body.
    for key in ("", "authorization: Bearer sk-soppu-0123456789abcdef.wrong\r\n"):
        head = f"POST /v1/keys HTTP/1.1\r\n{key}content-type: application/json\r\ntransfer-encoding: chunked\r\n"
        status, error, raw_head = _raw(compressor, head, b'a\r\n{"role": "\r\n')
        assert (status, error["code"]) == (401, "unauthorized")
        assert b"connection: close" in raw_head
    # 300 MiB declared: refused on the declared size, before the key is even looked at.
    head = "POST /v1/keys HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 314572800\r\n"
    status, error, _ = _raw(compressor, head, b'{"role": ')
    assert (status, error["code"]) == (413, "too_large")
    # An admin's JSON body is capped too, counted as it streams (no length declared).
    with compressor.client() as admin:
        spaces = (b" " * 4096 for _ in range(32))  # 128 KiB of valid JSON whitespace, over the 64 KiB cap
        big = admin.post("/v1/keys", content=spaces, headers={"content-type": "application/json"})
        assert (big.status_code, big.json()["error"]["code"]) == (413, "too_large")
        bad = admin.post("/v1/keys", content=b'{"role": ')
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_request")
        assert admin.post("/v1/keys", json={"role": "service"}).status_code == 201
