"""The S3 backend of :class:`~soppu.store.base.ObjectStore` (AWS S3, MinIO, moto), through boto3.

S3 itself gives the semantics the interface promises: ``PutObject`` is atomic, ``If-None-Match: *`` makes
create-only puts race-free, and a ``GetObject`` response carries the ETag of exactly the bytes it returns.
This module's job is configuration (path-style addressing, retries, timeouts) and turning botocore's
exceptions into :mod:`soppu.errors`. Credentials are handed to boto3 and never kept or printed here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from soppu.errors import ObjectChanged, ObjectExists, ObjectNotFound, StoreError, StoreUnavailable
from soppu.store.base import ObjectInfo, ObjectStore, StoredObject, validate_key

__all__ = ["S3Store"]

_DEFAULT_REGION = "us-east-1"
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_UNAVAILABLE = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "403",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
    }
)
# Non-seekable uploads are spooled so botocore can learn the length; small ones never touch the disk.
_SPOOL_MAX = 8 * 1024 * 1024


def _client_config() -> Config:
    return Config(
        # MinIO and moto serve buckets under the path, not as virtual-host subdomains.
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=3,
        read_timeout=30,
        # Concurrent threads share one client; the default pool of 10 would make them queue.
        max_pool_connections=32,
        # Newer botocore adds CRC checksums with aws-chunked bodies that older MinIO releases reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


class S3Store(ObjectStore):
    """An object store in one S3 bucket. Thread-safe: one boto3 client is shared by all calls."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        client: Any | None = None,
    ) -> None:
        self._bucket = bucket
        self._endpoint_url = endpoint_url or os.environ.get("S3_ENDPOINT_URL") or None
        region = region or os.environ.get("AWS_DEFAULT_REGION") or _DEFAULT_REGION
        if client is None:
            # A private session: boto3's default session is not thread-safe to share across stores.
            session = boto3.session.Session(
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=region,
            )
            client = session.client("s3", endpoint_url=self._endpoint_url, config=_client_config())
        self._client = client

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def client(self) -> Any:
        """The underlying boto3 client, for callers that need an operation this class does not wrap."""
        return self._client

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}"

    def __repr__(self) -> str:
        return f"S3Store(bucket={self._bucket!r}, endpoint_url={self._endpoint_url!r})"

    def _fail(
        self,
        e: ClientError | BotoCoreError,
        op: str,
        key: str | None = None,
        *,
        create_only: bool = False,
        conditional: bool = False,
    ) -> NoReturn:
        where = f"{key!r} in bucket {self._bucket!r}" if key is not None else f"bucket {self._bucket!r}"
        detail: dict[str, str] = {"key": key} if key is not None else {}
        if isinstance(e, ParamValidationError):
            raise StoreError(f"s3 {op} of {where} was rejected by botocore: {e}", **detail) from e
        if isinstance(e, BotoCoreError):
            # Connection refused, DNS, timeouts, missing credentials: the store is unreachable, not the key.
            raise StoreUnavailable(f"s3 {op} of {where} failed: {e}", **detail) from e
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"s3 {op} of {where} failed: {code or status} {error.get('Message', '')}".rstrip()
        if code in _NOT_FOUND and key is not None:
            raise ObjectNotFound(f"no object {key!r} in bucket {self._bucket!r}", key=key) from e
        if create_only and (code in _EXISTS or status == 412):
            raise ObjectExists(f"object {key!r} already exists in bucket {self._bucket!r}", key=key) from e
        if conditional and (code in _EXISTS or status in (409, 412)):
            # 409 ConditionalRequestConflict: a concurrent conditional write to the key was under way; either way
            # the caller's version is not (or no longer) the object's.
            raise ObjectChanged(f"object {key!r} in bucket {self._bucket!r} changed since it was read", key=key) from e
        if code in _UNAVAILABLE or code in _NOT_FOUND or status == 403 or status >= 500:
            raise StoreUnavailable(message, s3_code=code, **detail) from e
        raise StoreError(message, s3_code=code, **detail) from e

    def put(
        self, key: str, data: bytes | BinaryIO | Path, *, create_only: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        validate_key(key)
        if create_only and if_match is not None:
            raise ValueError("create_only and if_match exclude each other")
        conditions: dict[str, str] = {"IfNoneMatch": "*"} if create_only else {}
        if if_match is not None:
            conditions["IfMatch"] = f'"{if_match}"'
        if isinstance(data, Path):
            with data.open("rb") as src:
                return self._put(key, src, conditions)
        if isinstance(data, bytes | bytearray | memoryview):
            return self._put(key, bytes(data), conditions)
        if not hasattr(data, "read"):
            raise TypeError(f"data must be bytes, a binary file or a Path, not {type(data).__name__}")
        if _seekable(data):
            return self._put(key, data, conditions)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX) as spool:
            while chunk := data.read(1024 * 1024):
                spool.write(chunk)
            spool.seek(0)
            return self._put(key, spool, conditions)  # type: ignore[arg-type]

    def _put(self, key: str, body: bytes | BinaryIO, conditions: dict[str, str]) -> ObjectInfo:
        if isinstance(body, bytes):
            size = len(body)
        else:
            start = body.tell()
            size = body.seek(0, os.SEEK_END) - start
            body.seek(start)
        try:
            response = self._client.put_object(Bucket=self._bucket, Key=key, Body=body, **conditions)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "put", key, create_only="IfNoneMatch" in conditions, conditional="IfMatch" in conditions)
        return ObjectInfo(key=key, size=size, etag=_strip_etag(response["ETag"]))

    def get(self, key: str) -> StoredObject:
        validate_key(key)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            with response["Body"] as body:
                data = body.read()
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "get", key)
        info = ObjectInfo(key=key, size=len(data), etag=_strip_etag(response["ETag"]))
        return StoredObject(info=info, data=data)

    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            # A HEAD error has no body, so a missing bucket also reads as 404 here; check() tells them apart.
            response = self._client.head_object(Bucket=self._bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "head", key)
        return ObjectInfo(key=key, size=response["ContentLength"], etag=_strip_etag(response["ETag"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Validated here, not in the generator, so a bad prefix fails at the call and not at first next().
        return self._list(validate_key(prefix, prefix=True))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"], size=item["Size"], etag=_strip_etag(item["ETag"]))
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "list")

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self._bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "delete", key)

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "check")

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already (for tests and development setups)."""
        try:
            self._client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in _NOT_FOUND | {"NoSuchBucket"}:
                self._fail(e, "check")
        except BotoCoreError as e:
            self._fail(e, "check")
        kwargs: dict[str, Any] = {"Bucket": self._bucket}
        region = self._client.meta.region_name or _DEFAULT_REGION
        if region != _DEFAULT_REGION:
            # us-east-1 is the one region that rejects an explicit location constraint.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou"}:
                self._fail(e, "create")
        except BotoCoreError as e:
            self._fail(e, "create")


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False
