"""Greedy decoding over a Hugging Face causal LM, in plain torch: the reference the checks compare against."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["greedy_generate"]


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
