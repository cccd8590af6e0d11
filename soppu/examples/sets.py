"""The example sets by base name: what ``--base`` picks in ``soppu examples build``, ``make demo`` and the tests.

    tiny      a 128-wide, 2-layer Llama pre-trained here on a toy vocabulary, users' adapters trained at build
              time in seconds: the fast unit-test fixture, and the hardest case for compression
    smollm2   SmolLM2-135M-Instruct converted from the GGUF a package ships, with the personal users' adapters
              shipped in the repository: the real model of the demo and the stack

Both lay out ``DIR/base``, ``DIR/adapters/<user>`` and ``DIR/users.json`` alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from soppu.errors import ExamplesError
from soppu.examples.build import ExamplesSpec, build_examples
from soppu.examples.cache import default_cache_dir
from soppu.examples.smollm2_set import build_smollm2_examples, shipped_users

__all__ = ["BASES", "DEFAULT_BASE", "build_example_set", "default_users"]

DEFAULT_BASE = "smollm2"


def _tiny(users: int, out: Path, cache_dir: Path, progress: bool) -> Path:
    return build_examples(ExamplesSpec(users=users), out, cache_dir=cache_dir, progress=progress)


def _smollm2(users: int, out: Path, cache_dir: Path, progress: bool) -> Path:
    return build_smollm2_examples(users, out, cache_dir=cache_dir)


BASES: dict[str, Callable[[int, Path, Path, bool], Path]] = {"tiny": _tiny, "smollm2": _smollm2}


def build_example_set(
    base: str, users: int, out: Path, *, cache_dir: Path | None = None, progress: bool = False
) -> Path:
    """Build (or reuse) the example set of ``base`` with ``users`` users in ``out``."""
    builder = BASES.get(base)
    if builder is None:
        raise ExamplesError("unknown_base", f"unknown example base {base!r}; known: {', '.join(sorted(BASES))}")
    return builder(users, Path(out), cache_dir or default_cache_dir(), progress)


def default_users(base: str) -> int:
    """All the shipped users for smollm2; 20 for tiny (its build trains them)."""
    return len(shipped_users()["users"]) if base == "smollm2" else 20
