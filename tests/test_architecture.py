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
        banned = names & {*WEB, *SERVICES, "soppu_web"}
        assert not banned, f"{path.relative_to(ROOT)} imports {banned}"


def test_shared_web_pieces_import_no_service() -> None:
    # soppu_web holds what the services share and the core may not (Starlette, uvicorn): services import it,
    # it imports none of them (a home under one service would make the others import that service).
    for path, names in _imports("soppu_web").items():
        assert not names & set(SERVICES), f"{path.relative_to(ROOT)} imports {names & set(SERVICES)}"


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


# Every kind of key in the bucket (soppu.store.layout). Outside that module a key is built and parsed only through
# its functions: a prefix cut out of a real key, or written out again, breaks silently when the layout changes
# (and deletion walks those prefixes).
LAYOUT_MODULE = ROOT / "soppu" / "store" / "layout.py"
KEY_KINDS = (
    "originals",
    "exports",
    "cores",
    "bases",
    "manifests",
    "pointers",
    "jobs",
    "idempotency",
    "cohorts",
    "tombstones",
    "leases",
    "keys",
    "key-index",
)
KIND_NAMES = ("ORIGINALS", "EXPORTS", "CORES", "BASES", "MANIFESTS", "POINTERS", "JOBS", "IDEMPOTENCY", "COHORTS")
KIND_NAMES += ("TOMBSTONES", "LEASES", "KEYS", "KEY_INDEX")


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes of ``tree`` (module, class and function): prose may name keys."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _key_literals(path: Path) -> list[str]:
    """Where ``path`` writes a bucket key's kind prefix as a literal, or imports a kind name from the layout."""
    tree = ast.parse(path.read_text(), str(path))
    prose = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if node.value.startswith(tuple(f"{kind}/" for kind in KEY_KINDS)):
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module == "soppu.store.layout":
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name in KIND_NAMES]
    return found


def _sources() -> list[Path]:
    return [path for package in ("soppu", *SERVICES) for path in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_layout_builds_or_parses_bucket_keys() -> None:
    offenders = {
        str(path.relative_to(ROOT)): hits
        for path in _sources()
        if path != LAYOUT_MODULE and (hits := _key_literals(path))
    }
    assert not offenders, f"bucket keys built outside soppu/store/layout.py: {offenders}"


def test_the_key_check_sees_a_hand_built_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstrings may say pointers/{user}/{adapter}/current.json."""\n'
        "from soppu.store.layout import JOBS\n"
        'def f(user):\n    """originals/ in prose is fine."""\n    return f"pointers/{user}/"\n'
    )
    assert _key_literals(bad) == ["line 2: imports JOBS", "line 5: 'pointers/'"]
