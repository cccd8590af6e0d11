"""Loading Hugging Face causal LMs from local directories (nothing is ever fetched from a hub)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_causal_lm", "quiet_transformers", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when it is available and the CPU otherwise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars (loading, saving shards) inside the block."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_causal_lm(path: Path | str, device: str = "auto") -> tuple[torch.nn.Module, Any]:
    """The model (in eval mode, on ``device``, in float32) and its tokenizer from a local directory.

    float32 whatever the checkpoint's dtype: a bf16 base (what LoRAX serves) is upcast, so the engine, the
    quality gate and the checks compute alike, and a CPU without bf16 units stays fast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        # as an nn.Module: transformers' @wraps(Module.to) on PreTrainedModel.to hides its ``self`` from mypy
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(resolve_device(device)).eval(), tokenizer


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``(d_out, d_in)`` of every linear layer a LoRA could adapt, by module path (``model.layers.0.mlp.up_proj``).
    GPT-2 style ``Conv1D`` layers (weights stored transposed) count too."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.out_features, module.in_features)
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            shapes[name] = (int(module.nf), int(module.weight.shape[0]))
    return shapes
