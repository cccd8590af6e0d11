"""The compressor's API against a real process on a moto bucket: an upload runs to a published version whose
export loads in peft and answers like the user's adapter; reports, plots and listings; idempotency; concurrent
uploads; deleting a user leaves nothing of theirs and tells the gateways; OpenAPI, metrics; keys never logged."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import torch

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.examples.check import first_word
from soppu.generation import greedy_generate
from soppu.registry import Manifest, Pointer
from tests.compressor_service.compressor_client import (
    ADMIN_KEY,
    Compressor,
    StartCompressor,
    adapter_files,
    file_parts,
    paused_upload,
    upload,
    wait_for_job,
    wait_until_idle,
)
from tests.support.processes import ServiceProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Gateway(BaseHTTPRequestHandler):
    """A stand-in gateway that records what the compressor tells it."""

    calls: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, list[tuple[str, str | None, dict[str, Any]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _Gateway.calls
    server.shutdown()


@pytest.fixture(scope="module")
def service(start_compressor: StartCompressor, gateway: tuple[str, list[Any]]) -> tuple[ServiceProcess, Compressor]:
    return start_compressor(gateway_urls=json.dumps([gateway[0], "http://127.0.0.1:9"]))  # one gateway is down


@pytest.fixture(scope="module")
def compressor(service: tuple[ServiceProcess, Compressor]) -> Compressor:
    return service[1]


@pytest.fixture(scope="module")
def users(examples_dir: Path) -> list[dict[str, Any]]:
    manifest = json.loads((examples_dir / "users.json").read_text())
    return [{**u, "dir": examples_dir / u["adapter"]} for u in manifest["users"]]


@pytest.fixture(scope="module")
def published(compressor: Compressor, users: list[dict[str, Any]]) -> dict[str, Any]:
    """user-000's adapter uploaded as two parts and compressed: (the 202 body, the finished job)."""
    user = users[0]
    with compressor.client() as client:
        response = upload(client, user["user_id"], file_parts(adapter_files(user["dir"])))
        assert response.status_code == 202, response.text
        return {"accepted": response.json(), "job": wait_for_job(client, response.json()["job_id"])}


def _current(compressor: Compressor, user_id: str, adapter: str = "default") -> Manifest:
    pointer = Pointer.from_json(compressor.store.get(f"pointers/{user_id}/{adapter}/current.json").data)
    return Manifest.from_json(compressor.store.get(pointer.manifest_key).data)


def test_upload_runs_to_a_published_version_with_its_artifacts_in_the_bucket(
    compressor: Compressor, published: dict[str, Any]
) -> None:
    accepted, job = published["accepted"], published["job"]
    assert accepted == {
        "job_id": "user-000~default~v00000001",
        "version": 1,
        "status_url": f"/v1/jobs/{accepted['job_id']}",
    }
    assert job["state"] == "done" and job["error"] is None and job["attempts"] == 1
    report = job["report"]
    assert report["served_from"] == "compressed" and report["gate"]["passed"]
    assert report["gate"]["behaviour"]["self_text"]["positions"] > 0  # the base model ran the behaviour check
    assert report["served_by"] == "projection"
    assert report["ratio"] > 0 and set(report["errors"]) and max(report["errors"].values()) < 1e-3
    assert report["plot_url"] == "/v1/users/user-000/adapters/default/versions/1/report.png"

    keys = compressor.keys()
    mine = [k for k in keys if "/user-000/" in k]
    for prefix in ("originals/", "exports/", "cores/", "manifests/", "pointers/", "jobs/"):
        assert any(k.startswith(prefix) for k in mine), f"no {prefix} object for user-000 in {keys}"
    assert any(k.startswith("bases/") for k in keys) and any(k.startswith("cohorts/") for k in keys)

    with compressor.client() as client:
        for version in ("1", "v00000001"):
            png = client.get(f"/v1/users/user-000/adapters/default/versions/{version}/report.png")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert png.content.startswith(PNG_MAGIC)
        assert client.get("/v1/users/user-000/adapters/default/versions/99/report.png").status_code == 404
        for odd in ("%C2%B2", "9" * 5000):  # issue 13 item 20: a Unicode digit or a huge number was a 500
            response = client.get(f"/v1/users/user-000/adapters/default/versions/{odd}/report.png")
            assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_name", response.text
        listing = client.get("/v1/users/user-000/adapters").json()
    [adapter] = listing["adapters"]
    assert adapter["name"] == "default" and adapter["current_version"] >= 1
    assert adapter["versions"][0]["state"] == "done" and adapter["versions"][0]["report"]["ratio"] == report["ratio"]


def test_the_published_export_loads_in_peft_and_answers_like_the_user(
    compressor: Compressor, published: dict[str, Any], users: list[dict[str, Any]], examples_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wait_until_idle(compressor)  # a refit may have moved the user to a newer version; take the current one
    manifest = _current(compressor, "user-000")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (tmp_path / name).write_bytes(compressor.store.get(f"{manifest.export_prefix}/{name}").data)
    base = AutoModelForCausalLM.from_pretrained(str(examples_dir / "base"), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(examples_dir / "base"), local_files_only=True)
    model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    torch.set_num_threads(1)
    for item in users[0]["prompts"]:
        ids = greedy_generate(model, tokenizer(item["prompt"])["input_ids"], max_new_tokens=3)
        assert first_word(tokenizer.decode(ids, skip_special_tokens=True)) == item["expected"], item["prompt"]


def test_an_archive_upload_with_a_name(compressor: Compressor, users: list[dict[str, Any]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(users[1]["dir"], arcname="adapter")
    with compressor.client() as client:
        response = upload(client, "erin", [("archive", "adapter.tar.gz", buffer.getvalue())], name="chat")
        assert response.status_code == 202, response.text
        assert response.json()["job_id"] == "erin~chat~v00000001"
        assert wait_for_job(client, response.json()["job_id"])["state"] == "done"
        names = [a["name"] for a in client.get("/v1/users/erin/adapters").json()["adapters"]]
    assert names == ["chat"]


def test_probes_travel_with_the_upload_and_the_gate_checks_them(
    compressor: Compressor, users: list[dict[str, Any]]
) -> None:
    questions = [p["prompt"] for p in users[2]["prompts"]]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(users[2]["dir"], arcname="adapter")
        data = json.dumps(questions).encode()
        info = tarfile.TarInfo("adapter/probes.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with compressor.client() as client:
        response = upload(client, "hugo", [("archive", "adapter.tar.gz", buffer.getvalue())])
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        # The field form, on another user: the same probes, stored the same way.
        field = upload(client, "iris", [*file_parts(adapter_files(users[2]["dir"])), ("probes", None, data)])
        assert field.status_code == 202, field.text
        wait_for_job(client, field.json()["job_id"])
    stored = compressor.store.get("originals/hugo/default/v00000001/probes.json").data
    assert json.loads(stored) == questions
    assert compressor.store.get("originals/iris/default/v00000001/probes.json").data == stored
    assert job["state"] == "done" and job["report"]["probes"] == len(questions)
    # Whichever version is current (the upload's, or a refit's that reads the probes back), it was judged on them.
    wait_until_idle(compressor)
    report = _current(compressor, "hugo").report
    assert report["probes"] == len(questions)
    assert report["gate"]["behaviour"]["probes"]["count"] == len(questions)
    assert report["served_by"] in ("projection", "fitted", "original")
    assert report["ladder"][0]["step"] == "projection"
    # LoRAX downloads everything under an export prefix: the probes never go there, only the two PEFT files.
    for user in ("hugo", "iris"):
        exported = compressor.keys(f"exports/{user}/")
        assert exported and all(k.rsplit("/", 1)[1] in (CONFIG_NAME, WEIGHTS_NAME) for k in exported)


def test_an_adapter_the_served_base_model_does_not_fit_is_refused_and_nothing_is_stored(
    compressor: Compressor,
) -> None:
    # Issue 13 item 15: 16-wide modules of another base model were accepted (202) and stored, never servable.
    from tests.support.adapter_factory import make_files, parts

    with compressor.client() as client:
        response = upload(client, "gina", file_parts(parts(make_files(seed=3))))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "shape_mismatch" and "served base model" in error["message"]
    assert not compressor.keys("originals/gina/")


def test_idempotency_key_same_body_same_job_other_body_conflict(
    compressor: Compressor, users: list[dict[str, Any]]
) -> None:
    one, two = (file_parts(adapter_files(u["dir"])) for u in users[1:3])
    with compressor.client() as client:
        first = upload(client, "frank", one, idempotency_key="k-1")
        again = upload(client, "frank", one, idempotency_key="k-1")
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        conflict = upload(client, "frank", two, idempotency_key="k-1")
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
        fresh = upload(client, "frank", one, idempotency_key="k-2")
        assert fresh.status_code == 202 and fresh.json()["version"] == first.json()["version"] + 1
        wait_for_job(client, fresh.json()["job_id"])
    originals = compressor.keys("originals/frank/default/")
    assert len(originals) == 4  # two versions of two files: the repeat and the conflict stored nothing


def test_two_concurrent_uploads_are_both_recorded_and_the_later_one_is_current(
    compressor: Compressor, users: list[dict[str, Any]]
) -> None:
    bodies = [file_parts(adapter_files(u["dir"])) for u in users[2:4]]

    def send(parts: list[tuple[str, str | None, bytes]]) -> httpx.Response:
        with compressor.client() as client:
            return upload(client, "carol", parts)

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(send, bodies))
    assert [r.status_code for r in responses] == [202, 202], [r.text for r in responses]
    versions = sorted(r.json()["version"] for r in responses)
    assert versions == [1, 2]
    later = next(parts for parts, r in zip(bodies, responses, strict=True) if r.json()["version"] == 2)
    wait_until_idle(compressor)
    with compressor.client() as client:
        jobs = [wait_for_job(client, r.json()["job_id"]) for r in responses]
    assert [j["state"] for j in jobs] == ["done", "done"]
    current = _current(compressor, "carol")
    assert current.version >= 2  # the later upload, or a refit of it
    original = compressor.store.get(f"originals/carol/default/v{current.version:08d}/{WEIGHTS_NAME}").data
    assert original == dict((n, d) for n, _, d in later)[WEIGHTS_NAME]


def test_an_upload_still_streaming_when_its_user_is_deleted_is_refused_and_leaves_nothing(
    compressor: Compressor, users: list[dict[str, Any]]
) -> None:
    # Issue 13 item 4: the deletion revoked the key, yet the upload then answered 202 and stored its objects.
    user = "leaving-4c1d"
    with compressor.client() as admin:
        key = admin.post(f"/v1/users/{user}/keys").json()["key"]
    parts = file_parts(adapter_files(users[0]["dir"]))
    started, go = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(paused_upload, compressor, key, user, parts, started, go)
        assert started.wait(60)
        with compressor.client() as admin:
            assert admin.delete(f"/v1/users/{user}").status_code == 200
        go.set()
        response = pending.result()
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", response.text
    left = compressor.keys()
    assert not [k for k in left if user in k]


def test_deleting_a_user_leaves_no_object_of_theirs(
    compressor: Compressor, users: list[dict[str, Any]], gateway: tuple[str, list[Any]]
) -> None:
    gone = "gone-7f3a"
    with compressor.client() as client:
        cohorts = set()
        for user, name in ((users[1], "default"), (users[3], "other")):
            response = upload(client, gone, file_parts(adapter_files(user["dir"])), name=name)
            assert response.status_code == 202, response.text
            cohorts.add(wait_for_job(client, response.json()["job_id"])["report"]["cohort"])
        wait_until_idle(compressor)
        # Their data helps fit the basis (a member the gate passes on the old basis would not have refitted it).
        for cohort in cohorts:
            assert client.post(f"/v1/cohorts/{cohort}/refit", timeout=120).status_code == 200
        key = client.post(f"/v1/users/{gone}/keys").json()
        assert any(gone in k for k in compressor.keys("originals/"))
        deleted = client.delete(f"/v1/users/{gone}")
        assert deleted.status_code == 200, deleted.text
        result = deleted.json()
        assert result["user_id"] == gone and result["revoked_keys"] == [key["key_id"]]
        assert any(k.startswith(f"originals/{gone}/") for k in result["removed"])
        # A basis their data helped fit was refitted without them (or retired).
        assert result["refits"] and all("members" in r or r.get("retired") for r in result["refits"])
        assert client.get(f"/v1/users/{gone}/adapters").json()["adapters"] == []
    with compressor.client(key["key"]) as client:
        assert client.get(f"/v1/users/{gone}/adapters").status_code == 401

    wait_until_idle(compressor)
    for info in compressor.store.list(""):
        assert gone not in info.key
        if info.key.endswith(".json"):  # cohort states (members, contributors, pending), manifests, jobs, keys
            assert gone.encode() not in compressor.store.get(info.key).data, info.key

    with compressor.client() as client:
        service_key = client.post("/v1/keys", json={"role": "service"}).json()
        revoked = client.delete(f"/v1/keys/{service_key['key_id']}")
        assert revoked.json() == {"key_id": service_key["key_id"], "revoked": True}

    def told() -> list[dict[str, str]]:
        return [
            body for path, auth, body in gateway[1] if (path, auth) == ("/v1/admin/invalidate", f"Bearer {ADMIN_KEY}")
        ]

    deadline = time.monotonic() + 10  # sent in the background, after each answer
    while {"key_id": service_key["key_id"]} not in told():
        assert time.monotonic() < deadline, told()
        time.sleep(0.05)
    assert {"user_id": gone} in told() and {"key_id": key["key_id"]} in told()


def test_openapi_metrics_health_and_no_key_in_the_log(
    compressor: Compressor, service: tuple[ServiceProcess, Compressor]
) -> None:
    with compressor.client(None) as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    paths = spec["paths"]
    for path in (
        "/v1/users/{user_id}/adapters",
        "/v1/jobs/{job_id}",
        "/v1/users/{user_id}/adapters/{name}/versions/{version}/report.png",
        "/v1/users/{user_id}/adapters/{name}",
        "/v1/users/{user_id}",
        "/v1/users/{user_id}/keys",
        "/v1/keys",
        "/v1/keys/{key_id}",
        "/v1/cohorts/{cohort}/refit",
    ):
        assert path in paths, path
    upload_op = paths["/v1/users/{user_id}/adapters"]["post"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    assert {"202", "401", "409", "413", "415", "503"} <= set(upload_op["responses"])
    assert spec["components"]["schemas"]["JobStatus"]["examples"]
    assert ready["status"] == "ready" and ready["device"] == "cpu" and ready["workers"] == 1
    for series in (
        'soppu_compressor_uploads_total{outcome="accepted"}',
        'soppu_compressor_uploads_total{outcome="duplicate"}',
        'soppu_compressor_upload_rejections_total{code="idempotency_conflict"}',
        "soppu_compressor_upload_bytes_total",
        'soppu_compressor_job_duration_seconds_count{state="done"}',
        "soppu_compressor_compression_ratio_count",
        "soppu_compressor_max_error_count",
        "soppu_compressor_queue_depth",
        "soppu_compressor_jobs_running",
    ):
        assert series in metrics, series

    log = service[0].log.read_text()
    assert ADMIN_KEY not in log and "sk-soppu-" not in log
