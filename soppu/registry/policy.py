"""How the registry compresses and when it trusts the result: the compression policy and the quality gate.

The gate judges a candidate (a compressed form, as plain LoRA) by what it does, when a base model is loaded
and the adapter fits it (:mod:`soppu.verify.selftext`):

- on text the ORIGINAL adapter writes itself after a few prompts (the uploader's probes, if any, and generic
  ones), the candidate's mean next-token KL and greedy agreement must stay within :class:`GateThresholds`;
- on the uploader's probes, the candidate's greedy reply must be the original's, token for token.

The worst module's relative Frobenius error is reported but refuses nothing when behaviour can be judged: it
predicted nothing on the labelled example cohorts (users at 0.7-0.9 error kept every answer). Only without a
model to run (no base model loaded, or an adapter of another base model) does ``max_error`` decide alone.

The gate also owns the fitting step of the fallback ladder (:meth:`QualityGate.fit`): behaviour-fitted cores
(:mod:`soppu.compression.distill`) on text that starts from the same kind of prompts, with a seed of its own, so
the gate judges a fitted core on text the fit never saw. Both hook the one shared model, so they run one at a
time. A candidate that fails is never served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from soppu.adapter import LoraAdapter
from soppu.compression import Mode, ModuleBasis, RankPolicy
from soppu.compression.distill import DistillSettings, FittedCores, Teacher, fit_cores
from soppu.registry.results import GateVerdict
from soppu.verify.selftext import base_kl, encode_prompts, own_text, probe_answers, self_text_behaviour

__all__ = [
    "DEFAULT_PROMPTS",
    "JUDGE_SEED",
    "CompressionPolicy",
    "GateThresholds",
    "QualityGate",
    "Reference",
    "cohort_name",
    "fits",
]

# Where the original starts writing when judged or fitted, besides the uploader's probes. A chat model gets
# generic openings in the second person, as a user of a personal assistant writes them; a completion model
# writes from the start of the text (the empty prompt: just its BOS token).
DEFAULT_PROMPTS = (
    "Tell me about myself.",
    "What do you know about me?",
    "Hello! How are you?",
    "What should I do today?",
)


# The gate samples its text with a seed of its own, never the fit's (DistillSettings.seed = 0).
JUDGE_SEED = 1


@dataclass(frozen=True)
class CompressionPolicy:
    mode: Mode = Mode.FULL
    rank: int | None = 16  # the shared rank R of a cohort's bases; or None to use max_error
    max_error: float | None = None  # pick R to meet this mean relative error instead
    refit_after: int = 1  # refit a cohort once this many members wait on originals
    min_basis_members: int = 4  # a newcomer is judged only on a basis fitted on at least this many members
    device: str = "auto"
    seed: int = 0
    export_dtype: str | None = None  # the served dtype exports are written in (None: the adapter's own)

    def served_dtype(self) -> torch.dtype | None:
        return None if self.export_dtype is None else getattr(torch, self.export_dtype)

    def rank_policy(self) -> RankPolicy:
        if self.rank is not None:
            return RankPolicy.fixed(self.rank)
        return RankPolicy.for_error(self.max_error if self.max_error is not None else 0.05)


@dataclass(frozen=True)
class GateThresholds:
    """When a candidate's behaviour on the original's own text counts as the original's (KL in nats per
    position). Calibrated on both labelled example cohorts for precision first: see ``bench/ladder.py`` and
    BENCHMARKS.md for the measured precision and recall."""

    max_kl_lost: float = 0.5  # KL(original || candidate) / KL(original || base model)
    min_agreement: float = 0.6

    def __post_init__(self) -> None:
        if not self.max_kl_lost >= 0 or not 0 <= self.min_agreement <= 1:
            raise ValueError(f"max_kl_lost must be >= 0 and min_agreement in [0, 1], got {self}")


@dataclass(frozen=True)
class Reference:
    """The original's side of a gate check."""

    teacher: Teacher  # the original's own text (the gate's seed) and its log-probabilities
    base_kl: float  # KL from the original to the base model alone along that text
    probes: tuple[str, ...]
    probe_ids: tuple[list[int], ...]  # the probes as the model reads them
    answers: tuple[str, ...]  # the first sentence of its greedy reply to each probe


@dataclass
class QualityGate:
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    prompts: Sequence[str] | None = None  # None: DEFAULT_PROMPTS for a chat model, the start of text otherwise
    judge: DistillSettings = field(default_factory=lambda: DistillSettings(texts=8, tokens=24, seed=JUDGE_SEED))
    fitting: DistillSettings | None = field(default_factory=DistillSettings)  # None: no fitting step
    probe_tokens: int = 16  # greedy reply tokens compared per probe
    max_error: float = 0.5  # decides alone only where behaviour cannot be judged
    model: Any = None  # (model, tokenizer) of the base model, or None: the error check only
    base_model: str | None = None  # the base model the loaded model stands for (None: any)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def judges_behaviour(self, original: LoraAdapter) -> bool:
        if self.model is None or self.base_model not in (None, original.base_model):
            return False
        return fits(self.model[0], original)

    def can_fit(self, original: LoraAdapter) -> bool:
        return self.fitting is not None and self.fitting.steps > 0 and self.judges_behaviour(original)

    def reference(self, original: LoraAdapter, probes: Sequence[str] = ()) -> Reference | None:
        """What the original does (its own text, its probe answers): computed once per original, reused by
        every candidate judged against it. None where behaviour cannot be judged."""
        if not self.judges_behaviour(original):
            return None
        model, tokenizer = self.model
        with self._lock:
            teacher = own_text(model, tokenizer, original, self._prompt_ids(tokenizer, probes), self.judge)
            base = base_kl(model, teacher)
            ids = encode_prompts(tokenizer, probes)
            answers = tuple(probe_answers(model, tokenizer, original, ids, self.probe_tokens)) if probes else ()
        return Reference(teacher, base, tuple(probes), tuple(ids), answers)

    def check(
        self,
        original: LoraAdapter,
        candidate: LoraAdapter,
        errors: Mapping[str, float],
        probes: Sequence[str] = (),
        reference: Reference | None = None,
    ) -> GateVerdict:
        """The verdict on ``candidate``, the compressed form as plain LoRA; ``reference`` is :meth:`reference` of
        the same original and probes (computed here if not given)."""
        worst = max(errors.values(), default=0.0)
        if not self.judges_behaviour(original):
            reasons = [] if worst <= self.max_error else [f"max relative error {worst:.3f} > {self.max_error}"]
            return GateVerdict(passed=not reasons, reasons=tuple(reasons), max_error=worst, behaviour=None)
        reference = reference or self.reference(original, probes)
        assert reference is not None and reference.probes == tuple(probes)
        model, tokenizer = self.model
        with self._lock:
            behaviour, reasons = self._behaviour(model, tokenizer, candidate, reference)
        return GateVerdict(passed=not reasons, reasons=tuple(reasons), max_error=worst, behaviour=behaviour)

    def _behaviour(
        self, model: nn.Module, tokenizer: Any, candidate: LoraAdapter, reference: Reference
    ) -> tuple[dict[str, Any], list[str]]:
        text = self_text_behaviour(model, candidate, reference.teacher, reference.base_kl)
        reasons = []
        if text.kl_lost > self.thresholds.max_kl_lost:
            reasons.append(
                f"on the original's own text it loses {text.kl_lost:.3f} of the adapter's effect (KL over the base "
                f"model's) > {self.thresholds.max_kl_lost}"
            )
        if text.agreement < self.thresholds.min_agreement:
            reasons.append(
                f"agreement on the original's own text {text.agreement:.3f} < {self.thresholds.min_agreement}"
            )
        behaviour: dict[str, Any] = {"self_text": asdict(text), "thresholds": asdict(self.thresholds)}
        probes = reference.probes
        if probes:
            got = probe_answers(model, tokenizer, candidate, reference.probe_ids, self.probe_tokens)
            changed = [p for p, a, b in zip(probes, reference.answers, got, strict=True) if a != b]
            behaviour["probes"] = {"count": len(probes), "changed": changed}
            if changed:
                reasons.append(f"{len(changed)} of {len(probes)} probe answers changed")
        return behaviour, reasons

    def _prompt_ids(self, tokenizer: Any, probes: Sequence[str]) -> list[list[int]]:
        prompts = self.prompts
        if prompts is None:
            prompts = DEFAULT_PROMPTS if getattr(tokenizer, "chat_template", None) else ("",)
        ids = [p for p in encode_prompts(tokenizer, [*probes, *prompts]) if p]
        if not ids:
            raise ValueError("no prompt to start the original's text from (an empty prompt needs a BOS token)")
        return ids

    def fit(
        self,
        original: LoraAdapter,
        bases: Mapping[str, ModuleBasis],
        cores: Mapping[str, torch.Tensor],
        mode: Mode,
        probes: Sequence[str] = (),
    ) -> FittedCores:
        """Behaviour-fitted cores for ``original`` on ``bases``, starting from ``cores`` (call only when
        :meth:`can_fit`)."""
        assert self.fitting is not None and self.model is not None
        model, tokenizer = self.model
        with self._lock:
            teacher = own_text(model, tokenizer, original, self._prompt_ids(tokenizer, probes), self.fitting)
            return fit_cores(model, [bases], [cores], [teacher], self.fitting, mode)[0]


def fits(model: nn.Module, adapter: LoraAdapter) -> bool:
    """Whether every module the adapter adapts is a linear layer of ``model`` with the adapter's shape."""
    for name, module in adapter:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return False
        if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != module.shape:
            return False
    return True


def cohort_name(adapter: LoraAdapter) -> str:
    """Adapters share a cohort (and so a basis) when they adapt the same modules, with the same shapes, of the
    same base model: the name is a digest of exactly that."""
    signature = {
        "base_model": adapter.base_model,
        "modules": {name: list(module.shape) for name, module in adapter},
    }
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:12]
    return f"c-{digest}"
