"""The ``soppu`` console script, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOPPU = str(Path(sys.executable).with_name("soppu"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOPPU, *args], capture_output=True, text=True, timeout=300, check=False)


def test_help_lists_the_subcommands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "examples" in result.stdout
    build_help = _run("examples", "build", "--help")
    assert build_help.returncode == 0
    assert "--users" in build_help.stdout and "--out" in build_help.stdout
    assert "--base" in build_help.stdout and "smollm2" in build_help.stdout
    train_help = _run("examples", "train", "--help")
    assert train_help.returncode == 0 and "--steps" in train_help.stdout


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.startswith("soppu ")


def test_check_prints_every_users_answers(examples_dir: Path) -> None:
    result = _run("examples", "check", str(examples_dir), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "4/4 users got their own answers" in result.stdout
    assert "user-003" in result.stdout


def test_check_fails_on_a_missing_directory(tmp_path: Path) -> None:
    result = _run("examples", "check", str(tmp_path / "nowhere"))
    assert result.returncode != 0


def test_build_rejects_zero_users(tmp_path: Path) -> None:
    result = _run("examples", "build", "--users", "0", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
