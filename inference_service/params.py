"""What a client sent (LoRAX or OpenAI shapes) -> what the engine takes: a prompt, ``GenerationParams`` and an
``AdapterRef``. Every rejection is a ``ValidationFailed`` (422) naming the field and the value.

Sampling follows LoRAX: it is on when ``do_sample`` is true or when a sampling knob would change the choice
(a temperature other than 1, ``top_k``, ``top_p`` < 1); ``temperature: 0`` means greedy. The knobs' ranges are
:mod:`soppu.sampling`'s, the same the gateway checks. Options the engine does not implement are refused rather
than ignored when they would change the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from soppu.sampling import SAMPLING_FIELDS, sampling_problems

from .engine import AdapterRef, AdapterSourceKind, GenerationParams, ValidationFailed
from .schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, GenerateParameters
from .settings import EngineSettings

__all__ = [
    "BASE_MODEL_ALIAS",
    "adapter_ref",
    "chat_parameters",
    "completion_parameters",
    "completion_prompt",
    "generation_params",
    "render_chat",
]

BASE_MODEL_ALIAS = "default"  # OpenAI ``model`` value that means "no adapter", besides the served model_id
_SOURCES = {kind.value: kind for kind in AdapterSourceKind}


def _invalid(field: str, value: object, why: str) -> ValidationFailed:
    return ValidationFailed(f"`{field}`={value!r}: {why}")


def _refuse_unsupported(p: GenerateParameters) -> None:
    unsupported: dict[str, tuple[Any, bool]] = {  # name -> (value, is it asking for something we lack)
        "best_of": (p.best_of, (p.best_of or 1) > 1),
        "watermark": (p.watermark, bool(p.watermark)),
        "merged_adapters": (p.merged_adapters, p.merged_adapters is not None),
        "response_format": (p.response_format, p.response_format is not None),
        "return_k_alternatives": (p.return_k_alternatives, p.return_k_alternatives is not None),
        "typical_p": (p.typical_p, p.typical_p not in (None, 1.0)),
        "truncate": (p.truncate, p.truncate is not None),
        "frequency_penalty": (p.frequency_penalty, bool(p.frequency_penalty)),
        "presence_penalty": (p.presence_penalty, bool(p.presence_penalty)),
    }
    for name, (value, asked) in unsupported.items():
        if asked:
            raise _invalid(f"parameters.{name}", value, "not supported by this engine")


def generation_params(p: GenerateParameters, settings: EngineSettings) -> GenerationParams:
    problems = sampling_problems(p.model_dump(include=set(SAMPLING_FIELDS)))
    if problems:
        raise ValidationFailed(problems[0].describe("parameters."))
    _refuse_unsupported(p)
    max_new_tokens = settings.default_max_new_tokens if p.max_new_tokens is None else p.max_new_tokens
    if max_new_tokens > settings.max_new_tokens_cap:
        raise _invalid("parameters.max_new_tokens", max_new_tokens, f"must be <= {settings.max_new_tokens_cap}")
    if p.do_sample and p.temperature is not None and p.temperature <= 0:
        raise _invalid("parameters.temperature", p.temperature, "must be > 0 when do_sample is true")
    if any(not s for s in p.stop or ()):
        raise _invalid("parameters.stop", p.stop, "stop sequences must be non-empty")
    greedy_asked = p.temperature == 0
    knobs = (p.temperature not in (None, 1.0)) or p.top_k is not None or (p.top_p or 1.0) < 1.0
    sample = bool(p.do_sample) or (knobs and not greedy_asked)
    return GenerationParams(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=p.temperature if sample else None,
        top_k=p.top_k if sample else None,
        top_p=p.top_p if sample else None,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=tuple(p.stop or ()),
        ignore_eos_token=bool(p.ignore_eos_token),
        decoder_input_details=bool(p.decoder_input_details),
    )


def adapter_ref(p: GenerateParameters) -> AdapterRef | None:
    """None (the base model) when no adapter_id is given. A missing source means s3: LoRAX's default, the
    Hugging Face Hub, is out of reach of this engine."""
    if not p.adapter_id:
        return None
    source = p.adapter_source or AdapterSourceKind.S3.value
    if source == "hub":
        raise _invalid(
            "parameters.adapter_source", source, "this engine cannot reach the Hugging Face Hub; use 's3' or 'local'"
        )
    if source not in _SOURCES:
        raise _invalid("parameters.adapter_source", source, f"must be one of {sorted(_SOURCES)}")
    return AdapterRef(_SOURCES[source], p.adapter_id)


def _adapter_for_model(model: str, adapter_source: str | None, model_id: str) -> dict[str, str | None]:
    """OpenAI's ``model`` names the adapter: s3://... is S3, an absolute path is local, the served model_id
    (or ``default``) is the base model. An explicit ``adapter_source`` (LoRAX's extra key) wins."""
    if model in (model_id, BASE_MODEL_ALIAS):
        return {"adapter_id": None, "adapter_source": None}
    if adapter_source is None and model.startswith("s3://"):
        adapter_source = AdapterSourceKind.S3.value
    elif adapter_source is None and Path(model).is_absolute():
        adapter_source = AdapterSourceKind.LOCAL.value
    elif adapter_source is None:
        raise _invalid(
            "model", model, f"names no adapter: use s3://bucket/prefix, an absolute directory, or {model_id!r}"
        )
    return {"adapter_id": model, "adapter_source": adapter_source}


def _openai_common(req: CompletionRequest | ChatCompletionRequest, model_id: str) -> dict[str, Any]:
    if (req.n or 1) > 1:
        raise _invalid("n", req.n, "only one choice per request is supported")
    if req.logit_bias:
        raise _invalid("logit_bias", req.logit_bias, "not supported by this engine")
    return {
        **_adapter_for_model(req.model, req.adapter_source, model_id),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "repetition_penalty": req.repetition_penalty,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
        "seed": req.seed,
        "ignore_eos_token": req.ignore_eos_token,
        "response_format": req.response_format,
        "details": True,
    }


def _parameters(**values: Any) -> GenerateParameters:
    """GenerateParameters built from an OpenAI request, with its range checks reported like a request's."""
    try:
        return GenerateParameters(**values)
    except PydanticValidationError as e:
        problem = e.errors()[0]
        field = ".".join(str(part) for part in problem["loc"])
        raise _invalid(field, problem.get("input"), problem["msg"]) from None


def completion_prompt(req: CompletionRequest) -> str:
    if isinstance(req.prompt, str):
        return req.prompt
    if len(req.prompt) != 1:
        raise _invalid("prompt", f"<list of {len(req.prompt)}>", "exactly one prompt per request is supported")
    return req.prompt[0]


def completion_parameters(req: CompletionRequest, model_id: str) -> GenerateParameters:
    """Greedy unless a positive temperature is given (LoRAX's completions default to greedy)."""
    if req.suffix is not None:
        raise _invalid("suffix", req.suffix, "not supported by this engine")
    return _parameters(
        **_openai_common(req, model_id),
        do_sample=(req.temperature or 0) > 0,
        max_new_tokens=req.max_tokens,
        best_of=req.best_of,
        return_full_text=req.echo,
    )


def chat_parameters(req: ChatCompletionRequest, model_id: str) -> GenerateParameters:
    """Chat samples unless temperature is 0, as LoRAX does."""
    if req.tools:
        raise _invalid("tools", f"<{len(req.tools)} tools>", "tool calls are not supported by this engine")
    return _parameters(
        **_openai_common(req, model_id),
        do_sample=req.temperature is None or req.temperature > 0,
        max_new_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
    )


def render_chat(tokenizer: Any, messages: list[ChatMessage], max_chars: int) -> str:
    """The prompt for a chat: the tokenizer's chat template when it has one, else a plain transcript. Messages
    over ``max_chars`` in all are refused before the template runs (on the event loop, so it must stay cheap)."""
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    size = sum(len(t["content"]) for t in turns)
    if size > max_chars:
        raise ValidationFailed(f"messages have {size} characters, more than max_input_chars {max_chars}")
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
