"""Joint compression of many LoRA adapters into shared bases plus per-adapter cores (pure torch, no I/O here
except in ``format``, which ``artifacts``, ``writer`` and ``reader`` implement).

``compress`` fits shared bases for N adapters (optionally in K clusters) under a ``RankPolicy``; ``project``
puts one more adapter onto an existing compression without refitting; ``reconstruction_errors`` checks a
stored compressed adapter against its original; ``fit_module`` is the solver for one module. The math lives
in ``factors`` (formulas on the LoRA factors), ``jd`` (the solvers), ``residual`` (stable errors), ``rank``
(rank policies) and ``cluster`` (Lloyd's algorithm over adapters).
"""

from soppu.compression.compress import compress, project, reconstruction_errors
from soppu.compression.jd import FitResult, fit_module
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.compression.rank import RankPolicy

__all__ = [
    "Cluster",
    "CompressedAdapter",
    "Compression",
    "FitResult",
    "Mode",
    "ModuleBasis",
    "RankPolicy",
    "compress",
    "fit_module",
    "project",
    "reconstruction_errors",
]
