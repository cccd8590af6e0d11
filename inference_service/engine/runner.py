"""The model runner: one Hugging Face causal LM whose linear layers apply a per-row adapter plan.

The runner owns the model. It wraps every linear layer inside the decoder blocks in an
:class:`~inference_service.engine.layers.AdapterLinear`, builds a :class:`BatchPlan` from the rows' loaded
adapters (each distinct adapter gets a small integer slot; rows gather their slot's factors), and runs the two
kinds of step the scheduler decides on: a prefill of new prompts, and one decode token for every running row.
:class:`RunningBatch` keeps the running rows' model state (their key/value cache and adapter plan), row-aligned
with the scheduler's running list. Blocking torch code: the engine calls the steps from a worker thread.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import TypeVar

import torch
from torch import nn

from .formats import LoadedCore, LoadedLora, ModelShapes
from .kv import BatchKV, new_cache, zero_pad
from .layers import AdapterLinear, BatchPlan, PlainGroup, PlanHolder, SharedGroup

__all__ = ["Loaded", "ModelRunner", "RunningBatch"]

Loaded = LoadedLora | LoadedCore | None  # None: the base model
_T = TypeVar("_T")


def _pad_rank(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    # Zero rows of A / columns of B add nothing: a lower rank padded up computes the same update.
    return zero_pad(t, rank, dim, left=False)


def _slots(items: list[_T]) -> tuple[list[_T], list[int]]:
    """Distinct items (by identity) in first-seen order, and each position's index into them."""
    distinct: list[_T] = []
    seen: dict[int, int] = {}
    slots = []
    for item in items:
        if id(item) not in seen:
            seen[id(item)] = len(distinct)
            distinct.append(item)
        slots.append(seen[id(item)])
    return distinct, slots


class ModelRunner:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.holder = PlanHolder()
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        shapes: dict[str, tuple[int, int]] = {}
        for name, module in list(model.named_modules()):
            # Adapters target the decoder blocks' projections (q, k, v, o, gate, up, down), as LoRAX allows.
            if isinstance(module, nn.Linear) and ".layers." in name:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, AdapterLinear(name, module, self.holder))
                shapes[name] = (module.out_features, module.in_features)
        self.shapes = ModelShapes(shapes, self.device, self.dtype)
        parameters = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache; support both so the GPU image's version works too.
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in parameters else None

    # --- plans -----------------------------------------------------------------------------------------

    def plan(self, adapters: list[Loaded]) -> BatchPlan:
        """Which rows apply what, per module, for a batch whose row ``i`` uses ``adapters[i]``."""
        groups: dict[str, list[PlainGroup | SharedGroup]] = defaultdict(list)
        n = len(adapters)
        plain = [(i, a) for i, a in enumerate(adapters) if isinstance(a, LoadedLora)]
        by_basis: dict[str, list[tuple[int, LoadedCore]]] = defaultdict(list)
        for i, a in enumerate(adapters):
            if isinstance(a, LoadedCore):
                by_basis[a.basis.basis_id].append((i, a))
        for module in self.shapes.modules:
            lora_rows = [(i, a) for i, a in plain if module in a.modules]
            if lora_rows:
                groups[module].append(self._plain_group(module, lora_rows, n))
            for basis_rows in by_basis.values():
                core_rows = [(i, a) for i, a in basis_rows if module in a.cores]
                if core_rows:
                    groups[module].append(self._shared_group(module, core_rows, n))
        return BatchPlan(dict(groups))

    def _rows(self, rows: list[int], n: int) -> tuple[torch.Tensor, bool]:
        return torch.tensor(rows, device=self.device, dtype=torch.long), rows == list(range(n))

    def _plain_group(self, module: str, rows: list[tuple[int, LoadedLora]], n: int) -> PlainGroup:
        """The group of ``rows`` (each a batch row and its adapter), of ``n`` rows in all."""
        distinct, slots = _slots([a for _, a in rows])
        factors = [a.modules[module] for a in distinct]
        rank = max(a.shape[0] for a, _ in factors)
        a_stack = torch.stack([_pad_rank(a, rank, 0) for a, _ in factors])
        b_stack = torch.stack([_pad_rank(b, rank, 1) for _, b in factors])
        index = torch.tensor(slots, device=self.device)
        row_index, all_rows = self._rows([i for i, _ in rows], n)
        return PlainGroup(row_index, a_stack.index_select(0, index), b_stack.index_select(0, index), all_rows)

    def _shared_group(self, module: str, rows: list[tuple[int, LoadedCore]], n: int) -> SharedGroup:
        """The group of ``rows`` (each a batch row and its core, all on one basis), of ``n`` rows in all."""
        distinct, slots = _slots([a for _, a in rows])
        cores = torch.stack([a.cores[module] for a in distinct])
        u, v = distinct[0].basis.modules[module]
        row_index, all_rows = self._rows([i for i, _ in rows], n)
        return SharedGroup(row_index, u, v, cores.index_select(0, torch.tensor(slots, device=self.device)), all_rows)

    # --- steps -----------------------------------------------------------------------------------------

    def forward(self, plan: BatchPlan, keep_all: bool = False, **inputs: torch.Tensor | object) -> torch.Tensor:
        """The model's float32 logits for ``inputs`` with ``plan`` applied (the last position's unless
        ``keep_all``); the cache passed in ``inputs`` (under :attr:`cache_arg`) is extended in place."""
        self.holder.plan = plan
        try:
            if self._keep_arg and not keep_all:
                inputs[self._keep_arg] = 1
            logits: torch.Tensor = self.model(**inputs, use_cache=True).logits  # nn.Module.__call__ is typed Any
        finally:
            self.holder.plan = BatchPlan()
        return logits.float()

    @torch.inference_mode()
    def prefill(
        self, prompts: list[list[int]], adapters: list[Loaded], *, all_logits: bool = False
    ) -> tuple[torch.Tensor, BatchKV]:
        """Run the prompts (left-padded into one batch). Returns logits (rows x [positions x] vocab): the last
        position's only, or every position's with ``all_logits``; and the batch's cache."""
        length = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), length), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt) :] = torch.tensor(prompt, device=self.device)
            mask[row, length - len(prompt) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = new_cache()
        logits = self.forward(
            self.plan(adapters),
            keep_all=all_logits,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{self.cache_arg: cache},
        )
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        return (logits if all_logits else logits[:, -1]), BatchKV(cache, mask, lengths)

    @torch.inference_mode()
    def decode(self, kv: BatchKV, tokens: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """One token for every row: ``tokens`` (rows,) are the rows' last tokens; returns logits (rows x vocab)."""
        mask, positions = kv.step_inputs()
        logits = self.forward(
            plan,
            keep_all=False,  # named: else mypy checks the cache, passed under a computed name, against this bool
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            **{self.cache_arg: kv.cache},
        )
        kv.advance()
        return logits[:, -1]


class RunningBatch:
    """The running rows' state on the model's side: their key/value cache and the adapter plan built from their
    adapters. Row ``i`` here is row ``i`` of the scheduler's running list; the engine keeps the two in step."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._adapters: list[Loaded] = []
        self._kv: BatchKV | None = None
        self._plan = BatchPlan()

    def prefill(self, prompts: list[list[int]], adapters: list[Loaded], *, all_logits: bool = False) -> torch.Tensor:
        """Run the new rows' prompts and append them to the batch; returns their logits as
        :meth:`ModelRunner.prefill` does. Blocking. If it raises, the batch is as it was."""
        logits, kv = self.runner.prefill(prompts, adapters, all_logits=all_logits)
        merged = kv if self._kv is None else self._kv.merge(kv)
        plan = self.runner.plan([*self._adapters, *adapters])
        self._kv, self._plan = merged, plan
        self._adapters.extend(adapters)
        return logits

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One token for every row, given each row's last token; returns logits (rows x vocab). Blocking."""
        assert self._kv is not None, "decode with no running rows"
        last = torch.tensor(tokens, device=self.runner.device)
        return self.runner.decode(self._kv, last, self._plan)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order)."""
        if not rows:
            self.clear()
            return
        assert self._kv is not None
        self._adapters = [self._adapters[i] for i in rows]
        self._kv = self._kv.select(torch.tensor(rows, device=self.runner.device))
        self._plan = self.runner.plan(self._adapters)

    def clear(self) -> None:
        self._adapters, self._kv, self._plan = [], None, BatchPlan()
