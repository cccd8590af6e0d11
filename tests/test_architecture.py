"""The direction of dependencies: the core never imports a web framework or a service; services never import
each other; and nothing of ours is importable as ``lorax`` (that name belongs to the lorax-client package)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("compressor_service", "gateway_service", "inference_service")
WEB = ("fastapi", "starlette", "uvicorn", "httpx")


def _imports(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path] = names
    return found


def test_core_imports_no_web_framework_and_no_service() -> None:
    for path, names in _imports("soppu").items():
        assert not names & {*WEB, *SERVICES}, f"{path.relative_to(ROOT)} imports {names & {*WEB, *SERVICES}}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_do_not_import_each_other(service: str) -> None:
    others = set(SERVICES) - {service}
    for path, names in _imports(service).items():
        assert not names & others, f"{path.relative_to(ROOT)} imports {names & others}"


def test_lorax_folder_is_not_a_python_package() -> None:
    assert (ROOT / "lorax").is_dir()
    assert not list((ROOT / "lorax").rglob("*.py"))


def test_what_the_gateway_needs_from_the_core_does_not_load_torch() -> None:
    # The gateway is a slim image: keys, the store and the registry's records must not pull in torch.
    code = "import sys, soppu.auth, soppu.store, soppu.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_the_gateway_runs_without_the_ml_stack() -> None:
    # Its image installs the project without torch, transformers, safetensors and friends (gateway_service/Dockerfile).
    blocked = ("torch", "transformers", "safetensors", "tokenizers", "matplotlib", "regex", "tqdm", "numpy", "peft")
    code = (
        f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\nimport gateway_service.__main__, gateway_service.app"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
