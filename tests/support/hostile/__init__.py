"""A corpus of hostile adapters, shared by the core's reader tests (tests/soppu/test_adapter_hostile.py) and the
compressor's over HTTP (tests/compressor_service/test_compressor_hostile.py). :data:`CASES` holds each case as
``pytest.param(builder, expected code, id="code:name")``; ``builder(tmp_path)`` returns ``(source, limits)`` for
:func:`soppu.adapter.read_adapter`, which must refuse it with an AdapterError carrying exactly that code, without
unpickling anything (:data:`TRAP_NAME`), in bounded memory, and without tensor bytes (MARKER) in the message."""

from __future__ import annotations

from typing import Any

from tests.support.hostile import contents, packaging
from tests.support.hostile.blocks import TRAP_NAME, Builder, Built, Source

__all__ = ["CASES", "TRAP_NAME", "Builder", "Built", "Source"]

CASES: list[Any] = [*packaging.CASES, *contents.CASES]
