"""Load drill of a real gateway process: many requests at high concurrency from a pooled client, in waves with
idle pauses between them, to a stub backend (``tests/support/stub_backend.py``) that closes idle connections as
uvicorn does by default. It counts every answer by status, every connection that ended without an answer
(``dropped``: the client's ReadError, RemoteProtocolError ...), and samples the gateway's resident memory.

What is allowed: 2xx, the planned refusals (429 rate_limited / too_many_in_flight and 503 overloaded, each with
Retry-After). Anything else 5xx, a 503 or 429 without Retry-After, or a dropped connection is ``unplanned``;
``ok`` is true when there is none. Memory should stay flat: ``rss_mib`` has the start (idle, before the first
wave), the peak, and the end (idle, after the last wave).

The client keeps one keep-alive connection per concurrent client and, like httpx's pool (``keepalive_expiry``
5 s, uvicorn's default keep-alive too), gives a connection up once it has been idle 5 s; it never retries, so a
connection the server closes under a request counts as dropped. The pause between waves (default 4.9 s) brings
idle connections, the client's and the gateway's upstream ones, to the edge of those timeouts, where a server
closing an idle connection races a client reusing it. (httpx itself is no load generator here: its pool slows
down as concurrency grows, 50 clients were slower than 10.)

    python bench/load_drill.py                  # 10,000 requests at concurrency 200, 4 waves
    python bench/load_drill.py --quick          # a few hundred requests (the test suite's)

Clients honour Retry-After (capped at --max-wait-s) before their next request, as a well-behaved client does.
The gateway's resident memory is read from /proc (Linux); elsewhere ``rss_mib`` is null.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import emit_report

from soppu.auth import KeyRing, Role
from soppu.cli.stack import Service, free_port
from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.store import LocalStore
from soppu.store.layout import AdapterVersion

_ROOT = Path(__file__).resolve().parents[1]
_PLANNED = frozenset({429, 503})  # planned only with Retry-After
# What the client sends, by share of requests: LoRAX JSON, LoRAX SSE, OpenAI chat.
_MIX = (("generate", 0.8), ("stream", 0.1), ("chat", 0.1))


def _publish(store: LocalStore, users: int) -> dict[str, str]:
    """``users`` users, each with a published default adapter (placeholder files: the stub never reads them)
    and a user key, as the compressor would leave them."""
    ring, keys = KeyRing(store), {}
    for n in range(users):
        version = AdapterVersion(f"drill-{n:04d}", "default", 1)
        for key in version.export_keys():
            store.put(key, b"{}")
        manifest = Manifest(
            user_id=version.user_id, adapter=version.adapter, version=1, served_from=ServedFrom.ORIGINAL.value,
            export_prefix=version.export_prefix, core_prefix=None, cohort=None, basis_key=None, base_model=None,
            report={},
        )  # fmt: skip
        store.put(version.manifest_key, manifest.to_json())
        store.put(version.pointer_key, Pointer(version=1, manifest_key=version.manifest_key).to_json())
        keys[version.user_id] = ring.issue(Role.USER, version.user_id)[0]
    return keys


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """The gateway's resident memory every ``interval_s``, in a thread (the event loop is busy with load)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_mib(self.pid)
            if rss is not None:
                self.samples.append(rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Dropped(Exception):
    """The connection ended before a whole answer came: what httpx reports as ReadError or RemoteProtocolError."""


class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.error_types: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.unplanned: list[str] = []
        self.server_errors = 0  # 5xx without Retry-After
        self.reused = self.fresh = 0  # requests sent on a kept-alive connection / on a new one

    def answer(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.statuses[str(status)] += 1
        if status < 400:
            return
        try:
            error_type = str(json.loads(body).get("error_type"))
        except (ValueError, AttributeError):
            error_type = "unparsed"
        self.error_types[f"{status} {error_type}"] += 1
        planned = status in _PLANNED and b"retry-after" in headers
        if status >= 500 and not planned:
            self.server_errors += 1
        if (status >= 500 or status == 429) and not planned:
            self.unplanned.append(f"{status} {error_type}")

    def drop(self, why: str) -> None:
        self.dropped[why] += 1
        self.unplanned.append(f"dropped: {why}")


def _request(kind: str, host: str, key: str, max_new_tokens: int) -> bytes:
    if kind == "chat":
        messages = [{"role": "user", "content": "My pet is a"}]
        path, body = "/v1/chat/completions", {"model": "default", "messages": messages, "max_tokens": max_new_tokens}
    else:
        path = "/generate_stream" if kind == "stream" else "/generate"
        body = {"inputs": "My pet is a", "parameters": {"max_new_tokens": max_new_tokens}}
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
    head += f"authorization: Bearer {key}\r\ncontent-length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
            pass
    else:
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


class Client:
    """One virtual client: one keep-alive connection, given up after ``idle_s`` idle (as a pool would)."""

    def __init__(self, host: str, port: int, idle_s: float, tally: Tally) -> None:
        self.host, self.port, self.idle_s, self.tally = host, port, idle_s, tally
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.idle_since = 0.0

    def _close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    async def send(self, request: bytes, timeout_s: float) -> float:
        """Send one request; the seconds to wait before the next one (its Retry-After), 0 if none."""
        if self.conn is not None and (self.conn[0].at_eof() or time.monotonic() - self.idle_since > self.idle_s):
            self._close()
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
            self.tally.fresh += 1
        else:
            self.tally.reused += 1
        reader, writer = self.conn
        try:
            async with asyncio.timeout(timeout_s):
                writer.write(request)
                await writer.drain()
                status, headers, body = await _read_answer(reader)
        except TimeoutError:
            self._close()
            self.tally.drop("Timeout")
            return 0.0
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._close()
            self.tally.drop(type(e).__name__)  # the server closed or reset the connection: no answer
            return 0.0
        self.tally.answer(status, headers, body)
        if headers.get(b"connection", b"").lower() == b"close":
            self._close()
        else:
            self.idle_since = time.monotonic()
        retry_after = headers.get(b"retry-after", b"")
        return float(retry_after) if retry_after.isdigit() else 0.0

    def close(self) -> None:
        self._close()


async def _wave(clients: list[Client], keys: list[str], wave: int, count: int, args: argparse.Namespace) -> None:
    remaining = count
    rng = random.Random(args.seed * 1000 + wave)
    kinds, weights = zip(*_MIX, strict=True)

    async def run(client: Client) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            request = _request(rng.choices(kinds, weights)[0], client.host, rng.choice(keys), args.max_new_tokens)
            wait = await client.send(request, args.timeout_s)
            if wait:
                await asyncio.sleep(min(wait, args.max_wait_s))

    await asyncio.gather(*(run(client) for client in clients))


async def _drill(port: int, keys: list[str], args: argparse.Namespace, tally: Tally, pid: int) -> list[dict[str, Any]]:
    clients = [Client("127.0.0.1", port, args.client_idle_s, tally) for _ in range(args.concurrency)]
    waves = []
    per_wave = [args.requests // args.waves + (i < args.requests % args.waves) for i in range(args.waves)]
    try:
        for i, count in enumerate(per_wave):
            if i:
                await asyncio.sleep(args.pause_s)
            started = time.perf_counter()
            await _wave(clients, keys, i, count, args)
            elapsed = time.perf_counter() - started
            rss = _rss_mib(pid)
            wave = {"requests": count, "seconds": round(elapsed, 2), "rps": round(count / elapsed, 1)}
            waves.append({**wave, "rss_mib_after": None if rss is None else round(rss, 1)})
            print(json.dumps({"wave": i, **waves[-1], "statuses": dict(tally.statuses)}), file=sys.stderr)
    finally:
        for client in clients:
            client.close()
    return waves


def _start(name: str, command: list[str], health: str, env: dict[str, str], logs: Path) -> Service:
    service = Service(name, command, {**os.environ, **env}, health, cwd=_ROOT)
    service.start(logs)
    service.wait_healthy(60)
    return service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--waves", type=int, default=4, help="the requests are sent in this many waves")
    parser.add_argument("--pause-s", type=float, default=4.9, help="idle pause between waves")
    parser.add_argument("--users", type=int, default=20, help="few enough that per-user limits refuse some")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--backend-delay-ms", type=float, default=5.0, help="the stub's time per request")
    parser.add_argument("--backend-keep-alive-s", type=float, default=5.0, help="the stub closes idle connections")
    parser.add_argument("--max-wait-s", type=float, default=2.0, help="the longest Retry-After a client honours")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="the client's timeout per request")
    parser.add_argument("--client-idle-s", type=float, default=5.0, help="connections idle this long are given up")
    parser.add_argument("--rss-interval-s", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="extra gateway settings"
    )
    parser.add_argument("--quick", action="store_true", help="a few hundred requests: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.waves, args.pause_s, args.users = 400, 50, 2, 0.5, 10
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        keys = _publish(store, args.users)
        stub_port, gateway_port = free_port(), free_port()
        stub_cmd = [sys.executable, str(_ROOT / "tests" / "support" / "stub_backend.py"), "--port", str(stub_port)]
        stub_cmd += ["--delay-ms", str(args.backend_delay_ms), "--keep-alive-s", str(args.backend_keep_alive_s)]
        gateway_env = {
            "SOPPU_STORE_URL": str(store.root),
            "SOPPU_GATEWAY_BACKENDS": json.dumps([{"url": f"http://127.0.0.1:{stub_port}", "kind": "engine"}]),
            **dict(item.split("=", 1) for item in args.gateway_env),
        }
        gateway_cmd = [sys.executable, "-m", "gateway_service", "--port", str(gateway_port), "--log-level", "warning"]
        stub = _start("stub", stub_cmd, f"http://127.0.0.1:{stub_port}/health", {}, Path(tmp))
        try:
            gateway = _start("gateway", gateway_cmd, f"http://127.0.0.1:{gateway_port}/readyz", gateway_env, Path(tmp))
        except BaseException:
            stub.stop()
            raise
        tally = Tally()
        try:
            assert gateway.proc is not None
            pid = gateway.proc.pid
            time.sleep(0.5)  # the health checker's first rounds
            rss_start = _rss_mib(pid)
            with RssSampler(pid, args.rss_interval_s) as sampler:
                waves = asyncio.run(_drill(gateway_port, list(keys.values()), args, tally, pid))
            time.sleep(1.0)  # settle: finished streams closed, buffers returned
            rss_end = _rss_mib(pid)
            alive = gateway.alive()
        finally:
            gateway.stop()
            stub.stop()
    rss = None
    if rss_start is not None and rss_end is not None:
        peak = max([rss_start, rss_end, *sampler.samples])
        rss = {"start": round(rss_start, 1), "peak": round(peak, 1), "end": round(rss_end, 1)}
    answered = sum(tally.statuses.values())
    body = {
        "requests": answered + sum(tally.dropped.values()),
        "statuses": dict(sorted(tally.statuses.items())),
        "error_types": dict(sorted(tally.error_types.items())),
        "dropped": sum(tally.dropped.values()),
        "dropped_by_error": dict(tally.dropped),
        "server_errors": tally.server_errors,
        "connections": {"requests_on_reused": tally.reused, "opened": tally.fresh},
        "unplanned": len(tally.unplanned),
        "unplanned_examples": sorted(set(tally.unplanned))[:10],
        "rss_mib": rss,
        "waves": waves,
        "gateway_alive": alive,
        "ok": not tally.unplanned and alive,
    }
    notes = {
        "dropped": "connections that ended without an answer (client ReadError, RemoteProtocolError, timeouts)",
        "server_errors": "5xx without Retry-After (a 503 overloaded with Retry-After is planned)",
        "unplanned": "dropped, or a 5xx / 429 without Retry-After; must be 0",
        "rss_mib": "the gateway's resident memory: idle before, peak during, idle after the drill (and per wave)",
    }
    emit_report("load_drill", dict(vars(args)), notes, body, started)


if __name__ == "__main__":
    main()
