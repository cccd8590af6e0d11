"""Writing a :class:`LoraAdapter` back in PEFT's format (what ``PeftModel.from_pretrained`` and LoRAX load).

The output is deterministic: the same adapter always gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save as save_safetensors

from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME, AdapterFiles
from soppu.adapter.model import LoraAdapter, tensor_key

__all__ = ["adapter_files", "write_adapter"]


def adapter_files(adapter: LoraAdapter) -> AdapterFiles:
    """The adapter's ``adapter_config.json`` and ``adapter_model.safetensors`` as bytes."""
    tensors = {}
    for module, lora in adapter:
        tensors[tensor_key(module, "lora_A")] = lora.a.detach().cpu().contiguous()
        tensors[tensor_key(module, "lora_B")] = lora.b.detach().cpu().contiguous()
    weights = save_safetensors(tensors, metadata={"format": "pt"})
    return AdapterFiles(config=adapter.config.to_json(), weights=weights)


def write_adapter(adapter: LoraAdapter, directory: Path | str) -> Path:
    """Write the adapter into ``directory`` (created if needed); each file appears atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = adapter_files(adapter)
    for name, data in ((WEIGHTS_NAME, files.weights), (CONFIG_NAME, files.config)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / name)
    return directory
