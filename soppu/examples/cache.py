"""The examples' cache: where built fixtures live, how an entry appears whole or not at all, and how an entry is
placed where a user asked for it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CHECKOUT_EXAMPLE_BASE", "atomic_dir", "default_cache_dir", "place_tree"]

# Where `make demo` builds the example base model in a checkout of this repository: the services' default model.
# Anchored to the checkout, not the working directory, so a service started from elsewhere finds the same one (or,
# outside a checkout, none) instead of silently changing what it checks against.
CHECKOUT_EXAMPLE_BASE = Path(__file__).resolve().parents[2] / ".cache" / "examples" / "base"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOPPU_CACHE_DIR", Path.home() / ".cache" / "soppu"))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` in one rename if the block succeeds, so a reader sees
    a whole entry or none (an interrupted build leaves only a dot-named scratch directory, never used)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        try:
            scratch.rename(final)
        except OSError:  # another process finished first: its result is identical
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def place_tree(src: Path, dst: Path) -> None:
    """Copy a cached tree to ``dst`` with hard links where possible: a 270 MB base costs no time or disk. The
    cache never rewrites a file in place, so a link never sees its bytes change. Real files, not symlinks,
    so a docker bind mount of ``dst`` works."""
    shutil.copytree(src, dst, copy_function=_link_or_copy)
