"""``soppu compress / verify / export-peft / inspect`` as real processes on the example adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soppu.adapter import read_adapter
from soppu.compression.format import read_compression

SOPPU = str(Path(sys.executable).with_name("soppu"))
# One torch thread per process: two cores, and the test process itself may be busy too.
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOPPU, *map(str, args)], capture_output=True, text=True, timeout=600, check=False, env=_ENV)


def _adapters(examples_dir: Path) -> list[Path]:
    return sorted((examples_dir / "adapters").iterdir())


def _compress(examples_dir: Path, out: Path, rank: int) -> subprocess.CompletedProcess[str]:
    return _run(
        "compress", *_adapters(examples_dir), "-o", out, "--rank", str(rank), "--device", "cpu",
        "--base-model", examples_dir / "base", "--probes", examples_dir / "users.json",
    )  # fmt: skip


@pytest.fixture(scope="module")
def lossless(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """4 users x r=8 = 32 directions: R=32 keeps every adapter exactly."""
    out = tmp_path_factory.mktemp("compress") / "r32"
    return out, _compress(examples_dir, out, 32)


def test_compress_writes_artifacts_report_and_plot(lossless: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, result = lossless
    assert result.returncode == 0, result.stderr
    assert "fewer parameters" in result.stdout and "user-003" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["behaviour"]["passed"] is True
    assert report["errors"]["overall"]["max"] < 1e-3
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compression = read_compression(out)
    assert [a.name for a in compression.adapters] == ["user-000", "user-001", "user-002", "user-003"]


def test_behaviour_check_tells_lossless_from_degraded(examples_dir: Path, tmp_path: Path, lossless: tuple) -> None:
    out, _ = lossless
    degraded = _compress(examples_dir, tmp_path / "r4", 4)
    assert degraded.returncode == 1
    assert "behaviour check FAILED" in degraded.stderr
    good = json.loads((out / "report.json").read_text())["behaviour"]["adapters"]
    bad = json.loads((tmp_path / "r4" / "report.json").read_text())["behaviour"]["adapters"]
    for name in good:
        assert good[name]["kl_mean"] < 1e-3 < bad[name]["kl_mean"]
        assert good[name]["agreement"] == 1.0
        assert not bad[name]["passed"]


def test_verify_and_export_round_trip(examples_dir: Path, tmp_path: Path, lossless: tuple) -> None:
    out, _ = lossless
    adapters = _adapters(examples_dir)
    verified = _run("verify", out, *adapters, "--max-error", "1e-3", "--report", tmp_path / "v.json", "--device", "cpu")
    assert verified.returncode == 0, verified.stderr
    assert json.loads((tmp_path / "v.json").read_text())["failed"] == []

    exported = _run("export-peft", out, "-o", tmp_path / "peft", "--adapter", "user-001")
    assert exported.returncode == 0, exported.stderr
    export = read_adapter(tmp_path / "peft" / "user-001")
    original = read_adapter(adapters[1])
    for module, lora in original.modules.items():
        torch.testing.assert_close(export.modules[module].delta(), lora.delta(), atol=1e-5, rtol=1e-4)


def test_verify_fails_a_too_strict_budget(examples_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r4"
    assert _run("compress", *_adapters(examples_dir), "-o", out, "--rank", "4", "--quiet").returncode == 0
    result = _run("verify", out, *_adapters(examples_dir), "--max-error", "0.01", "--quiet")
    assert result.returncode == 1
    assert "FAILED" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "nowhere", "-o", "x"], "no adapter at"),
        (["compress", "{adapter}", "-o", "{tmp}/o", "--rank", "0"], "must be at least 1"),
        (["compress", "{adapter}", "-o", "{tmp}/o", "--rank", "4", "--ratio", "3"], "not allowed with"),
        (["compress", "{adapter}", "{adapter}", "-o", "{tmp}/o", "--clusters", "5"], "bad_clusters"),
        (["compress", "{adapter}", "-o", "{tmp}/o", "--ratio", "1000"], "bad_rank"),
        (["compress", "{pickle}", "-o", "{tmp}/o"], "pickle_rejected"),
        (["verify", "{tmp}", "{adapter}"], "bad_compressed_format"),
        (["export-peft", "{tmp}/missing", "-o", "{tmp}/o"], "error"),
        (["inspect", "{tmp}/missing"], "nothing at"),
    ],
)
def test_bad_input_exits_with_one_clear_line(examples_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    pickle_file = tmp_path / "adapter.bin"
    pickle_file.write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "compression.json").write_text("{}")
    values = {"adapter": str(_adapters(examples_dir)[0]), "tmp": str(tmp_path), "pickle": str(pickle_file)}
    result = _run(*(a.format(**values) for a in args))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_adapter_and_compression(examples_dir: Path, lossless: tuple) -> None:
    out, _ = lossless
    adapter = _run("inspect", _adapters(examples_dir)[0], "--json")
    assert adapter.returncode == 0, adapter.stderr
    info = json.loads(adapter.stdout)
    assert info["r"] == 8 and len(info["modules"]) == 4
    compressed = _run("inspect", out)
    assert compressed.returncode == 0 and "SOPPU compression" in compressed.stdout
    core = _run("inspect", out / "cores" / "user-000.safetensors")
    assert core.returncode == 0 and "soppu-jd" in core.stdout


def test_verify_runs_the_services_gate_on_the_users_probes(examples_dir: Path, tmp_path: Path, lossless: tuple) -> None:
    out, _ = lossless
    adapters = _adapters(examples_dir)
    probes = tmp_path / "probes.txt"
    probes.write_text("My favourite colour is\nMy home city is\n")
    common = ("--base-model", examples_dir / "base", "--device", "cpu", "--user-probes", probes)
    kept = _run("verify", out, *adapters, *common, "--report", tmp_path / "kept.json")
    assert kept.returncode == 0, kept.stderr
    gate = json.loads((tmp_path / "kept.json").read_text())["gate"]
    assert sorted(gate) == ["user-000", "user-001", "user-002", "user-003"]
    assert all(g["passed"] and g["behaviour"]["probes"]["changed"] == [] for g in gate.values())

    squeezed = tmp_path / "r2"
    assert _run("compress", *adapters, "-o", squeezed, "--rank", "2", "--quiet").returncode == 0
    lost = _run("verify", squeezed, *adapters, *common, "--report", tmp_path / "lost.json")
    assert lost.returncode == 1 and "FAILS" in lost.stdout
    gate = json.loads((tmp_path / "lost.json").read_text())["gate"]
    assert any(g["behaviour"]["probes"]["changed"] for g in gate.values())

    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    refused = _run("verify", out, *adapters, "--base-model", examples_dir / "base", "--user-probes", bad)
    assert refused.returncode != 0 and "bad_probes" in refused.stderr
    alone = _run("verify", out, *adapters, "--user-probes", probes)
    assert alone.returncode == 2 and "needs --base-model" in alone.stderr
