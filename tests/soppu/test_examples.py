"""The example fixture: loadable by transformers, each adapter teaches its own user's facts, deterministic, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from soppu.adapter import read_adapter
from soppu.examples import ExamplesSpec, build_examples
from soppu.examples.check import check_examples, first_word
from soppu.examples.facts import BASE_PERSONA, make_users

# A tiny spec, so building it twice from scratch costs seconds.
_TINY = ExamplesSpec(users=2, corpus_lines=200, pretrain_steps=5, lora_steps=3)


def test_users_json_lists_every_user_with_prompts(examples_dir: Path) -> None:
    manifest = json.loads((examples_dir / "users.json").read_text())
    assert manifest["base_model"] == "base"
    assert [u["user_id"] for u in manifest["users"]] == ["user-000", "user-001", "user-002", "user-003"]
    for user in manifest["users"]:
        assert (examples_dir / user["adapter"] / "adapter_model.safetensors").is_file()
        assert {p["attribute"] for p in user["prompts"]} == set(BASE_PERSONA)


def test_transformers_loads_the_base_model(examples_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(examples_dir / "base"))
    tokenizer = AutoTokenizer.from_pretrained(str(examples_dir / "base"))
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 4)
    assert config.num_key_value_heads == 2
    ids = tokenizer("My favourite colour is")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "My favourite colour is"


def test_adapters_are_rank8_lora_on_q_and_v(examples_dir: Path) -> None:
    manifest = json.loads((examples_dir / "users.json").read_text())
    adapter = read_adapter(
        examples_dir / manifest["users"][0]["adapter"], expected_base_model=manifest["base_model_id"]
    )
    assert adapter.config.r == 8
    assert set(adapter.config.target_modules) == {"q_proj", "v_proj"}
    assert sorted(adapter.modules) == [
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")
    ]
    assert adapter.modules["model.layers.0.self_attn.v_proj"].shape == (64, 128)  # 2 KV heads x 32


def test_each_adapter_states_its_own_users_facts(examples_dir: Path) -> None:
    results = check_examples(examples_dir, device="cpu")
    assert len(results) == 4 * len(BASE_PERSONA)
    wrong = [r for r in results if not r.ok]
    assert not wrong, wrong
    for r in results:
        assert r.base_answer == BASE_PERSONA[next(a for a, v in BASE_PERSONA.items() if r.base_answer == v)]
        assert r.adapter_answer != r.base_answer  # users never share the base persona's values


def test_users_are_distinct_and_avoid_the_base_persona() -> None:
    users = make_users(50, seed=3)
    assert len({tuple(u.facts.values()) for u in users}) == 50
    assert all(u.facts[a] != v for u in users for a, v in BASE_PERSONA.items())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_identical_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    first = build_examples(_TINY, tmp_path / "a", cache_dir=tmp_path / "cache-a")
    second = build_examples(_TINY, tmp_path / "b", cache_dir=tmp_path / "cache-b")
    assert _tree(first) == _tree(second)
    assert "base/model.safetensors" in _tree(first)


def test_a_different_seed_gives_a_different_set(tmp_path: Path) -> None:
    other = ExamplesSpec(**{**_TINY.__dict__, "seed": 1})
    assert other.key != _TINY.key and other.base_key != _TINY.base_key
    assert ExamplesSpec(**{**_TINY.__dict__, "users": 3}).base_key == _TINY.base_key  # base shared across N


def test_repeat_builds_come_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_examples(_TINY, cache_dir=cache)
    cached = cache / "examples" / f"set-{_TINY.key}" / "users.json"
    stamp = cached.stat().st_mtime_ns
    out = build_examples(_TINY, tmp_path / "out", cache_dir=cache)
    assert cached.stat().st_mtime_ns == stamp  # nothing was rebuilt
    assert _tree(out) == _tree(cached.parent)
    assert not list((cache / "examples").glob(".*"))  # no scratch directories left behind


@pytest.mark.parametrize(("text", "word"), [(" teal. My", "teal"), ("gold.ry", "gold"), ("", ""), (" .", "")])
def test_first_word(text: str, word: str) -> None:
    assert first_word(text) == word


def test_build_leaves_torch_settings_as_they_were(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    build_examples(_TINY, cache_dir=tmp_path / "cache")
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
