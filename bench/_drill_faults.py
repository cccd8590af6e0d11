"""The two fault drills of ``bench/drills.py`` (described there): ``engine_kill_drill``, an engine killed under a
user's stream while bystanders keep asking, and ``gateway_restart_drill``, the gateway killed and started again
on its port under steady load. Each returns its part of the report; ``drills.failures`` judges it.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
from _drill_client import (
    Answer,
    Sizes,
    Tally,
    ask,
    backoff,
    fetch,
    gateway_metric,
    open_client,
    sweep,
    wait_for,
)
from _drill_topology import ENGINE_START_S, DrillError, DrillUser, Topology, base_url, kill, rss_mib

from soppu.cli.stack import Service

__all__ = ["engine_kill_drill", "gateway_restart_drill"]


def _bystander(top: Topology, tally: Tally, stop: threading.Event, seed: int, sizes: Sizes) -> None:
    rng, failures = random.Random(seed), 0
    with open_client(sizes) as client:
        while not stop.is_set():
            user = rng.choice(top.users)
            verdict = ask(client, top, tally, user, rng.choice(user.prompts), stream=rng.random() < sizes.stream_share)
            failures = failures + 1 if verdict != "ok" else 0
            backoff(failures)


def _open_one(top: Topology, tally: Tally, user: DrillUser, prompt: str, sizes: Sizes) -> None:
    with open_client(sizes) as client:
        ask(client, top, tally, user, prompt, stream=True)


def _in_flight_engine(top: Topology) -> Service:
    busy = [url for url, n in gateway_metric(top.gateway_url, "soppu_gateway_backend_in_flight").items() if n > 0]
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
        with open_client(sizes) as client:
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
        top.restart(engine, ENGINE_START_S)
        url = base_url(engine)
        wait_for(lambda: gateway_metric(top.gateway_url, "soppu_gateway_backend_healthy").get(url) == 1.0,
                  sizes.hang_s, "the gateway sees the restarted engine")  # fmt: skip
        into["restart_to_healthy_s"] = round(time.monotonic() - started, 2)
    except (RuntimeError, httpx.HTTPError) as e:  # DrillError, or the Service's "did not become healthy"
        into["error"] = str(e)[-2000:]


def engine_kill_drill(top: Topology, sizes: Sizes) -> dict[str, Any]:
    gateway = top.live_gateway()
    assert gateway.proc is not None
    rss_before = rss_mib(gateway.proc.pid)
    victim, tally = top.users[0], Tally(top.users, sizes)
    prompt = victim.prompts[0]
    long = {"max_new_tokens": sizes.stream_tokens, "ignore_eos_token": True}
    with open_client(sizes) as client:
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
        wait_for(lambda: len(tally.log) >= sizes.bystanders, sizes.hang_s, "bystanders answered")
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
        with open_client(sizes) as client:
            deadline = time.monotonic() + sizes.hang_s + (ENGINE_START_S if alone else 0)
            failures = 0
            while ask(client, top, tally, victim, prompt) != "ok" and time.monotonic() < deadline:
                failures += 1
                backoff(failures)
        recovered = tally.first_ok_after(killed, victim.user_id)
        time.sleep(sizes.settle_s)
    finally:
        stop.set()
        for thread in bystanders + openers:
            thread.join(sizes.hang_s)
        if restarter is not None:
            restarter.join(ENGINE_START_S + sizes.hang_s)
    during = tally.summary()
    if not alone and sizes.restart_engine:
        _restart_engine(top, engine, sizes, restarted)
    if "error" in restarted:
        raise DrillError(f"the killed engine did not come back: {restarted['error']}")
    after = Tally(top.users, sizes)
    served_after = sweep(top, after, sizes)
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
        "gateway_rss_mib": {"before": rss_before, "after": rss_mib(gateway.proc.pid)},
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
        with open_client(sizes) as client:
            while not abort.is_set() and take():
                user = rng.choice(top.users)
                prompt, stream, failures = rng.choice(user.prompts), rng.random() < sizes.stream_share, 0
                while not abort.is_set():
                    verdict = ask(client, top, tally, user, prompt, stream, connection_errors_clean=True)
                    if verdict != "clean":  # answered (right or wrong), or a failure a retry would not mend
                        break
                    failures += 1
                    backoff(failures)
                with lock:
                    count["done"] += 1

    workers = [threading.Thread(target=worker, args=(sizes.seed + 100 + n,), daemon=True)
               for n in range(sizes.load_workers)]  # fmt: skip
    try:
        for thread in workers:
            thread.start()
        share = sizes.load_requests * sizes.kill_share
        wait_for(lambda: count["done"] >= share, sizes.hang_s * 4, "load answered")
        assert gateway.proc is not None
        rss_before = rss_mib(gateway.proc.pid)
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
    rss_after = rss_mib(gateway.proc.pid)
    recovered = tally.first_ok_after(killed)
    per_user = {u.user_id: tally.first_ok_after(killed, u.user_id) for u in top.users}
    during = tally.summary()
    after = Tally(top.users, sizes)
    served_after = sweep(top, after, sizes)
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
