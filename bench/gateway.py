"""Benchmark of the gateway's own cost: latency and throughput of client -> gateway -> backend against
client -> backend directly, at several concurrencies, in the same process and alternating round by round.

The backend is ``bench/_stub_backend.py`` (plain asyncio, LoRAX's shapes, no model), so nothing but the
gateway differs between the two paths: the direct path sends what the gateway would forward (adapter id and
source already resolved), the gateway path sends a user's request with its API key. The store is a local
directory holding one published user and a user key, as the compressor would leave it. The load generator is
a minimal keep-alive HTTP/1.1 client (one connection per concurrent client), so it costs the CPU little.

    python bench/gateway.py                       # concurrency 1, 64, 256; 3 rounds of 2 s per path
    python bench/gateway.py --backend-delay-ms 20 # a backend that takes 20 ms per request
    python bench/gateway.py --quick               # smoke run (the test suite's)

Targets (on 2 cores): added latency <= 1 ms at p50 and <= 5 ms at p99; gateway throughput >= 90% of direct.
All three processes (load generator, gateway, stub) share the machine's cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import emit_report, percentile

from soppu.auth import KeyRing, Role
from soppu.cli.stack import Service, free_port
from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.store import LocalStore
from soppu.store.layout import AdapterVersion

_ROOT = Path(__file__).resolve().parents[1]
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
PATHS = ("direct", "gateway")


def _start(name: str, command: list[str], ready_url: str, env: dict[str, str], logs: Path) -> Service:
    service = Service(name, command, {**os.environ, **env}, ready_url, cwd=_ROOT)
    service.start(logs)
    service.wait_healthy(60)
    return service


def _publish(root: Path) -> tuple[str, str]:
    """One user with a published default adapter and a user key: (the key, the adapter id the stub gets)."""
    store = LocalStore(root)
    version = AdapterVersion("bench-user", "default", 1)
    for key in version.export_keys():
        store.put(key, b"{}")
    manifest = Manifest(
        user_id=version.user_id, adapter=version.adapter, version=1, served_from=ServedFrom.ORIGINAL.value,
        export_prefix=version.export_prefix, core_prefix=None, cohort=None, basis_key=None, base_model=None, report={},
    )  # fmt: skip
    store.put(version.manifest_key, manifest.to_json())
    store.put(version.pointer_key, Pointer(version=1, manifest_key=version.manifest_key).to_json())
    key, _ = KeyRing(store).issue(Role.USER, version.user_id)
    return key, str(store.root / version.export_prefix)


def _request(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + [f"content-length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _client(port: int, request: bytes, deadline: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _LENGTH.search(head)
            await reader.readexactly(int(match[1]) if match else 0)
            latencies.append(time.perf_counter() - start)
            if head[9:12] != b"200":
                errors.append(int(head[9:12]))
    finally:
        writer.close()


async def _round(port: int, request: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_client(port, request, deadline, latencies, errors) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": len(errors), "rps": len(latencies) / elapsed}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [s for r in rounds for s in r["latencies"]]
    return {
        "requests": len(samples),
        "errors": sum(r["errors"] for r in rounds),
        "p50_ms": round(percentile(samples, 0.5) * 1e3, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1e3, 3),
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
    }


def _measure(ports: dict[str, int], requests: dict[str, bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        for i in range(args.rounds + 1):  # the first round warms connections, caches and the JIT-less paths
            for path in PATHS:
                seconds = args.warmup_seconds if i == 0 else args.seconds
                result = asyncio.run(_round(ports[path], requests[path], concurrency, seconds))
                if i:
                    rounds[path].append(result)
        direct, gateway = _summary(rounds["direct"]), _summary(rounds["gateway"])
        entry = {
            "concurrency": concurrency,
            "direct": direct,
            "gateway": gateway,
            "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 3),
            "throughput_ratio": round(gateway["rps"] / direct["rps"], 3),
            "ratio_median": round(gateway["p50_ms"] / direct["p50_ms"], 3),
        }
        print(json.dumps(entry), file=sys.stderr)
        results.append(entry)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measured round per path")
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--backend-delay-ms", type=float, default=0.0, help="the stub's time per request")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.seconds, args.warmup_seconds, args.rounds = [1, 8], 0.3, 0.1, 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        key, adapter_id = _publish(Path(tmp) / "store")
        stub_port, gateway_port = free_port(), free_port()
        stub_cmd = [sys.executable, str(_ROOT / "bench" / "_stub_backend.py"), "--port", str(stub_port)]
        stub_cmd += ["--delay-ms", str(args.backend_delay_ms)]
        gateway_env = {
            "SOPPU_STORE_URL": str(Path(tmp) / "store"),
            "SOPPU_GATEWAY_BACKENDS": json.dumps([{"url": f"http://127.0.0.1:{stub_port}", "kind": "engine"}]),
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "0",  # one user drives all the load: limits off
            "SOPPU_GATEWAY_USER_TOKENS_PER_S": "0",
            "SOPPU_GATEWAY_USER_MAX_IN_FLIGHT": "0",
            "SOPPU_GATEWAY_MAX_CONCURRENT_REQUESTS": str(4 * max(args.concurrency)),
        }
        gateway_cmd = [sys.executable, "-m", "gateway_service", "--port", str(gateway_port)]
        stub = _start("stub", stub_cmd, f"http://127.0.0.1:{stub_port}/health", {}, Path(tmp))
        gateway = _start("gateway", gateway_cmd, f"http://127.0.0.1:{gateway_port}/readyz", gateway_env, Path(tmp))
        try:
            params = {"max_new_tokens": args.max_new_tokens}
            requests = {
                "direct": _request(
                    stub_port,
                    "/generate",
                    {
                        "inputs": "My pet is a",
                        "parameters": {**params, "adapter_id": adapter_id, "adapter_source": "local"},
                    },
                    {},
                ),
                "gateway": _request(
                    gateway_port,
                    "/generate",
                    {"inputs": "My pet is a", "parameters": params},
                    {"authorization": f"Bearer {key}"},
                ),
            }
            results = _measure({"direct": stub_port, "gateway": gateway_port}, requests, args)
        finally:
            gateway.stop()
            stub.stop()
    config = {k: v for k, v in vars(args).items()}
    notes = {
        "added_p50_ms": "gateway p50 - direct p50; target <= 1 ms",
        "added_p99_ms": "gateway p99 - direct p99; target <= 5 ms",
        "throughput_ratio": "gateway requests/s / direct requests/s; target >= 0.9",
        "rps": "completed requests per second, median over rounds",
        "ratio_median": "gateway p50 / direct p50",
    }
    emit_report("gateway", config, notes, {"results": results}, started)


if __name__ == "__main__":
    main()
