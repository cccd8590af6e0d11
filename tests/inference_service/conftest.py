"""The engine under test (the session's ``python -m inference_service`` process from tests/conftest.py, on the
example base model with S3 pointed at the moto server), and the example users' adapters and expected answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference_service.example_user import ExampleUser
from tests.support.processes import ServiceProcess


@pytest.fixture(scope="session")
def engine_url(engine_process: ServiceProcess) -> str:
    """Base URL of the session's engine (tests/conftest.py), serving ``examples_dir/base`` on the CPU."""
    return engine_process.url


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
