"""The drills' sizes and their client side (``bench/drills.py``): one request through the gateway and how it ended
(``fetch``), the verdict on every answer against the user's reference (``Tally``), the references themselves,
and the small waits a well-behaved client makes.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from _drill_topology import DrillError, DrillUser, Topology

__all__ = [
    "FULL",
    "QUICK",
    "Answer",
    "Sizes",
    "Tally",
    "ask",
    "backoff",
    "fetch",
    "gateway_metric",
    "open_client",
    "sweep",
    "take_references",
    "wait_for",
]

_SHORT = {"max_new_tokens": 4, "stop": ["."]}  # the examples' own check: one word per prompt


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


@dataclass(frozen=True)
class Answer:
    """How one request ended: ``answered`` (text is the generated text), ``clean``, ``unclean`` or ``hang``."""

    end: str
    detail: str = ""  # the failure's kind, e.g. stream_error:upstream_disconnected, http_503:no_backend
    text: str | None = None
    tokens: tuple[str, ...] = ()  # a stream's token texts, as they came


def open_client(sizes: Sizes) -> httpx.Client:
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


def ask(client: httpx.Client, top: Topology, tally: Tally, user: DrillUser, prompt: str, stream: bool = False,
         *, connection_errors_clean: bool = False) -> str:  # fmt: skip
    sent = time.monotonic()
    answer = fetch(client, top.gateway_url, user, prompt, stream=stream,
                   connection_errors_clean=connection_errors_clean)  # fmt: skip
    return tally.record(user, answer, sent, prompt=prompt)


def take_references(top: Topology, sizes: Sizes) -> None:
    """Each user's answers before any fault; they must differ between users, or a mix-up could not be seen."""
    with open_client(sizes) as client:
        for user in top.users:
            for prompt in user.prompts:
                answer = fetch(client, top.gateway_url, user, prompt, stream=False)
                if answer.end != "answered" or answer.text is None:
                    raise DrillError(f"no reference answer for {user.user_id} / {prompt!r}: {answer}")
                user.reference[prompt] = answer.text
    seen = [tuple(u.reference.values()) for u in top.users]
    if len(set(seen)) != len(seen):
        raise DrillError(f"two users give the same answers, a mix-up would go unseen: {seen}")


def sweep(top: Topology, tally: Tally, sizes: Sizes) -> bool:
    """Every user, every prompt, as JSON and as a stream: all right?"""
    with open_client(sizes) as client:
        verdicts = [ask(client, top, tally, u, p, s) for u in top.users for p in u.prompts for s in (False, True)]
    return all(v == "ok" for v in verdicts)


def gateway_metric(base: str, name: str) -> dict[str, float]:
    """A gauge of the gateway's /metrics by its ``backend`` label (a Prometheus text scrape)."""
    values = {}
    text = httpx.get(base + "/metrics", timeout=10, trust_env=False).text
    for line in text.splitlines():
        if line.startswith(name + '{backend="'):
            label, _, value = line.removeprefix(name + '{backend="').partition('"} ')
            values[label] = float(value)
    return values


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DrillError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def backoff(failures: int) -> None:
    """A well-behaved client's pause after ``failures`` failed requests in a row."""
    if failures:
        time.sleep(min(1.0, 0.05 * 2 ** (failures - 1)))
