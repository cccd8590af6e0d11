"""Turning a store URL from configuration into an :class:`~soppu.store.base.ObjectStore`.

``s3://bucket`` opens an :class:`~soppu.store.s3.S3Store`; ``file:///abs/path`` or a plain filesystem path
opens a :class:`~soppu.store.local.LocalStore`. Services read one URL setting and call :func:`open_store`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from soppu.store.base import ObjectStore
from soppu.store.local import LocalStore
from soppu.store.s3 import S3Store

__all__ = ["open_store"]

# S3's own bucket naming rule (lowercase, digits, dots, hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def open_store(url: str, **s3_kwargs: Any) -> ObjectStore:
    """Open the store ``url`` names. ``s3_kwargs`` go to :class:`S3Store`; a local store ignores them,
    so one call site can pass its S3 settings whatever the URL turns out to be."""
    if not url:
        raise ValueError("empty store URL: expected s3://bucket, file:///path or a filesystem path")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r} in store URL {url!r}")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"store URL {url!r} must name a bucket only, as s3://bucket")
        return S3Store(bucket, **s3_kwargs)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file store URL {url!r} names a host; expected file:///absolute/path")
        if not parts.path.startswith("/"):
            raise ValueError(f"file store URL {url!r} must hold an absolute path")
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme == "" or "://" not in url:
        # No scheme at all (or something like "C:" / "a:b" that is really a path).
        return LocalStore(Path(url))
    raise ValueError(f"unknown store URL scheme {parts.scheme!r} in {url!r}: expected s3:// or file://")
