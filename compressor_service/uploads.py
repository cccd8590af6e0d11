"""An upload from the wire to validated adapter files, written to disk once and never held whole in memory.

1. :func:`receive_form` feeds the request body, as it arrives, to python-multipart's streaming parser (as
   Starlette's own form parsing does): each file part goes straight to its own temporary file, and the small
   text fields (``name``, ``probes``) are kept. It counts bytes: past ``max_upload_bytes`` it stops reading and
   answers 413 ``too_large`` (a declared Content-Length over the cap is refused before any byte is read).
2. :func:`collect` hands the parts to the core's collectors and :func:`soppu.adapter.validate_files`:

   - one part in the field ``archive``, or a lone part whose file name ends in ``.zip``, ``.tar``, ``.tar.gz`` or
     ``.tgz``: an archive (``collect_archive``; its format is sniffed, not guessed from the name, and a pickle
     file name is refused unopened, as :func:`soppu.adapter.read_adapter` refuses a pickle path);
   - otherwise every file part is one adapter file, named by its file name (as ``curl -F x=@adapter_config.json``
     sends it), so ``adapter_config.json`` + ``adapter_model.safetensors`` (``collect_parts``).

   Probe prompts (:mod:`soppu.adapter.probes`) come as the text field ``probes`` or as a ``probes.json`` file,
   never both; they are validated here too (422 ``bad_probes``) and travel on as ``probes.json``.

Memory: the adapter's files are read once into bytes, and its tensors exist only while it is validated (the
caller drops them before storing); the route caps how many uploads run at once (``max_concurrent_uploads``,
then 503 ``busy``).

Every refusal is an :class:`~soppu.errors.AdapterError` (or an :class:`~compressor_service.errors.ApiError` for
a malformed request), raised before anything is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, Limits, LoraAdapter, validate_files
from soppu.adapter.archive import PICKLE_SUFFIXES, AdapterFiles, collect_archive, collect_parts
from soppu.adapter.probes import MAX_PROBES_BYTES, PROBES_NAME, encode_probes, parse_probes
from soppu.errors import AdapterError, AdapterErrorCode

from .errors import ApiError

__all__ = [
    "ARCHIVE_FIELD",
    "NAME_FIELD",
    "PROBES_FIELD",
    "Form",
    "Part",
    "UploadSlots",
    "check_content_type",
    "collect",
    "receive_form",
]

ARCHIVE_FIELD = "archive"
NAME_FIELD = "name"
PROBES_FIELD = "probes"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_MAX_FIELD_BYTES = 1024  # text fields are names, never data
_MAX_FIELDS = 8


def _too_large(limit: int) -> AdapterError:
    return AdapterError(
        AdapterErrorCode.TOO_LARGE, f"the request body is larger than the limit of {limit} bytes", limit=limit
    )


class UploadSlots:
    """At most ``limit`` uploads in flight in this process (each holds its files on disk and in memory); one
    more answers 503 ``busy`` at once, before its body is read."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    @contextmanager
    def take(self) -> Iterator[None]:
        if self.active >= self.limit:
            raise ApiError("busy", f"{self.limit} uploads are already in flight; retry later")
        self.active += 1  # the event loop's thread only: no lock needed
        try:
            yield
        finally:
            self.active -= 1


@dataclass
class Part:
    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class Form:
    files: list[Part] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


class _Builder:
    """python-multipart callbacks that write file parts into ``directory`` and keep text fields."""

    def __init__(self, directory: Path, max_parts: int) -> None:
        self.directory, self.max_parts = directory, max_parts
        self.form = Form()
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value = b"", b""
        self._field = ""
        self._file: Part | None = None  # the file part being written, or None for a text field
        self._out: BinaryIO | None = None
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self._headers, self._file, self._text = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError("bad_request", "a multipart part has no Content-Disposition name")
        self._field = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if len(self.form.files) >= self.max_parts:
                raise AdapterError(AdapterErrorCode.TOO_LARGE, f"more than {self.max_parts} file parts")
            path = self.directory / f"part-{len(self.form.files)}"
            self._file = Part(self._field, options[b"filename"].decode("utf-8", "replace"), path)
            self._out = path.open("wb")
        elif len(self.form.fields) >= _MAX_FIELDS:
            raise ApiError("bad_request", f"more than {_MAX_FIELDS} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None and self._out is not None:
            self._out.write(data[start:end])
            self._file.size += end - start
            return
        self._text += data[start:end]
        if self._field == PROBES_FIELD:
            if len(self._text) > MAX_PROBES_BYTES:
                raise AdapterError(AdapterErrorCode.BAD_PROBES, f"probes are over {MAX_PROBES_BYTES} bytes")
        elif len(self._text) > _MAX_FIELD_BYTES:
            raise ApiError("bad_request", f"form field {self._field!r} is over {_MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._file is not None:
            self.close()
            self.form.files.append(self._file)
        else:
            self.form.fields[self._field] = self._text.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def check_content_type(content_type: str) -> bytes:
    """The multipart boundary; 415 for anything but multipart/form-data (checked before the body is read)."""
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise ApiError("unsupported_media_type", "send the adapter as multipart/form-data")
    if not params.get(b"boundary"):
        raise ApiError("bad_request", "the multipart Content-Type has no boundary")
    return params[b"boundary"]


async def receive_form(
    request: Request, content_type: str, directory: Path, max_parts: int, limit: int
) -> tuple[Form, int]:
    """The parts of the request's multipart/form-data body, parsed as it arrives (file parts land in
    ``directory``), and the body's size. 413 as soon as the body passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    boundary = check_content_type(content_type)
    builder = _Builder(directory, max_parts)
    callbacks = {
        name: getattr(builder, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    total = 0
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            parser.write(chunk)  # page-cache writes of small chunks: cheaper than a thread hop per chunk
        parser.finalize()
    except FormParserError as e:
        raise ApiError("bad_request", f"malformed multipart body: {e}") from e
    finally:
        builder.close()
    return builder.form, total


def _is_archive(form: Form) -> bool:
    if any(part.field == ARCHIVE_FIELD for part in form.files):
        return True
    return len(form.files) == 1 and form.files[0].filename.lower().endswith(ARCHIVE_SUFFIXES)


def collect(form: Form, limits: Limits) -> tuple[dict[str, bytes], LoraAdapter]:
    """The adapter's files (as ``accept_upload`` takes them: the two PEFT files, and ``probes.json`` when probes
    were sent) and the validated adapter."""
    unexpected = sorted(set(form.fields) - {NAME_FIELD, PROBES_FIELD})
    if unexpected:
        raise ApiError("bad_request", f"unexpected form field(s) {unexpected}: send file parts, `name`, `probes`")
    if _is_archive(form):
        if len(form.files) != 1:
            raise ApiError("bad_request", "send an archive as the only file part")
        part = form.files[0]
        if part.filename.lower().endswith(PICKLE_SUFFIXES):
            raise AdapterError(AdapterErrorCode.PICKLE_REJECTED, f"{part.filename!r} is a pickle and is never opened")
        files = collect_archive(part.path, limits)
    else:
        total = sum(part.size for part in form.files)
        if total > limits.max_unpacked_bytes:  # what collect_parts would refuse, refused before reading it in
            raise AdapterError(AdapterErrorCode.TOO_LARGE, f"file parts exceed {limits.max_unpacked_bytes} bytes")
        names = [part.filename for part in form.files]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # a mapping would keep one silently; the collector's rule for a second copy is the same
            raise AdapterError(AdapterErrorCode.UNSAFE_ARCHIVE, f"file part(s) {twice} sent more than once")
        files = collect_parts({part.filename: part.path.read_bytes() for part in form.files}, limits)
    adapter = validate_files(files, limits)
    collected = {CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights}
    probes = _probes(form, files)
    if probes is not None:
        collected[PROBES_NAME] = encode_probes(probes)
    return collected, adapter


def _probes(form: Form, files: AdapterFiles) -> tuple[str, ...] | None:
    field = form.fields.get(PROBES_FIELD)
    if field is not None and files.probes is not None:
        raise AdapterError(AdapterErrorCode.BAD_PROBES, f"send probes once: the `probes` field or {PROBES_NAME}")
    raw = field if field is not None else files.probes
    return None if raw is None else parse_probes(raw)
