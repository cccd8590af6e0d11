"""The shape of the code as a whole (issue 16): our import graph has no cycle, counting imports hidden inside
functions (one once joined the CLI's demo and dev); no module runs past about 400 lines; and tests/ is a package
whose modules share helpers through tests/support, not through sys.path or each other.

The direction of each import (core below services, services apart) is tests/test_architecture.py's."""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("soppu", "soppu_web", "compressor_service", "gateway_service", "inference_service")
MAX_LINES = 400


def module_names(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``packages`` under ``root`` (a package is its ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """Our modules that ``name`` imports anywhere in its body (functions included, ``if TYPE_CHECKING:`` not,
    since that never runs): ``from a import b`` counts as ``a.b`` when that is a module, else as ``a``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while pending:
        node = pending.pop()
        if _type_checking_only(node):
            assert isinstance(node, ast.If)
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
                elif source in modules:
                    found.add(source)
        pending.extend(ast.iter_child_nodes(node))
    return found - {name}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    modules = module_names(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_our_import_graph_has_no_cycle() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 100 and any(graph.values())  # the walk saw the code
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    cli = tmp_path / "app" / "cli"
    cli.mkdir(parents=True)
    for package in (tmp_path / "app", cli):
        (package / "__init__.py").write_text("")
    (cli / "demo.py").write_text("from app.cli.dev import run\n")
    (cli / "dev.py").write_text("def run():\n    from . import demo\n")
    (cli / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.cli.demo import x\n"
    )
    graph = import_graph(tmp_path, ["app"])
    assert graph["app.cli.typed"] == set()
    assert cycles(graph) == [["app.cli.demo", "app.cli.dev"]]


def _tracked_python_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_no_module_runs_past_400_lines() -> None:
    files = _tracked_python_files()
    assert len(files) > 100
    long = {name: lines for name in files if (lines := len((ROOT / name).read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by what they do (at most {MAX_LINES} lines): {long}"


_SYS_PATH_EDITS = ("insert", "append", "extend")


def _edits_sys_path(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SYS_PATH_EDITS:
            target = node.func.value
            if isinstance(target, ast.Attribute) and target.attr == "path" and ast.unparse(target.value) == "sys":
                return True
    return False


def test_tests_are_a_package_sharing_helpers_through_support() -> None:
    # Helpers by package name (tests.support.*), never by a bare name that sys.path edits make importable, and
    # never from another test module, whose fixtures and tests would come along.
    folders = {path.parent for path in (ROOT / "tests").rglob("*.py")}
    assert not [f for f in folders if not (f / "__init__.py").is_file()]
    modules = module_names(ROOT, ["tests"])
    for name, path in modules.items():
        assert not _edits_sys_path(path), name
        imported = imported_modules(name, path, modules)
        assert not [m for m in imported if m.rsplit(".", 1)[-1].startswith(("test_", "conftest"))], name
