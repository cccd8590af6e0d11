"""Training the example fixture: pre-train the tiny Llama, then every user's LoRA adapter in one batch.

All users' adapters train together: the batch holds every user's sentences, each row carries its user's
index, and :class:`~soppu.adapter.apply.LoraHooks` applies that user's own factors to that row. The
parameters of different users never mix, so this is N independent fine-tunes at the cost of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from tokenizers import Tokenizer
from torch import nn

from soppu.adapter.apply import Factors, LoraHooks
from soppu.models import quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["LoraTrainingSpec", "deterministic_torch", "encode_lines", "pretrain", "train_user_adapters"]

Progress = Callable[[int], object]  # called with the steps just done (a tqdm bar's update); its result unused


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """A fixed thread count, not the machine's (float reductions then add up in the same order everywhere),
    deterministic kernels, and no progress bars of transformers' own (ours say what is happening)."""
    saved, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with quiet_transformers():
            yield
    finally:
        torch.set_num_threads(saved)
        torch.use_deterministic_algorithms(deterministic)


def encode_lines(
    tokenizer: Tokenizer, lines: Sequence[str], eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (with BOS from the tokenizer and an EOS appended), right-padded; and the LM labels
    (padding masked with -100)."""
    rows = [[*enc.ids, eos_id] for enc in tokenizer.encode_batch(list(lines))]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    labels = ids.masked_fill(ids == pad_id, -100)
    return ids, labels


def _cosine_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))


def _lm_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss: torch.Tensor = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
    return loss


def pretrain(
    model: nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    progress: Progress | None = None,
) -> float:
    """Plain next-token pre-training with AdamW and a cosine schedule; returns the last loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        _cosine_lr(optimizer, lr, step, steps)
        rows = torch.randint(0, ids.shape[0], (batch_size,), generator=generator)
        loss = _lm_loss(model, ids[rows], labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress(1)
    model.eval()
    return float(loss.detach())


class LoraTrainingSpec:
    """Trainable LoRA factors for ``n_users`` adapters on the given modules of a frozen model.

    Users may differ in rank and in which modules they adapt (``ranks``, ``user_modules``): every user gets
    factors of the largest rank on every module, and what a user does not have starts at zero. Zero rows of A
    and zero columns of B get zero gradients (each is the other's gradient factor), so Adam never moves them:
    training a mixed cohort in one batch is exactly training each recipe on its own.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[str],
        n_users: int,
        rank: int,
        generator: torch.Generator,
        *,
        ranks: Sequence[int] | None = None,
        user_modules: Sequence[Collection[str]] | None = None,
    ) -> None:
        ranks = list(ranks) if ranks is not None else [rank] * n_users
        width = max(ranks)
        self.a: dict[str, nn.Parameter] = {}
        self.b: dict[str, nn.Parameter] = {}
        for name in modules:
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            # PEFT's default init: A ~ kaiming-uniform(a=sqrt(5)), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in)); B = 0.
            bound = 1 / math.sqrt(linear.in_features)
            a = (torch.rand(n_users, width, linear.in_features, generator=generator) * 2 - 1) * bound
            for user, r in enumerate(ranks):
                if r < width:
                    a[user, r:] = 0
                if user_modules is not None and name not in user_modules[user]:
                    a[user] = 0
            self.a[name] = nn.Parameter(a)
            self.b[name] = nn.Parameter(torch.zeros(n_users, linear.out_features, width))

    def parameters(self) -> list[nn.Parameter]:
        return [*self.a.values(), *self.b.values()]

    def factors_for_rows(self, users: torch.Tensor, scaling: float | torch.Tensor) -> dict[str, Factors]:
        # One adapter per batch row; rows are (batch, seq, d), so factors gain a leading batch dim. A scaling
        # per user becomes one per row, shaped to broadcast over (seq, d_out).
        row_scaling = scaling[users].view(-1, 1, 1) if isinstance(scaling, torch.Tensor) else scaling
        return {name: (self.a[name][users], self.b[name][users], row_scaling) for name in self.a}


def train_user_adapters(
    model: nn.Module,
    spec: LoraTrainingSpec,
    ids: torch.Tensor,
    labels: torch.Tensor,
    users: torch.Tensor,
    *,
    scaling: float | torch.Tensor,
    steps: int,
    lr: float,
    loss_mask: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> float:
    """Fine-tune every user's factors on that user's rows, the base model frozen; returns the last loss.

    The loss is the sum of per-user mean losses, so each user's gradient is exactly what a separate
    fine-tune of that user alone would get. ``loss_mask`` (like ``labels``) limits the loss to some tokens.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    n_users = int(users.max()) + 1
    attention_mask = (labels != -100).long()
    mask = (labels != -100) if loss_mask is None else loss_mask & (labels != -100)
    # Position t predicts token t + 1.
    mask, targets = mask[:, 1:], labels[:, 1:].clamp(min=0)
    optimizer = torch.optim.Adam(spec.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    # Logits only where the loss is taken: the LM head over a 49k vocabulary at every position would
    # cost as much as a third of the model on the real example base.
    rows, positions = mask.nonzero(as_tuple=True)
    picked_targets = targets[rows, positions]
    lm = cast("PreTrainedModel", model)  # what nn.Module's typing cannot see: a transformers model's methods
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    per_user_count = torch.zeros(n_users).index_add(0, users, mask.sum(1).float())
    with LoraHooks(model, spec.factors_for_rows(users, scaling)) as hooks:
        for step in range(steps):
            _cosine_lr(optimizer, lr, step, steps)
            hooks.set(spec.factors_for_rows(users, scaling))
            hidden = decoder(input_ids=ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
            logits = head(hidden[rows, positions])
            token_loss = nn.functional.cross_entropy(logits, picked_targets, reduction="none")
            per_user_sum = torch.zeros(n_users).index_add(0, users[rows], token_loss)
            loss = (per_user_sum / per_user_count).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress:
                progress(1)
    return float(loss.detach()) / n_users
