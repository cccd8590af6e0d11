"""LoRAX 0.12.1's base-model limits, checked on synthetic model directories (JSON files only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soppu.lorax_limits import (
    LORAX_BGMV_WIDTHS,
    LORAX_DECODE_RANKS,
    LORAX_HEAD_SIZES,
    lora_projection_shapes,
    lorax_problems,
    lorax_rank,
)

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

# SmolLM2-135M's shape: head size 576 / 9 = 64, k/v width 3 * 64 = 192.
SMOLLM2_135M: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
# The project's tiny example model: head size 128 / 4 = 32.
TINY: dict[str, Any] = {
    **SMOLLM2_135M,
    "vocab_size": 512,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 256,
    "torch_dtype": "float32",
}
TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|im_start|>",
    "eos_token": {"content": "<|im_end|>", "lstrip": False},
    "chat_template": CHAT_TEMPLATE,
}


def write_model(root: Path, config: dict[str, Any], tokenizer_config: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = TOKENIZER_CONFIG if tokenizer_config is None else tokenizer_config
    (root / "tokenizer_config.json").write_text(json.dumps(tok), encoding="utf-8")
    return root


def test_smollm2_shape_is_servable_with_disable_sgmv(tmp_path: Path) -> None:
    assert lorax_problems(write_model(tmp_path / "m", SMOLLM2_135M), disable_sgmv=True) == []


def test_smollm2_shape_lacks_bgmv_kernels_for_576_and_192(tmp_path: Path) -> None:
    # bgmv_config.h at v0.12.1 jumps from 512 to 640 and starts at 256: hidden 576 and k/v width 192 have no
    # decode kernel, intermediate 1536 has one. Head size 64 is fine.
    problems = lorax_problems(write_model(tmp_path / "m", SMOLLM2_135M))
    assert len(problems) == 2, problems
    assert problems[0].startswith("LoRA width 192 (k_proj, v_proj)")
    assert problems[1].startswith("LoRA width 576 (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
    assert all("--disable-sgmv" in p for p in problems)
    assert not any("1536" in p or "head size" in p for p in problems)


def test_tiny_model_fails_on_head_size_and_widths(tmp_path: Path) -> None:
    problems = lorax_problems(write_model(tmp_path / "m", TINY))
    text = "\n".join(problems)
    assert "head size 32" in text
    assert "LoRA width 64 (k_proj, v_proj)" in text
    assert "LoRA width 128 (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)" in text
    assert "LoRA width 256" not in text  # intermediate 256 has a kernel
    # The head size is a hard limit: it stays with --disable-sgmv, the width problems go.
    assert [p for p in lorax_problems(tmp_path / "m", disable_sgmv=True) if "head size" in p] == [
        p for p in problems if "head size" in p
    ]
    assert len(lorax_problems(tmp_path / "m", disable_sgmv=True)) == 1


def test_transformers5_tokenizer_class_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m", SMOLLM2_135M, {**TOKENIZER_CONFIG, "tokenizer_class": "TokenizersBackend"})
    problems = lorax_problems(model, disable_sgmv=True)
    assert len(problems) == 1
    assert "TokenizersBackend" in problems[0] and "4.45.1" in problems[0]


@pytest.mark.parametrize("name", ["LlamaTokenizerFast", "LlamaTokenizer", "GPT2TokenizerFast"])
def test_loadable_tokenizer_classes(tmp_path: Path, name: str) -> None:
    model = write_model(tmp_path / "m", SMOLLM2_135M, {**TOKENIZER_CONFIG, "tokenizer_class": name})
    assert lorax_problems(model, disable_sgmv=True) == []


def test_missing_chat_template_is_a_problem(tmp_path: Path) -> None:
    tok = {k: v for k, v in TOKENIZER_CONFIG.items() if k != "chat_template"}
    model = write_model(tmp_path / "m", SMOLLM2_135M, tok)
    problems = lorax_problems(model, disable_sgmv=True)
    assert len(problems) == 1 and "chat_template" in problems[0]
    # A separate chat_template.jinja (what transformers 5 writes) does not count, and the problem says so.
    (model / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (problem,) = lorax_problems(model, disable_sgmv=True)
    assert "chat_template.jinja" in problem


def test_chat_template_list_needs_a_default(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": CHAT_TEMPLATE}]
    model = write_model(tmp_path / "m", SMOLLM2_135M, {**TOKENIZER_CONFIG, "chat_template": named})
    assert len(lorax_problems(model, disable_sgmv=True)) == 1
    named.append({"name": "default", "template": CHAT_TEMPLATE})
    model = write_model(tmp_path / "m", SMOLLM2_135M, {**TOKENIZER_CONFIG, "chat_template": named})
    assert lorax_problems(model, disable_sgmv=True) == []


def test_missing_config_fields_are_named(tmp_path: Path) -> None:
    config = {k: v for k, v in SMOLLM2_135M.items() if k not in {"rope_theta", "num_key_value_heads", "torch_dtype"}}
    problems = lorax_problems(write_model(tmp_path / "m", config), disable_sgmv=True)
    assert any("num_key_value_heads" in p and "rope_theta" in p for p in problems)
    assert any("dtype" in p for p in problems)
    # transformers 5's "dtype" satisfies the field, but bfloat16 given only there would be served as float16.
    problems = lorax_problems(write_model(tmp_path / "m", {**config, "dtype": "bfloat16"}), disable_sgmv=True)
    assert any("torch_dtype" in p and "--dtype bfloat16" in p for p in problems)


def test_unsupported_model_type_and_head_dim_and_rope(tmp_path: Path) -> None:
    config = {**SMOLLM2_135M, "model_type": "qwen3", "head_dim": 128, "rope_scaling": {"rope_type": "llama3"}}
    problems = lorax_problems(write_model(tmp_path / "m", config), disable_sgmv=True)
    text = "\n".join(problems)
    assert "'qwen3'" in text and "head_dim 128" in text and "rope_scaling" in text
    assert len(problems) == 3


def test_missing_files_are_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    problems = lorax_problems(tmp_path / "m")
    assert problems == [
        f"config.json is missing from {tmp_path / 'm'}",
        f"tokenizer_config.json is missing from {tmp_path / 'm'}",
    ]
    (tmp_path / "m" / "config.json").write_text("{not json", encoding="utf-8")
    assert "not readable JSON" in lorax_problems(tmp_path / "m")[0]
    assert lorax_problems(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'} is not a directory"]


RANK_TABLE = [(1, 8), (4, 8), (8, 8), (12, 16), (24, 32), (48, 48), (100, 112), (128, 128)]


@pytest.mark.parametrize(("r", "padded"), RANK_TABLE)
def test_lorax_rank(r: int, padded: int) -> None:
    assert lorax_rank(r) == padded


def test_lorax_rank_rejects_nonpositive() -> None:
    with pytest.raises(ValueError, match="rank"):
        lorax_rank(0)


def test_limits_tables() -> None:
    assert LORAX_DECODE_RANKS == (8, 16, 32, 64, 128)
    assert sorted(LORAX_HEAD_SIZES) == [64, 80, 96, 112, 128, 192, 256]
    assert min(LORAX_BGMV_WIDTHS) == 256 and 576 not in LORAX_BGMV_WIDTHS and 4096 in LORAX_BGMV_WIDTHS
    # Padding alone does not reach a kernel: r = 48 stays 48, which neither decode (BGMV) nor prefill (SGMV) has.
    assert lorax_rank(48) not in LORAX_DECODE_RANKS
    assert all(lorax_rank(r) == r for r in LORAX_DECODE_RANKS)


def test_projection_shapes_follow_lorax_head_size() -> None:
    shapes = lora_projection_shapes(SMOLLM2_135M)
    assert shapes["q_proj"] == (576, 576)
    assert shapes["k_proj"] == shapes["v_proj"] == (576, 192)
    assert shapes["o_proj"] == (576, 576)
    assert shapes["gate_proj"] == shapes["up_proj"] == (576, 1536)
    assert shapes["down_proj"] == (1536, 576)
