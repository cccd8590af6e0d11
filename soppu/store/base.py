"""The object-store interface every backend implements, and the key rules they share.

Both backends (:mod:`soppu.store.s3` for S3/MinIO through boto3, :mod:`soppu.store.local` for a local directory)
promise the same semantics, and ``tests/soppu/test_store.py`` runs one suite against both:

- ``put`` is atomic: a reader sees the old object or the whole new one, never a partial object.
- ``put(..., create_only=True)`` succeeds only if the key does not exist yet; otherwise it raises
  :class:`~soppu.errors.ObjectExists`. Exactly one of several racing create-only writers wins.
- ``put(..., if_match=etag)`` succeeds only if the object is still the version with that ETag; otherwise it
  raises :class:`~soppu.errors.ObjectChanged` (or :class:`~soppu.errors.ObjectNotFound` if it is gone). Of
  several writers racing from the same version, in any processes, exactly one wins: a read-modify-write that
  retries on ``ObjectChanged`` never loses an update (S3's ``If-Match``; replicas coordinate through it).
- ``get`` returns the bytes together with the :class:`ObjectInfo` of exactly those bytes (so an ETag is never
  paired with other content); ``head`` returns the info alone. A missing key raises
  :class:`~soppu.errors.ObjectNotFound`.
- ``list(prefix)`` is a plain string-prefix listing, sorted by key, like S3's ``ListObjectsV2``.
- ``delete`` is idempotent: deleting a missing key is not an error.
- An ETag changes whenever the object's content is replaced.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from soppu.errors import InvalidName, ObjectNotFound

__all__ = ["ObjectInfo", "ObjectStore", "StoredObject", "validate_key"]

# Keys are '/'-separated components of a conservative alphabet: no empty or dot-leading components (so no
# "..", no hidden files on the local backend), no backslashes, nothing a shell or URL would need quoting for.
_COMPONENT = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")
_PARTIAL = re.compile(r"[A-Za-z0-9._=+-]*")
MAX_KEY_LENGTH = 1024


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a valid object key (or, with ``prefix=True``, a valid listing prefix)."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        raise InvalidName(f"object key must be a string of at most {MAX_KEY_LENGTH} characters", key=key)
    parts = key.split("/")
    if prefix:
        # A listing prefix may end in "/" or stop part-way through a component.
        last = parts.pop()
        if last and not _PARTIAL.fullmatch(last):
            raise InvalidName(f"invalid key prefix {key!r}", key=key)
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise InvalidName(f"invalid object key {key!r}: bad component {part!r}", key=key)
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What ``head`` tells about an object. ``etag`` is opaque: compare it, never parse it."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes with the info that belongs to exactly those bytes."""

    info: ObjectInfo
    data: bytes


class ObjectStore(ABC):
    """A flat key -> bytes store. See the module docstring for the semantics every backend keeps."""

    @abstractmethod
    def put(
        self, key: str, data: bytes | BinaryIO | Path, *, create_only: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        """Store ``data`` (bytes, a readable binary file, or a path to a file) under ``key`` atomically."""

    @abstractmethod
    def get(self, key: str) -> StoredObject:
        """Return the object's bytes and info; raise ObjectNotFound if there is none."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without its bytes; raise ObjectNotFound if there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def check(self) -> None:
        """Raise StoreUnavailable unless the store can be used right now (readiness probes call this)."""

    def ensure_bucket(self) -> None:  # noqa: B027 - a hook with a do-nothing default, not an abstract method
        """Create what the store lives in unless it exists (an S3 bucket); nothing to do for most stores."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where this store lives, as ``s3://bucket`` or ``file:///path``; never contains a secret."""

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    # builtins.list: inside the class body, ``list`` is the method above
    def delete_prefix(self, prefix: str) -> builtins.list[str]:
        """Delete every object under ``prefix`` and return the keys removed."""
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return keys
