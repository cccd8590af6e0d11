"""Gathering an adapter's two files from wherever they arrive: a directory, a .zip, a .tar(.gz), or named parts.

Every source goes through one :class:`_Collector`, so the safety rules are written once:

- member names must be relative and clean: no absolute paths, drive letters, backslashes or ``..``
  (``unsafe_archive``); links and device files are refused too;
- pickles (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are refused by name and never opened
  (``pickle_rejected``);
- the declared and the actually unpacked sizes are bounded (``too_large``); a gzip stream is cut off as soon
  as it inflates past the bound, so a decompression bomb costs at most the bound;
- ``adapter_config.json`` and ``adapter_model.safetensors`` may sit at the top or in one folder, but each must
  occur once (a second copy is ambiguous: ``unsafe_archive``). So may ``probes.json``, the uploader's probe
  prompts (:mod:`soppu.adapter.probes`; read here, parsed there). Other files (README.md, ...) are ignored.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from soppu.adapter.limits import DEFAULT_LIMITS, Limits
from soppu.adapter.probes import MAX_PROBES_BYTES, PROBES_NAME
from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code
from soppu.peft_files import CONFIG_NAME, WEIGHTS_NAME

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterFiles",
    "collect_archive",
    "collect_directory",
    "collect_parts",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_WANTED = (CONFIG_NAME, WEIGHTS_NAME, PROBES_NAME)


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """The raw bytes of an adapter's config and weights, not yet validated."""

    config: bytes
    weights: bytes
    probes: bytes | None = None  # probes.json, when the source had one


def _unsafe(message: str, **detail: object) -> AdapterError:
    return AdapterError(Code.UNSAFE_ARCHIVE, message, **detail)


def _clean_name(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name:
        raise _unsafe(f"member name {name!r} contains a backslash or NUL", member=name)
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise _unsafe(f"member name {name!r} is an absolute path", member=name)
    if ".." in path.parts:
        raise _unsafe(f"member name {name!r} climbs out of the archive with '..'", member=name)
    return path


def _read_bounded(read: Callable[[int], bytes], size_hint: int, limit: int, what: str) -> bytes:
    """Read until EOF, failing as soon as more than ``limit`` bytes arrive (declared sizes can lie)."""
    chunks, total = [], 0
    # The first read asks for the declared size (plus one byte, to see a lie): usually the only read, and
    # joining a single chunk does not copy it.
    want = min(size_hint, limit) + 1
    while chunk := read(want):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise AdapterError(Code.TOO_LARGE, f"{what} is larger than the limit of {limit} bytes", limit=limit)
        want = min(_CHUNK, limit + 1 - total)
    return b"".join(chunks)


class _Collector:
    """One pass over the members of a source: validates names and sizes and keeps the two files we need."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.members = 0
        self.declared = 0
        self.found: dict[str, bytes] = {}

    def add_directory(self, name: str) -> None:
        """A folder entry: its name must be clean too, and it counts towards the member limit."""
        _clean_name(name)
        self._count()

    def _count(self) -> None:
        self.members += 1
        if self.members > self.limits.max_archive_members:
            raise AdapterError(
                Code.TOO_LARGE, f"more than {self.limits.max_archive_members} members", limit=self.members - 1
            )

    def add(self, name: str, size: int, read: Callable[[int], bytes]) -> None:
        path = _clean_name(name)
        self._count()
        if path.name.lower().endswith(PICKLE_SUFFIXES):
            raise AdapterError(
                Code.PICKLE_REJECTED,
                f"{name!r} is a pickle; only safetensors weights are accepted and pickles are never opened",
                member=name,
            )
        self.declared += size
        if self.declared > self.limits.max_unpacked_bytes:
            raise AdapterError(
                Code.TOO_LARGE,
                f"contents exceed the unpacked-size limit of {self.limits.max_unpacked_bytes} bytes",
                limit=self.limits.max_unpacked_bytes,
            )
        if path.name not in _WANTED:
            return
        if len(path.parts) > 2:
            raise _unsafe(f"{name!r} is nested too deep; put the adapter files at the top or in one folder")
        if path.name in self.found:
            raise _unsafe(f"{path.name} occurs more than once", member=name)
        limit = {
            CONFIG_NAME: self.limits.max_config_bytes,
            WEIGHTS_NAME: self.limits.max_weights_bytes,
            PROBES_NAME: MAX_PROBES_BYTES,
        }[path.name]
        if size > limit:
            code = Code.BAD_PROBES if path.name == PROBES_NAME else Code.TOO_LARGE
            raise AdapterError(code, f"{path.name} is {size} bytes; the limit is {limit}", limit=limit)
        self.found[path.name] = _read_bounded(read, size, limit, path.name)

    def result(self) -> AdapterFiles:
        if CONFIG_NAME not in self.found:
            raise AdapterError(Code.MISSING_CONFIG, f"no {CONFIG_NAME} found")
        if WEIGHTS_NAME not in self.found:
            raise AdapterError(Code.MISSING_WEIGHTS, f"no {WEIGHTS_NAME} found")
        return AdapterFiles(
            config=self.found[CONFIG_NAME], weights=self.found[WEIGHTS_NAME], probes=self.found.get(PROBES_NAME)
        )


def collect_parts(parts: Mapping[str, bytes], limits: Limits = DEFAULT_LIMITS) -> AdapterFiles:
    """From named parts (a multipart upload's file parts, or any name -> bytes mapping)."""
    collector = _Collector(limits)
    for name, data in parts.items():
        collector.add(name, len(data), io.BytesIO(data).read)
    return collector.result()


def collect_directory(directory: Path, limits: Limits = DEFAULT_LIMITS) -> AdapterFiles:
    """From a PEFT adapter directory (what ``save_pretrained`` writes). Only its top level is read."""
    collector = _Collector(limits)
    for entry in sorted(directory.iterdir()):
        if not entry.is_file():
            continue
        # Opened only if the collector reads it: a pickle is refused by name without ever being opened.
        with _LazyFile(entry) as lazy:
            collector.add(entry.name, entry.stat().st_size, lazy.read)
    return collector.result()


class _LazyFile:
    """A file that is opened on the first read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def read(self, size: int) -> bytes:
        if self._file is None:
            self._file = self.path.open("rb")
        return self._file.read(size)

    def __enter__(self) -> _LazyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature .. entries, cd size, cd offset, comment
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_MAX_CENTRAL_ENTRY_BYTES = 46 + 1024 + 1024  # fixed part, a long name, extra fields: what a real adapter needs


def _zip_entry_count(source: BinaryIO) -> tuple[int, int]:
    """(entries, central directory bytes) from the archive's end records, read before ``zipfile`` parses every
    entry of the central directory into memory (about 600 bytes of Python objects per entry)."""
    source.seek(0, io.SEEK_END)
    size = source.tell()
    tail_start = max(0, size - _EOCD.size - 0xFFFF)  # the record sits before a comment of at most 64 KiB
    source.seek(tail_start)
    tail = source.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise AdapterError(Code.BAD_ARCHIVE, "corrupt archive: no zip end-of-central-directory record")
    _sig, _disk, _cd_disk, _here, entries, cd_bytes, _offset, _comment = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or cd_bytes == 0xFFFFFFFF:  # zip64: the real counts are in the zip64 record
        locator_at = tail_start + at - _ZIP64_LOCATOR.size
        if locator_at < 0:
            raise AdapterError(Code.BAD_ARCHIVE, "corrupt archive: zip64 locator missing")
        source.seek(locator_at)
        signature, _disk, record_at, _disks = _ZIP64_LOCATOR.unpack(source.read(_ZIP64_LOCATOR.size))
        if signature != _ZIP64_LOCATOR_SIGNATURE or record_at > size - _ZIP64_EOCD.size:
            raise AdapterError(Code.BAD_ARCHIVE, "corrupt archive: zip64 locator missing")
        source.seek(record_at)
        record = _ZIP64_EOCD.unpack(source.read(_ZIP64_EOCD.size))
        if record[0] != _ZIP64_EOCD_SIGNATURE:
            raise AdapterError(Code.BAD_ARCHIVE, "corrupt archive: zip64 end record missing")
        entries, cd_bytes = record[7], record[8]
    source.seek(0)
    return entries, cd_bytes


def _collect_zip(source: BinaryIO, collector: _Collector) -> None:
    entries, cd_bytes = _zip_entry_count(source)
    most = collector.limits.max_archive_members
    if entries > most or cd_bytes > most * _MAX_CENTRAL_ENTRY_BYTES:
        raise AdapterError(Code.TOO_LARGE, f"archive lists {entries} entries; the limit is {most} files", limit=most)
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _unsafe(f"{info.filename!r} is a symbolic link", member=info.filename)
            if info.is_dir():
                collector.add_directory(info.filename)
                continue
            with archive.open(info) as member:
                collector.add(info.filename, info.file_size, member.read)


class _InflateBound(io.RawIOBase):
    """A read-only stream over ``inner`` that fails once more than ``limit`` bytes came out of it."""

    def __init__(self, inner: BinaryIO | gzip.GzipFile, limit: int) -> None:
        self.inner, self.limit, self.count = inner, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise AdapterError(
                Code.TOO_LARGE, f"archive inflates past the limit of {self.limit} bytes", limit=self.limit
            )
        buffer[: len(data)] = data
        return len(data)


def _collect_tar(source: BinaryIO, collector: _Collector, compressed: bool) -> None:
    # Tar headers add 512-byte blocks around every member; allow for them on top of the unpacked limit.
    bound = collector.limits.max_unpacked_bytes + 1024 * (collector.limits.max_archive_members + 2)
    raw = gzip.GzipFile(fileobj=source) if compressed else source
    stream = io.BufferedReader(_InflateBound(raw, bound))
    # Stream mode ("r|"): members are read in order and never seeked, so the bound above always applies.
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.issym() or member.islnk():
                raise _unsafe(f"{member.name!r} is a link", member=member.name)
            if member.isdir():
                collector.add_directory(member.name)
                continue
            if not member.isfile():
                raise _unsafe(f"{member.name!r} is not a regular file", member=member.name)
            extracted = archive.extractfile(member)
            assert extracted is not None  # regular files always extract
            collector.add(member.name, member.size, extracted.read)


def collect_archive(source: Path | bytes, limits: Limits = DEFAULT_LIMITS) -> AdapterFiles:
    """From a .zip or a .tar / .tar.gz, given as a path or as bytes. The format is sniffed, not guessed
    from the name."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size > limits.max_archive_bytes:
        raise AdapterError(
            Code.TOO_LARGE, f"archive is {size} bytes; the limit is {limits.max_archive_bytes}", limit=size
        )
    stream: BinaryIO = source.open("rb") if isinstance(source, Path) else io.BytesIO(source)
    collector = _Collector(limits)
    with stream:
        head = stream.read(512)
        stream.seek(0)
        try:
            if head.startswith(_ZIP_MAGIC):
                _collect_zip(stream, collector)
            elif head.startswith(_GZIP_MAGIC):
                _collect_tar(stream, collector, compressed=True)
            elif head[257:262] == b"ustar":
                _collect_tar(stream, collector, compressed=False)
            else:
                raise AdapterError(Code.BAD_ARCHIVE, "not a .zip, .tar or .tar.gz archive")
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile, struct.error) as e:
            raise AdapterError(Code.BAD_ARCHIVE, f"corrupt archive: {e}") from e
        except (RuntimeError, NotImplementedError) as e:  # zipfile: encrypted or unknown compression
            raise AdapterError(Code.BAD_ARCHIVE, f"unreadable archive member: {e}") from e
    return collector.result()
