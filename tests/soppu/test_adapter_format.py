"""Reading PEFT LoRA adapters: every source form (directory, zip, tar, upload parts) reads the same adapter,
benign extras are ignored, dtypes are kept, the expected base model is checked, and writing then reading is exact.
(The config's semantics: test_adapter_config.py; the LoRA math: test_lora_math.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

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
from soppu.errors import AdapterError, AdapterErrorCode
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
