"""Mapping client parameters onto the engine's: the sampling rule (LoRAX's), defaults, and OpenAI's ``model``."""

from __future__ import annotations

import pytest
import torch

from inference_service.engine import AdapterRef, AdapterSourceKind, ValidationFailed
from inference_service.engine.sampling import choose_token
from inference_service.params import adapter_ref, chat_parameters, completion_parameters, generation_params
from inference_service.schemas import ChatCompletionRequest, CompletionRequest, GenerateParameters
from inference_service.settings import EngineSettings

SETTINGS = EngineSettings(default_max_new_tokens=20, max_new_tokens_cap=64)


def _params(**values: object) -> tuple[bool, float | None]:
    p = generation_params(GenerateParameters(**values), SETTINGS)  # type: ignore[arg-type]
    return p.do_sample, p.temperature


def test_sampling_follows_lorax() -> None:
    assert _params() == (False, None)
    assert _params(temperature=0.7) == (True, 0.7)  # a sampling knob switches sampling on
    assert _params(temperature=0, top_k=5) == (False, None)  # temperature 0 means greedy
    assert _params(top_p=1.0) == (False, None)  # a no-op knob does not
    assert generation_params(GenerateParameters(), SETTINGS).max_new_tokens == 20
    chat = ChatCompletionRequest(model="default", messages=[{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    assert generation_params(chat_parameters(chat, "base"), SETTINGS).do_sample  # chat samples by default
    done = CompletionRequest(model="default", prompt="hi")
    assert not generation_params(completion_parameters(done, "base"), SETTINGS).do_sample


def test_openai_model_names_the_adapter() -> None:
    def ref(model: str) -> AdapterRef | None:
        return adapter_ref(completion_parameters(CompletionRequest(model=model, prompt="x"), "base"))

    assert ref("base") is None and ref("default") is None
    assert ref("s3://bucket/users/u/v00000001") == AdapterRef(AdapterSourceKind.S3, "s3://bucket/users/u/v00000001")
    assert ref("/adapters/u") == AdapterRef(AdapterSourceKind.LOCAL, "/adapters/u")
    with pytest.raises(ValidationFailed, match="names no adapter"):
        ref("some-hub/adapter")
    with pytest.raises(ValidationFailed, match="stop"):
        completion_parameters(CompletionRequest(model="base", prompt="x", stop=["a"] * 5), "base")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1000.0}, "temperature"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty"),
        ({"seed": 2**64}, "seed"),  # torch's generator cannot take it (was a 500)
        ({"top_k": 2**31}, "top_k"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ],
)
def test_sampling_values_outside_the_limits_are_refused(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed, match=rf"`parameters\.{field}`"):
        generation_params(GenerateParameters(**values), SETTINGS)  # type: ignore[arg-type]
    openai = CompletionRequest(model="default", prompt="x", **values)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match=field):
        generation_params(completion_parameters(openai, "base"), SETTINGS)


def test_sampling_limits_keep_their_edges() -> None:
    for values in ({"seed": 2**64 - 1}, {"temperature": 0}, {"temperature": 0.01}, {"temperature": 100.0}):
        generation_params(GenerateParameters(**values), SETTINGS)  # type: ignore[arg-type]


def test_a_temperature_lorax_accepts_is_accepted_and_sampled_at_the_floor() -> None:
    # LoRAX 0.12.1 takes any temperature above 0 (router/src/validation.rs); one under 0.01 was refused with 422.
    # Sampling raises it to 0.01 (logits / 1e-300 would overflow float32 into NaN probabilities).
    tiny = generation_params(GenerateParameters(temperature=1e-300, do_sample=True), SETTINGS)
    assert tiny.do_sample and tiny.temperature == 1e-300
    logits = torch.tensor([3.0, 2.9, -1.0, 0.5])
    floor = generation_params(GenerateParameters(temperature=0.01, do_sample=True), SETTINGS)
    for seed in range(5):
        picked = [choose_token(logits, p, torch.empty(0), torch.Generator().manual_seed(seed)) for p in (tiny, floor)]
        assert picked[0] == picked[1]


def test_served_buckets_default_to_the_store_bucket_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SOPPU_STORE_URL", "SOPPU_ENGINE_S3_BUCKETS", "SOPPU_ENGINE_LOCAL_ADAPTER_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    assert EngineSettings().served_buckets() == () and EngineSettings().local_adapter_roots == []
    assert EngineSettings(store_url="/srv/store").served_buckets() == ()  # a directory store names no bucket
    monkeypatch.setenv("SOPPU_STORE_URL", "s3://soppu")
    assert EngineSettings().served_buckets() == ("soppu",)
    monkeypatch.setenv("SOPPU_ENGINE_S3_BUCKETS", '["soppu", "team-*"]')
    assert EngineSettings().served_buckets() == ("soppu", "team-*")
