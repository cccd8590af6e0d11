"""Where adapter bytes come from: S3 (as LoRAX reads it) or the local filesystem.

A source turns a request's ``adapter_id`` into a :class:`Location` and answers two questions about it:
which files it holds, each with a version tag (the S3 ETag, or mtime and size locally), and what one of those
files contains. The version tags go into the cache key, so a changed object is never served stale.

- ``s3``: ``adapter_id = s3://BUCKET/PREFIX``. The endpoint comes from ``S3_ENDPOINT_URL`` and credentials from
  boto3's default chain (``AWS_ACCESS_KEY_ID`` ...), exactly as LoRAX reads them. Only the objects directly under
  ``PREFIX/`` count, so ``.../v00000001`` never picks up ``.../v000000010``.
- ``local``: ``adapter_id`` is a directory (PEFT files or ``core.safetensors``) or a core file itself.

Sources are blocking (boto3, file I/O); the cache calls them in worker threads.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

from soppu.errors import ObjectNotFound, StoreError
from soppu.store import S3Store

from .types import AdapterLoadFailed, AdapterSourceKind

__all__ = ["SOURCES", "AdapterSource", "LocalSource", "Location", "S3Source"]


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
            raise AdapterLoadFailed(f"{self}: reference {ref!r} leaves the bucket")
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

    def __init__(self) -> None:
        self._stores: dict[str, S3Store] = {}
        self._lock = Lock()

    def _store(self, bucket: str) -> S3Store:
        with self._lock:
            if bucket not in self._stores:
                self._stores[bucket] = S3Store(bucket)  # endpoint and credentials from the environment
            return self._stores[bucket]

    def locate(self, adapter_id: str) -> Location:
        bucket, _, prefix = adapter_id.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not adapter_id.startswith("s3://") or not bucket or not prefix:
            raise AdapterLoadFailed(f"adapter_id {adapter_id!r} is not of the form s3://bucket/prefix")
        return Location(self.kind, bucket, prefix)

    def listing(self, location: Location) -> dict[str, str]:
        prefix = f"{location.path}/"
        try:
            infos = list(self._store(location.root).list(prefix))
        except StoreError as e:
            raise AdapterLoadFailed(f"{location}: cannot list the adapter: {e.message}") from e
        files = {info.key[len(prefix) :]: info.etag for info in infos}
        if location.only is not None:
            files = {name: tag for name, tag in files.items() if name == location.only}
        return {name: tag for name, tag in files.items() if "/" not in name}

    def read(self, location: Location, name: str) -> bytes:
        try:
            return self._store(location.root).get(f"{location.path}/{name}").data
        except ObjectNotFound as e:
            raise AdapterLoadFailed(f"{location}: {name} is missing") from e
        except StoreError as e:
            raise AdapterLoadFailed(f"{location}: cannot download {name}: {e.message}") from e


class LocalSource(AdapterSource):
    kind = AdapterSourceKind.LOCAL

    def locate(self, adapter_id: str) -> Location:
        path = Path(adapter_id)
        if not path.is_absolute():
            raise AdapterLoadFailed(f"local adapter_id {adapter_id!r} must be an absolute path")
        if path.is_file():
            return Location(self.kind, "", str(path.parent), path.name)
        if path.is_dir():
            return Location(self.kind, "", str(path))
        raise AdapterLoadFailed(f"no adapter at {adapter_id}")

    def listing(self, location: Location) -> dict[str, str]:
        folder = Path(location.path)
        try:
            entries = [folder / location.only] if location.only else list(folder.iterdir())
            stats = {entry.name: entry.stat() for entry in entries if entry.is_file()}
        except OSError as e:
            raise AdapterLoadFailed(f"{location}: cannot list the adapter: {e}") from e
        return {name: f"{st.st_mtime_ns}-{st.st_size}" for name, st in stats.items()}

    def read(self, location: Location, name: str) -> bytes:
        try:
            return (Path(location.path) / name).read_bytes()
        except OSError as e:
            raise AdapterLoadFailed(f"{location}: cannot read {name}: {e}") from e


SOURCES: dict[AdapterSourceKind, type[AdapterSource]] = {
    AdapterSourceKind.S3: S3Source,
    AdapterSourceKind.LOCAL: LocalSource,
}
