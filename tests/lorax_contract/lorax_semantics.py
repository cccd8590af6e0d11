"""What LoRAX 0.12.1 computes from a PEFT adapter's two files, written by us from a reading of its source.

:func:`lorax_deltas` loads ``adapter_config.json`` and ``adapter_model.safetensors`` the way LoRAX's server does
and returns, per module, the weight update it then applies (``B_scaled @ A`` in the served dtype, as float32),
or raises :class:`LoraxLoadError` where LoRAX fails to load. The tests compare it with PEFT's semantics on the
original (:meth:`soppu.adapter.LoraModule.delta`). Every rule cites the file and lines of LoRAX at tag
``v0.12.1`` (commit c0e57983), relative to its tree; none of its code is copied.

The rules, in the order LoRAX applies them:

1. The config is read with peft 0.4.0's ``LoraConfig.from_pretrained``, which sets only the attributes its
   dataclass has (peft 0.4.0 ``utils/config.py``, ``PeftConfigMixin.from_pretrained``); LoRAX then builds its
   own config from ``r``, ``lora_alpha``, ``target_modules``, ``fan_in_fan_out`` and ``use_rslora`` if present,
   which in 0.4.0 it never is (server/lorax_server/adapters/lora.py:71-80). :data:`PEFT_040_LORA_FIELDS` are
   the fields that survive; ``rank_pattern``, ``alpha_pattern``, ``use_rslora`` and ``use_dora`` do not.
2. Layer types load one after another in the model's order (q, k, v, o, gate, up, down, then lm_head:
   flash_llama.py's adapter layers), each over every layer of the model. A layer with no factors for the type
   drops the type from every layer (adapters/lora.py:175-177, ``return None``).
3. Each factor is cast to the served dtype (adapters/lora.py:179-183, utils/weights.py:555-567), B is scaled by
   ``lora_alpha / config.r`` (``get_scaling_factor``, no rsLoRA) in that dtype (lora.py:185-194).
4. With the punica kernels on, each factor's rank is padded to 8 or the next multiple of 16
   (utils/punica.py:57-76), and ``config.r`` is SET to the first layer's padded rank (lora.py:196-205): the
   config object is shared by every layer type of the adapter, so the types loaded after the first are scaled
   with the padded rank.
5. The per-layer factors are stacked into one tensor (lora.py:118-123, ``torch.stack``): layers of different
   ranks fail to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors

from soppu.lorax_limits import lorax_rank

__all__ = [
    "LLAMA_LAYER_TYPES",
    "PEFT_040_LORA_FIELDS",
    "LoraxLoadError",
    "LoraxModel",
    "lorax_config",
    "lorax_deltas",
]

# peft 0.4.0's LoraConfig dataclass fields (peft 0.4.0 tuners/lora.py, LoraConfig, and its PeftConfig base).
PEFT_040_LORA_FIELDS: frozenset[str] = frozenset({
    "base_model_name_or_path", "revision", "peft_type", "task_type", "inference_mode",
    "r", "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "modules_to_save",
    "init_lora_weights", "layers_to_transform", "layers_pattern",
})  # fmt: skip

# server/lorax_server/models/flash_llama.py:55-78 (ADAPTER_LAYERS), in the order LoRAX loads them.
LLAMA_LAYER_TYPES: tuple[tuple[str, str], ...] = (
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
)


class LoraxLoadError(Exception):
    """Where LoRAX 0.12.1 fails to load the adapter."""


@dataclass(frozen=True)
class LoraxModel:
    """What LoRAX knows of the served model: its depth and dtype, and whether the punica kernels are on
    (``--disable-sgmv`` turns them off, and with them the rank padding, utils/punica.py:46-54)."""

    num_layers: int
    dtype: torch.dtype = torch.float32
    sgmv: bool = True


def lorax_config(raw: bytes) -> dict[str, object]:
    """The adapter config as LoRAX holds it after peft 0.4.0 read it (rule 1)."""
    data = json.loads(raw)
    kept = {key: value for key, value in data.items() if key in PEFT_040_LORA_FIELDS}
    return {
        "r": kept["r"],
        "lora_alpha": kept.get("lora_alpha", 8),  # peft 0.4.0's default
        "target_modules": kept.get("target_modules"),
        "fan_in_fan_out": kept.get("fan_in_fan_out", False),
        "use_rslora": False,  # hasattr(hf_config, "use_rslora") is False under peft 0.4.0
    }


def _module(layer: int, name: str, block: str) -> str:
    return f"model.layers.{layer}.{block}.{name}"


def lorax_deltas(config_raw: bytes, weights_raw: bytes, model: LoraxModel) -> dict[str, torch.Tensor]:
    """``{module: delta}`` (d_out x d_in, float32) that LoRAX 0.12.1 adds to each adapted weight; a layer type
    it drops is absent. Raises :class:`LoraxLoadError` where LoRAX fails to load the adapter."""
    config = lorax_config(config_raw)
    tensors = load_safetensors(weights_raw)
    deltas: dict[str, torch.Tensor] = {}
    for name, block in LLAMA_LAYER_TYPES:
        modules = [_module(layer, name, block) for layer in range(model.num_layers)]
        keys = [(f"base_model.model.{m}.lora_A.weight", f"base_model.model.{m}.lora_B.weight") for m in modules]
        if any(a not in tensors or b not in tensors for a, b in keys):
            continue  # rule 2: dropped from every layer
        scale = float(config["lora_alpha"]) / float(config["r"])  # type: ignore[arg-type]  # rule 3
        loaded = []
        for a_key, b_key in keys:
            a = tensors[a_key].to(model.dtype)
            b = tensors[b_key].to(model.dtype) * scale
            if model.sgmv:  # rule 4
                padded = lorax_rank(a.shape[0])
                a = torch.cat([a, a.new_zeros(padded - a.shape[0], a.shape[1])])
                b = torch.cat([b, b.new_zeros(b.shape[0], padded - b.shape[1])], dim=1)
            loaded.append((a, b))
        config["r"] = loaded[0][0].shape[0]
        if len({a.shape for a, _ in loaded}) > 1 or len({b.shape for _, b in loaded}) > 1:  # rule 5
            raise LoraxLoadError(f"{name}: layers of different ranks cannot be stacked")
        for module, (a, b) in zip(modules, loaded, strict=True):
            deltas[module] = (b.float() @ a.float()).float()
    return deltas
