"""Behaviour-fitted cores: with a cohort's bases fixed, fit each adapter's cores so that the base model with the
compressed adapter predicts the next token as the original adapter does (data-free self-distillation).

Projection (``S = U^T W V``) minimises the Frobenius error of the update, which weighs every direction of the
input space alike; the model only ever feeds a few of them. Fitting the R x R cores to the original adapter's
own next-token distributions spends the same bytes on what the model does. The recipe:

1. :func:`teacher_text`: text the ORIGINAL adapter writes itself: ``texts`` continuations of ``tokens`` tokens
   sampled (temperature 1, in one batch) after the given prompts taken in turn, and its log-probabilities at
   every position.
   No user data is needed; an uploader's probe prompts may be among the prompts.
2. :func:`fit_cores`: start each core at its projection and minimise ``KL(original || compressed)``, summed over
   the scored positions and averaged over texts, over the cores only. Adam, learning rate ``lr_scale`` x the RMS
   of the starting cores (cores of different adapters differ in scale by orders of magnitude), ``steps`` steps.
   Several adapters fit in one batch, one adapter per batch row, each in its own optimiser group: the result
   is the same as fitting them one by one.

A step whose loss is not finite stops the fit: the adapter is reported ``diverged`` and keeps its best cores
seen so far (never a non-finite one). Pure torch: the model is passed in; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from soppu.adapter.apply import LoraHooks, apply_adapter
from soppu.adapter.model import LoraAdapter
from soppu.compression.factors import core_to_factors
from soppu.compression.model import Mode, ModuleBasis
from soppu.generation import generate_ids, left_padded

__all__ = ["DistillSettings", "FittedCores", "Teacher", "fit_cores", "position_kl", "teacher_text"]


@dataclass(frozen=True)
class DistillSettings:
    """How much text the teacher writes and how long the cores are fitted to it."""

    texts: int = 16  # sampled continuations per adapter
    tokens: int = 20  # tokens per continuation
    steps: int = 60  # Adam steps
    lr_scale: float = 0.05  # learning rate as a share of the starting cores' RMS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.texts < 1 or self.tokens < 1 or self.steps < 0:
            raise ValueError(f"texts and tokens must be >= 1 and steps >= 0, got {self}")
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be positive, got {self.lr_scale}")


@dataclass(frozen=True)
class Teacher:
    """The original adapter's text and what it predicts along it."""

    ids: torch.Tensor  # texts x length token ids (prompt + sampled continuation, right-padded)
    scored: torch.Tensor  # texts x length bool: positions whose next-token distribution is matched
    log_probs: torch.Tensor  # texts x length x vocab, the original's log-softmax (float32)


@dataclass(frozen=True)
class FittedCores:
    """One adapter's fitted cores and the fit's record."""

    cores: dict[str, torch.Tensor]  # module -> R x R (or R): float32 on the CPU
    kl_start: float  # mean KL per scored position at the projection
    kl_end: float  # ... at the returned cores
    steps: int  # steps taken
    diverged: bool  # a step's loss was not finite; the best finite cores are returned


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sample(
    model: nn.Module, prompts: list[list[int]], tokens: int, seed: int, pad: int, eos: int | None
) -> list[list[int]]:
    """Each prompt followed by up to ``tokens`` sampled tokens (temperature 1, no top-k or top-p; a row that
    ends early is padded), in one left-padded batch through the model's own generation loop and KV cache.
    Seeded in a forked RNG: the caller's random state is left as it was."""
    device = _device(model)
    ids, mask = left_padded(prompts, pad, device)
    width = ids.shape[1]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = generate_ids(
            model,
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    return [p + row for p, row in zip(prompts, out[:, width:].tolist(), strict=True)]


@torch.no_grad()
def teacher_text(
    model: nn.Module,
    adapter: LoraAdapter,
    prompts: Sequence[list[int]],
    settings: DistillSettings,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> Teacher:
    """``settings.texts`` continuations written by ``adapter`` after ``prompts`` (taken in turn), and its
    log-probabilities. Rows are right-padded (a causal model's earlier positions never see the padding).
    Positions after an end-of-sequence token are not scored."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("teacher_text needs at least one non-empty prompt")
    chosen = [list(prompts[i % len(prompts)]) for i in range(settings.texts)]
    device = _device(model)
    with apply_adapter(model, adapter):
        rows = _sample(model, chosen, settings.tokens, settings.seed, pad_token_id, eos_token_id)
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long, device=device)
        scored = torch.zeros((len(rows), length), dtype=torch.bool, device=device)
        generated = torch.zeros_like(scored)  # sampled positions (an EOS in a chat prompt is no end)
        for k, (row, prompt) in enumerate(zip(rows, chosen, strict=True)):
            ids[k, : len(row)] = torch.tensor(row, device=device)
            # Position t predicts token t + 1: the last real token predicts nothing that is scored.
            scored[k, : len(row) - 1] = True
            generated[k, len(prompt) : len(row)] = True
        if eos_token_id is not None:
            # Nothing after a sampled EOS is scored, nor the EOS position itself (it predicts padding).
            scored &= ((ids == eos_token_id) & generated).long().cumsum(1).eq(0)
        log_probs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    return Teacher(ids, scored, log_probs)


def position_kl(log_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || softmax(q))`` in nats per position (over the last axis), computed in float32: the one
    definition the fit's loss, the gate and the behaviour check use. ``log_p`` is already a log-softmax.
    Mathematically >= 0; rounding can leave tiny negatives where the distributions are equal."""
    log_q = torch.log_softmax(logits_q.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _kl_rows(log_p: torch.Tensor, logits_q: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Per row: ``KL(p || q)`` summed over the scored positions."""
    return (position_kl(log_p, logits_q) * scored).sum(-1)


def fit_cores(
    model: nn.Module,
    bases: Sequence[Mapping[str, ModuleBasis]],
    cores: Sequence[Mapping[str, torch.Tensor]],
    teachers: Sequence[Teacher],
    settings: DistillSettings,
    mode: Mode = Mode.FULL,
) -> list[FittedCores]:
    """Fit adapter ``j``'s ``cores[j]`` on its ``bases[j]`` to ``teachers[j]``, all adapters in one batch.

    Every adapter must adapt the same modules and its teacher have the same number of texts and length (one
    :class:`DistillSettings` for all). The model's own weights are left untouched (no gradients for them).
    """
    if not (len(bases) == len(cores) == len(teachers)) or not cores:
        raise ValueError("fit_cores needs as many bases and teachers as cores, and at least one")
    device = _device(model)
    modules = sorted(cores[0])
    params = [{m: nn.Parameter(c[m].detach().float().to(device).clone()) for m in modules} for c in cores]
    groups = []
    for p in params:
        flat = torch.cat([t.detach().flatten() for t in p.values()])
        rms = float(flat.square().mean().sqrt())
        groups.append({"params": list(p.values()), "lr": settings.lr_scale * (rms if rms > 0 else 1e-3)})
    optimiser = torch.optim.Adam(groups)
    ids = torch.cat([t.ids for t in teachers])
    scored = torch.cat([t.scored for t in teachers])
    log_p = torch.cat([t.log_probs for t in teachers])
    n_texts = [len(t.ids) for t in teachers]
    positions = [max(1, int(t.scored.sum())) for t in teachers]
    row_of = torch.repeat_interleave(torch.arange(len(teachers)), torch.tensor(n_texts)).to(device)
    bases_dev = [{m: ModuleBasis(b[m].u.to(device).float(), b[m].v.to(device).float()) for m in modules} for b in bases]

    def factors() -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        out = {}
        for m in modules:
            pairs = [core_to_factors(bd[m], p[m], mode) for bd, p in zip(bases_dev, params, strict=True)]
            b = torch.stack([pb for pb, _ in pairs])[row_of]
            a = torch.stack([pa for _, pa in pairs])[row_of]
            out[m] = (a, b, 1.0)
        return out

    def losses(hooks: LoraHooks) -> list[torch.Tensor]:
        hooks.set(factors())
        per_row = _kl_rows(log_p, model(input_ids=ids).logits, scored)
        return [rows.sum() / pos for rows, pos in zip(per_row.split(n_texts), positions, strict=True)]

    best = [(math.inf, {m: p[m].detach().clone() for m in modules}) for p in params]
    start = [math.nan] * len(params)
    diverged = [False] * len(params)
    taken = 0
    was_training = model.training
    model.eval()
    frozen = [q for q in model.parameters() if q.requires_grad]
    for q in frozen:
        q.requires_grad_(False)
    try:
        with LoraHooks(model, factors()) as hooks:
            for step in range(settings.steps + 1):
                current = losses(hooks)
                for j, loss in enumerate(current):
                    value = float(loss.detach())
                    if step == 0:
                        start[j] = value
                    if not math.isfinite(value):
                        diverged[j] = True
                    elif value < best[j][0] and not diverged[j]:
                        best[j] = (value, {m: params[j][m].detach().clone() for m in modules})
                if step == settings.steps or all(diverged):
                    break
                optimiser.zero_grad(set_to_none=True)
                total = torch.stack([loss for loss, d in zip(current, diverged, strict=True) if not d]).sum()
                total.backward()
                for j, d in enumerate(diverged):
                    if d:  # a diverged adapter stops moving; the others go on
                        for param in params[j].values():
                            param.grad = None
                optimiser.step()
                taken = step + 1
    finally:
        for q in frozen:
            q.requires_grad_(True)
        model.train(was_training)
    return [
        FittedCores(
            cores={m: c.float().cpu() for m, c in cores_j.items()},
            kl_start=start[j],
            kl_end=value,
            steps=taken,
            diverged=diverged[j],
        )
        for j, (value, cores_j) in enumerate(best)
    ]
