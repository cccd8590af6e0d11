"""One table of error codes: every code the core raises has its HTTP status in :data:`soppu.errors.STATUS`, and the
services answer it with that status (a code missing from the table would be a 500)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import soppu.auth
import soppu.registry.pipeline
import soppu.registry.versions
from compressor_service.errors import SERVICE_STATUS, install_handlers
from gateway_service.errors import InvalidRequest, StoreDown
from soppu.errors import STATUS, AdapterErrorCode, InvalidName, SoppuError, StoreUnavailable

ROOT = Path(__file__).resolve().parents[1]
# The constructors that take the code as their first argument (the others take it as ``code=``).
CODE_FIRST = ("AdapterError", "CompressionError", "ExamplesError")


def _subclasses(cls: type[SoppuError]) -> list[type[SoppuError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


def _module_strings(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _imported_strings(tree: ast.Module) -> dict[str, str]:
    """The string constants ``tree`` imports by name from another core module (``from soppu.x import NAME``)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("soppu"):
            source = ROOT.joinpath(*str(node.module).split("."))
            path = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
            strings = _module_strings(ast.parse(path.read_text(), str(path)))
            found |= {alias.asname or alias.name: strings[alias.name] for alias in node.names if alias.name in strings}
    return found


def _raised_codes() -> dict[str, str]:
    """Every code the core's source names: ``code = "..."`` on a class, ``code="..."`` in a call, and the code
    argument of CompressionError / ExamplesError (a literal, or a constant of the module or imported into it).
    Code -> where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "soppu").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = _imported_strings(tree) | _module_strings(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "code" for t in item.targets
                    ):
                        assert isinstance(item.value, ast.Constant), where
                        found[item.value.value] = where
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            if code is None and name in CODE_FIRST and node.args:
                code = node.args[0]
            # AdapterError takes a typed AdapterErrorCode (every member is checked); __init__ passes a code on
            if code is None or name in ("AdapterError", "__init__"):
                continue
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                found[code.value] = where
            else:
                assert isinstance(code, ast.Name), f"{where}: a code the test cannot read ({ast.unparse(code)})"
                assert code.id in constants, f"{where}: a code the test cannot read ({code.id})"
                found[constants[code.id]] = where
    return found


def _every_core_code() -> set[str]:
    codes = {cls.code for cls in _subclasses(SoppuError)}
    codes |= {member.value for member in AdapterErrorCode}
    return codes | set(_raised_codes())


def test_the_walk_sees_the_codes_raised_outside_soppu_errors() -> None:
    # The modules imported above define SoppuError subclasses of their own; the source walk finds literal codes.
    classes = {cls.__name__ for cls in _subclasses(SoppuError)}
    assert {"UserDeleted", "IdempotencyConflict"} <= classes
    assert soppu.auth.UserDeleted.code == "user_deleted"
    assert soppu.registry.versions.IdempotencyConflict.code == "idempotency_conflict"
    assert soppu.registry.pipeline.Pipeline is not None
    raised = _raised_codes()
    assert {"cohort_not_found", "bad_rank", "basis_mismatch", "bad_compressed_format", "unknown_base"} <= set(raised)


def test_every_core_code_has_a_status() -> None:
    missing = sorted(code for code in _every_core_code() if code not in STATUS)
    assert not missing, f"core error codes without an HTTP status in soppu.errors.STATUS: {missing}"
    assert all(status in range(400, 600) for status in STATUS.values())


def test_the_compressor_adds_codes_and_changes_none_of_the_core() -> None:
    assert not set(SERVICE_STATUS) & set(STATUS)


@pytest.fixture(scope="module")
def compressor_errors() -> TestClient:
    """The compressor's error handlers on an app whose one route raises the core error it is asked for."""
    app = FastAPI()
    install_handlers(app, retry_after_s=3)

    @app.get("/raise/{code}")
    async def raise_code(code: str) -> None:
        raise SoppuError(f"a {code}", code=code)

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("code", sorted(_every_core_code()))
def test_the_compressor_answers_every_core_code_with_its_status(compressor_errors: TestClient, code: str) -> None:
    response = compressor_errors.get(f"/raise/{code}")
    assert response.status_code == STATUS[code]
    assert response.json()["error"]["code"] == code


def test_the_gateway_answers_core_errors_with_their_status() -> None:
    # The gateway turns StoreUnavailable into StoreDown and InvalidName into InvalidRequest (LoRAX's error body).
    assert (StoreDown.status, StoreDown.error_type) == (STATUS[StoreUnavailable.code], StoreUnavailable.code)
    assert InvalidRequest.status == STATUS[InvalidName.code]
