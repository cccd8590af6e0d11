"""Benchmark of the gateway's own cost: latency and throughput of client -> gateway -> backend against
client -> backend directly, at several concurrencies, in the same process and alternating round by round.

The backend is ``tests/support/stub_backend.py`` (plain asyncio, LoRAX's shapes, no model), so nothing but the
gateway differs between the two paths: the direct path sends what the gateway would forward (adapter id and
source already resolved), the gateway path sends a user's request with its API key. The store is a local
directory holding one published user and a user key, as the compressor would leave it. The load generator is
a minimal keep-alive HTTP/1.1 client (one connection per concurrent client), so it costs the CPU little.

    python bench/gateway.py                       # 1 and 2 gateway processes; concurrency 1, 64, 256; 3 x 2 s
    python bench/gateway.py --gateway-workers 1,2,4
    python bench/gateway.py --backend-delay-ms 20 # a backend that takes 20 ms per request
    python bench/gateway.py --quick               # smoke run (the test suite's)

Each gateway size (``python -m gateway_service --workers N``: N processes on one port) is measured against the
direct path in its own alternating rounds. Besides requests/s and latency, the CPU time the gateway's processes,
the stub and the load generator spend per completed request is read from ``/proc`` (Linux; null elsewhere):
the gateway's CPU per request gives its requests/s per core, a figure that does not depend on how many cores the
machine has left over for it.

Targets (on 2 cores): added latency <= 1 ms at p50 and <= 5 ms at p99; gateway throughput >= 90% of direct.
All three processes (load generator, gateway, stub) share the machine's cores, as they would on one host: on
2 cores, gateway workers beyond one compete with the stub and the load generator for the same cores.
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


def _wait_workers(service: Service, workers: int, timeout_s: float = 60) -> None:
    """Until each of ``workers`` processes has logged uvicorn's startup line (one answering is not all up)."""
    deadline = time.monotonic() + timeout_s
    assert service.log is not None
    while service.log.read_text(errors="replace").count("Application startup complete") < workers:
        if time.monotonic() > deadline or not service.alive():
            raise RuntimeError(f"{service.name}: {workers} workers did not start; its log:\n{service.tail()}")
        time.sleep(0.2)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a uvicorn supervisor and its workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def _cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` so far; None where /proc cannot tell."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


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


def _timed_round(
    port: int, request: bytes, concurrency: int, seconds: float, processes: dict[str, list[int]]
) -> dict[str, Any]:
    """A round, with the CPU seconds each group of ``processes`` (and the load generator) spent in it."""
    before = {name: _cpu_s(pids) for name, pids in processes.items()}
    own = time.process_time()
    result = asyncio.run(_round(port, request, concurrency, seconds))
    result["cpu_s"] = {"load_generator": time.process_time() - own}
    for name, pids in processes.items():
        now, then = _cpu_s(pids), before[name]
        result["cpu_s"][name] = None if now is None or then is None else now - then
    return result


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [s for r in rounds for s in r["latencies"]]
    summary = {
        "requests": len(samples),
        "errors": sum(r["errors"] for r in rounds),
        "p50_ms": round(percentile(samples, 0.5) * 1e3, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1e3, 3),
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
    }
    cpu: dict[str, float | None] = {}
    for name in rounds[0]["cpu_s"]:
        spent = [r["cpu_s"][name] for r in rounds]
        cpu[name] = None if None in spent or not samples else round(sum(spent) / len(samples) * 1e3, 4)
    summary["cpu_ms_per_request"] = cpu
    return summary


def _measure(
    ports: dict[str, int],
    requests: dict[str, bytes],
    processes: dict[str, list[int]],
    workers: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    results = []
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        for i in range(args.rounds + 1):  # the first round warms connections, caches and the JIT-less paths
            for path in PATHS:
                seconds = args.warmup_seconds if i == 0 else args.seconds
                result = _timed_round(ports[path], requests[path], concurrency, seconds, processes)
                if i:
                    rounds[path].append(result)
        direct, gateway = _summary(rounds["direct"]), _summary(rounds["gateway"])
        gateway_cpu = gateway["cpu_ms_per_request"]["gateway"]
        entry = {
            "gateway_workers": workers,
            "concurrency": concurrency,
            "direct": direct,
            "gateway": gateway,
            "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 3),
            "throughput_ratio": round(gateway["rps"] / direct["rps"], 3),
            "ratio_median": round(gateway["p50_ms"] / direct["p50_ms"], 3),
            "gateway_rps_per_process": round(gateway["rps"] / workers, 1),
            "gateway_rps_per_core": round(1e3 / gateway_cpu, 1) if gateway_cpu else None,
        }
        print(json.dumps(entry), file=sys.stderr)
        results.append(entry)
    return results


def _side_by_side(results: list[dict[str, Any]]) -> None:
    print("workers conc | direct req/s | gateway req/s (per process) | ratio | added p50 / p99 ms | "
          "gateway CPU ms/req (req/s per core) | stub CPU ms/req", file=sys.stderr)  # fmt: skip
    for e in results:
        g, d = e["gateway"], e["direct"]
        cpu, stub = g["cpu_ms_per_request"]["gateway"], d["cpu_ms_per_request"]["stub"]
        print(
            f"{e['gateway_workers']:>7} {e['concurrency']:>4} | {d['rps']:>12,.0f} | {g['rps']:>8,.0f} "
            f"({e['gateway_rps_per_process']:>8,.0f}) | {e['throughput_ratio']:.3f} | "
            f"{e['added_p50_ms']:.3f} / {e['added_p99_ms']:.3f} | {cpu} ({e['gateway_rps_per_core']}) | {stub}",
            file=sys.stderr,
        )


def _workers(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of process counts >= 1, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measured round per path")
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--backend-delay-ms", type=float, default=0.0, help="the stub's time per request")
    parser.add_argument(
        "--gateway-workers", type=_workers, default=[1, 2], help="gateway process counts to measure, e.g. 1,2"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.seconds, args.warmup_seconds, args.rounds = [1, 8], 0.3, 0.1, 1
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        key, adapter_id = _publish(Path(tmp) / "store")
        stub_port = free_port()
        stub_cmd = [sys.executable, str(_ROOT / "tests" / "support" / "stub_backend.py"), "--port", str(stub_port)]
        stub_cmd += ["--delay-ms", str(args.backend_delay_ms)]
        gateway_env = {
            "SOPPU_STORE_URL": str(Path(tmp) / "store"),
            "SOPPU_GATEWAY_BACKENDS": json.dumps([{"url": f"http://127.0.0.1:{stub_port}", "kind": "engine"}]),
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "0",  # one user drives all the load: limits off
            "SOPPU_GATEWAY_USER_TOKENS_PER_S": "0",
            "SOPPU_GATEWAY_USER_MAX_IN_FLIGHT": "0",
            "SOPPU_GATEWAY_MAX_CONCURRENT_REQUESTS": str(4 * max(args.concurrency)),
        }
        stub = _start("stub", stub_cmd, f"http://127.0.0.1:{stub_port}/health", {}, Path(tmp))
        try:
            params = {"max_new_tokens": args.max_new_tokens}
            direct_body = {"inputs": "My pet is a", "parameters": {**params, "adapter_id": adapter_id}}
            direct_body["parameters"]["adapter_source"] = "local"
            direct = _request(stub_port, "/generate", direct_body, {})
            for workers in args.gateway_workers:
                gateway_port = free_port()
                gateway_cmd = [sys.executable, "-m", "gateway_service", "--port", str(gateway_port)]
                gateway_cmd += ["--workers", str(workers)] if workers > 1 else []
                ready = f"http://127.0.0.1:{gateway_port}/readyz"
                gateway = _start(f"gateway-{workers}", gateway_cmd, ready, gateway_env, Path(tmp))
                try:
                    _wait_workers(gateway, workers)
                    assert gateway.proc is not None and stub.proc is not None
                    processes = {"gateway": _tree(gateway.proc.pid), "stub": [stub.proc.pid]}
                    requests = {
                        "direct": direct,
                        "gateway": _request(
                            gateway_port,
                            "/generate",
                            {"inputs": "My pet is a", "parameters": params},
                            {"authorization": f"Bearer {key}"},
                        ),
                    }
                    ports = {"direct": stub_port, "gateway": gateway_port}
                    results += _measure(ports, requests, processes, workers, args)
                finally:
                    gateway.stop()
        finally:
            stub.stop()
    _side_by_side(results)
    config = {k: v for k, v in vars(args).items()}
    notes = {
        "added_p50_ms": "gateway p50 - direct p50; target <= 1 ms",
        "added_p99_ms": "gateway p99 - direct p99; target <= 5 ms",
        "throughput_ratio": "gateway requests/s / direct requests/s; target >= 0.9",
        "rps": "completed requests per second, median over rounds",
        "ratio_median": "gateway p50 / direct p50",
        "gateway_workers": "gateway processes on the one port (python -m gateway_service --workers N)",
        "gateway_rps_per_process": "gateway requests/s / gateway_workers",
        "cpu_ms_per_request": "CPU ms (user + system, from /proc) per completed request in that path's rounds: "
        "gateway = all its processes, stub, load_generator = this script",
        "gateway_rps_per_core": "1000 / the gateway's CPU ms per request: what one fully busy core relays",
        "machine_note": f"{os.cpu_count()} CPUs shared by the load generator, the stub and the gateway's processes",
    }
    emit_report("gateway", config, notes, {"results": results}, started)


if __name__ == "__main__":
    main()
