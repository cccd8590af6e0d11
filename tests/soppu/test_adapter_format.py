"""The PEFT LoRA adapter format on valid input: every source reads the same, dtypes, scaling, patterns,
the round trip through write_adapter, and the LoRA math the adapter model exposes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from soppu.adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    AdapterFiles,
    LoraAdapter,
    adapter_files,
    parse_config,
    read_adapter,
    validate_files,
    write_adapter,
)
from soppu.adapter.apply import LoraHooks, apply_adapter
from soppu.errors import AdapterError, AdapterErrorCode
from soppu.lora import delta_weight, lora_output, lora_scaling
from tests.support.adapter_factory import (
    BASE_MODEL,
    MODULES,
    Q_PROJ,
    V_PROJ,
    config_bytes,
    config_dict,
    lora_factors,
    make_adapter,
    make_files,
    named_tensors,
    parts,
    tar_bytes,
    weights_bytes,
    write_dir,
    zip_bytes,
)

Source = Path | str | bytes | bytearray | dict[str, bytes]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder_zip(files: AdapterFiles) -> bytes:
    # What "Compress folder" produces: a directory entry, then the files inside it, plus a README.
    return zip_bytes([("my-adapter/", b""), *parts(files, "my-adapter/").items(), ("my-adapter/README.md", b"# hi")])


# Each builder turns the raw files into one kind of source read_adapter accepts.
SOURCES: dict[str, Callable[[Path, AdapterFiles], Source]] = {
    "directory": lambda tmp, f: write_dir(tmp / "adapter", parts(f)),
    "directory_as_str": lambda tmp, f: str(write_dir(tmp / "adapter", parts(f))),
    "zip_file": lambda tmp, f: _write(tmp / "a.zip", zip_bytes(parts(f))),
    "zip_file_one_folder": lambda tmp, f: _write(tmp / "a.zip", _folder_zip(f)),
    "zip_file_stored": lambda tmp, f: _write(tmp / "a.zip", zip_bytes(parts(f), compression=0)),
    "tar_gz_file": lambda tmp, f: _write(tmp / "a.tar.gz", tar_bytes(parts(f), gz=True)),
    "tar_file": lambda tmp, f: _write(tmp / "a.tar", tar_bytes(parts(f))),
    "tar_gz_file_one_folder": lambda tmp, f: _write(tmp / "a.tgz", tar_bytes(parts(f, "adapter/"), gz=True)),
    "zip_bytes": lambda tmp, f: zip_bytes(parts(f)),
    "zip_bytes_one_folder": lambda tmp, f: _folder_zip(f),
    "tar_gz_bytes": lambda tmp, f: tar_bytes(parts(f), gz=True),
    "tar_bytes": lambda tmp, f: tar_bytes(parts(f)),
    "tar_bytes_one_folder": lambda tmp, f: tar_bytes(parts(f, "adapter/")),
    "bytearray_zip": lambda tmp, f: bytearray(zip_bytes(parts(f))),
    "parts_mapping": lambda tmp, f: parts(f),
    "parts_mapping_one_folder": lambda tmp, f: parts(f, "upload/"),
}


def assert_same_adapter(got: LoraAdapter, want: LoraAdapter) -> None:
    assert got.config == want.config
    assert sorted(got.modules) == sorted(want.modules)
    for name, module in want.modules.items():
        other = got.modules[name]
        assert other.a.dtype == module.a.dtype and other.b.dtype == module.b.dtype
        assert torch.equal(other.a, module.a), name
        assert torch.equal(other.b, module.b), name
        assert other.scaling == module.scaling, name


# --- sources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_reads_the_same_adapter(tmp_path: Path, kind: str) -> None:
    files = make_files()
    adapter = read_adapter(SOURCES[kind](tmp_path, files))

    expected_config = AdapterConfig(
        r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), base_model_name_or_path=BASE_MODEL
    )
    assert adapter.config == expected_config
    assert adapter.base_model == BASE_MODEL
    assert [name for name, _ in adapter] == sorted(MODULES)
    for name, (a, b) in lora_factors().items():
        module = adapter.modules[name]
        assert torch.equal(module.a, a) and torch.equal(module.b, b)
        assert module.rank == 4 and module.shape == MODULES[name]
        assert module.scaling == 2.0
    assert adapter.num_parameters() == sum(4 * (d_in + d_out) for d_out, d_in in MODULES.values())
    assert_same_adapter(adapter, validate_files(files))


def test_benign_extra_files_are_ignored(tmp_path: Path) -> None:
    files = make_files()
    extras = {
        "README.md": b"---\nlibrary_name: peft\n---\n# My adapter\n",
        "training_args.json": b'{"lr": 1e-4}',
        "tokenizer.json": b"{}",
        ".gitattributes": b"*.safetensors filter=lfs\n",
    }
    expected = validate_files(files)

    directory = write_dir(tmp_path / "adapter", {**parts(files), **extras})
    (directory / "checkpoint-100").mkdir()  # sub-folders of a directory are not read at all
    (directory / "checkpoint-100" / "notes.txt").write_text("x")
    assert_same_adapter(read_adapter(directory), expected)
    assert_same_adapter(read_adapter(zip_bytes({**extras, **parts(files)})), expected)
    assert_same_adapter(read_adapter(tar_bytes({**extras, **parts(files)}, gz=True)), expected)
    assert_same_adapter(read_adapter({**parts(files), "README.md": extras["README.md"]}), expected)


def test_extra_safetensors_metadata_is_accepted() -> None:
    factors = lora_factors()
    weights = save_safetensors(named_tensors(factors), metadata={"format": "pt", "note": "trained by someone"})
    adapter = read_adapter({CONFIG_NAME: config_bytes(), WEIGHTS_NAME: weights})
    assert torch.equal(adapter.modules[Q_PROJ].a, factors[Q_PROJ][0])


# --- dtypes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtype_is_preserved(tmp_path: Path, dtype: torch.dtype) -> None:
    factors = lora_factors(dtype=dtype)
    adapter = read_adapter(write_dir(tmp_path / "a", parts(make_files(dtype=dtype))))
    for name, (a, b) in factors.items():
        module = adapter.modules[name]
        assert module.a.dtype == dtype and module.b.dtype == dtype
        assert torch.equal(module.a, a) and torch.equal(module.b, b)
    upcast = adapter.to(dtype=torch.float32)
    assert upcast.modules[Q_PROJ].a.dtype == torch.float32
    assert torch.equal(upcast.modules[Q_PROJ].a, factors[Q_PROJ][0].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_extreme_finite_values_are_not_mistaken_for_inf(dtype: torch.dtype) -> None:
    # Every element at +-max of its dtype: large sums, but nothing non-finite.
    big = torch.finfo(dtype).max
    factors = {
        m: (torch.full((4, d_in), big, dtype=dtype), torch.full((d_out, 4), -big, dtype=dtype))
        for m, (d_out, d_in) in MODULES.items()
    }
    adapter = read_adapter({CONFIG_NAME: config_bytes(), WEIGHTS_NAME: weights_bytes(named_tensors(factors))})
    assert torch.equal(adapter.modules[Q_PROJ].b, factors[Q_PROJ][1])


def test_mixed_dtypes_load_each_as_stored() -> None:
    factors = lora_factors()
    tensors = named_tensors(factors)
    first = next(iter(tensors))
    tensors[first] = tensors[first].to(torch.bfloat16)
    adapter = read_adapter({CONFIG_NAME: config_bytes(), WEIGHTS_NAME: weights_bytes(tensors)})
    dtypes = {t.dtype for m in adapter.modules.values() for t in (m.a, m.b)}
    assert dtypes == {torch.float32, torch.bfloat16}


# --- scaling and patterns ------------------------------------------------------------------------------


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


# --- base model ----------------------------------------------------------------------------------------


def test_expected_base_model(tmp_path: Path) -> None:
    files = make_files()
    assert read_adapter(parts(files), expected_base_model=BASE_MODEL).base_model == BASE_MODEL
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(parts(files), expected_base_model="other/model")
    assert excinfo.value.code == AdapterErrorCode.BASE_MODEL_MISMATCH == "base_model_mismatch"
    assert excinfo.value.detail == {"expected": "other/model", "actual": BASE_MODEL}

    unnamed = make_files(base_model=None)
    assert read_adapter(parts(unnamed)).base_model is None
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(write_dir(tmp_path / "a", parts(unnamed)), expected_base_model=BASE_MODEL)
    assert excinfo.value.code == "base_model_mismatch"


# --- writing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"use_rslora": True, "lora_alpha": 16},
        {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.5}, "ranks": {V_PROJ: 2}},
        {"target_modules": r".*\.(q|v)_proj", "base_model": None},
    ],
    ids=["plain", "rslora", "patterns", "regex-no-base"],
)
def test_round_trip_is_exact_and_deterministic(tmp_path: Path, dtype: torch.dtype, config: dict[str, Any]) -> None:
    adapter = make_adapter(dtype=dtype, **config)
    first = write_adapter(adapter, tmp_path / "first")
    assert sorted(p.name for p in first.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left

    back = read_adapter(first)
    assert_same_adapter(back, adapter)
    second = write_adapter(back, tmp_path / "second")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert adapter_files(adapter) == adapter_files(back) == adapter_files(make_adapter(dtype=dtype, **config))

    # Overwriting in place gives the same bytes again.
    write_adapter(back, first)
    assert (first / WEIGHTS_NAME).read_bytes() == (second / WEIGHTS_NAME).read_bytes()


def test_written_config_is_peft_shaped() -> None:
    adapter = make_adapter(use_rslora=True, target_modules=["v_proj", "q_proj"])
    written = json.loads(adapter_files(adapter).config)
    assert written["peft_type"] == "LORA"
    assert written["target_modules"] == ["q_proj", "v_proj"]
    assert written["r"] == 4 and written["lora_alpha"] == 8 and written["use_rslora"] is True
    assert written["use_dora"] is False and written["bias"] == "none" and written["modules_to_save"] is None
    assert written["base_model_name_or_path"] == BASE_MODEL
    assert parse_config(adapter_files(adapter).config) == adapter.config


def test_peft_config_fields_we_ignore_are_accepted() -> None:
    # Fields PEFT writes that do not change the computation (dropout, init, revision, ...) are tolerated.
    cfg = config_dict(
        lora_dropout=0.1, init_lora_weights="gaussian", revision="main", layers_to_transform=None, auto_mapping=None
    )
    adapter = read_adapter(parts(AdapterFiles(config_bytes(cfg), make_files().weights)))
    assert sorted(adapter.modules) == sorted(MODULES)


# --- the LoRA math -------------------------------------------------------------------------------------


def test_delta_weight_is_scaling_b_a() -> None:
    adapter = read_adapter(parts(make_files(lora_alpha=12, use_rslora=True)))
    for name, module in adapter:
        expected = module.scaling * (module.b.double() @ module.a.double())
        assert module.delta().shape == MODULES[name]
        torch.testing.assert_close(module.delta().double(), expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(module.delta(), delta_weight(module.b, module.a, module.scaling))


def test_lora_output_matches_the_dense_delta() -> None:
    module = make_adapter().modules[V_PROJ]
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    out = lora_output(x, module.a, module.b, module.scaling)
    assert out.shape == (3, 5, 8)
    torch.testing.assert_close(out, x @ module.delta().T, rtol=1e-5, atol=1e-5)


def test_batched_lora_output_applies_each_rows_adapter() -> None:
    n = 4
    adapters = [make_adapter(seed=i, lora_alpha=2.0 * (i + 1), use_rslora=i % 2 == 1) for i in range(n)]
    mods = [a.modules[Q_PROJ] for a in adapters]
    a = torch.stack([m.a for m in mods])  # n x r x d_in
    b = torch.stack([m.b for m in mods])  # n x d_out x r
    scaling = torch.tensor([m.scaling for m in mods]).view(n, 1, 1)
    x = torch.randn(n, 7, 16, generator=torch.Generator().manual_seed(2))

    batched = lora_output(x, a, b, scaling)
    assert batched.shape == (n, 7, 16)
    assert len({m.scaling for m in mods}) == n  # the rows really differ
    for i, m in enumerate(mods):
        torch.testing.assert_close(batched[i], lora_output(x[i], m.a, m.b, m.scaling), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(batched[i], x[i] @ m.delta().T, rtol=1e-5, atol=1e-5)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16, bias=False)
        self.v_proj = nn.Linear(16, 8, bias=True)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _Attn()


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Layer()])


class _Toy(nn.Module):
    """Module paths like a causal LM's: ``model.layers.0.self_attn.q_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Inner()


def test_apply_adapter_adds_the_delta_and_leaves_weights_alone() -> None:
    torch.manual_seed(0)
    model = _Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = make_adapter()
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    q = model.get_submodule(Q_PROJ)
    v = model.get_submodule(V_PROJ)

    with torch.no_grad(), apply_adapter(model, adapter):
        got_q, got_v = q(x), v(x)
    with torch.no_grad():
        torch.testing.assert_close(got_q, x @ (q.weight + adapter.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        want_v = x @ (v.weight + adapter.modules[V_PROJ].delta()).T + v.bias
        torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q(x), x @ q.weight.T)  # hooks removed on exit
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_lora_hooks_set_swaps_factors_and_checks_modules() -> None:
    model = _Toy()
    first, second = make_adapter(seed=1), make_adapter(seed=2)
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(4))
    q = model.get_submodule(Q_PROJ)

    def factors(adapter: LoraAdapter) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {n: (m.a, m.b, m.scaling) for n, m in adapter.modules.items()}

    with torch.no_grad(), LoraHooks(model, factors(first)) as hooks:
        torch.testing.assert_close(q(x), x @ (q.weight + first.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        hooks.set(factors(second))
        torch.testing.assert_close(q(x), x @ (q.weight + second.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError):
            hooks.set({Q_PROJ: factors(second)[Q_PROJ]})


def test_lora_scaling_rejects_nonpositive_rank() -> None:
    with pytest.raises(ValueError):
        lora_scaling(8, 0)
