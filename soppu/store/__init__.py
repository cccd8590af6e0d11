"""Object storage for SOPPU: one interface (:class:`ObjectStore`) and its backends.

This package owns where bytes live and the guarantees around them: atomic and create-only puts, gets that
pair bytes with their ETag, string-prefix listings, and the key rules (:func:`validate_key`). Backends are
:class:`S3Store` (S3, MinIO) and :class:`LocalStore` (a directory); :func:`open_store` picks one from a URL.
"""

from soppu.store.base import ObjectInfo, ObjectStore, StoredObject, validate_key
from soppu.store.factory import open_store
from soppu.store.local import LocalStore
from soppu.store.s3 import S3Store

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "StoredObject",
    "open_store",
    "validate_key",
]
