"""The corpus of hostile adapters (:mod:`tests.support.hostile`) read by the core: each must be refused with an
AdapterError carrying exactly the expected code, without unpickling anything, without unbounded memory, and without
leaking tensor bytes into the message."""

from __future__ import annotations

import io
import json
import pickle
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from soppu.adapter import CONFIG_NAME, DEFAULT_LIMITS, WEIGHTS_NAME, Limits, read_adapter
from soppu.errors import AdapterError, AdapterErrorCode, SoppuError
from tests.support.adapter_factory import (
    MARKER,
    MIB,
    MODULES,
    Q_PROJ,
    forge_weights,
    make_files,
    marker_tensor,
    tar_bytes,
    tar_gz_bomb,
    write_dir,
    zip_bomb,
    zip_bytes,
)
from tests.support.hostile import CASES, TRAP_NAME, Builder, Source
from tests.support.hostile.blocks import cfg, trap_pickle, valid_files, valid_tensors, write_file


def test_the_corpus_is_big_and_covers_every_code() -> None:
    assert len(CASES) >= 20
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))
    covered = {p.values[1] for p in CASES}
    # Not the reader's: base_model_mismatch (test_adapter_format) and the served form's (test_served_exports, and
    # over HTTP in test_compressor_hostile).
    served = {AdapterErrorCode.LORAX_RANK_LIMIT, AdapterErrorCode.LORAX_PARTIAL_LAYERS}
    assert covered == set(AdapterErrorCode) - {AdapterErrorCode.BASE_MODEL_MISMATCH} - served


@pytest.mark.parametrize(("builder", "expected"), CASES)
def test_hostile_adapter_is_refused_with_its_code(tmp_path: Path, builder: Builder, expected: AdapterErrorCode) -> None:
    source, limits = builder(tmp_path)
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(source, limits)
    error = excinfo.value
    assert error.code == expected.value, f"{error.code}: {error.message}"
    assert isinstance(error, SoppuError)

    body = error.to_dict()
    assert body["code"] == expected.value
    assert isinstance(body["message"], str) and body["message"] == str(error) and body["message"]
    text = json.dumps(body)  # JSON-ready, as the services send it
    assert len(error.message) < 1000
    for leak in (MARKER.decode(), MARKER[:8].decode(), "RAWTENSOR"):
        assert leak not in text and leak not in repr(error), "tensor bytes leaked into the error"
    assert not (tmp_path / TRAP_NAME).exists(), "a pickle was unpickled"


def test_the_pickle_trap_is_armed(tmp_path: Path) -> None:
    # The corpus relies on the trap: unpickling it really does create the marker folder.
    pickle.loads(trap_pickle(tmp_path))
    assert (tmp_path / TRAP_NAME).is_dir()


def test_a_valid_adapter_passes_the_same_checks(tmp_path: Path) -> None:
    # The corpus starts from these valid files; they must read, or the cases would prove nothing.
    adapter = read_adapter(valid_files())
    assert sorted(adapter.modules) == sorted(MODULES)
    assert torch.equal(adapter.modules[Q_PROJ].a, marker_tensor((4, 16)))
    assert read_adapter(write_dir(tmp_path / "a", valid_files())).modules.keys() == adapter.modules.keys()
    assert read_adapter(zip_bomb(size=MIB)).modules.keys() == adapter.modules.keys()  # a small "bomb" is fine
    # The hand forger (not the library) lays out the valid tensors soundly, so forged cases change one thing.
    assert read_adapter(valid_files(forge_weights(valid_tensors().items()))).modules.keys() == adapter.modules.keys()


@pytest.mark.parametrize(
    "bomb",
    [
        lambda: zip_bomb(),
        lambda: zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)),
        lambda: tar_gz_bomb("member"),
        lambda: tar_gz_bomb("longname"),
    ],
    ids=["zip", "zip-as-weights", "tar-gz", "tar-gz-long-name-record"],
)
def test_bombs_fail_in_bounded_memory(bomb: Callable[[], bytes]) -> None:
    data = bomb()
    assert len(data) < MIB  # ~64 KiB on the wire, 64 MiB unpacked
    limits = Limits(max_unpacked_bytes=MIB, max_weights_bytes=MIB)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(data, limits)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert excinfo.value.code == "too_large"
    assert peak < 8 * MIB, f"reading the bomb allocated {peak} bytes"


def test_unpickling_never_happens_across_sources(tmp_path: Path) -> None:
    payload = trap_pickle(tmp_path)
    sources: list[Source] = [
        write_dir(tmp_path / "d1", {CONFIG_NAME: cfg(), "adapter_model.bin": payload}),
        write_dir(tmp_path / "d2", {CONFIG_NAME: cfg(), WEIGHTS_NAME: payload}),
        write_file(tmp_path / "adapter_model.pkl", payload),
        zip_bytes({CONFIG_NAME: cfg(), WEIGHTS_NAME: payload}),
        tar_bytes({CONFIG_NAME: cfg(), "weights.ckpt": payload}, gz=True),
        {CONFIG_NAME: cfg(), WEIGHTS_NAME: payload},
    ]
    for source in sources:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(source)
        assert excinfo.value.code == "pickle_rejected"
    assert not (tmp_path / TRAP_NAME).exists()


def test_a_missing_path_is_not_an_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_adapter(tmp_path / "nowhere")


def _many_entry_zip(entries: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(entries):
            archive.writestr(f"e{i:06d}", b"")
    return buffer.getvalue()


@pytest.mark.parametrize("entries", [20_000, 70_000], ids=["zip", "zip64-entry-count"])
def test_a_zip_with_too_many_entries_is_refused_before_its_entry_list_is_parsed(entries: int) -> None:
    # Issue 13 item 10: zipfile parses the whole central directory (~600 bytes of objects per entry) before the
    # member limit could apply; the end record's count refuses it first, in the memory of its last 64 KiB.
    data = _many_entry_zip(entries)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(data, DEFAULT_LIMITS)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert excinfo.value.code == "too_large"
    assert "entries" in excinfo.value.message
    assert peak < 2 * MIB, f"refusing the zip allocated {peak} bytes"


def test_a_zip_without_an_end_record_is_a_bad_archive() -> None:
    data = zip_bytes(valid_files())
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(data[: data.rfind(b"PK\x05\x06")], DEFAULT_LIMITS)
    assert excinfo.value.code == "bad_archive"


def test_pattern_matching_has_one_budget_per_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13 item 7: each match stayed under its 50 ms timeout, so 8,192 tensors times slow patterns cost
    # minutes of a worker thread; now every match of one upload draws on one budget. Spent (0 s here), the next
    # match refuses the upload whatever the machine's speed.
    import soppu.adapter.config

    files = make_files(rank_pattern={"v_proj": 4})
    read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})  # within the default budget
    monkeypatch.setattr(soppu.adapter.config, "REGEX_BUDGET_S", 0.0)
    with pytest.raises(AdapterError) as excinfo:
        read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    assert excinfo.value.code == "bad_config"
    assert "too expensive" in excinfo.value.message


def test_a_config_with_too_many_patterns_is_refused() -> None:
    files = make_files(rank_pattern={f"m{i}": 4 for i in range(257)})
    with pytest.raises(AdapterError) as excinfo:
        read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    assert excinfo.value.code == "bad_config"
