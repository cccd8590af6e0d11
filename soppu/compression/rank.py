"""Choosing the shared rank R of each module: a fixed rank, an error budget, or a target compression ratio.

A :class:`RankPolicy` holds exactly one of the three. The parameter count behind a ratio counts each shared
basis once per cluster (per module, N adapters of ranks r_i, K clusters)::

    original    = sum_i r_i (d_out + d_in)
    compressed  = K R (d_out + d_in) + N R^2      (JD-Full)      or  ... + N R  (JD-Diag)

An error budget needs fits: :func:`search_rank` gallops then bisects over R with a caller-supplied fit,
relying on the worst error falling as R grows (it does up to the solver's local optima; the rank it returns
was fitted and checked, so the budget always holds for the result). Invalid policies and unreachable budgets raise
``CompressionError("bad_rank")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from soppu.compression.jd import FitResult
from soppu.compression.model import Mode
from soppu.errors import CompressionError

__all__ = ["RankPolicy", "compressed_parameters", "ratio_rank", "search_rank"]


@dataclass(frozen=True)
class RankPolicy:
    """Exactly one of: ``rank`` (a fixed R, capped per module at what the adapters can use), ``max_error``
    (per module, the smallest R whose WORST adapter's relative error is at most this), ``ratio`` (per module,
    the largest R whose parameter ratio original / compressed is at least this)."""

    rank: int | None = None
    max_error: float | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("rank", "max_error", "ratio") if getattr(self, name) is not None]
        if len(given) != 1:
            raise CompressionError(
                "bad_rank", f"a rank policy needs exactly one of rank, max_error, ratio; got {given or 'none'}"
            )
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise CompressionError("bad_rank", f"rank must be a positive integer, got {self.rank!r}", rank=self.rank)
        if self.max_error is not None and not (0 < self.max_error < 1 and math.isfinite(self.max_error)):
            raise CompressionError(
                "bad_rank",
                f"max_error is a relative error and must lie in (0, 1), got {self.max_error!r}",
                max_error=self.max_error,
            )
        if self.ratio is not None and not (self.ratio > 0 and math.isfinite(self.ratio)):
            raise CompressionError("bad_rank", f"ratio must be a positive number, got {self.ratio!r}", ratio=self.ratio)

    @classmethod
    def fixed(cls, rank: int) -> RankPolicy:
        return cls(rank=rank)

    @classmethod
    def for_error(cls, max_error: float) -> RankPolicy:
        return cls(max_error=max_error)

    @classmethod
    def for_ratio(cls, ratio: float) -> RankPolicy:
        return cls(ratio=ratio)


def compressed_parameters(rank: int, d_out: int, d_in: int, n: int, clusters: int, mode: Mode) -> int:
    """Parameters of one module's compressed form: the K shared bases once, plus N cores."""
    core = rank * rank if Mode(mode) == Mode.FULL else rank
    return clusters * rank * (d_out + d_in) + n * core


def ratio_rank(
    ratio: float, d_out: int, d_in: int, ranks: tuple[int, ...], clusters: int, mode: Mode, cap: int, module: str
) -> int:
    """The largest R <= ``cap`` whose parameter ratio is at least ``ratio`` (the count is decreasing in R, so a
    bisection finds it). Raises ``bad_rank`` with the best reachable ratio when even R = 1 falls short."""
    original = sum(ranks) * (d_out + d_in)

    def reaches(rank: int) -> bool:
        return original >= ratio * compressed_parameters(rank, d_out, d_in, len(ranks), clusters, mode)

    if not reaches(1):
        best = original / compressed_parameters(1, d_out, d_in, len(ranks), clusters, mode)
        raise CompressionError(
            "bad_rank",
            f"compression ratio {ratio:g}x is not reachable for module {module}: the best is {best:.3g}x at "
            f"R=1 (N={len(ranks)} adapters, K={clusters} clusters, {Mode(mode).value} cores)",
            module=module,
            ratio=ratio,
            best_ratio=best,
        )
    lo, hi = 1, cap  # invariant: reaches(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if reaches(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def search_rank(max_error: float, cap: int, fit: Callable[[int], FitResult], module: str) -> FitResult:
    """The fit at the smallest R in ``1..cap`` whose worst error is at most ``max_error``, using ``fit(R)``.

    Galloping (R = 1, 2, 4, ... until the budget is met), then bisection below that: about 2 log2(R) fits, all
    at ranks below 2R, so a small answer never pays for a fit at a large cap. Raises ``bad_rank`` (with the
    error reached) when even R = ``cap`` misses the budget.
    """
    failed = 0  # the largest rank known to miss the budget (0: none yet)
    rank = 1
    while True:
        result = fit(rank)
        if result.worst_error <= max_error:
            best = result
            break
        failed = rank
        if rank >= cap:
            raise CompressionError(
                "bad_rank",
                f"error budget {max_error:g} is not reachable for module {module}: the worst adapter's error is "
                f"{result.worst_error:.3g} at the largest useful rank R={cap}",
                module=module,
                max_error=max_error,
                best_error=result.worst_error,
            )
        rank = min(2 * rank, cap)
    while best.rank - failed > 1:
        mid = (failed + best.rank) // 2
        result = fit(mid)
        if result.worst_error <= max_error:
            best = result
        else:
            failed = mid
    return best
