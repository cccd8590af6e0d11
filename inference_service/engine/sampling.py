"""Choosing the next token of one row from its logits: greedy by default, or seeded sampling with
temperature, top-k, top-p and a repetition penalty. Pure math on one row's float32 logits.

A row whose logits or parameters give no valid distribution (a NaN or infinite probability, or none above
zero: e.g. logits divided by a temperature of 1e-300) has no token: :func:`choose_tokens` answers ``None`` for
it and still chooses every other row's, so the caller can fail that one request and keep the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from soppu.sampling import sampling_temperature

from .types import GenerationParams

__all__ = ["NoDistribution", "choose_token", "choose_tokens", "make_generator"]


class NoDistribution(ValueError):
    """This row's logits and parameters give no distribution to choose a token from."""


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _penalize(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    # The CTRL paper's rule, as transformers and LoRAX apply it: shrink positive logits, grow negative ones.
    scores = logits.gather(0, previous)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(0, previous, scores)


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k < logits.shape[0]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(0).cumsum(0)
        drop = cumulative - sorted_logits.softmax(0) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def choose_token(
    logits: torch.Tensor, params: GenerationParams, previous: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, float]:
    """(token id, its log-probability under the model's unmodified distribution); NoDistribution when there is
    none to choose from."""
    logits = logits.float()
    logprobs = logits.log_softmax(0)
    scores = logits
    if params.repetition_penalty not in (None, 1.0) and previous.numel():
        scores = _penalize(scores, previous, float(params.repetition_penalty))
    if params.do_sample:
        if params.temperature not in (None, 1.0):
            scores = scores / sampling_temperature(params.temperature)
        scores = _filter(scores, params.top_k, params.top_p)
        probs = scores.softmax(0)
        # Checked here rather than left to multinomial, whose error would end every row of the step.
        if not bool(torch.isfinite(probs).all()):  # a finite softmax sums to 1
            raise NoDistribution("the sampling distribution is not finite")
        token = int(torch.multinomial(probs, 1, generator=generator))
    else:
        token = int(scores.argmax())
    logprob = float(logprobs[token])
    if not math.isfinite(logprob):
        raise NoDistribution("the model's logits are not finite")
    return token, logprob


def _plain_greedy(params: GenerationParams) -> bool:
    return not params.do_sample and params.repetition_penalty in (None, 1.0)


def choose_tokens(
    logits: torch.Tensor,
    params: list[GenerationParams],
    previous: Callable[[int], list[int]],
    generators: list[torch.Generator | None],
) -> list[tuple[int, float] | None]:
    """:func:`choose_token` for every row of ``logits`` (rows x vocab), ``None`` for a row without a valid
    distribution. Plain greedy rows, the default, are decided together on the logits' device with one transfer
    to the host; only rows that sample or penalise repetition go one by one. ``previous(row)`` gives a row's ids
    so far (asked only for rows that need it)."""
    logits = logits.float()
    ids = logits.argmax(-1)
    logprobs = logits.log_softmax(-1).gather(1, ids[:, None])[:, 0]
    chosen: list[tuple[int, float] | None] = []
    for token, logprob in zip(ids.tolist(), logprobs.tolist(), strict=True):
        # NaN or +inf logits (an overflowing adapter) make a NaN log-probability; all -inf make -inf
        chosen.append((token, logprob) if math.isfinite(logprob) else None)
    for row, row_params in enumerate(params):
        if not _plain_greedy(row_params):
            history = torch.tensor(previous(row), dtype=torch.long)
            try:
                chosen[row] = choose_token(logits[row].cpu(), row_params, history, generators[row])
            except NoDistribution:
                chosen[row] = None
    return chosen
