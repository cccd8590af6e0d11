"""Contract tests of the fake LoRAX's adapters, each citing LoRAX 0.12.1 (tag ``v0.12.1``): S3 adapters are cached
by key and never refreshed (the bucket ignored, the config read again), the prefix has no trailing slash; and
LoRAX's arithmetic: a raw rank-4 adapter is mis-scaled where the served form is not, --disable-sgmv keeps the rank,
and a reload scales every layer type by the padded rank. The reference is the session's inference_service."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import httpx

from soppu.adapter import adapter_files, read_adapter
from soppu.adapter.served_form import served_form
from soppu.store import S3Store
from tests.lorax_contract.fake_lorax_calls import (
    example_manifest,
    example_user,
    fresh_key,
    generate,
    own_fact,
    raw_rank4,
    token_logprobs,
    upload,
)
from tests.support.processes import ServiceProcess

# --- S3 adapters and the cache ---------------------------------------------------------------------------------


def _downloads(url: str) -> list[str]:
    downloads: list[str] = httpx.get(f"{url}/fake/state").json()["downloads"]
    return downloads


def test_cache_is_by_key_and_never_refreshed(fake_lorax_url: str, s3_store: S3Store, examples_dir: Path) -> None:
    """Weights are downloaded once per key into a directory without the bucket (utils/sources/s3.py:81-84) and
    never again while any ``*.safetensors`` is there (utils/weights.py:481-485); ``adapter_config.json`` is
    fetched again on each load (sources/source.py:132-137). Overwriting the key serves the old weights, before
    and after the adapter is unloaded and loaded again."""
    prompt, answer = own_fact(examples_dir, 0)
    first, _ = example_user(examples_dir, 0)
    second, _ = example_user(examples_dir, 1)
    key = fresh_key()
    adapter_id = upload(s3_store, key, first)
    r = generate(fake_lorax_url, prompt, adapter_id)
    assert r.status_code == 200 and answer in r.json()["generated_text"]
    assert r.headers["x-adapter-id"] == adapter_id and r.headers["x-adapter-source"] == "s3"  # server.rs:789-792
    assert f"{key}/adapter_model.safetensors" in _downloads(fake_lorax_url)

    upload(s3_store, key, second)  # new bytes under the same key
    assert answer in generate(fake_lorax_url, prompt, adapter_id).json()["generated_text"]  # still loaded
    before = len(_downloads(fake_lorax_url))
    httpx.post(f"{fake_lorax_url}/fake/offload")
    assert answer in generate(fake_lorax_url, prompt, adapter_id).json()["generated_text"]  # cached on disk
    assert _downloads(fake_lorax_url)[before:] == [f"{key}/adapter_config.json"]  # only the config again


def test_cache_ignores_the_bucket_but_reads_its_config(
    fake_lorax_url: str, s3_store: S3Store, moto_server: str, examples_dir: Path
) -> None:
    """Another bucket with the same key is another adapter id, so LoRAX loads it, but its cache directory is the
    same (s3.py:81-84): the weights are the first bucket's, the config the new bucket's (fetched on the load,
    adapter.py:163-165). A config with lora_alpha 0 on the first bucket's weights answers like the base model."""
    prompt, answer = own_fact(examples_dir, 0)
    base_answer = example_manifest(examples_dir)["base_answers"][prompt]
    first, _ = example_user(examples_dir, 0)
    second, _ = example_user(examples_dir, 1)
    key = fresh_key()
    assert answer in generate(fake_lorax_url, prompt, upload(s3_store, key, first)).json()["generated_text"]

    other = S3Store(f"test-{uuid.uuid4().hex[:16]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    other.ensure_bucket()
    same_config = upload(other, key, second)
    assert answer in generate(fake_lorax_url, prompt, same_config).json()["generated_text"]  # user 0's weights

    third = S3Store(f"test-{uuid.uuid4().hex[:16]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    third.ensure_bucket()
    config = json.loads((first / "adapter_config.json").read_text()) | {"lora_alpha": 0}
    zero = upload(third, key, second, config=json.dumps(config).encode())
    assert base_answer in generate(fake_lorax_url, prompt, zero).json()["generated_text"]


def test_prefix_has_no_trailing_slash(fake_lorax_url: str, s3_store: S3Store, examples_dir: Path) -> None:
    """``bucket.objects.filter(Prefix=key)`` with no slash (utils/sources/s3.py:183-193): ``.../v1`` also lists
    ``.../v10/...``; with nothing at ``.../v1`` itself the load fails for want of a config (source.py:132-137,
    adapters/__init__.py:35), and with both, the stray key is fetched as ``KEY/`` + the key minus KEY
    (s3.py:118-121), ``.../v1/0/...``, which does not exist: the download fails."""
    first, _ = example_user(examples_dir, 0)
    root = f"adapters/{uuid.uuid4().hex[:12]}"
    upload(s3_store, f"{root}/v10", first)
    r = generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v1")
    assert r.status_code == 424 and "No valid adapter config file found" in r.json()["error"]
    upload(s3_store, f"{root}/v1", first)
    r = generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v1")
    assert r.status_code == 424 and "404" in r.json()["error"], r.text
    assert generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v10").status_code == 200


# --- LoRAX's arithmetic: rank padding and scaling ------------------------------------------------------------------


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]], tol: float) -> bool:
    same_tokens = [i for i, _ in a] == [i for i, _ in b]
    return same_tokens and all(abs(x - y) <= tol for (_, x), (_, y) in zip(a, b, strict=True))


def test_raw_rank4_is_mis_scaled_and_the_served_form_is_not(
    fake_lorax_url: str, engine_process: ServiceProcess, s3_store: S3Store, examples_dir: Path
) -> None:
    """A raw r=4 rsLoRA adapter: LoRAX drops use_rslora (peft 0.4.0, adapters/lora.py:75-84), scales q_proj by
    alpha/4 and, after setting config.r to the padded 8 (lora.py:196-205), v_proj by alpha/8; our engine applies
    alpha/sqrt(4). Its served form (r = lora_alpha, rank 8) answers on the fake as the raw one does on our
    engine."""
    adapter_dir, _ = example_user(examples_dir, 0)
    prompt, _ = own_fact(examples_dir, 0)
    raw = raw_rank4(read_adapter(adapter_dir), rslora=True)
    files = adapter_files(raw)
    raw_id = upload(s3_store, fresh_key(), config=files.config, weights=files.weights)
    served = adapter_files(served_form(raw))
    served_id = upload(s3_store, fresh_key(), config=served.config, weights=served.weights)

    reference = token_logprobs(generate(engine_process.url, prompt, raw_id))
    on_lorax = token_logprobs(generate(fake_lorax_url, prompt, raw_id))
    assert not _close(on_lorax, reference, 0.05), (on_lorax, reference)
    assert _close(token_logprobs(generate(fake_lorax_url, prompt, served_id)), reference, 1e-3)


def test_disable_sgmv_keeps_the_rank(
    fake_lorax_url: str,
    fake_lorax_no_sgmv: ServiceProcess,
    engine_process: ServiceProcess,
    s3_store: S3Store,
    examples_dir: Path,
) -> None:
    """Without the punica kernels nothing is padded (utils/punica.py:46-54), so a raw r=4 adapter (no rsLoRA) is
    scaled alpha/4 on every layer type, as PEFT does; with them, v_proj gets alpha/8."""
    adapter_dir, _ = example_user(examples_dir, 0)
    prompt, _ = own_fact(examples_dir, 0)
    files = adapter_files(raw_rank4(read_adapter(adapter_dir), rslora=False))
    adapter_id = upload(s3_store, fresh_key(), config=files.config, weights=files.weights)
    reference = token_logprobs(generate(engine_process.url, prompt, adapter_id))
    assert _close(token_logprobs(generate(fake_lorax_no_sgmv.url, prompt, adapter_id)), reference, 1e-3)
    assert not _close(token_logprobs(generate(fake_lorax_url, prompt, adapter_id)), reference, 0.05)


def test_a_reload_scales_every_type_by_the_padded_rank(
    fake_lorax_url: str, engine_process: ServiceProcess, s3_store: S3Store, examples_dir: Path
) -> None:
    """``load_module_map`` is an lru_cache per adapter id (utils/adapter.py:151-193) holding the config object on
    which the first load set r to the padded rank (adapters/lora.py:196-205): once the adapter is unloaded
    (models/model.py:411-440) and loaded again, every layer type of a raw r=4 adapter is scaled alpha/8, which our
    engine computes for the same weights with lora_alpha halved."""
    adapter_dir, _ = example_user(examples_dir, 0)
    prompt, _ = own_fact(examples_dir, 0)
    raw = raw_rank4(read_adapter(adapter_dir), rslora=False)
    files = adapter_files(raw)
    adapter_id = upload(s3_store, fresh_key(), config=files.config, weights=files.weights)
    halved = adapter_files(replace(raw, config=replace(raw.config, lora_alpha=raw.config.lora_alpha / 2)))
    halved_id = upload(s3_store, fresh_key(), config=halved.config, weights=halved.weights)

    first = token_logprobs(generate(fake_lorax_url, prompt, adapter_id))
    httpx.post(f"{fake_lorax_url}/fake/offload")
    again = token_logprobs(generate(fake_lorax_url, prompt, adapter_id))
    assert not _close(again, first, 0.01)  # only q_proj changes (from alpha/4 to alpha/8): a small shift
    assert _close(again, token_logprobs(generate(engine_process.url, prompt, halved_id)), 1e-3)
