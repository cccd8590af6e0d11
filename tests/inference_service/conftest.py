"""The inference engine as a real ``python -m inference_service`` process on the example base model, with S3
pointed at the session's moto server; and the example users' adapters and expected answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from example_user import ExampleUser
from processes import start_service

_REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 120.0  # loading torch and the model on a busy 2-core box


@pytest.fixture(scope="session")
def engine_url(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path, moto_server: str) -> Iterator[str]:
    """Base URL of a running engine serving ``examples_dir/base`` on the CPU."""
    log = tmp_path_factory.mktemp("engine") / "inference_service.log"
    env = {
        "OMP_NUM_THREADS": "1",  # tiny matrices: threads only add barriers on a shared box
        "S3_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    model = str(examples_dir / "base")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "inference_service", "--port", str(port), "--model", model, "--device", "cpu"]

    service = start_service(command, log=log, env=env, timeout_s=_START_TIMEOUT_S, cwd=_REPO_ROOT)
    try:
        yield service.url
    finally:
        crashed = service.proc.poll() is not None
        service.stop()
        if crashed:
            print(f"inference_service exited during the tests; its log ({log}):\n{service.log_tail()}")


@pytest.fixture(scope="session")
def manifest(examples_dir: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((examples_dir / "users.json").read_text())
    return loaded


@pytest.fixture(scope="session")
def base_answers(manifest: dict[str, object]) -> dict[str, str]:
    answers = manifest["base_answers"]
    assert isinstance(answers, dict)
    return answers


@pytest.fixture(scope="session")
def example_users(examples_dir: Path, manifest: dict[str, object]) -> list[ExampleUser]:
    entries = manifest["users"]
    assert isinstance(entries, list)
    return [
        ExampleUser(
            user_id=u["user_id"],
            adapter_dir=(examples_dir / u["adapter"]).resolve(),
            answers={p["prompt"]: p["expected"] for p in u["prompts"]},
        )
        for u in entries
    ]
