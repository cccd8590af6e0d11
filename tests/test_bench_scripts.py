"""The benchmark scripts still run and print their JSON report (tiny sizes; no timing is asserted); the gateway's
load drill, in its quick form, drops no connection and answers no unplanned 5xx; the compressor's kill drill
leaves every acknowledged upload served whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("store.py", ["--iterations", "1", "--size-kib", "4"]),
        ("adapter_io.py", ["--iterations", "1"]),
        ("served_form.py", ["--iterations", "1"]),
        ("compression.py", ["--quick"]),
        ("engine.py", ["--quick"]),
        ("gateway.py", ["--quick"]),
        ("compressor.py", ["--quick"]),
        ("ladder.py", ["--quick"]),
    ],
)
def test_bench_script_prints_a_report_with_ratios(script: str, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert {"benchmark", "machine", "config", "notes", "wall_s"} <= set(report)
    assert "ratio_median" in result.stdout  # ladder.py: cpu_s_ratio_median


def test_the_load_drill_drops_nothing_and_answers_no_unplanned_5xx() -> None:
    command = [sys.executable, str(BENCH / "load_drill.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["requests"] == report["config"]["requests"]
    assert (report["dropped"], report["server_errors"], report["unplanned"]) == (0, 0, 0), report
    assert report["ok"] and report["gateway_alive"]


def test_the_kill_drill_leaves_every_acknowledged_upload_served_whole() -> None:
    command = [sys.executable, str(BENCH / "kill_drill.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    [drill] = json.loads(result.stdout)["drills"]
    assert drill["killed"] and drill["acknowledged"] > 0 and drill["users_wrong"] == {}, drill
    assert drill["done"] + drill["failed_with_reason"] == drill["acknowledged"], drill


def test_every_bench_script_is_covered() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == {
        "store.py",
        "adapter_io.py",
        "served_form.py",
        "compression.py",
        "engine.py",
        "gateway.py",
        "compressor.py",
        "ladder.py",
        "load_drill.py",
        "kill_drill.py",
        "drills.py",  # its smoke test: tests/e2e/test_serving_drills.py
        "replica_drill.py",  # its smoke test: tests/e2e/test_replica_drill.py
    }  # a new script needs a smoke test above
