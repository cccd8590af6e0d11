"""Fixtures of the LoRAX contract suite: the fake LoRAX 0.12.1 (``fake_lorax.py``) as a real uvicorn process on
loopback, over a copy of the example base model (with a chat template, as a LoRAX deployment needs one for
``/v1/chat/completions``), reading S3 adapters from the session's moto server (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import ServiceProcess, start_service

FAKE_LORAX = Path(__file__).resolve().with_name("fake_lorax.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 120.0  # torch and the model on a busy 2-core box
# A plain transcript: LoRAX renders the tokenizer's own template (router/src/infer.rs:63-145); without one,
# every chat request is a 422 template_error.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="session")
def lorax_model_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """The example base model, copied, with :data:`CHAT_TEMPLATE` in its tokenizer config."""
    model = tmp_path_factory.mktemp("lorax-model") / "base"
    shutil.copytree(examples_dir / "base", model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    return model


def start_fake_lorax(model: Path, log: Path, moto_url: str, *args: str) -> ServiceProcess:
    """A fake LoRAX process on a free loopback port, S3 on ``moto_url``; ``args`` are extra launcher flags."""
    env = {
        "OMP_NUM_THREADS": "1",  # tiny matrices: threads only add barriers on a shared box
        "S3_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }

    def command(port: int) -> list[str]:
        return [sys.executable, str(FAKE_LORAX), "--port", str(port), "--model", str(model), *args]

    return start_service(command, log=log, env=env, ready_path="/info", timeout_s=_START_TIMEOUT_S, cwd=REPO_ROOT)


def _serve(service: ServiceProcess, log: Path) -> Iterator[ServiceProcess]:
    try:
        yield service
    finally:
        crashed = service.proc.poll() is not None
        service.stop()
        if crashed:
            print(f"the fake LoRAX exited during the tests; its log ({log}):\n{service.log_tail()}")


@pytest.fixture(scope="session")
def fake_lorax(
    tmp_path_factory: pytest.TempPathFactory, lorax_model_dir: Path, moto_server: str
) -> Iterator[ServiceProcess]:
    """The session's fake LoRAX (defaults as LoRAX's, but 4 concurrent requests so an overload is cheap to reach).
    Its base URL is ``fake_lorax.url``."""
    log = tmp_path_factory.mktemp("fake-lorax") / "fake_lorax.log"
    yield from _serve(start_fake_lorax(lorax_model_dir, log, moto_server, "--max-concurrent-requests", "4"), log)


@pytest.fixture(scope="session")
def fake_lorax_url(fake_lorax: ServiceProcess) -> str:
    return fake_lorax.url


@pytest.fixture(scope="module")
def fake_lorax_no_sgmv(
    tmp_path_factory: pytest.TempPathFactory, lorax_model_dir: Path, moto_server: str
) -> Iterator[ServiceProcess]:
    """A second fake LoRAX launched with ``--disable-sgmv`` (no rank padding)."""
    log = tmp_path_factory.mktemp("fake-lorax-nosgmv") / "fake_lorax.log"
    yield from _serve(start_fake_lorax(lorax_model_dir, log, moto_server, "--disable-sgmv"), log)
