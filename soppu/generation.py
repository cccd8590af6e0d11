"""Decoding over a Hugging Face causal LM in plain torch: greedy decoding (the reference the checks compare against)
and the left padding a batched ``generate`` needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

__all__ = ["generate_ids", "greedy_generate", "left_padded"]


def left_padded(
    prompts: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token-id prompts padded on the left, so that every row of a batched
    ``generate`` continues from its own last token."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def generate_ids(model: nn.Module, **kwargs: Any) -> torch.Tensor:
    """``model.generate(**kwargs)`` of a Hugging Face causal LM: the token ids (prompts + continuations) it returns
    without ``return_dict_in_generate``. Typed here once: ``nn.Module`` types an unknown attribute as a tensor or a
    submodule, and transformers declares ``generate`` to return a union of output classes."""
    generate = cast("Callable[..., torch.Tensor]", model.generate)
    return generate(**kwargs)


@torch.no_grad()
def greedy_generate(
    model: nn.Module, input_ids: list[int], *, max_new_tokens: int, eos_token_id: int | None = None
) -> list[int]:
    """The ids of up to ``max_new_tokens`` greedily chosen tokens after ``input_ids`` (stops after EOS).

    It recomputes the whole prefix each step: slower than a KV cache, but obviously right, and the prompts
    this is used for are a few tokens long.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(model(input_ids=ids).logits[0, -1].argmax())
        new.append(next_id)
        if next_id == eos_token_id:
            break
        ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
    return new
