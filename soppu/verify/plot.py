"""The per-layer error plot of a compression, written as a PNG.

x is the layer index; within each layer, one bar per module kind (q/k/v/o, gate/up/down, ...; one colour per
kind) shows the mean relative error over adapters, and jittered dots show each adapter's own error. Modules
without a layer index (``lm_head``, ...) form a last group of their own. The errors are the ones the solver
recorded (see :mod:`soppu.verify.report`).

matplotlib is used through its object API on the Agg canvas: no pyplot global state and never a GUI, so it is
safe in servers, workers and threads.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from soppu.compression.model import Compression, Mode

__all__ = ["module_position", "plot_adapter_errors", "plot_errors", "plot_module_errors"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# The usual order of a transformer block's projections; other kinds follow alphabetically.
_KIND_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_OTHER = "other"
_MAX_WIDTH_IN = 24.0  # a 32-layer model with 7 kinds stays legible without a poster-sized image
_JITTER_SEED = 0  # fixed, so the same compression always gives the same picture


def module_position(module: str) -> tuple[int | None, str]:
    """``model.layers.12.self_attn.q_proj`` -> ``(12, "q_proj")``; no layer index -> ``(None, "lm_head")``."""
    match = _LAYER.search(module)
    return (int(match[1]) if match else None), module.rsplit(".", 1)[-1]


def _kind_key(kind: str) -> tuple[int, str]:
    return (_KIND_ORDER.index(kind), "") if kind in _KIND_ORDER else (len(_KIND_ORDER), kind)


def _rank_label(compression: Compression) -> str:
    ranks = sorted({basis.rank for cluster in compression.clusters for basis in cluster.bases.values()})
    if not ranks:
        return "R=?"
    return f"R={ranks[0]}" if len(ranks) == 1 else f"R={ranks[0]}..{ranks[-1]}"


def plot_errors(compression: Compression, path: Path | str, *, title: str | None = None) -> Path:
    """Write the per-layer error plot of ``compression`` to ``path`` (PNG) and return the path."""
    # (group, kind) -> every adapter's error on modules of that layer and kind
    points: dict[tuple[int | None, str], list[float]] = defaultdict(list)
    for adapter in compression.adapters:
        for module, error in adapter.errors.items():
            points[module_position(module)].append(float(error))
    figure = _draw(
        points,
        title
        or f"Reconstruction error per layer: JD-{Mode(compression.mode).value}, {_rank_label(compression)}, "
        f"{len(compression.adapters)} adapters\n(bars: mean over adapters, dots: each adapter)",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_module_errors(errors: Mapping[str, float], title: str) -> bytes:
    """The same per-layer plot for ONE adapter's module -> relative error (a job report's ``errors``), as PNG
    bytes: what the compressor service answers for a version's ``report.png``."""
    return plot_adapter_errors({"adapter": errors}, title)


def plot_adapter_errors(errors: Mapping[str, Mapping[str, float]], title: str) -> bytes:
    """The per-layer plot, as PNG bytes, for several adapters' module -> relative error (e.g. every user's
    current report): bars are the mean over adapters, dots each adapter."""
    points: dict[tuple[int | None, str], list[float]] = defaultdict(list)
    for modules in errors.values():
        for module, error in modules.items():
            points[module_position(module)].append(float(error))
    buffer = io.BytesIO()
    _draw(points, title).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _draw(points: Mapping[tuple[int | None, str], list[float]], title: str) -> Figure:
    layers = sorted({layer for layer, _ in points if layer is not None})
    groups: list[int | None] = [*layers, *([None] if any(layer is None for layer, _ in points) else [])]
    kinds = sorted({kind for _, kind in points}, key=_kind_key)

    bars = len(groups) * max(1, len(kinds))
    figure = Figure(figsize=(min(_MAX_WIDTH_IN, max(6.0, 2.0 + 0.25 * bars)), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {kind: f"C{i % 10}" for i, kind in enumerate(kinds)}
    present = {group: [kind for kind in kinds if (group, kind) in points] for group in groups}
    # One slot per kind present in the group, centred on the group; the same width everywhere.
    width = 0.8 / max([1, *(len(p) for p in present.values())])
    rng = np.random.default_rng(_JITTER_SEED)
    labelled: set[str] = set()
    for g, group in enumerate(groups):
        for j, kind in enumerate(present[group]):
            errors = points[(group, kind)]
            x = g + (j - (len(present[group]) - 1) / 2) * width
            label = kind if kind not in labelled else None
            labelled.add(kind)
            axes.bar(x, float(np.mean(errors)), width=width * 0.95, color=colours[kind], label=label, zorder=2)
            jitter = rng.uniform(-0.3 * width, 0.3 * width, size=len(errors))
            axes.scatter(x + jitter, errors, s=10, color="black", alpha=0.6, zorder=3, linewidths=0)

    axes.set_xticks(range(len(groups)), [_OTHER if g is None else str(g) for g in groups])
    axes.set_xlabel("layer")
    axes.set_ylabel("relative Frobenius error")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3, zorder=0)
    axes.set_title(textwrap.fill(title, 70) if "\n" not in title else title, fontsize=10)
    if kinds:  # outside the axes, so it never hides a bar or a dot
        axes.legend(title="module", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes.text(0.5, 0.5, "no errors recorded", transform=axes.transAxes, ha="center", va="center")
    figure.tight_layout()
    return figure
