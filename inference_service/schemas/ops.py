"""Shapes of the operational routes: ``/tokenize`` and ``/info``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Info", "TokenSpan", "TokenizeRequest"]


class TokenizeRequest(BaseModel):
    inputs: str
    add_special_tokens: bool = Field(True, description="include BOS etc. as the engine's prompts do")

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": "My favourite colour is"}]})


class TokenSpan(BaseModel):
    """One token and the characters of ``inputs`` it covers (``inputs[start:stop]``; empty for BOS)."""

    id: int
    text: str
    start: int
    stop: int


class Info(BaseModel):
    """LoRAX's ``/info`` fields that mean something here, plus the engine's own limits."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str = "text-generation"
    max_concurrent_requests: int = Field(description="queued requests beyond this answer 429")
    max_best_of: int = 1
    max_stop_sequences: int = 4
    max_input_length: int
    max_total_tokens: int
    max_batch_size: int
    adapter_sources: list[str] = Field(description="the sources this engine was configured to read adapters from")
    version: str
    sha: str | None = None
    docker_label: str | None = None
