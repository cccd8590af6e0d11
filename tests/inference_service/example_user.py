"""One example user as the engine tests see it (its own module: test files cannot import a conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExampleUser:
    user_id: str
    adapter_dir: Path
    answers: dict[str, str]  # prompt -> the answer this user's adapter gives
