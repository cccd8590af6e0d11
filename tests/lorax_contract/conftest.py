"""Fixtures of the LoRAX contract suite: the fake LoRAX 0.12.1 (``fake_lorax.py``) as a real uvicorn process on
loopback, over a copy of the example base model (with a chat template, as a LoRAX deployment needs one for
``/v1/chat/completions``), reading S3 adapters from the session's moto server (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lorax_contract.fake_lorax_process import lorax_model, start_fake_lorax
from tests.lorax_contract.gateway_fixtures import fake_deployment  # noqa: F401  (the gateway in front of a fake: a fixture)
from tests.support.processes import ServiceProcess, serving


@pytest.fixture(scope="session")
def lorax_model_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """The example base model, copied, with a chat template (fake_lorax_process.CHAT_TEMPLATE)."""
    return lorax_model(examples_dir / "base", tmp_path_factory.mktemp("lorax-model") / "base")


@pytest.fixture(scope="session")
def fake_lorax(
    tmp_path_factory: pytest.TempPathFactory, lorax_model_dir: Path, moto_server: str
) -> Iterator[ServiceProcess]:
    """The session's fake LoRAX (defaults as LoRAX's, but 4 concurrent requests so an overload is cheap to reach).
    Its base URL is ``fake_lorax.url``."""
    log = tmp_path_factory.mktemp("fake-lorax") / "fake_lorax.log"
    with serving(
        start_fake_lorax(lorax_model_dir, log, moto_server, "--max-concurrent-requests", "4"), "the fake LoRAX"
    ) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_lorax_url(fake_lorax: ServiceProcess) -> str:
    return fake_lorax.url


@pytest.fixture(scope="module")
def fake_lorax_no_sgmv(
    tmp_path_factory: pytest.TempPathFactory, lorax_model_dir: Path, moto_server: str
) -> Iterator[ServiceProcess]:
    """A second fake LoRAX launched with ``--disable-sgmv`` (no rank padding)."""
    log = tmp_path_factory.mktemp("fake-lorax-nosgmv") / "fake_lorax.log"
    with serving(start_fake_lorax(lorax_model_dir, log, moto_server, "--disable-sgmv"), "the fake LoRAX") as fake:
        yield fake
