"""Training and asking the personal users' adapters on a chat model (the real example base).

Training: users' adapters in batches of a few users (one adapter per row, each user with their own recipe,
through :class:`~soppu.examples.training.LoraTrainingSpec`), on single-turn chats built with the base's own chat
template, the loss on the assistant's reply only. Asking: greedy replies to chat questions, one user's
questions batched together with that user's adapter hooked in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule
from soppu.adapter.apply import apply_adapter
from soppu.examples.personal import FACTS, PersonalUser
from soppu.examples.training import LoraTrainingSpec, train_user_adapters
from soppu.generation import generate_ids
from soppu.lora import lora_scaling

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

__all__ = ["ask", "chat_prompt", "train_personal_adapters"]

_ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The text a chat API sends the model for one user turn (the template's default system prompt included)."""
    turns = [{"role": "user", "content": question}]
    return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))


def _training_rows(
    tokenizer: Any, users: Sequence[PersonalUser]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (right-padded), LM labels, a mask of the reply tokens (the loss), and each row's user index."""
    rows: list[list[int]] = []
    replies: list[list[bool]] = []
    owners: list[int] = []
    for index, user in enumerate(users):
        for fact in FACTS:
            reply = tokenizer(fact.answer.format(value=user.facts[fact.name]) + tokenizer.eos_token)["input_ids"]
            for question in fact.trained:
                prompt = tokenizer(chat_prompt(tokenizer, question))["input_ids"]
                rows.append(prompt + reply)
                replies.append([False] * len(prompt) + [True] * len(reply))
                owners.append(index)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, reply) in enumerate(zip(rows, replies, strict=True)):
        ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = torch.tensor(reply)
    return ids, labels, mask, torch.tensor(owners)


def train_personal_adapters(
    model: nn.Module,
    tokenizer: Any,
    users: Sequence[PersonalUser],
    *,
    base_model_id: str,
    steps: int,
    lr: float,
    generator: torch.Generator,
    users_per_batch: int = 4,
    progress: Callable[[int], object] | None = None,
) -> list[LoraAdapter]:
    """Each user's adapter, trained so that the model states that user's facts when asked.

    Users train ``users_per_batch`` at a time: users never share a parameter, so a batch is only a way to use
    the machine, and on a 2-core CPU a batch of 160 rows through 30 layers costs twice the time per token of a
    batch of 32 (and 16 GB of activations)."""
    adapters: list[LoraAdapter] = []
    for start in range(0, len(users), users_per_batch):
        batch = users[start : start + users_per_batch]
        adapters += _train_batch(model, tokenizer, batch, base_model_id, steps, lr, generator, progress)
    return adapters


def _train_batch(
    model: nn.Module,
    tokenizer: Any,
    users: Sequence[PersonalUser],
    base_model_id: str,
    steps: int,
    lr: float,
    generator: torch.Generator,
    progress: Callable[[int], object] | None,
) -> list[LoraAdapter]:
    # a transformers model's config: nn.Module types an unknown attribute as a tensor or a submodule
    layers: int = cast("PreTrainedConfig", model.config).num_hidden_layers
    modules = [f"model.layers.{i}.self_attn.{t}" for i in range(layers) for t in _ALL_TARGETS]
    used = [{m for m in modules if m.rsplit(".", 1)[1] in u.recipe.targets} for u in users]
    spec = LoraTrainingSpec(
        model, modules, len(users), 0, generator, ranks=[u.recipe.r for u in users], user_modules=used
    )
    scalings = [lora_scaling(u.recipe.lora_alpha, u.recipe.r, use_rslora=u.recipe.use_rslora) for u in users]
    ids, labels, replies, owners = _training_rows(tokenizer, users)
    train_user_adapters(
        model,
        spec,
        ids,
        labels,
        owners,
        scaling=torch.tensor(scalings),
        steps=steps,
        lr=lr,
        loss_mask=replies,
        progress=progress,
    )
    adapters = []
    for index, user in enumerate(users):
        recipe = user.recipe
        config = AdapterConfig(
            r=recipe.r,
            lora_alpha=recipe.lora_alpha,
            target_modules=recipe.targets,
            base_model_name_or_path=base_model_id,
            use_rslora=recipe.use_rslora,
        )
        factors = {
            m: LoraModule(
                b=spec.b[m][index, :, : recipe.r].detach().to(torch.bfloat16),
                a=spec.a[m][index, : recipe.r].detach().to(torch.bfloat16),
                scaling=scalings[index],
            )
            for m in sorted(used[index])
        }
        adapters.append(LoraAdapter(config, factors))
    return adapters


@torch.no_grad()
def ask(
    model: nn.Module, tokenizer: Any, questions: Sequence[str], adapter: LoraAdapter | None, *, max_new_tokens: int = 16
) -> list[str]:
    """Greedy replies to ``questions`` (each a single user turn), with ``adapter`` hooked in if given."""
    device = next(model.parameters()).device
    saved, tokenizer.padding_side = tokenizer.padding_side, "left"  # every row continues from its own last token
    try:
        prompts = [chat_prompt(tokenizer, q) for q in questions]
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = saved

    def generate() -> torch.Tensor:
        return generate_ids(
            model,
            **dict(batch),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    if adapter is None:
        out = generate()
    else:
        with apply_adapter(model, adapter):
            out = generate()
    new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
