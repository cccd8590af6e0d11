"""One example user as the engine tests see it, and running an engine around a test body (their own module:
test files cannot import a conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_service.engine import Engine


@dataclass(frozen=True)
class ExampleUser:
    user_id: str
    adapter_dir: Path
    answers: dict[str, str]  # prompt -> the answer this user's adapter gives


def serve(engine: Engine, body: Callable[[], Awaitable[Any]]) -> Any:
    """Start ``engine``, await ``body()``, stop it; the body's result."""

    async def main() -> Any:
        await engine.start()
        try:
            return await body()
        finally:
            await engine.stop()

    return asyncio.run(main())
