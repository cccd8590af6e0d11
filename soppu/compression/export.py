"""The PEFT export of a compressed adapter: a plain LoRA that any engine loads (LoRAX, PEFT, vLLM).

Per module, ``B' = U S`` (d_out x R) and ``A' = V^T`` (R x d_in) (:func:`soppu.compression.factors.core_to_factors`),
with ``r = lora_alpha = R`` so PEFT's scaling is 1: the LoRA scaling is already folded into ``S``. Served
outputs equal ``U S V^T`` up to float rounding.

When modules have different ranks, every module is padded with zero columns of ``B'`` and zero rows of ``A'`` to
the largest R. Zeros add nothing, so the outputs are the same, and the config needs no ``rank_pattern`` (LoRAX
does not honour it). What is published is this in its served form (:mod:`soppu.adapter.served_form`: the rank
padded on to one LoRAX has kernels for, every layer present, the served dtype). The export is R/r times LARGER
than the original adapter; it exists for compatibility, and the storage saving lives in the compressed form
(:mod:`soppu.compression.format`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, write_adapter
from soppu.adapter.served_form import pad_rank, served_form
from soppu.compression.factors import core_to_factors
from soppu.compression.model import CompressedAdapter, Compression, Mode
from soppu.errors import CompressionError

__all__ = ["export_rank", "to_lora", "write_peft_export"]


def export_rank(compression: Compression, adapter: CompressedAdapter) -> int:
    """The rank ``r`` of ``adapter``'s export: the largest R over its modules."""
    return max(compression.basis(adapter, module).rank for module in adapter.cores)


def to_lora(compression: Compression, adapter: CompressedAdapter, *, dtype: torch.dtype = torch.float32) -> LoraAdapter:
    """``adapter`` as a plain PEFT LoRA (rank = its largest R, ``lora_alpha`` = rank, so scaling 1).

    The factors are formed in float32 and then cast to ``dtype``; they stay on the device of the bases.
    """
    if not adapter.cores:
        raise CompressionError("no_adapters", f"adapter {adapter.name!r} has no modules to export")
    rank = export_rank(compression, adapter)
    config = AdapterConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=compression.target_modules,
        base_model_name_or_path=compression.base_model,
    )
    modules = {}
    for module, core in sorted(adapter.cores.items()):
        if not config.targets(module):
            raise CompressionError(
                "bad_compressed_format", f"module {module!r} is not among the compression's target_modules"
            )
        basis = compression.basis(adapter, module)
        b, a = core_to_factors(basis, core.to(device=basis.u.device, dtype=torch.float32), Mode(compression.mode))
        b, a = pad_rank(b, a, rank)
        modules[module] = LoraModule(b=b.to(dtype), a=a.to(dtype).contiguous(), scaling=config.scaling_for(module))
    return LoraAdapter(config, modules)


def write_peft_export(
    compression: Compression, name: str, directory: Path | str, *, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the PEFT export of the adapter called ``name``, in its served form, into ``directory``
    (adapter_config.json and adapter_model.safetensors, as :func:`soppu.adapter.write_adapter` writes them)."""
    return write_adapter(served_form(to_lora(compression, compression.adapter(name)), dtype=dtype), directory)
