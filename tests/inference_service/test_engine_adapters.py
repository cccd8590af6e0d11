"""The engine end to end in-process: adapters from a real S3 server (moto over HTTP) and from local paths, the
cache's single download and ETag keying, compressed adapters found through their core, errors, cancellation
and sampling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_service.engine import (
    AdapterLoadFailed,
    AdapterRef,
    AdapterSourceKind,
    Engine,
    EngineConfig,
    GenerationParams,
    GenerationResult,
    SourceRules,
    TokenInfo,
    ValidationFailed,
)
from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from soppu.compression import RankPolicy, compress
from soppu.compression.format import bases_bytes, core_bytes
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion, basis_key, relative_ref, s3_adapter_id
from tests.inference_service.example_user import serve

S3 = AdapterSourceKind.S3
GREEDY = GenerationParams(max_new_tokens=4, stop=(".",))


@pytest.fixture(scope="module")
def users(examples_dir: Path) -> list[dict[str, Any]]:
    return json.loads((examples_dir / "users.json").read_text())["users"]


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables LoRAX reads S3 settings from, pointed at the moto server."""
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def engine(examples_dir: Path, tmp_path: Path, s3_env: None) -> Iterator[Engine]:
    sources = SourceRules(s3_buckets=("test-*",), local_roots=(examples_dir, tmp_path))  # s3_store's buckets
    config = EngineConfig(examples_dir / "base", device="cpu", adapter_revalidate_s=0.0, max_queue=8, sources=sources)
    yield Engine(config)


async def _run(engine: Engine, prompt: str, ref: AdapterRef | None, params: GenerationParams = GREEDY) -> Any:
    items = [item async for item in engine.generate(prompt, params, ref)]
    assert all(isinstance(i, TokenInfo) for i in items[:-1])
    assert isinstance(items[-1], GenerationResult)
    return items[-1]


def _upload(store: S3Store, version: AdapterVersion, directory: Path) -> str:
    for key, name in zip(version.export_keys(), (CONFIG_NAME, WEIGHTS_NAME), strict=True):
        store.put(key, (directory / name).read_bytes())
    return s3_adapter_id(store.bucket, version.export_prefix)


def test_s3_adapter_downloads_once_for_concurrent_cold_requests(engine: Engine, s3_store: S3Store, users) -> None:
    user = users[0]
    adapter_id = _upload(s3_store, AdapterVersion(user["user_id"], "default", 1), engine_dir(user, engine))
    prompt = user["prompts"][0]

    async def body() -> list[Any]:
        return await asyncio.gather(*[_run(engine, prompt["prompt"], AdapterRef(S3, adapter_id)) for _ in range(6)])

    results = serve(engine, body)
    assert {r.generated_text for r in results} == {prompt["expected"]}
    assert engine.stats.adapter_downloads == 2  # config + weights, once


def engine_dir(user: dict[str, Any], engine: Engine) -> Path:
    return Path(engine.config.model_path).parent / "adapters" / user["user_id"]


def test_new_key_and_replaced_object_are_served_without_restart(engine: Engine, s3_store: S3Store, users) -> None:
    first, second = users[0], users[1]
    prompt = first["prompts"][0]  # same attribute for both users, different answers
    other = next(p for p in second["prompts"] if p["attribute"] == prompt["attribute"])
    v1 = _upload(s3_store, AdapterVersion("alice", "default", 1), engine_dir(first, engine))

    async def body() -> list[str]:
        answers = [(await _run(engine, prompt["prompt"], AdapterRef(S3, v1))).generated_text]
        v2 = _upload(s3_store, AdapterVersion("alice", "default", 2), engine_dir(second, engine))
        answers.append((await _run(engine, prompt["prompt"], AdapterRef(S3, v2))).generated_text)
        # Overwriting v1 in place (never done by SOPPU, but LoRAX would keep serving stale weights): new ETag.
        _upload(s3_store, AdapterVersion("alice", "default", 1), engine_dir(second, engine))
        answers.append((await _run(engine, prompt["prompt"], AdapterRef(S3, v1))).generated_text)
        return answers

    assert serve(engine, body) == [prompt["expected"], other["expected"], other["expected"]]


def test_compressed_adapter_is_found_through_its_core(engine: Engine, s3_store: S3Store, users, examples_dir) -> None:
    named = [(u["user_id"], read_adapter(examples_dir / "adapters" / u["user_id"])) for u in users]
    compression = compress(named, policy=RankPolicy.fixed(32), device="cpu")
    bases = basis_key("cohort-a", 1)
    s3_store.put(bases, bases_bytes(compression.clusters[0], compression))
    refs = {}
    for name, _ in named:
        version = AdapterVersion(name, "default", 1)
        ref = relative_ref(version.core_key, bases)
        s3_store.put(version.core_key, core_bytes(compression, compression.adapter(name), bases_ref=ref))
        refs[name] = AdapterRef(S3, f"s3://{s3_store.bucket}/{version.core_key.rsplit('/', 1)[0]}")

    async def body() -> list[tuple[str, str]]:
        jobs = [_run(engine, u["prompts"][0]["prompt"], refs[u["user_id"]]) for u in users]
        results = await asyncio.gather(*jobs)
        return [(r.generated_text, u["prompts"][0]["expected"]) for r, u in zip(results, users, strict=True)]

    answers = serve(engine, body)
    assert sum(got == expected for got, expected in answers) >= len(users) - 1, answers
    # One bases download for the cohort, one core per user.
    assert engine.stats.adapter_downloads == 1 + len(users)


@pytest.mark.parametrize(
    ("source", "adapter_id"),
    [(S3, "s3://test-no-such-bucket/exports/u/default/v00000001"), (AdapterSourceKind.LOCAL, "nonexistent")],
)
def test_missing_adapter_fails_to_load(
    engine: Engine, tmp_path: Path, source: AdapterSourceKind, adapter_id: str
) -> None:
    adapter_id = str(tmp_path / adapter_id) if source is AdapterSourceKind.LOCAL else adapter_id  # inside a root

    async def body() -> None:
        with pytest.raises(AdapterLoadFailed, match="could not be loaded"):
            await _run(engine, "My pet is a", AdapterRef(source, adapter_id))
        assert (await _run(engine, "My pet is a", None)).generated_text  # and the engine keeps serving

    serve(engine, body)


def test_pickled_weights_are_refused(engine: Engine, tmp_path: Path, examples_dir: Path, users) -> None:
    (tmp_path / CONFIG_NAME).write_bytes((examples_dir / "adapters" / users[0]["user_id"] / CONFIG_NAME).read_bytes())
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors

    async def body() -> None:
        with pytest.raises(AdapterLoadFailed, match=r"not_safetensors|pickle"):
            await _run(engine, "My pet is a", AdapterRef(AdapterSourceKind.LOCAL, str(tmp_path)))

    serve(engine, body)


@pytest.mark.parametrize(
    "params", [GenerationParams(max_new_tokens=0), GenerationParams(max_new_tokens=5000)], ids=["zero", "over-context"]
)
def test_bad_parameters_are_validation_errors(engine: Engine, params: GenerationParams) -> None:
    async def body() -> None:
        with pytest.raises(ValidationFailed):
            await _run(engine, "My pet is a", None, params)

    serve(engine, body)


def test_closing_a_stream_frees_its_row(engine: Engine) -> None:
    async def body() -> int:
        stream: AsyncIterator[Any] = engine.generate("My pet is a", GenerationParams(max_new_tokens=200), None)
        await anext(stream)
        await stream.aclose()
        await _run(engine, "My pet is a", None)  # a later request runs, and the closed one is gone
        return engine.stats.batch_size

    assert serve(engine, body) == 0


def test_seeded_sampling_repeats_and_greedy_is_default(engine: Engine) -> None:
    sample = GenerationParams(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7)

    async def body() -> list[Any]:
        return [await _run(engine, "My home city is", None, p) for p in (sample, sample, GREEDY)]

    first, again, greedy = serve(engine, body)
    assert first.generated_text == again.generated_text and first.seed == 7
    assert greedy.seed is None and greedy.finish_reason == "stop_sequence"
