"""The gateway in front of the real engine, driven by the clients users have (``lorax-client``, ``openai``) and raw
HTTP: who may call what, that each user gets their own adapter's answers, and that publications, deletions
and revocations take effect without a restart."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from lorax.errors import UnknownError

import lorax
from soppu.auth import KeyRing, Role
from soppu.store.layout import pointer_key
from tests.gateway_service.gateway_support import ADMIN_KEY, Deployment, ExampleUser, publish

MAX_NEW = 8
Users = tuple[list[ExampleUser], dict[str, str]]


def _generate(gw: Deployment, headers: dict[str, str], **body: object) -> httpx.Response:
    payload = {"inputs": "My pet is a", "parameters": {"max_new_tokens": MAX_NEW}, **body}
    return httpx.post(f"{gw.url}/generate", json=payload, headers=headers, timeout=60)


def _invalidate(gw: Deployment, **body: str) -> dict[str, int]:
    r = httpx.post(f"{gw.url}/v1/admin/invalidate", json=body, headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_auth_matrix(engine_gateway: Deployment, example_set: Users) -> None:
    gw = engine_gateway
    (alice, bob, *_), _ = example_set
    refused = {
        "no key": ({}, {}, 401, "unauthorized"),
        "unknown key": ({"Authorization": "Bearer sk-soppu-0123456789abcdef.nope"}, {}, 401, "unauthorized"),
        "another user's id": (gw.headers(alice.user_id), {"user_id": bob.user_id}, 403, "forbidden"),
        "no such adapter": (gw.headers(alice.user_id), {"adapter": "other"}, 404, "adapter_not_found"),
        "service key without user": (gw.headers(gw.service_key), {}, 422, "validation"),
        "service key, bad user id": (gw.headers(gw.service_key), {"user_id": "../x"}, 422, "validation"),
        "service key, unknown user": (gw.headers(gw.service_key), {"user_id": "nobody"}, 404, "adapter_not_found"),
        "merged adapters": (
            gw.headers(alice.user_id),
            {"parameters": {"merged_adapters": {"ids": ["s3://x/y"], "weights": [1.0]}}},
            422,
            "validation",
        ),
    }
    for case, (headers, body, status, error_type) in refused.items():
        r = _generate(gw, headers, **body)
        assert (r.status_code, r.json().get("error_type")) == (status, error_type), (case, r.text)
    assert _generate(gw, {}).headers["www-authenticate"] == "Bearer"

    allowed = {
        "user key": gw.headers(alice.user_id),
        "user key naming itself": gw.headers(alice.user_id),
        "X-API-Key header": {"X-API-Key": gw.keys[alice.user_id]},
        "service key naming the user": gw.headers(gw.service_key),
        "admin key naming the user": {"X-API-Key": ADMIN_KEY},
    }
    for case, headers in allowed.items():
        named = {} if case in ("user key", "X-API-Key header") else {"user_id": alice.user_id}
        r = _generate(gw, headers, **named)
        assert r.status_code == 200, (case, r.text)
        assert alice.answers["My pet is a"] in r.json()["generated_text"], case
        assert r.headers["x-adapter-id"] == "default" and r.headers["x-adapter-version"] == "1"


def test_lorax_client_generate_and_stream_give_each_user_their_answers(
    engine_gateway: Deployment, example_set: Users
) -> None:
    users, base = example_set
    for user in users[:2]:
        client = lorax.Client(engine_gateway.url, headers=engine_gateway.headers(user.user_id), timeout=60)
        prompt, answer = user.own_fact(base)
        response = client.generate(prompt, max_new_tokens=MAX_NEW)
        assert answer in response.generated_text
        assert response.details is not None and response.details.generated_tokens <= MAX_NEW
        # adapter_id is an adapter NAME through the gateway; a source or token from the client is ignored
        named = client.generate(prompt, max_new_tokens=MAX_NEW, adapter_id="default", adapter_source="hub")
        assert answer in named.generated_text
        events = list(client.generate_stream(prompt, max_new_tokens=MAX_NEW))
        assert events and all(e.generated_text is None for e in events[:-1])
        assert events[-1].generated_text is not None and answer in events[-1].generated_text
    with pytest.raises(UnknownError, match="401"):
        lorax.Client(engine_gateway.url).generate("My pet is a", max_new_tokens=2)


def test_openai_client_completions_chat_and_models(engine_gateway: Deployment, example_set: Users) -> None:
    users, base = example_set
    user = users[2]
    client = openai.OpenAI(base_url=f"{engine_gateway.url}/v1", api_key=engine_gateway.keys[user.user_id])
    prompt, answer = user.own_fact(base)
    completion = client.completions.create(model="default", prompt=prompt, max_tokens=MAX_NEW)
    assert answer in completion.choices[0].text
    assert completion.model == "default"  # the adapter name, never the storage id
    chunks = list(client.completions.create(model="default", prompt=prompt, max_tokens=MAX_NEW, stream=True))
    assert answer in "".join(c.choices[0].text for c in chunks if c.choices)
    assert {c.model for c in chunks} == {"default"}
    chat = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_NEW, temperature=0
    )
    assert chat.choices[0].message.content is not None and chat.model == "default"
    assert [m.id for m in client.models.list()] == ["default"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="someone-elses", prompt=prompt, max_tokens=2)


def test_new_version_is_served_without_restart(engine_gateway: Deployment, example_set: Users) -> None:
    users, base = example_set
    user, other = users[3], users[0]
    prompt, answer = user.own_fact(base)
    headers = engine_gateway.headers(user.user_id)
    assert answer in _generate(engine_gateway, headers, inputs=prompt).json()["generated_text"]
    publish(engine_gateway.store, user.user_id, other.adapter_dir, 2)  # v2: the other user's weights
    deadline = time.monotonic() + 10  # the resolution TTL is 1 s here: ETag revalidation sees the new pointer
    while True:
        r = _generate(engine_gateway, headers, inputs=prompt)
        if r.headers["x-adapter-version"] == "2":
            break
        assert time.monotonic() < deadline, "version 2 was not served within 10 s"
        time.sleep(0.2)
    assert other.answers[prompt] in r.json()["generated_text"]


def test_deleted_user_and_revoked_key_are_refused_at_once(engine_gateway: Deployment, example_set: Users) -> None:
    gw = engine_gateway
    store = gw.store
    ring = KeyRing(store)
    # A user of its own, so the other tests keep theirs.
    publish(store, "doomed", example_set[0][1].adapter_dir, 1)
    key, record = ring.issue(Role.USER, "doomed")
    spare, _ = ring.issue(Role.USER, "doomed")
    for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {spare}"}):
        assert _generate(gw, headers).status_code == 200  # now cached: key and resolution
    # Revocation: refused right after the compressor's invalidation call, cache TTL notwithstanding.
    ring.revoke(record.key_id)
    assert _invalidate(gw, key_id=record.key_id)["keys"] >= 1
    r = _generate(gw, {"Authorization": f"Bearer {key}"})
    assert (r.status_code, r.json()["error_type"]) == (401, "unauthorized")
    assert _generate(gw, {"Authorization": f"Bearer {spare}"}).status_code == 200
    # Deletion: the pointer goes, then the user's keys; a service key naming the user is refused too.
    store.delete(pointer_key("doomed", "default"))
    ring.revoke_user("doomed")
    assert _invalidate(gw, user_id="doomed")["resolutions"] >= 1
    assert _generate(gw, {"Authorization": f"Bearer {spare}"}).status_code == 401
    r = _generate(gw, gw.headers(gw.service_key), user_id="doomed")
    assert (r.status_code, r.json()["error_type"]) == (404, "adapter_not_found")
    # The invalidation route is the admin's alone.
    r = httpx.post(f"{gw.url}/v1/admin/invalidate", json={}, headers=gw.headers(gw.service_key))
    assert r.status_code == 403


def test_operations_request_ids_metrics_and_openapi(engine_gateway: Deployment, example_set: Users) -> None:
    gw = engine_gateway
    user = example_set[0][0]
    r = _generate(gw, {**gw.headers(user.user_id), "x-request-id": "client-chosen-id"})
    assert r.headers["x-request-id"] == "client-chosen-id"
    assert len(_generate(gw, gw.headers(user.user_id)).headers["x-request-id"]) == 32
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["healthy_backends"] == 1
    big = httpx.post(f"{gw.url}/generate", content=b"x" * (2 << 20), headers=gw.headers(user.user_id))
    assert (big.status_code, big.json()["error_type"]) == (413, "request_too_large")
    metrics = httpx.get(f"{gw.url}/metrics").text
    for name in (
        'soppu_gateway_requests_total{backend="http://127.0.0.1',
        "soppu_gateway_request_duration_seconds_bucket",
        "soppu_gateway_time_to_first_token_seconds_bucket",
        "soppu_gateway_generated_tokens_total",
        "soppu_gateway_resolution_cache_hit_ratio",
        "soppu_gateway_backend_healthy",
    ):
        assert name in metrics, name
    assert not any(u.user_id in metrics for u in example_set[0])  # no per-user labels
    schema = httpx.get(f"{gw.url}/openapi.json").json()
    assert {"/", "/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(
        schema["paths"]
    )
    assert {"/healthz", "/readyz", "/metrics", "/v1/admin/invalidate"} <= set(schema["paths"])
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
