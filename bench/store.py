"""Benchmark of soppu.store's backends against the plain calls they wrap.

Starts its own moto S3 server process and measures, in this one process and on the same payload:

- S3Store.put / get against raw boto3 ``put_object`` / ``get_object`` on a default-configured client,
  and S3Store.put against ``put_object`` on the store's own client (the wrapper's overhead alone);
- LocalStore.put (temp file + fsync + rename + directory fsync) against ``open().write()``, with
  ``open().write()`` + fsync as a reference that shows what durability alone costs;
- LocalStore.get against ``Path.read_bytes()``.

Ours and the baseline alternate within each iteration, so drift in the machine hits both equally. Prints
one JSON object to stdout; progress goes to stderr.

    python bench/store.py --iterations 200 --size-kib 1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from _timing import compare, emit_report
from botocore.config import Config

from soppu.store import LocalStore, S3Store

_CREDENTIALS = {"access_key": "bench", "secret_key": "bench", "region": "us-east-1"}


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server on a free loopback port and wait until it answers HTTP."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    script = Path(sys.executable).with_name("moto_server")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _bench_s3(endpoint: str, payload: bytes, iterations: int) -> dict[str, Any]:
    store = S3Store("bench", endpoint_url=endpoint, **_CREDENTIALS)
    store.ensure_bucket()
    raw = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(s3={"addressing_style": "path"}),
    )
    size = len(payload)
    store.put("ours/get", payload)
    raw.put_object(Bucket="bench", Key="raw/get", Body=payload)
    return {
        "s3_put": compare(
            "s3_put",
            lambda i: store.put(f"ours/put/{i % 4}", payload),
            lambda i: raw.put_object(Bucket="bench", Key=f"raw/put/{i % 4}", Body=payload),
            iterations,
            size,
        ),
        "s3_put_wrapper_only": compare(
            "s3_put_wrapper_only",
            lambda i: store.put(f"ours/put/{i % 4}", payload),
            lambda i: store.client.put_object(Bucket="bench", Key=f"raw/put/{i % 4}", Body=payload),
            iterations,
            size,
        ),
        "s3_get": compare(
            "s3_get",
            lambda i: store.get("ours/get"),
            lambda i: raw.get_object(Bucket="bench", Key="raw/get")["Body"].read(),
            iterations,
            size,
        ),
    }


def _plain_write(path: Path, payload: bytes, *, fsync: bool) -> None:
    with path.open("wb") as f:
        f.write(payload)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def _bench_local(root: Path, payload: bytes, iterations: int) -> dict[str, Any]:
    store = LocalStore(root / "store")
    plain = root / "plain"
    plain.mkdir()
    size = len(payload)
    put = compare(
        "local_put",
        lambda i: store.put(f"ours/put/{i % 4}", payload),
        lambda i: _plain_write(plain / f"put-{i % 4}", payload, fsync=False),
        iterations,
        size,
    )
    # Same ours-vs-baseline shape, but the baseline also fsyncs: the part of the cost that is durability.
    fsync_only = compare(
        "local_put_vs_write_fsync",
        lambda i: store.put(f"ours/put/{i % 4}", payload),
        lambda i: _plain_write(plain / f"put-{i % 4}", payload, fsync=True),
        iterations,
        size,
    )
    store.put("ours/get", payload)
    (plain / "get").write_bytes(payload)
    get = compare(
        "local_get",
        lambda i: store.get("ours/get"),
        lambda i: (plain / "get").read_bytes(),
        iterations,
        size,
    )
    return {"local_put": put, "local_put_vs_write_fsync": fsync_only, "local_get": get}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="timed iterations per op (default 200)")
    parser.add_argument("--size-kib", type=int, default=1024, help="payload size in KiB (default 1024)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.size_kib < 0:
        parser.error("--iterations must be >= 1 and --size-kib >= 0")
    payload = os.urandom(args.size_kib * 1024)

    started = time.perf_counter()
    proc, endpoint = _start_moto()
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        results = {**_bench_s3(endpoint, payload, args.iterations)}
        results.update(_bench_local(root, payload, args.iterations))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
    emit_report(
        "soppu.store",
        {"iterations": args.iterations, "size_kib": args.size_kib},
        {
            "s3": "moto_server on loopback; baseline is a boto3 client with default config plus path style"
            " (it computes CRC32 request checksums, which ours turns off for MinIO compatibility)",
            "s3_put_wrapper_only": "baseline is put_object on S3Store's own client: same config",
            "local_put": "ours = temp file + fsync + rename + dir fsync; baseline = open().write()",
        },
        {"results": results},
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
