"""Driving the fake LoRAX in its contract tests: the example users (their adapters and the facts only their
adapter knows), adapters uploaded to the session's moto S3 under a fresh key each, and requests by raw HTTP with
their tokens, stream events and data lines; and a raw rank-4 adapter to see LoRAX's scaling on."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import torch

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule
from soppu.store import S3Store

MAX_NEW = 6
TIMEOUT = 120.0


def example_manifest(examples_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((examples_dir / "users.json").read_text())
    return loaded


def example_user(examples_dir: Path, index: int) -> tuple[Path, dict[str, str]]:
    user = example_manifest(examples_dir)["users"][index]
    return examples_dir / user["adapter"], {p["prompt"]: p["expected"] for p in user["prompts"]}


def own_fact(examples_dir: Path, index: int) -> tuple[str, str]:
    """A prompt user ``index`` answers differently from the base model, and that answer."""
    base = example_manifest(examples_dir)["base_answers"]
    _, answers = example_user(examples_dir, index)
    return next((p, a) for p, a in answers.items() if a != base[p])


def upload(store: S3Store, key: str, adapter_dir: Path | None = None, *, config: bytes | None = None,
            weights: bytes | None = None) -> str:  # fmt: skip
    """Put an adapter's two files under ``key``; ``s3://bucket/key``."""
    if adapter_dir is not None:
        config = config or (adapter_dir / "adapter_config.json").read_bytes()
        weights = weights or (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert config is not None and weights is not None
    store.put(f"{key}/adapter_config.json", config)
    store.put(f"{key}/adapter_model.safetensors", weights)
    return f"s3://{store.bucket}/{key}"


def fresh_key() -> str:
    # A fresh key per test: the fake's disk cache is keyed by it and never refreshed.
    return f"adapters/{uuid.uuid4().hex[:12]}/v00000001"


def generate(url: str, prompt: str, adapter_id: str | None = None, **parameters: Any) -> httpx.Response:
    params: dict[str, Any] = {"max_new_tokens": MAX_NEW, "details": True, **parameters}
    if adapter_id is not None:
        params |= {"adapter_id": adapter_id, "adapter_source": "s3"}
    return httpx.post(f"{url}/generate", json={"inputs": prompt, "parameters": params}, timeout=TIMEOUT)


def token_logprobs(response: httpx.Response) -> list[tuple[int, float]]:
    assert response.status_code == 200, response.text
    return [(t["id"], t["logprob"]) for t in response.json()["details"]["tokens"]]


def post_stream(url: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=TIMEOUT) as r:
        return r.status_code, r.read()


def data_lines(raw: bytes) -> list[str]:
    return [line.removeprefix(b"data:").decode() for line in raw.split(b"\n\n") if line.strip()]


def raw_rank4(adapter: LoraAdapter, *, rslora: bool) -> LoraAdapter:
    """A raw rank-4 adapter (not LoRAX's served form) whose PEFT delta is the best rank-4 approximation of
    ``adapter``'s: PEFT scales it by ``alpha / sqrt(4)`` with rsLoRA, ``alpha / 4`` without."""
    alpha = 16.0
    scale = alpha / math.sqrt(4) if rslora else alpha / 4
    modules = {}
    for name, module in adapter:
        u, s, vh = torch.linalg.svd(module.delta().double(), full_matrices=False)
        b = (u[:, :4] * s[:4] / scale).float().contiguous()
        modules[name] = LoraModule(b=b, a=vh[:4].float().contiguous(), scaling=scale)
    config: AdapterConfig = replace(adapter.config, r=4, lora_alpha=alpha, use_rslora=rslora)
    return LoraAdapter(config, modules)
