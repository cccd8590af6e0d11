"""Starting the fake LoRAX (``fake_lorax.py``) as a real process, for any test suite: ``start_fake_lorax`` on a
model prepared by ``lorax_model``. The lorax_contract fixtures use it; another suite can import it as
``tests.lorax_contract.fake_lorax_process``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.support.processes import MOTO_ENV, ServiceProcess, start_service

__all__ = ["CHAT_TEMPLATE", "FAKE_LORAX", "lorax_model", "start_fake_lorax"]

FAKE_LORAX = "tests.lorax_contract.fake_lorax"  # run as `python -m` from the repository root
REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 120.0  # torch and the model on a busy 2-core box
# A plain transcript: LoRAX renders the tokenizer's own template (router/src/infer.rs:63-145); without one,
# every chat request is a 422 template_error.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def lorax_model(base: Path, into: Path) -> Path:
    """A copy of the model directory ``base`` at ``into`` with :data:`CHAT_TEMPLATE` in its tokenizer config."""
    shutil.copytree(base, into)
    config_path = into / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    return into


def start_fake_lorax(model: Path, log: Path, moto_url: str, *args: str) -> ServiceProcess:
    """A fake LoRAX process on a free loopback port, S3 on ``moto_url``; ``args`` are extra launcher flags."""
    env = {
        "OMP_NUM_THREADS": "1",  # tiny matrices: threads only add barriers on a shared box
        "S3_ENDPOINT_URL": moto_url,
        **MOTO_ENV,
        "HF_HUB_OFFLINE": "1",
    }

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", FAKE_LORAX, "--port", str(port), "--model", str(model), *args]

    return start_service(command, log=log, env=env, ready_path="/info", timeout_s=_START_TIMEOUT_S, cwd=REPO_ROOT)
