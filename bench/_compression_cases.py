"""What both halves of ``bench/compression.py`` share: the speed benchmark's module cases and the random adapters
of a case, a progress line on stderr, and the device-synchronised timer every timing goes through.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from soppu.compression.factors import FactorStack

__all__ = [
    "BASELINE_STEPS",
    "LORA_ALPHA",
    "LORA_RANK",
    "MODULES",
    "Case",
    "random_stack",
    "say",
    "seeded_generator",
    "time_call",
]

T = TypeVar("T")

MODULES = ("q", "k", "v", "o")
LORA_RANK = 16
LORA_ALPHA = 32
BASELINE_STEPS = 10


@dataclass(frozen=True)
class Case:
    module: str
    hidden: int
    kv: int
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in): q and o are hidden x hidden, k and v kv x hidden."""
        return (self.kv if self.module in ("k", "v") else self.hidden), self.hidden

    @property
    def name(self) -> str:
        return f"{self.module}_{self.shape[0]}x{self.shape[1]}_n{self.n}"

    def seed(self, base: int) -> int:
        # Stable across runs and Python versions (unlike hash()), different for every case.
        return base + zlib.crc32(self.name.encode()) % 100_000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(device: torch.device, fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` with the device's queue drained before and after (CUDA calls are asynchronous)."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_stack(case: Case, rank: int, device: torch.device, seed: int) -> FactorStack:
    """N random rank-``rank`` adapters for one module, fp32, generated on ``device`` from a seeded generator.

    A ~ N(0, 1/d_in) as PEFT's init scale, B ~ N(0, 1/r) times a per-adapter magnitude spread over two decades,
    so the relative weights matter as they do for independently trained adapters.
    """
    d_out, d_in = case.shape
    gen = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(case.n, rank, d_in, generator=gen, device=device) / math.sqrt(d_in)
    magnitude = 10 ** (2 * torch.rand(case.n, 1, 1, generator=gen, device=device) - 1)
    b_t = torch.randn(case.n, rank, d_out, generator=gen, device=device) * (magnitude / math.sqrt(rank))
    scaling = torch.full((case.n,), LORA_ALPHA / rank, device=device)
    return FactorStack(b_t, a, scaling, (rank,) * case.n)
