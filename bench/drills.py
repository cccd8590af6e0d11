"""Fault drills on real processes, no mocks: an engine killed (SIGKILL) mid-stream, and the gateway killed and
restarted on its port under load. This module owns the drills' topology, their client side (the verdict on every
answer) and their report; ``tests/e2e/test_serving_drills.py`` runs the same functions in quick sizes.

Topology: moto's S3 server (or a given endpoint); a fresh bucket holding each example user's adapter as the
compressor publishes it (export, manifest, then pointer) and a user key; two engines (``python -m
inference_service``, the tiny example model) reading adapters from it; a gateway in front. Clients speak HTTP to
the gateway only, and every answer is compared with its user's answer before any fault (greedy decoding: the same
request gives the same text), so another user's adapter or the base model answering is ``wrong``. Verdicts:

    ok       200, or a complete stream, with the user's reference answer
    wrong    200, or a complete stream, with other text; a cut stream's tokens off the reference     must be 0
    clean    an SSE error event with an error_type; a 5xx with a JSON error_type before any byte, a 503 with
             Retry-After; in the gateway drill, a refused or broken connection (the client may retry)
    unclean  anything else: a 503 without Retry-After, a stream ending with neither its final event nor an
             error event (truncated, looking like success), a broken connection while the gateway is up  must be 0
    hang     no end within --hang-s (the clients' read timeout)                                  must be 0

``engine_kill``: a user's long stream (``ignore_eos_token``) runs through the gateway; after a few tokens the
engine the gateway counts it in flight on is killed, while bystanders send short requests for every user and a
few more streams for that user open just before (they meet the kill before their headers). The long stream must
end with an error event, its tokens a prefix of the reference; the gateway must stay up and serve the user again
(recovery: kill to first right answer); the engine is restarted (not in --quick) and every user then served
right. With ``--engines 1`` (the e2e stack's shape) nothing fails over: the engine restarts at once.

``gateway_restart``: workers send steady load (short requests, some streamed); once a third is done the gateway
is killed and started again on its port. A request that fails cleanly is sent again after a back-off, as a
client would (every try is counted); each must end right, and every user be served right afterwards.

    python bench/drills.py            # both drills at full size
    python bench/drills.py --quick    # the test suite's sizes

One JSON object goes to stdout; the exit status is 1 when an invariant fails (listed under ``failed``).
Timings (recovery, restarts) are reported, never judged.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.auth import KeyRing, Role
from soppu.cli.stack import Service, free_port
from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion

__all__ = [
    "FULL",
    "QUICK",
    "DrillError",
    "DrillUser",
    "Sizes",
    "Topology",
    "base_url",
    "build_drill_examples",
    "engine_kill_drill",
    "failures",
    "fetch",
    "gateway_restart_drill",
    "kill",
    "take_references",
]

_ROOT = Path(__file__).resolve().parents[1]
_S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_SHORT = {"max_new_tokens": 4, "stop": ["."]}  # the examples' own check: one word per prompt
_ENGINE_START_S = 180.0  # torch and a model loaded on two busy cores


@dataclass(frozen=True)
class Sizes:
    stream_tokens: int = 400  # the victim's stream (~7 ms a token here): long enough that the kill lands inside
    kill_after_tokens: int = 8
    openers: int = 4  # streams for the victim's user opened just before the kill: caught before their headers
    bystanders: int = 3  # clients sending short requests for every user while the engine is killed
    settle_s: float = 3.0  # bystander load kept up after the victim's user is served again
    restart_engine: bool = True
    load_requests: int = 400
    load_workers: int = 6
    kill_share: float = 1 / 3  # the gateway is killed once this share of the load is answered
    stream_share: float = 0.25  # of the short requests, streamed
    hang_s: float = 60.0  # the clients' read timeout: a request without an answer this long is a hang
    tolerated: tuple[str, ...] = ()  # unclean kinds counted as clean (known defects, to see past them)
    seed: int = 0


FULL = Sizes()
# Quick: the killed engine is not restarted (a model load on 2 busy cores); the other engine serves.
QUICK = Sizes(stream_tokens=256, kill_after_tokens=4, bystanders=2, settle_s=0.5, restart_engine=False,
              load_requests=80, load_workers=4)  # fmt: skip


class DrillError(RuntimeError):
    """The drill could not be set up or run (not a finding about the services)."""


@dataclass
class DrillUser:
    user_id: str
    key: str
    prompts: list[str]
    reference: dict[str, str] = field(default_factory=dict)  # prompt -> the answer served before any fault


# ---- processes ------------------------------------------------------------------------------------------------


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def base_url(service: Service) -> str:
    return service.health.rsplit("/", 1)[0]  # http://127.0.0.1:PORT, from its health URL


def kill(service: Service) -> None:
    """SIGKILL: a crash, nothing flushed or closed."""
    if service.proc is not None and service.proc.poll() is None:
        service.proc.kill()
        service.proc.wait()


def _publish(store: S3Store, user_id: str, adapter_dir: Path) -> None:
    """Version 1 of ``user_id``'s default adapter, served from the original, as the compressor leaves it."""
    ref = AdapterVersion(user_id, "default", 1)
    for key, name in zip(ref.export_keys(), (CONFIG_NAME, WEIGHTS_NAME), strict=True):
        store.put(key, adapter_dir / name)
    manifest = Manifest(
        user_id=user_id, adapter="default", version=1, served_from=ServedFrom.ORIGINAL.value,
        export_prefix=ref.export_prefix, core_prefix=None, cohort=None, basis_key=None, base_model=None, report={},
    )  # fmt: skip
    store.put(ref.manifest_key, manifest.to_json())
    store.put(ref.pointer_key, Pointer(version=1, manifest_key=ref.manifest_key).to_json())  # last: it publishes


class Topology:
    """moto (unless an endpoint is given), two engines and a gateway over a fresh bucket of the example users.
    A context manager; every process writes its log under ``workdir/logs``."""

    def __init__(self, examples: Path, workdir: Path, s3_endpoint: str | None = None, engines: int = 2) -> None:
        self.examples, self.logs = examples, workdir / "logs"
        self.s3_endpoint, self.engine_count = s3_endpoint, engines
        self.services: list[Service] = []
        self.engines: list[Service] = []
        self.users: list[DrillUser] = []
        self.gateway_port = free_port()
        self.gateway: Service | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _service(self, name: str, command: list[str], health: str, env: dict[str, str]) -> Service:
        # One OpenMP thread: tiny matrices, and four processes share two cores.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
        service = Service(name, command, full_env, health, cwd=_ROOT)
        self.services.append(service)
        service.start(self.logs)
        return service

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        store = self.start_store()
        ring = KeyRing(store)
        for user in json.loads((self.examples / "users.json").read_text())["users"]:
            _publish(store, user["user_id"], self.examples / user["adapter"])
            key = ring.issue(Role.USER, user["user_id"])[0]
            self.users.append(DrillUser(user["user_id"], key, [p["prompt"] for p in user["prompts"]]))
        shared = self.store_env(store)
        self.start_engines(shared)
        for engine in self.engines:  # started together: their model loads overlap
            engine.wait_healthy(_ENGINE_START_S)
        gateway_env = {
            **shared,
            "SOPPU_GATEWAY_BACKENDS": json.dumps(self.backends()),
            "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",  # a restarted engine is back within half a second
            # A few users carry all the load: the per-user limits would refuse it, and they are not drilled here.
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "0",
            "SOPPU_GATEWAY_USER_TOKENS_PER_S": "0",
            "SOPPU_GATEWAY_USER_MAX_IN_FLIGHT": "0",
        }
        self.gateway = self.start_gateway("gateway", self.gateway_port, gateway_env)
        self.gateway.wait_healthy(60)

    def start_store(self) -> S3Store:
        """moto's server, unless an endpoint was given, and a fresh bucket on it."""
        if self.s3_endpoint is None:
            port = free_port()
            command = [sys.executable, "-m", "soppu_web.s3_server", "-H", "127.0.0.1", "-p", str(port)]
            moto = self._service("s3", command, f"http://127.0.0.1:{port}/moto-api/", {})
            moto.wait_healthy(60)
            self.s3_endpoint = f"http://127.0.0.1:{port}"
        store = S3Store(f"drill-{uuid.uuid4().hex[:12]}", endpoint_url=self.s3_endpoint, access_key="testing",
                        secret_key="testing", region="us-east-1")  # fmt: skip
        store.ensure_bucket()
        return store

    def store_env(self, store: S3Store) -> dict[str, str]:
        """What every service needs to reach ``store``'s bucket."""
        return {**_S3_ENV, "S3_ENDPOINT_URL": str(self.s3_endpoint), "SOPPU_STORE_URL": store.url}

    def start_engines(self, env: dict[str, str]) -> None:
        """Start the engines on the example model; not waited for (see ``wait_healthy``)."""
        for n in range(self.engine_count):
            port = free_port()
            command = [sys.executable, "-m", "inference_service", "--host", "127.0.0.1", "--port", str(port)]
            command += ["--model", str(self.examples / "base"), "--device", "cpu"]
            self.engines.append(self._service(f"engine-{n}", command, f"http://127.0.0.1:{port}/health", env))

    def backends(self) -> list[dict[str, str]]:
        """The engines, as the gateway's ``SOPPU_GATEWAY_BACKENDS`` lists them."""
        return [{"url": base_url(e), "kind": "engine"} for e in self.engines]

    def start_gateway(self, name: str, port: int, env: dict[str, str]) -> Service:
        """Start a gateway on ``port``; not waited for."""
        command = [sys.executable, "-m", "gateway_service", "--port", str(port), "--log-level", "warning"]
        return self._service(name, command, f"http://127.0.0.1:{port}/readyz", env)

    def live_gateway(self) -> Service:
        assert self.gateway is not None, "the topology is not started"
        return self.gateway

    def restart(self, service: Service, timeout_s: float = _ENGINE_START_S) -> None:
        """Start a killed service again, same command and port, and wait until it answers its health check."""
        service.start(self.logs)
        service.wait_healthy(timeout_s)

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.tail(20)}" for s in self.services)

    def stop(self) -> None:
        for service in reversed(self.services):  # the gateway first, the store last
            service.stop()

    def __enter__(self) -> Topology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the client side ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How one request ended: ``answered`` (text is the generated text), ``clean``, ``unclean`` or ``hang``."""

    end: str
    detail: str = ""  # the failure's kind, e.g. stream_error:upstream_disconnected, http_503:no_backend
    text: str | None = None
    tokens: tuple[str, ...] = ()  # a stream's token texts, as they came


def _client(sizes: Sizes) -> httpx.Client:
    # trust_env off: a proxy from the environment must not sit between the drill and loopback services.
    return httpx.Client(timeout=httpx.Timeout(sizes.hang_s, connect=5.0), trust_env=False)


def _refusal(response: httpx.Response) -> Answer:
    """A refusal before any byte: clean when it is a 5xx with LoRAX's error body, and a 503 says when to retry."""
    try:
        error_type = response.json().get("error_type")
    except (ValueError, AttributeError):
        error_type = None
    status, retry_after = response.status_code, "retry-after" in response.headers
    detail = f"http_{status}:{error_type or 'unparsed'}"
    if status == 503 and not retry_after:
        detail += ":no_retry_after"
    clean = status >= 500 and isinstance(error_type, str) and (status != 503 or retry_after)
    return Answer("clean" if clean else "unclean", detail)


def _events(response: httpx.Response, on_token: Callable[[int], None] | None) -> Answer:
    tokens: list[str] = []
    final: str | None = None
    error: str | None = None
    # Read to the end even after an error event: the stream must then close cleanly, with nothing after it
    # (a connection cut after the event raises in the caller).
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        if error is not None:
            return Answer("unclean", f"event_after_stream_error:{error}", tokens=tuple(tokens))
        try:
            event = json.loads(line.removeprefix("data:"))
        except ValueError:
            return Answer("unclean", "malformed_event", tokens=tuple(tokens))
        if "error" in event:
            error = str(event.get("error_type"))
            if not isinstance(event.get("error_type"), str):
                return Answer("unclean", "stream_error_without_error_type", tokens=tuple(tokens))
            continue
        if isinstance(event.get("token"), dict):
            tokens.append(str(event["token"].get("text", "")))
            if on_token is not None:
                on_token(len(tokens))
        if event.get("generated_text") is not None:
            final = str(event["generated_text"])
    if error is not None:
        return Answer("clean", f"stream_error:{error}", tokens=tuple(tokens))
    if final is None:
        return Answer("unclean", "truncated_stream", tokens=tuple(tokens))
    return Answer("answered", text=final.strip(), tokens=tuple(tokens))


def fetch(
    client: httpx.Client,
    base: str,
    user: DrillUser,
    prompt: str,
    *,
    stream: bool,
    params: dict[str, Any] | None = None,
    connection_errors_clean: bool = False,
    on_token: Callable[[int], None] | None = None,
    name_user: bool = False,
) -> Answer:
    """One request through the gateway with ``user``'s key, and how it ended. ``name_user``: the body names
    ``user.user_id`` (``user.key`` is then a service key acting for them)."""
    body: dict[str, Any] = {"inputs": prompt, "parameters": params or _SHORT}
    if name_user:
        body["user_id"] = user.user_id
    headers = {"Authorization": f"Bearer {user.key}"}
    url = base + ("/generate_stream" if stream else "/generate")
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                return _refusal(response)
            if stream:
                return _events(response, on_token)
            response.read()
            try:
                return Answer("answered", text=str(response.json()["generated_text"]).strip())
            except (ValueError, KeyError, TypeError):
                return Answer("unclean", "malformed_json")
    except httpx.TimeoutException:
        return Answer("hang", "timeout")
    except httpx.TransportError as e:  # refused, reset, or cut before the body ended
        return Answer("clean" if connection_errors_clean else "unclean", f"connection:{type(e).__name__}")


class Tally:
    """Every request of a drill with its verdict; thread-safe."""

    def __init__(self, users: list[DrillUser], sizes: Sizes) -> None:
        self._users, self._tolerated = users, sizes.tolerated
        self._lock = threading.Lock()
        self.log: list[tuple[float, float, str, str]] = []  # (sent, ended, user, verdict)
        self.clean: collections.Counter[str] = collections.Counter()
        self.unclean: collections.Counter[str] = collections.Counter()
        self.wrong: list[dict[str, str | None]] = []

    def _whose(self, prompt: str, text: str | None) -> str | None:
        return next((u.user_id for u in self._users if u.reference.get(prompt) == text), None)

    def record(self, user: DrillUser, answer: Answer, sent: float, *, prompt: str, expected: str | None = None) -> str:
        """The verdict on ``answer`` (``ok``, ``wrong``, ``clean``, ``unclean``, ``hang``), recorded."""
        verdict = answer.end
        if answer.end == "answered":
            verdict = "ok" if answer.text == (expected or user.reference[prompt]) else "wrong"
        elif answer.end == "unclean" and answer.detail in self._tolerated:
            verdict = "clean"
        with self._lock:
            self.log.append((sent, time.monotonic(), user.user_id, verdict))
            if verdict == "wrong":
                whose = self._whose(prompt, answer.text) if expected is None else None
                self.wrong.append({"user": user.user_id, "prompt": prompt, "got": answer.text, "whose": whose})
            elif verdict == "clean":
                self.clean[answer.detail] += 1
            elif verdict == "unclean":
                self.unclean[answer.detail] += 1
        return verdict

    def first_ok_after(self, moment: float, user_id: str | None = None) -> float | None:
        """When the first right answer to a request sent after ``moment`` came (for ``user_id``, or anyone)."""
        with self._lock:
            ends = [e for s, e, u, v in self.log if v == "ok" and s >= moment and user_id in (None, u)]
        return min(ends, default=None)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            verdicts = collections.Counter(v for *_, v in self.log)
            return {
                "requests": len(self.log),
                "ok": verdicts["ok"],
                "wrong_answers": verdicts["wrong"],
                "answers_of_another_user": sum(w["whose"] not in (None, w["user"]) for w in self.wrong),
                "wrong_examples": self.wrong[:5],
                "clean_failures": dict(sorted(self.clean.items())),
                "unclean_failures": dict(sorted(self.unclean.items())),
                "hangs": verdicts["hang"],
            }


def _ask(client: httpx.Client, top: Topology, tally: Tally, user: DrillUser, prompt: str, stream: bool = False,
         *, connection_errors_clean: bool = False) -> str:  # fmt: skip
    sent = time.monotonic()
    answer = fetch(client, top.gateway_url, user, prompt, stream=stream,
                   connection_errors_clean=connection_errors_clean)  # fmt: skip
    return tally.record(user, answer, sent, prompt=prompt)


def take_references(top: Topology, sizes: Sizes) -> None:
    """Each user's answers before any fault; they must differ between users, or a mix-up could not be seen."""
    with _client(sizes) as client:
        for user in top.users:
            for prompt in user.prompts:
                answer = fetch(client, top.gateway_url, user, prompt, stream=False)
                if answer.end != "answered" or answer.text is None:
                    raise DrillError(f"no reference answer for {user.user_id} / {prompt!r}: {answer}")
                user.reference[prompt] = answer.text
    seen = [tuple(u.reference.values()) for u in top.users]
    if len(set(seen)) != len(seen):
        raise DrillError(f"two users give the same answers, a mix-up would go unseen: {seen}")


def _sweep(top: Topology, tally: Tally, sizes: Sizes) -> bool:
    """Every user, every prompt, as JSON and as a stream: all right?"""
    with _client(sizes) as client:
        verdicts = [_ask(client, top, tally, u, p, s) for u in top.users for p in u.prompts for s in (False, True)]
    return all(v == "ok" for v in verdicts)


def _metric(base: str, name: str) -> dict[str, float]:
    """A gauge of the gateway's /metrics by its ``backend`` label (a Prometheus text scrape)."""
    values = {}
    text = httpx.get(base + "/metrics", timeout=10, trust_env=False).text
    for line in text.splitlines():
        if line.startswith(name + '{backend="'):
            label, _, value = line.removeprefix(name + '{backend="').partition('"} ')
            values[label] = float(value)
    return values


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DrillError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


# ---- the drills -----------------------------------------------------------------------------------------------


def _backoff(failures: int) -> None:
    """A well-behaved client's pause after ``failures`` failed requests in a row."""
    if failures:
        time.sleep(min(1.0, 0.05 * 2 ** (failures - 1)))


def _bystander(top: Topology, tally: Tally, stop: threading.Event, seed: int, sizes: Sizes) -> None:
    rng, failures = random.Random(seed), 0
    with _client(sizes) as client:
        while not stop.is_set():
            user = rng.choice(top.users)
            verdict = _ask(client, top, tally, user, rng.choice(user.prompts), stream=rng.random() < sizes.stream_share)
            failures = failures + 1 if verdict != "ok" else 0
            _backoff(failures)


def _open_one(top: Topology, tally: Tally, user: DrillUser, prompt: str, sizes: Sizes) -> None:
    with _client(sizes) as client:
        _ask(client, top, tally, user, prompt, stream=True)


def _in_flight_engine(top: Topology) -> Service:
    busy = [url for url, n in _metric(top.gateway_url, "soppu_gateway_backend_in_flight").items() if n > 0]
    engines = [e for e in top.engines if base_url(e) in busy]
    if len(engines) != 1:
        raise DrillError(f"cannot tell which engine serves the stream: in flight on {busy}")
    return engines[0]


def _watch(top: Topology, user: DrillUser, prompt: str, params: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """A stream read in its own thread: ``enough`` is set after ``kill_after_tokens`` tokens (or its end),
    ``ended`` at its end, with ``answer`` then saying how it ended."""
    state: dict[str, Any] = {"enough": threading.Event(), "ended": threading.Event(), "sent": time.monotonic()}

    def on_token(count: int) -> None:
        if count >= sizes.kill_after_tokens:
            state["enough"].set()

    def run() -> None:
        with _client(sizes) as client:
            state["answer"] = fetch(client, top.gateway_url, user, prompt, stream=True, params=params,
                                    on_token=on_token)  # fmt: skip
        state["enough"].set()
        state["ended"].set()

    threading.Thread(target=run, daemon=True).start()
    return state


def _restart_engine(top: Topology, engine: Service, sizes: Sizes, into: dict[str, Any]) -> None:
    """Start ``engine`` again on its port; done once the gateway's health check counts it healthy."""
    started = time.monotonic()
    try:
        top.restart(engine, _ENGINE_START_S)
        url = base_url(engine)
        _wait_for(lambda: _metric(top.gateway_url, "soppu_gateway_backend_healthy").get(url) == 1.0,
                  sizes.hang_s, "the gateway sees the restarted engine")  # fmt: skip
        into["restart_to_healthy_s"] = round(time.monotonic() - started, 2)
    except (RuntimeError, httpx.HTTPError) as e:  # DrillError, or the Service's "did not become healthy"
        into["error"] = str(e)[-2000:]


def engine_kill_drill(top: Topology, sizes: Sizes) -> dict[str, Any]:
    gateway = top.live_gateway()
    assert gateway.proc is not None
    rss_before = _rss_mib(gateway.proc.pid)
    victim, tally = top.users[0], Tally(top.users, sizes)
    prompt = victim.prompts[0]
    long = {"max_new_tokens": sizes.stream_tokens, "ignore_eos_token": True}
    with _client(sizes) as client:
        reference = fetch(client, top.gateway_url, victim, prompt, stream=True, params=long)
    if reference.end != "answered" or len(reference.tokens) != sizes.stream_tokens:
        raise DrillError(f"the reference stream failed: {reference.detail or len(reference.tokens)}")

    watched = _watch(top, victim, prompt, long, sizes)
    if not watched["enough"].wait(sizes.hang_s) or watched["ended"].is_set():
        raise DrillError(f"the victim's stream did not reach {sizes.kill_after_tokens} tokens: {watched}")
    alone = len(top.engines) == 1  # no engine left to fail over to: it must come back before anyone is served
    restarted: dict[str, Any] = {}
    restarter: threading.Thread | None = None
    stop = threading.Event()
    bystanders = [threading.Thread(target=_bystander, args=(top, tally, stop, sizes.seed + n, sizes), daemon=True)
                  for n in range(sizes.bystanders)]  # fmt: skip
    openers: list[threading.Thread] = []
    try:
        engine = _in_flight_engine(top)
        for thread in bystanders:
            thread.start()
        _wait_for(lambda: len(tally.log) >= sizes.bystanders, sizes.hang_s, "bystanders answered")
        for n in range(sizes.openers):
            args = (top, tally, victim, victim.prompts[n % len(victim.prompts)], sizes)
            openers.append(threading.Thread(target=_open_one, args=args, daemon=True))
            openers[-1].start()
        time.sleep(0.01)  # they reach the engine, which sends its headers with the first token (tens of ms here)
        killed = time.monotonic()
        kill(engine)
        if alone:
            restarter = threading.Thread(target=_restart_engine, args=(top, engine, sizes, restarted), daemon=True)
            restarter.start()

        # The victim's stream: a clean end, its tokens the reference's first ones (else another text was served).
        hung = not watched["ended"].wait(sizes.hang_s)
        answer: Answer = Answer("hang", "no end after the kill") if hung else watched["answer"]
        if answer.end == "answered":
            answer = Answer("unclean", "completed: the kill did not land mid-stream", tokens=answer.tokens)
        prefix = answer.tokens == reference.tokens[: len(answer.tokens)]
        tally.record(victim, answer if prefix else Answer("answered", text="".join(answer.tokens)), watched["sent"],
                     prompt=prompt, expected=None if prefix else "".join(reference.tokens))  # fmt: skip

        # Recovery: the victim's user asks until served right (by the other engine, or the restarted one).
        with _client(sizes) as client:
            deadline = time.monotonic() + sizes.hang_s + (_ENGINE_START_S if alone else 0)
            failures = 0
            while _ask(client, top, tally, victim, prompt) != "ok" and time.monotonic() < deadline:
                failures += 1
                _backoff(failures)
        recovered = tally.first_ok_after(killed, victim.user_id)
        time.sleep(sizes.settle_s)
    finally:
        stop.set()
        for thread in bystanders + openers:
            thread.join(sizes.hang_s)
        if restarter is not None:
            restarter.join(_ENGINE_START_S + sizes.hang_s)
    during = tally.summary()
    if not alone and sizes.restart_engine:
        _restart_engine(top, engine, sizes, restarted)
    if "error" in restarted:
        raise DrillError(f"the killed engine did not come back: {restarted['error']}")
    after = Tally(top.users, sizes)
    served_after = _sweep(top, after, sizes)
    if restarted:
        metrics = httpx.get(base_url(engine) + "/metrics", timeout=10, trust_env=False).text
        served = [line for line in metrics.splitlines() if line.startswith("lorax_request_count_total ")]
        restarted["requests_served_after_restart"] = int(float(served[0].split()[1])) if served else None
    return {
        "engines": len(top.engines),
        "killed_engine": engine.name,
        "victim": {
            "user": victim.user_id,
            "end": answer.end,
            "detail": answer.detail,
            "tokens_before_the_end": len(answer.tokens),
            "of_tokens": sizes.stream_tokens,
            "tokens_match_reference": prefix,
        },
        "during": during,
        "after": {**after.summary(), "every_user_served_right": served_after},
        "recovery_s": None if recovered is None else round(recovered - killed, 3),
        "engine_restart": restarted or None,
        "gateway_alive": gateway.alive(),
        "gateway_rss_mib": {"before": rss_before, "after": _rss_mib(gateway.proc.pid)},
    }


def gateway_restart_drill(top: Topology, sizes: Sizes) -> dict[str, Any]:
    gateway = top.live_gateway()
    tally, lock, abort = Tally(top.users, sizes), threading.Lock(), threading.Event()
    count = {"taken": 0, "done": 0}  # requests: a request failed cleanly is tried again, as a client would

    def take() -> bool:
        with lock:
            count["taken"] += 1
            return count["taken"] <= sizes.load_requests

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with _client(sizes) as client:
            while not abort.is_set() and take():
                user = rng.choice(top.users)
                prompt, stream, failures = rng.choice(user.prompts), rng.random() < sizes.stream_share, 0
                while not abort.is_set():
                    verdict = _ask(client, top, tally, user, prompt, stream, connection_errors_clean=True)
                    if verdict != "clean":  # answered (right or wrong), or a failure a retry would not mend
                        break
                    failures += 1
                    _backoff(failures)
                with lock:
                    count["done"] += 1

    workers = [threading.Thread(target=worker, args=(sizes.seed + 100 + n,), daemon=True)
               for n in range(sizes.load_workers)]  # fmt: skip
    try:
        for thread in workers:
            thread.start()
        share = sizes.load_requests * sizes.kill_share
        _wait_for(lambda: count["done"] >= share, sizes.hang_s * 4, "load answered")
        assert gateway.proc is not None
        rss_before = _rss_mib(gateway.proc.pid)
        killed = time.monotonic()
        kill(gateway)
        top.restart(gateway, timeout_s=120)
        restart_s = time.monotonic() - killed
        for thread in workers:
            thread.join(sizes.hang_s * 2)
    finally:
        abort.set()  # a failed restart must not leave clients looping on a dead port
    still_running = sum(thread.is_alive() for thread in workers)
    time.sleep(0.5)  # settle: finished streams closed
    assert gateway.proc is not None
    rss_after = _rss_mib(gateway.proc.pid)
    recovered = tally.first_ok_after(killed)
    per_user = {u.user_id: tally.first_ok_after(killed, u.user_id) for u in top.users}
    during = tally.summary()
    after = Tally(top.users, sizes)
    served_after = _sweep(top, after, sizes)
    return {
        "load": {
            **during,
            "requests": count["done"],  # each tried until answered; every try is counted in attempts
            "attempts": during["requests"],
            "requests_planned": sizes.load_requests,
            "workers_still_running": still_running,
        },
        "ok_sent_before_the_kill": sum(1 for s, _, _, v in tally.log if v == "ok" and s < killed),
        "ok_sent_after_the_kill": sum(1 for s, _, _, v in tally.log if v == "ok" and s >= killed),
        "after": {**after.summary(), "every_user_served_right": served_after},
        "kill_to_ready_s": round(restart_s, 2),
        "recovery_s": None if recovered is None else round(recovered - killed, 3),
        "recovery_s_slowest_user": None if None in per_user.values() else round(max(per_user.values()) - killed, 3),
        "gateway_alive": gateway.alive(),
        "gateway_rss_mib": {"before_kill": rss_before, "after_restart": rss_after},
    }


# ---- invariants and the report --------------------------------------------------------------------------------


def _tally_failures(name: str, part: dict[str, Any]) -> Iterator[str]:
    if part["wrong_answers"]:
        yield f"{name}: {part['wrong_answers']} wrong answers, e.g. {part['wrong_examples'][:2]}"
    if part["unclean_failures"]:
        yield f"{name}: unclean failures {part['unclean_failures']}"
    if part["hangs"]:
        yield f"{name}: {part['hangs']} hangs"


def failures(drill: str, result: dict[str, Any]) -> list[str]:
    """The invariants a drill's result breaks (empty: it passed)."""
    found: list[str] = []
    for part in ("during", "load", "after"):
        if part in result:
            found += _tally_failures(f"{drill}.{part}", result[part])
    if not result["after"]["every_user_served_right"]:
        found.append(f"{drill}: not every user was served right after the fault")
    if result["recovery_s"] is None:
        found.append(f"{drill}: no right answer after the fault")
    if not result["gateway_alive"]:
        found.append(f"{drill}: the gateway is not running")
    if drill == "engine_kill":
        victim = result["victim"]
        if victim["end"] != "clean" or not victim["detail"].startswith(("stream_error:", "http_5")):
            found.append(f"engine_kill: the victim's stream did not end cleanly: {victim}")
        restart = result["engine_restart"]
        if restart is not None and not restart["requests_served_after_restart"]:
            found.append("engine_kill: the restarted engine served nothing")
    if drill == "gateway_restart":
        load = result["load"]
        if load["workers_still_running"] or load["requests"] != load["requests_planned"]:
            found.append(f"gateway_restart: {load['requests']} of {load['requests_planned']} requests done")
        if not (result["ok_sent_before_the_kill"] and result["ok_sent_after_the_kill"]):
            found.append("gateway_restart: the kill did not land inside the load")
    return found


def build_drill_examples(users: int, out: Path) -> Path:
    from soppu.examples import ExamplesSpec, build_examples

    # The cache `make test` and `make demo` share, so the tiny base model is trained once.
    cache = Path(os.environ.get("SOPPU_CACHE_DIR", _ROOT / ".cache" / "soppu"))
    return build_examples(ExamplesSpec(users=users), out, cache_dir=cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test suite's sizes, and no engine restart")
    parser.add_argument("--users", type=int, default=4, help="example users published (distinct adapters)")
    parser.add_argument("--engines", type=int, default=2, choices=[1, 2], help="with 1, nothing fails over")
    parser.add_argument("--load-requests", type=int, help=f"gateway drill requests (default {FULL.load_requests})")
    parser.add_argument("--load-workers", type=int, help=f"concurrent clients (default {FULL.load_workers})")
    parser.add_argument("--hang-s", type=float, help=f"a request unanswered this long hangs (default {FULL.hang_s})")
    parser.add_argument("--tolerate", action="append", default=[], metavar="KIND",
                        help="count this unclean kind as clean, e.g. http_503:no_backend:no_retry_after")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    chosen = {"load_requests": args.load_requests, "load_workers": args.load_workers, "hang_s": args.hang_s}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    sizes = dataclasses.replace(sizes, seed=args.seed, tolerated=tuple(args.tolerate), **chosen)
    started = time.perf_counter()
    from _timing import machine  # torch is imported here only: --help stays fast

    config = {**dataclasses.asdict(sizes), "users": args.users, "engines": args.engines}
    report: dict[str, Any] = {"benchmark": "drills", "machine": machine(), "config": config}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        examples = build_drill_examples(args.users, Path(tmp) / "examples")
        with Topology(examples, Path(tmp), engines=args.engines) as top:
            try:
                take_references(top, sizes)
                for name, drill in (("engine_kill", engine_kill_drill), ("gateway_restart", gateway_restart_drill)):
                    report[name] = drill(top, sizes)
                    failed += failures(name, report[name])
                    print(json.dumps({name: report[name]}), file=sys.stderr)
            except RuntimeError as e:  # DrillError, or a restarted process that never came back
                failed.append(f"drill error: {e}")
            if failed:
                print(top.log_tails(), file=sys.stderr)
    report["notes"] = {
        "clean_failures": "by kind: stream_error:<error_type>, http_<status>:<error_type>, connection:<httpx error>",
        "recovery_s": "from the SIGKILL to the first right answer (the victim's user; anyone for the gateway)",
        "wrong_answers": "answers that differ from the user's own before the fault; must be 0",
        "hangs": "requests without an end within hang_s; must be 0",
    }
    report.update({"failed": failed, "ok": not failed, "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
