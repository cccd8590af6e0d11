"""The compressor's default base model does not depend on the working directory (issue 16): started from a
directory that happens to hold a ``.cache/examples/base``, it must not pick that model for its behaviour check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_PRINT_DEFAULT = "from compressor_service.settings import CompressorSettings; print(CompressorSettings().base_model)"


def test_the_default_base_model_is_the_checkouts_not_the_working_directorys(tmp_path: Path) -> None:
    stray = tmp_path / ".cache" / "examples" / "base"
    stray.mkdir(parents=True)
    (stray / "config.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPPU_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", _PRINT_DEFAULT], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    chosen = result.stdout.strip()
    checkout_base = REPO_ROOT / ".cache" / "examples" / "base"
    assert chosen == (str(checkout_base) if (checkout_base / "config.json").is_file() else "None")
