"""What the CLI reads from the command line: adapters named after their paths, probe prompts, dtypes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from soppu.adapter import LoraAdapter, read_adapter

__all__ = ["DEFAULT_PROBES", "DTYPES", "adapter_name", "load_probes", "read_named_adapters"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Generic probes for a base model we know nothing about; pass --probes for prompts of the adapters' own domain.
DEFAULT_PROBES = (
    "My favourite colour is",
    "My home city is",
    "My pet is a",
    "My favourite food is",
    "Once upon a time",
)
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def adapter_name(path: Path) -> str:
    """A name for the adapter at ``path``: its folder or archive name, made into a valid adapter name."""
    name = path.resolve().name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _NOT_NAME.sub("-", name).lstrip("._-")[:64]
    return name or "adapter"


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name[:58]}-{count + 1}")
    return out


def read_named_adapters(paths: Sequence[Path], *, progress: bool = True) -> list[tuple[str, LoraAdapter]]:
    """Read and validate every adapter (an AdapterError names the first bad one), named after its path."""
    names = _unique(adapter_name(p) for p in paths)
    adapters = []
    for name, path in tqdm(
        list(zip(names, paths, strict=True)), desc="reading adapters", disable=None if progress else True
    ):
        if not path.exists():
            raise FileNotFoundError(f"no adapter at {path}")
        adapters.append((name, read_adapter(path)))
    return adapters


def load_probes(path: Path | None) -> list[str]:
    """Probe prompts: one per line of a text file, a JSON list of strings, or an examples ``users.json``
    (every user's prompts). Without a file, :data:`DEFAULT_PROBES`."""
    if path is None:
        return list(DEFAULT_PROBES)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and "users" in data:
            prompts = [p["prompt"] for user in data["users"] for p in user["prompts"]]
            return list(dict.fromkeys(prompts))
        if isinstance(data, list) and all(isinstance(p, str) for p in data):
            return data
        raise ValueError(f"{path}: expected a JSON list of prompts or an examples users.json")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts
