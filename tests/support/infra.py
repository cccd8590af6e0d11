"""The scripts of infra/ (no package: run by ``make`` or a container), loaded as modules for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["load_write_env"]

_INFRA = Path(__file__).resolve().parents[2] / "infra"


def load_write_env() -> ModuleType:
    """infra/write_env.py (what ``make up`` and the k8s README run to write random secrets), freshly loaded."""
    spec = importlib.util.spec_from_file_location("write_env", _INFRA / "write_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
