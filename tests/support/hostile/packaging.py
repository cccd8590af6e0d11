"""Hostile adapters in their packaging: the safetensors container and its dtypes, pickles (refused by name or by
content, never unpickled), archive member names and types, sizes declared, actual and inflated, and broken
archives."""

from __future__ import annotations

import pickle
import tarfile

import torch

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.errors import AdapterErrorCode
from tests.support.adapter_factory import (
    MARKER,
    MIB,
    forge_weights,
    make_files,
    marker_tensor,
    parts,
    safetensors_bytes,
    tar_bytes,
    tar_gz_bomb,
    write_dir,
    zip_bomb,
    zip_bytes,
)
from tests.support.hostile.blocks import (
    QA,
    QB,
    VB,
    Corpus,
    built,
    cfg,
    duplicate_key_header,
    harmless_pickle,
    patch_zip,
    raw_f32,
    tar_link,
    tar_special,
    torch_save_trap,
    trap_pickle,
    valid_files,
    valid_header,
    valid_tensors,
    valid_weights,
    write_file,
    zip_symlink,
)

C = AdapterErrorCode
CASES = Corpus()
case = CASES.case

# The safetensors container itself.
case(C.BAD_HEADER, lambda t: built(valid_files(valid_weights()[:-10])), "truncated-in-the-data")
case(C.BAD_HEADER, lambda t: built(valid_files(valid_weights()[:200])), "truncated-in-the-header")
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(safetensors_bytes(*valid_header(), header_len=1_000_000))),
    "header-length-past-end-of-file",
)
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(safetensors_bytes(*valid_header(), header_len=2**63))),
    "header-length-absurd",
)
case(C.BAD_HEADER, lambda t: built(valid_files(), max_header_bytes=64), "header-longer-than-limit")
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(forge_weights(valid_tensors().items(), offsets={VB: (768, 100_000)}))),
    "data-offsets-out-of-range",
)
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(forge_weights(valid_tensors().items(), offsets={VB: (896, 768)}))),
    "data-offsets-reversed",
)
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(forge_weights(valid_tensors().items(), offsets={QB: (0, 256)}))),
    "overlapping-tensors",
)
case(
    C.BAD_HEADER,
    lambda t: built(
        valid_files(
            safetensors_bytes(
                {
                    QA: {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]},
                    QB: {"dtype": "F32", "shape": [16, 4], "data_offsets": [260, 516]},
                },
                MARKER * 33,
            )
        )
    ),
    "hole-between-tensors",
)
case(C.BAD_HEADER, lambda t: built(valid_files(valid_weights() + b"\0" * 16)), "trailing-bytes")
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(forge_weights([(QA, ("F32", [4, 16], MARKER * 8)), (QB, raw_f32([16, 4]))]))),
    "byte-span-does-not-match-shape",
)
case(
    C.BAD_HEADER,
    lambda t: built(
        valid_files(
            safetensors_bytes(
                duplicate_key_header(),
                MARKER * 16,
            )
        )
    ),
    "duplicate-keys-in-header",
)
case(C.BAD_HEADER, lambda t: built(valid_files(safetensors_bytes(b'{"oops": [1, 2', MARKER))), "header-not-json")
case(C.BAD_HEADER, lambda t: built(valid_files(safetensors_bytes(b'{"\xff\xfe": 1}', b""))), "header-not-utf8")
case(
    C.BAD_HEADER,
    lambda t: built(
        valid_files(safetensors_bytes({QA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, MARKER[:4]))
    ),
    "header-entry-with-extra-field",
)
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(safetensors_bytes({"__metadata__": {"format": 1}}))),
    "metadata-not-strings",
)
case(
    C.BAD_HEADER,
    lambda t: built(
        valid_files(safetensors_bytes(b'{"x":{"dtype":"F32","shape":[1' + b"0" * 5000 + b'],"data_offsets":[0,0]}}'))
    ),
    "header-integer-with-5000-digits",
)
case(
    C.BAD_HEADER,
    lambda t: built(valid_files(safetensors_bytes(b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))),
    "header-nested-100000-deep",
)
case(C.NOT_SAFETENSORS, lambda t: built(valid_files(b"This is not a safetensors file, only some text.")), "text")
case(C.NOT_SAFETENSORS, lambda t: built(valid_files(b"")), "empty-weights-file")
case(C.NOT_SAFETENSORS, lambda t: built(valid_files(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}")), "numpy-npy")
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: built(
        valid_files(forge_weights((k, torch.ones_like(v, dtype=torch.int8)) for k, v in valid_tensors().items()))
    ),
    "int8-tensors",
)
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: built(
        valid_files(
            safetensors_bytes(
                {QA: {"dtype": "F64", "shape": [4, 16], "data_offsets": [0, 512]}},
                marker_tensor((8, 16)).numpy().tobytes(),
            )
        )
    ),
    "f64-tensor",
)
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: built(
        valid_files(safetensors_bytes({QA: {"dtype": "Q4_K", "shape": [4, 16], "data_offsets": [0, 64]}}, MARKER * 4))
    ),
    "unknown-dtype",
)

# Pickles: refused by name or by content, and never unpickled (the trap would create TRAP_NAME).
case(
    C.PICKLE_REJECTED,
    lambda t: built(write_dir(t / "a", {CONFIG_NAME: cfg(), "adapter_model.bin": harmless_pickle()})),
    "bin-in-directory",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(write_dir(t / "a", {CONFIG_NAME: cfg(), "adapter_model.bin": trap_pickle(t)})),
    "trap-bin-in-directory",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(write_dir(t / "a", {**valid_files(), "adapter_model.bin": trap_pickle(t)})),
    "bin-beside-safetensors",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(zip_bytes({CONFIG_NAME: cfg(), "adapter_model.bin": trap_pickle(t)})),
    "bin-in-zip",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(zip_bytes({**parts(make_files(), "a/"), "a/optimizer.pt": harmless_pickle()})),
    "pt-in-zip-folder",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(tar_bytes({CONFIG_NAME: cfg(), "adapter_model.bin": trap_pickle(t)}, gz=True)),
    "bin-in-tar-gz",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built({CONFIG_NAME: cfg(), "adapter_model.bin": trap_pickle(t)}),
    "bin-as-upload-part",
)
case(C.PICKLE_REJECTED, lambda t: built(valid_files(trap_pickle(t))), "pickle-bytes-as-safetensors")
case(
    C.PICKLE_REJECTED,
    lambda t: built(valid_files(pickle.dumps({"a": 1}, protocol=2))),
    "protocol-2-pickle-as-safetensors",
)
case(
    C.PICKLE_REJECTED,
    lambda t: built(write_dir(t / "a", valid_files(trap_pickle(t)))),
    "pickle-as-safetensors-in-directory",
)
case(C.PICKLE_REJECTED, lambda t: built(write_file(t / "adapter_model.bin", trap_pickle(t))), "path-to-a-bin-file")
case(C.PICKLE_REJECTED, lambda t: built(valid_files(torch_save_trap(t))), "torch-save-zip-as-safetensors")
case(C.PICKLE_REJECTED, lambda t: built(torch_save_trap(t)), "torch-save-zip-as-archive")
case(C.PICKLE_REJECTED, lambda t: built(write_file(t / "adapter.pt", torch_save_trap(t))), "path-to-a-pt-file")

# Archive member names and types.
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(zip_bytes({"../" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()})),
    "zip-dotdot-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: built(zip_bytes(parts(make_files(), "a/../../"))), "zip-dotdot-inside-path")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(zip_bytes({"/" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()})),
    "zip-absolute-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: built(zip_bytes(parts(make_files(), "C:/adapter/"))), "zip-drive-letter")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(zip_bytes({"..\\" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()})),
    "zip-backslash-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(zip_bytes([*valid_files().items(), (zip_symlink("README.md"), b"/etc/passwd")])),
    "zip-symlink-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: built(zip_bytes({**valid_files(), "copy/" + CONFIG_NAME: cfg()})), "zip-config-twice")
case(C.UNSAFE_ARCHIVE, lambda t: built(zip_bytes(parts(make_files(), "a/b/"))), "zip-nested-too-deep")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(tar_bytes([(CONFIG_NAME, cfg()), (tar_link(WEIGHTS_NAME, tarfile.SYMTYPE), b"")])),
    "tar-symlink-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(
        tar_bytes([(CONFIG_NAME, cfg()), (tar_link(WEIGHTS_NAME, tarfile.LNKTYPE, CONFIG_NAME), b"")], gz=True)
    ),
    "tar-gz-hardlink-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(tar_bytes({"../" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()}, gz=True)),
    "tar-gz-dotdot-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(tar_bytes({"/tmp/" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()})),
    "tar-absolute-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(tar_bytes([*valid_files().items(), (tar_special("dev", tarfile.CHRTYPE), b"")])),
    "tar-device-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built(tar_bytes([*valid_files().items(), (tar_special("fifo", tarfile.FIFOTYPE), b"")])),
    "tar-fifo-member",
)
case(
    C.UNSAFE_ARCHIVE, lambda t: built({"../" + CONFIG_NAME: cfg(), WEIGHTS_NAME: valid_weights()}), "upload-part-dotdot"
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: built({CONFIG_NAME: cfg(), WEIGHTS_NAME + "\x00.txt": valid_weights()}),
    "upload-part-nul",
)

# Sizes: declared, actual and inflated.
case(C.TOO_LARGE, lambda t: built(zip_bomb(), max_unpacked_bytes=MIB), "zip-bomb")
case(
    C.TOO_LARGE,
    lambda t: built(zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)), max_weights_bytes=MIB),
    "zip-bomb-as-weights",
)
case(C.TOO_LARGE, lambda t: built(tar_gz_bomb("member"), max_unpacked_bytes=MIB), "tar-gz-bomb")
case(C.TOO_LARGE, lambda t: built(tar_gz_bomb("longname"), max_unpacked_bytes=MIB), "tar-gz-bomb-in-a-long-name-record")
case(C.TOO_LARGE, lambda t: built(valid_files(), max_weights_bytes=512), "weights-over-limit")
case(
    C.TOO_LARGE,
    lambda t: built(write_dir(t / "a", valid_files()), max_weights_bytes=512),
    "weights-over-limit-in-directory",
)
case(C.TOO_LARGE, lambda t: built(zip_bytes(valid_files()), max_weights_bytes=512), "weights-over-limit-in-zip")
case(C.TOO_LARGE, lambda t: built(valid_files(), max_config_bytes=64), "config-over-limit")
case(C.TOO_LARGE, lambda t: built(valid_files(config=cfg() + b" " * (256 * 1024))), "config-over-default-limit")
case(
    C.TOO_LARGE,
    lambda t: built(zip_bytes({**valid_files(), **{f"notes/{i}.txt": b"x" for i in range(10)}}), max_archive_members=8),
    "too-many-members",
)
case(C.TOO_LARGE, lambda t: built(zip_bytes(valid_files()), max_archive_bytes=256), "archive-over-limit")
case(
    C.TOO_LARGE,
    lambda t: built(write_file(t / "a.zip", zip_bytes(valid_files())), max_archive_bytes=256),
    "archive-file-over-limit",
)
case(C.TOO_LARGE, lambda t: built(valid_files(), max_tensors=3), "too-many-tensors")
case(
    C.TOO_LARGE,
    lambda t: built(
        zip_bytes([(f"d{i}/", b"") for i in range(20)] + list(valid_files().items())), max_archive_members=8
    ),
    "folder-entries-count-as-members",
)

# Containers.
case(C.BAD_ARCHIVE, lambda t: built(b"PK\x03\x04" + MARKER * 64), "corrupt-zip")
case(C.BAD_ARCHIVE, lambda t: built(zip_bytes(valid_files())[:-40]), "truncated-zip")
case(C.BAD_ARCHIVE, lambda t: built(write_file(t / "a.zip", zip_bytes(valid_files())[:300])), "truncated-zip-file")
case(C.BAD_ARCHIVE, lambda t: built(b"Hello! This is a plain text file, not an archive.\n" * 4), "unknown-format-bytes")
case(
    C.BAD_ARCHIVE,
    lambda t: built(write_file(t / "adapter_model.safetensors", valid_weights())),
    "bare-safetensors-file",
)
case(C.BAD_ARCHIVE, lambda t: built(tar_bytes(valid_files(), gz=True)[:-30]), "truncated-tar-gz")
case(C.BAD_ARCHIVE, lambda t: built(b"\x1f\x8b\x08\x00" + MARKER * 8), "corrupt-gzip")
case(C.BAD_ARCHIVE, lambda t: built(tar_bytes(valid_files())[:700]), "truncated-tar")
case(C.BAD_ARCHIVE, lambda t: built(patch_zip(zip_bytes(valid_files()), CONFIG_NAME, flags=1)), "zip-encrypted-member")
case(
    C.BAD_ARCHIVE,
    lambda t: built(patch_zip(zip_bytes(valid_files()), CONFIG_NAME, method=99)),
    "zip-unknown-compression",
)
case(
    C.BAD_ARCHIVE,
    lambda t: built(patch_zip(zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)), WEIGHTS_NAME, file_size=1000)),
    "zip-member-lying-about-its-size",
)
