"""The form in which an adapter is published for serving: one that LoRAX 0.12.1 applies exactly as PEFT would.

LoRAX reads a PEFT adapter in ways that change what it computes (each read from its source at tag v0.12.1):

- it pads every layer type's rank to 8 or the next multiple of 16, then writes the padded rank back into the
  adapter's shared config, so the layer types loaded later are scaled ``lora_alpha / padded_r``
  (server/lorax_server/adapters/lora.py:196-205, utils/punica.py:57-76), and its decode kernels exist for ranks
  8, 16, 32, 64 and 128 only (:data:`soppu.lorax_limits.LORAX_DECODE_RANKS`);
- it reads the config with peft 0.4.0, which silently drops ``use_rslora``, ``rank_pattern`` and
  ``alpha_pattern`` (adapters/lora.py:71-80), and it stacks one tensor per layer, so mixed ranks fail to load;
- a layer type missing from any one layer is dropped from every layer (adapters/lora.py:175-177);
- it casts every factor to the served model's dtype (utils/weights.py:555-567).

So the served form has one rank from {8, 16, 32, 64, 128} on every module (zero columns of B and zero rows of A:
zeros add nothing), ``r = lora_alpha`` with every scaling already folded into B (scale 1 under any reading), no
patterns and no rsLoRA, every layer of each layer type present (zero factors where the adapter had none: an
exact no-op), and factors in the served dtype. What it computes equals the adapter's PEFT semantics, to the
served dtype's rounding. An adapter no such form can express exactly is refused (:func:`check_servable`).

Pure math over :class:`LoraAdapter`: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch

from soppu.adapter.config import AdapterConfig
from soppu.adapter.model import LoraAdapter, LoraModule
from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code
from soppu.lorax_limits import LORAX_DECODE_RANKS, LORAX_VERSION

__all__ = ["SERVED_RANKS", "check_servable", "pad_rank", "served_form", "served_rank"]

SERVED_RANKS: tuple[int, ...] = LORAX_DECODE_RANKS
_LAYER = re.compile(r"^(?P<head>.*\.layers\.)(?P<index>\d+)(?P<tail>\..+)$")
_LISTED = 8  # layer indices named in a refusal

LayerType = tuple[str, str]  # ("model.layers.", ".self_attn.q_proj"): a module path without its layer index


def served_rank(rank: int) -> int:
    """The smallest rank of :data:`SERVED_RANKS` that holds ``rank``; ``lorax_rank_limit`` above the largest."""
    for served in SERVED_RANKS:
        if rank <= served:
            return served
    raise AdapterError(
        Code.LORAX_RANK_LIMIT,
        f"rank {rank} is over {SERVED_RANKS[-1]}, the largest LoRA rank LoRAX {LORAX_VERSION} has kernels for",
        rank=rank,
    )


def pad_rank(b: torch.Tensor, a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` with zero columns of B and zero rows of A up to ``rank``: the same ``B @ A``."""
    missing = rank - a.shape[0]
    if missing == 0:
        return b, a
    return (
        torch.cat([b, b.new_zeros(b.shape[0], missing)], dim=1),
        torch.cat([a, a.new_zeros(missing, a.shape[1])], dim=0),
    )


def _layer_slot(module: str) -> tuple[LayerType, int] | None:
    match = _LAYER.match(module)
    return None if match is None else ((match["head"], match["tail"]), int(match["index"]))


def _layers(modules: list[str]) -> dict[LayerType, set[int]]:
    found: dict[LayerType, set[int]] = {}
    for module in modules:
        slot = _layer_slot(module)
        if slot is not None:
            found.setdefault(slot[0], set()).add(slot[1])
    return found


def _missing_layers(adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]] | None) -> dict[str, tuple[int, int]]:
    """``{module: (d_out, d_in)}`` of every layer of an adapted layer type that the adapter leaves out: all the
    base model's layers of that type when ``shapes`` (its linear layers) is known, else none (see
    :func:`check_servable`, which refuses a gap it cannot size)."""
    if shapes is None:
        return {}
    adapted = _layers(list(adapter.modules))
    missing = {}
    for module, shape in shapes.items():
        slot = _layer_slot(module)
        if slot is not None and slot[0] in adapted and module not in adapter.modules:
            missing[module] = shape
    return missing


def check_servable(adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]] | None = None) -> int:
    """Raise unless :func:`served_form` can express ``adapter`` exactly: a rank over 128 (``lorax_rank_limit``),
    or, without the base model's ``shapes``, a layer type on only some of the adapter's layers
    (``lorax_partial_layers``: how many layers the base has, and so which ones to fill, is unknown). The rank the
    served form has."""
    rank = served_rank(max(lora.rank for _, lora in adapter))
    if shapes is not None:
        return rank
    layers = _layers(list(adapter.modules))
    depth = max((max(indices) + 1 for indices in layers.values()), default=0)
    for (head, tail), indices in sorted(layers.items()):
        if len(indices) < depth:
            absent = sorted(set(range(depth)) - indices)
            shown = ", ".join(map(str, absent[:_LISTED])) + (", ..." if len(absent) > _LISTED else "")
            raise AdapterError(
                Code.LORAX_PARTIAL_LAYERS,
                f"{head}N{tail} is adapted on some layers only (not on layer(s) {shown}); LoRAX {LORAX_VERSION} "
                "drops a layer type missing from any layer, and without the base model the missing layers cannot "
                "be filled",
                module=f"{head}{min(absent)}{tail}",
            )
    return rank


def served_form(
    adapter: LoraAdapter,
    *,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    dtype: torch.dtype | None = None,
) -> LoraAdapter:
    """``adapter`` in the form LoRAX serves exactly (see the module docstring); ``shapes`` are the base model's
    linear layers (to fill every layer of an adapted layer type), ``dtype`` the served dtype (default: the
    adapter's own). Raises as :func:`check_servable` does."""
    rank = check_servable(adapter, shapes)
    dtype = dtype or next(iter(adapter.modules.values())).a.dtype
    modules: dict[str, LoraModule] = {}
    for module, lora in adapter:
        # The scaling is folded in float32, then rounded once to the served dtype.
        b, a = pad_rank(lora.b.float() * lora.scaling, lora.a.float(), rank)
        modules[module] = LoraModule(b=b.to(dtype), a=a.to(dtype).contiguous(), scaling=1.0)
    device = next(iter(modules.values())).a.device
    for module, (d_out, d_in) in _missing_layers(adapter, shapes).items():
        zeros = LoraModule(
            b=torch.zeros(d_out, rank, dtype=dtype, device=device),
            a=torch.zeros(rank, d_in, dtype=dtype, device=device),
            scaling=1.0,
        )
        modules[module] = zeros
    config = AdapterConfig(
        r=rank,
        lora_alpha=rank,
        # The modules' own names, so that a pattern that matched fewer layers still covers the filled ones.
        target_modules=tuple(sorted({module.rsplit(".", 1)[-1] for module in modules})),
        base_model_name_or_path=adapter.config.base_model_name_or_path,
        task_type=adapter.config.task_type,
    )
    return replace(adapter, config=config, modules=modules)
