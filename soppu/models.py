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
    """The model (in eval mode, on ``device``) and its tokenizer from a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(resolve_device(device)).eval(), tokenizer
