"""Where adapter bytes come from: S3 (as LoRAX reads it) or the local filesystem, and which of them this engine
is allowed to read.

A source turns a request's ``adapter_id`` into a :class:`Location` and answers two questions about it:
which files it holds, each with a version tag (the S3 ETag, or mtime and size locally), and what one of those
files contains. The version tags go into the cache key, so a changed object is never served stale.

- ``s3``: ``adapter_id = s3://BUCKET/PREFIX``. The endpoint comes from ``S3_ENDPOINT_URL`` and credentials from
  boto3's default chain (``AWS_ACCESS_KEY_ID`` ...), exactly as LoRAX reads them. Only the objects directly under
  ``PREFIX/`` count, so ``.../v00000001`` never picks up ``.../v000000010``.
- ``local``: ``adapter_id`` is a directory (PEFT files or ``core.safetensors``) or a core file itself.

What may be read is :class:`SourceRules`: the S3 buckets (names, or ``fnmatch`` patterns such as ``soppu-*``)
and the local roots. Nothing is allowed by default. A request outside them is an :class:`AdapterRefused`
decided before storage is touched, so its answer is the same whether the bucket or path exists or not; local
paths are checked as written (no ``..`` out of a root) and again with every symlink resolved.

Errors carry a client-safe ``message`` (no paths, no store or OS error text) and the particulars in ``detail``.
Sources are blocking (boto3, file I/O); the cache calls them in worker threads.
"""

from __future__ import annotations

import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from threading import Lock

from soppu.errors import ObjectNotFound, StoreError
from soppu.store import S3Store

from .types import AdapterLoadFailed, AdapterRefused, AdapterSourceKind

__all__ = ["SOURCES", "AdapterSource", "LocalSource", "Location", "S3Source", "SourceRules"]

_UNREADABLE = "its files could not be read from storage"


@dataclass(frozen=True, slots=True)
class SourceRules:
    """What the sources may read. Empty tuples refuse every S3 bucket / every local path."""

    s3_buckets: tuple[str, ...] = ()  # names or fnmatch patterns
    local_roots: tuple[Path, ...] = ()  # directories (a relative one is taken from the working directory)


@dataclass(frozen=True, slots=True)
class Location:
    """A folder of adapter files: ``root`` is a bucket (S3) or empty (local); ``path`` has no trailing slash.
    ``only`` narrows a local location to one file (an ``adapter_id`` naming a core file)."""

    source: AdapterSourceKind
    root: str
    path: str
    only: str | None = None

    def __str__(self) -> str:
        return f"s3://{self.root}/{self.path}" if self.source is AdapterSourceKind.S3 else self.path

    def relative(self, ref: str) -> tuple[Location, str]:
        """The folder and file name that ``ref`` (a ``/``-separated path relative to this folder) names."""
        target = posixpath.normpath(posixpath.join(self.path, ref))
        if self.source is AdapterSourceKind.S3 and (target.startswith("../") or target in (".", "..")):
            raise AdapterLoadFailed("its bases reference leaves the bucket", detail=f"{self}: reference {ref!r}")
        folder, name = posixpath.split(target)
        return Location(self.source, self.root, folder, name), name


class AdapterSource(ABC):
    kind: AdapterSourceKind

    @abstractmethod
    def locate(self, adapter_id: str) -> Location: ...

    @abstractmethod
    def listing(self, location: Location) -> dict[str, str]:
        """File name -> version tag, for the files directly in ``location``."""

    @abstractmethod
    def read(self, location: Location, name: str) -> bytes: ...


class S3Source(AdapterSource):
    kind = AdapterSourceKind.S3

    def __init__(self, rules: SourceRules) -> None:
        self._buckets = rules.s3_buckets
        self._stores: dict[str, S3Store] = {}
        self._lock = Lock()

    def _allowed(self, bucket: str) -> bool:
        return any(fnmatchcase(bucket, pattern) for pattern in self._buckets)

    def _store(self, bucket: str) -> S3Store:
        with self._lock:
            if bucket not in self._stores:
                self._stores[bucket] = S3Store(bucket)  # endpoint and credentials from the environment
            return self._stores[bucket]

    def locate(self, adapter_id: str) -> Location:
        bucket, _, prefix = adapter_id.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not adapter_id.startswith("s3://") or not bucket or not prefix:
            raise AdapterLoadFailed("it is not of the form s3://bucket/prefix")
        # Checked before any request to the store: an unknown bucket and a forbidden one look the same.
        if not self._allowed(bucket):
            raise AdapterRefused("this engine does not serve adapters from that bucket")
        return Location(self.kind, bucket, prefix)

    def listing(self, location: Location) -> dict[str, str]:
        prefix = f"{location.path}/"
        try:
            infos = list(self._store(location.root).list(prefix))
        except StoreError as e:
            raise AdapterLoadFailed(_UNREADABLE, detail=f"{location}: cannot list: {e.message}") from e
        files = {info.key[len(prefix) :]: info.etag for info in infos}
        if location.only is not None:
            files = {name: tag for name, tag in files.items() if name == location.only}
        return {name: tag for name, tag in files.items() if "/" not in name}

    def read(self, location: Location, name: str) -> bytes:
        try:
            return self._store(location.root).get(f"{location.path}/{name}").data
        except ObjectNotFound as e:
            raise AdapterLoadFailed(f"{name} is missing", detail=f"{location}/{name}: {e.message}") from e
        except StoreError as e:
            raise AdapterLoadFailed(_UNREADABLE, detail=f"{location}/{name}: {e.message}") from e


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


class LocalSource(AdapterSource):
    kind = AdapterSourceKind.LOCAL

    def __init__(self, rules: SourceRules) -> None:
        # Each root as written and as resolved: a client may name a path through a root's own symlink (/tmp on
        # macOS), but what is finally opened must lie under a resolved root.
        written = tuple(os.path.normpath(Path(root).absolute()) for root in rules.local_roots)
        self._real_roots = tuple(os.path.realpath(root) for root in written)
        self._roots = tuple(dict.fromkeys(written + self._real_roots))

    def _real(self, path: str) -> str:
        """``path`` with symlinks resolved, refused unless it lies under a root both as written and resolved."""
        if not self._roots:
            raise AdapterRefused("this engine does not serve local adapters")
        if not Path(path).is_absolute() or not _inside(os.path.normpath(path), self._roots):
            raise AdapterRefused("local adapters must lie under one of this engine's adapter roots")
        real = os.path.realpath(path)
        if not _inside(real, self._real_roots):
            raise AdapterRefused("local adapters must lie under one of this engine's adapter roots")
        return real

    def locate(self, adapter_id: str) -> Location:
        real = Path(self._real(adapter_id))
        if real.is_file():
            return Location(self.kind, "", str(real.parent), real.name)
        if real.is_dir():
            return Location(self.kind, "", str(real))
        raise AdapterLoadFailed("no adapter was found there", detail=f"{real} does not exist")

    def _file(self, location: Location, name: str) -> Path:
        # A location inside a root can still hold a symlink out of it, or name bases (../..) outside it.
        return Path(self._real(str(Path(location.path) / name)))

    def listing(self, location: Location) -> dict[str, str]:
        try:
            names = [location.only] if location.only else [entry.name for entry in Path(location.path).iterdir()]
            stats = {}
            for name in names:
                try:
                    path = self._file(location, name)
                except AdapterRefused:  # a stray link out of the roots: as good as absent
                    continue
                if path.is_file():
                    stats[name] = path.stat()
        except OSError as e:
            raise AdapterLoadFailed(_UNREADABLE, detail=f"{location}: cannot list: {e}") from e
        return {name: f"{st.st_mtime_ns}-{st.st_size}" for name, st in stats.items()}

    def read(self, location: Location, name: str) -> bytes:
        try:
            return self._file(location, name).read_bytes()
        except FileNotFoundError as e:
            raise AdapterLoadFailed(f"{name} is missing", detail=f"{location}/{name}: {e}") from e
        except OSError as e:
            raise AdapterLoadFailed(_UNREADABLE, detail=f"{location}/{name}: {e}") from e


SOURCES: dict[AdapterSourceKind, Callable[[SourceRules], AdapterSource]] = {
    AdapterSourceKind.S3: S3Source,
    AdapterSourceKind.LOCAL: LocalSource,
}
