"""``adapter_config.json``: parsing, validation and the PEFT-compatible form we write back.

We accept what PEFT's ``LoraConfig`` writes for plain LoRA and reject, by name, what we cannot serve
faithfully: other ``peft_type`` values, DoRA, trained biases, ``modules_to_save``, and the like.
``rank_pattern`` / ``alpha_pattern`` are supported with PEFT's matching rule (see :meth:`AdapterConfig.rank_for`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import regex

from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code
from soppu.lora import lora_scaling

__all__ = ["AdapterConfig", "parse_config", "pattern_budget"]

MAX_RANK = 1024
_MAX_PATTERN_LENGTH = 512
_REGEX_TIMEOUT_S = 0.05
# All the pattern matching one adapter may cost: a per-match timeout alone lets 8,192 tensors times a few
# patterns that each stop just short of it take minutes of a worker thread.
REGEX_BUDGET_S = 0.5
_MAX_PATTERN_KEYS = 256
_deadline: ContextVar[float | None] = ContextVar("soppu_pattern_deadline", default=None)
# Keys whose mere presence with a non-default value means a variant we do not implement.
_UNSUPPORTED_IF_SET: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "modules_to_save": (None, []),
    "bias": ("none", None),
    "trainable_token_indices": (None, {}, []),
    "lora_bias": (False, None),
    "use_qalora": (False, None),
    "megatron_config": (None,),
    "layer_replication": (None, []),
}


def _bad(message: str, **detail: Any) -> AdapterError:
    return AdapterError(Code.BAD_CONFIG, message, **detail)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _regex_match(pattern: str, text: str) -> bool:
    """``fullmatch`` for patterns that come from untrusted configs.

    Python's ``re`` cannot be interrupted, and a pattern like ``(a|aa)+b`` backtracks for ever; the ``regex``
    package has a timeout, so an expensive pattern is a bad_config instead of a hung worker.
    """
    timeout = _REGEX_TIMEOUT_S
    deadline = _deadline.get()
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise _bad("the adapter's patterns are too expensive to match against its modules", pattern=pattern)
    try:
        return regex.fullmatch(pattern, text, timeout=timeout) is not None
    except TimeoutError as e:
        raise _bad(f"pattern {pattern!r} is too expensive to match", pattern=pattern) from e


@contextmanager
def pattern_budget(seconds: float | None = None) -> Iterator[None]:
    """Every pattern match inside shares one budget of ``seconds`` (default :data:`REGEX_BUDGET_S`); one
    adapter's validation runs inside one."""
    token = _deadline.set(time.monotonic() + (REGEX_BUDGET_S if seconds is None else seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def _pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    # PEFT's get_pattern_key: the first pattern that matches a dotted suffix of the module name.
    for key in patterns:
        if _regex_match(rf"(.*\.)?({key})", module):
            return key
    return None


@dataclass(frozen=True)
class AdapterConfig:
    """The validated fields of a PEFT LoRA config that change what the adapter computes."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    base_model_name_or_path: str | None = None
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    task_type: str | None = "CAUSAL_LM"

    def targets(self, module: str) -> bool:
        """Whether PEFT would have put a LoRA on ``module`` (e.g. ``model.layers.0.self_attn.q_proj``)."""
        if isinstance(self.target_modules, str):
            return _regex_match(self.target_modules, module)
        return any(module == t or module.endswith("." + t) for t in self.target_modules)

    def rank_for(self, module: str) -> int:
        key = _pattern_key(self.rank_pattern, module)
        return self.rank_pattern[key] if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        key = _pattern_key(self.alpha_pattern, module)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha

    def scaling_for(self, module: str) -> float:
        return lora_scaling(self.alpha_for(module), self.rank_for(module), use_rslora=self.use_rslora)

    def to_peft_dict(self) -> dict[str, Any]:
        """The config as PEFT writes it, so that ``PeftModel.from_pretrained`` and LoRAX load it unchanged."""
        targets = self.target_modules if isinstance(self.target_modules, str) else sorted(self.target_modules)
        return {
            "alpha_pattern": dict(self.alpha_pattern),
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "inference_mode": True,
            "init_lora_weights": True,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": 0.0,
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": dict(self.rank_pattern),
            "target_modules": targets,
            "task_type": self.task_type,
            "use_dora": False,
            "use_rslora": self.use_rslora,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_peft_dict(), indent=2, sort_keys=True) + "\n").encode()


def _check_rank(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RANK:
        raise _bad(f"{what} must be an integer in [1, {MAX_RANK}], got {value!r}", field=what)
    return value


def _check_alpha(value: Any, what: str) -> float:
    if not _is_number(value) or not value > 0 or value != value or value == float("inf"):
        raise _bad(f"{what} must be a positive finite number, got {value!r}", field=what)
    return int(value) if isinstance(value, int) else float(value)


def _check_pattern_text(pattern: str, what: str) -> None:
    if len(pattern) > _MAX_PATTERN_LENGTH:
        raise _bad(f"{what} pattern is longer than {_MAX_PATTERN_LENGTH} characters", field=what)


def _check_pattern(raw: Any, name: str, check: Any) -> dict[str, Any]:
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise _bad(f"{name} must be an object mapping module patterns to values", field=name)
    if len(raw) > _MAX_PATTERN_KEYS:
        raise _bad(f"{name} has more than {_MAX_PATTERN_KEYS} patterns", field=name)
    out = {}
    for key, value in raw.items():
        _check_pattern_text(key, name)
        try:
            regex.compile(key)
        except regex.error as e:
            raise _bad(f"{name} key {key!r} is not a valid pattern: {e}", field=name) from e
        out[key] = check(value, f"{name}[{key!r}]")
    return out


def parse_config(raw: bytes) -> AdapterConfig:
    """Parse and validate ``adapter_config.json``. Raises AdapterError (bad_config / unsupported_variant)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    # ValueError covers bad UTF-8, bad JSON and integers past Python's digit limit; RecursionError, deep nesting.
    except (ValueError, RecursionError) as e:
        raise _bad(f"adapter_config.json is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise _bad("adapter_config.json must hold a JSON object")

    peft_type = data.get("peft_type")
    if not isinstance(peft_type, str):
        raise _bad("adapter_config.json needs a string peft_type", field="peft_type")
    if peft_type.upper() != "LORA":
        raise AdapterError(
            Code.UNSUPPORTED_VARIANT,
            f"peft_type {peft_type!r} is not supported; only LORA is",
            field="peft_type",
        )
    if data.get("use_dora"):
        raise AdapterError(Code.UNSUPPORTED_VARIANT, "DoRA adapters (use_dora) are not supported", field="use_dora")
    for key, defaults in _UNSUPPORTED_IF_SET.items():
        if key in data and data[key] not in defaults:
            raise AdapterError(
                Code.UNSUPPORTED_VARIANT, f"{key}={data[key]!r} is not supported", field=key, value=data[key]
            )

    r = _check_rank(data.get("r"), "r")
    lora_alpha = _check_alpha(data.get("lora_alpha", 8), "lora_alpha")

    targets = data.get("target_modules")
    if isinstance(targets, str):
        _check_pattern_text(targets, "target_modules")
        try:
            regex.compile(targets)
        except regex.error as e:
            raise _bad(f"target_modules pattern is invalid: {e}", field="target_modules") from e
        target_modules: tuple[str, ...] | str = targets
    elif isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        target_modules = tuple(sorted(set(targets)))
    else:
        raise _bad("target_modules must be a non-empty list of module names or a pattern", field="target_modules")

    flags = {}
    for key in ("use_rslora", "fan_in_fan_out"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise _bad(f"{key} must be true or false, got {value!r}", field=key)
        flags[key] = value

    base = data.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise _bad("base_model_name_or_path must be a string", field="base_model_name_or_path")
    task_type = data.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        raise _bad("task_type must be a string", field="task_type")

    return AdapterConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=target_modules,
        base_model_name_or_path=base,
        use_rslora=flags["use_rslora"],
        fan_in_fan_out=flags["fan_in_fan_out"],
        rank_pattern=_check_pattern(data.get("rank_pattern"), "rank_pattern", _check_rank),
        alpha_pattern=_check_pattern(data.get("alpha_pattern"), "alpha_pattern", _check_alpha),
        task_type=task_type,
    )
