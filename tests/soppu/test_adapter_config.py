"""An adapter config's semantics, as PEFT has them: the scaling (plain and rsLoRA), rank and alpha patterns and
which modules they reach, and the forms of target_modules (names, dotted suffixes, a regex matching whole module
names)."""

from __future__ import annotations

import math

import pytest

from soppu.adapter import (
    parse_config,
    read_adapter,
)
from soppu.lora import lora_scaling
from tests.support.adapter_factory import (
    MODULES,
    Q_PROJ,
    V_PROJ,
    config_bytes,
    make_files,
    parts,
)


@pytest.mark.parametrize(
    ("r", "alpha", "rslora", "expected"),
    [
        (4, 8, False, 2.0),
        (4, 8, True, 4.0),
        (8, 16, False, 2.0),
        (8, 16, True, 16 / math.sqrt(8)),
        (4, 1.5, False, 0.375),
        (16, 32, True, 8.0),
    ],
)
def test_scaling(r: int, alpha: float, rslora: bool, expected: float) -> None:
    files = make_files(r=r, lora_alpha=alpha, use_rslora=rslora)
    adapter = read_adapter(parts(files))
    assert adapter.config.use_rslora is rslora
    for module in adapter.modules.values():
        assert module.rank == r
        assert module.scaling == pytest.approx(expected, rel=1e-12)
        assert module.scaling == lora_scaling(alpha, r, use_rslora=rslora)


PATTERN_MODULES = {
    "model.layers.0.self_attn.q_proj": (16, 16),
    "model.layers.1.self_attn.q_proj": (16, 16),
    "model.layers.11.self_attn.q_proj": (16, 16),
    "model.layers.0.self_attn.v_proj": (8, 16),
    "model.layers.0.mlp.up_proj": (32, 16),
}


@pytest.mark.parametrize(
    ("rank_pattern", "alpha_pattern", "expected"),
    [
        pytest.param(
            {"v_proj": 2},
            {"q_proj": 32},
            {
                "model.layers.0.self_attn.q_proj": (4, 32),
                "model.layers.1.self_attn.q_proj": (4, 32),
                "model.layers.11.self_attn.q_proj": (4, 32),
                "model.layers.0.self_attn.v_proj": (2, 8),
                "model.layers.0.mlp.up_proj": (4, 8),
            },
            id="module-name-keys",
        ),
        pytest.param(
            # "layers.1.self_attn.q_proj" must match a dotted suffix: layers.1 yes, layers.11 no.
            {"layers.1.self_attn.q_proj": 8},
            {"layers.1.self_attn.q_proj": 4},
            {
                "model.layers.0.self_attn.q_proj": (4, 8),
                "model.layers.1.self_attn.q_proj": (8, 4),
                "model.layers.11.self_attn.q_proj": (4, 8),
                "model.layers.0.self_attn.v_proj": (4, 8),
                "model.layers.0.mlp.up_proj": (4, 8),
            },
            id="dotted-suffix-not-substring",
        ),
        pytest.param(
            # "proj" is not a dotted suffix of any name ("q_proj" ends in "_proj"), so it matches nothing.
            {"proj": 2, "mlp.up_proj": 16},
            {"_proj": 1},
            {
                "model.layers.0.self_attn.q_proj": (4, 8),
                "model.layers.1.self_attn.q_proj": (4, 8),
                "model.layers.11.self_attn.q_proj": (4, 8),
                "model.layers.0.self_attn.v_proj": (4, 8),
                "model.layers.0.mlp.up_proj": (16, 8),
            },
            id="whole-components-only",
        ),
        pytest.param(
            # Keys are regexes; the first matching key in the config's order wins, as in PEFT.
            {r"layers\.1\d*\.self_attn\.q_proj": 2, "q_proj": 8},
            {"q_proj": 2, r"layers\.1\d*\.self_attn\.q_proj": 64},
            {
                "model.layers.0.self_attn.q_proj": (8, 2),
                "model.layers.1.self_attn.q_proj": (2, 2),
                "model.layers.11.self_attn.q_proj": (2, 2),
                "model.layers.0.self_attn.v_proj": (4, 8),
                "model.layers.0.mlp.up_proj": (4, 8),
            },
            id="regex-keys-first-match-wins",
        ),
    ],
)
def test_rank_and_alpha_patterns(
    rank_pattern: dict[str, int], alpha_pattern: dict[str, float], expected: dict[str, tuple[int, float]]
) -> None:
    ranks = {m: rank for m, (rank, _alpha) in expected.items()}
    files = make_files(
        PATTERN_MODULES,
        r=4,
        lora_alpha=8,
        ranks=ranks,
        target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    adapter = read_adapter(parts(files))
    assert adapter.config.rank_pattern == rank_pattern and adapter.config.alpha_pattern == alpha_pattern
    for module, (rank, alpha) in expected.items():
        assert adapter.config.rank_for(module) == rank, module
        assert adapter.config.alpha_for(module) == alpha, module
        assert adapter.modules[module].rank == rank, module
        assert adapter.modules[module].scaling == pytest.approx(alpha / rank), module


def test_patterns_with_rslora() -> None:
    files = make_files(ranks={V_PROJ: 16}, rank_pattern={"v_proj": 16}, use_rslora=True)
    adapter = read_adapter(parts(files))
    assert adapter.modules[V_PROJ].scaling == pytest.approx(8 / 4)  # alpha / sqrt(16)
    assert adapter.modules[Q_PROJ].scaling == pytest.approx(8 / 2)  # alpha / sqrt(4)


@pytest.mark.parametrize(
    "target_modules",
    [
        r".*\.(q_proj|v_proj)",
        r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
        ["self_attn.q_proj", "v_proj"],
        ["v_proj", "q_proj", "k_proj", "q_proj"],  # duplicates and unused names are fine
    ],
    ids=["regex", "regex-anchored-path", "dotted-suffixes", "list-with-extras"],
)
def test_target_modules_forms(target_modules: str | list[str]) -> None:
    adapter = read_adapter(parts(make_files(target_modules=target_modules)))
    assert sorted(adapter.modules) == sorted(MODULES)
    if isinstance(target_modules, str):
        assert adapter.config.target_modules == target_modules
        assert adapter.config.targets(Q_PROJ) and not adapter.config.targets("model.layers.0.mlp.up_proj")
    else:
        assert adapter.config.target_modules == tuple(sorted(set(target_modules)))


def test_target_regex_must_match_the_whole_module_name() -> None:
    cfg = parse_config(config_bytes(target_modules="q_proj"))
    assert not cfg.targets(Q_PROJ)  # PEFT uses re.fullmatch for a string target
    assert parse_config(config_bytes(target_modules=".*q_proj")).targets(Q_PROJ)
