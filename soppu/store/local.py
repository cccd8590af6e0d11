"""The local-directory backend of :class:`~soppu.store.base.ObjectStore`: one file per key under a root.

Atomicity comes from the filesystem: every put writes a complete temp file inside ``root/.tmp`` (the same
filesystem as the objects), fsyncs it, then renames it into place (or hard-links it, for create-only puts,
because ``link`` fails on an existing name where ``rename`` would overwrite). Objects are never modified in
place, so an open file descriptor always reads one whole version. A conditional put (``if_match``) compares the
ETag and renames while holding an exclusive ``flock`` on a lock file of that key (``root/.tmp/locks``), so
conditional writers in any processes on the host take turns.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from soppu.errors import InvalidName, ObjectChanged, ObjectExists, ObjectNotFound, StoreError, StoreUnavailable
from soppu.store.base import ObjectInfo, ObjectStore, StoredObject, validate_key

__all__ = ["LocalStore"]

_TMP_DIR = ".tmp"
_CHUNK = 1024 * 1024
_NAME_MAX = 255  # per path component on Linux filesystems; the key alphabet is ASCII, so chars == bytes
# A concurrent delete may prune the parent directory between our mkdir and our rename; a few retries
# win that race without looping forever on a real error.
_PLACE_ATTEMPTS = 5

_clock_lock = threading.Lock()
_last_ns = 0


def _unique_ns() -> int:
    """A wall-clock timestamp in ns that is strictly increasing within this process."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _write_data(out: BinaryIO, data: bytes | BinaryIO) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        out.write(data)
    elif hasattr(data, "read"):
        shutil.copyfileobj(data, out, _CHUNK)
    else:
        # A str would be ambiguous (contents or a path?), so it is refused rather than guessed.
        raise TypeError(f"data must be bytes, a binary file or a Path, not {type(data).__name__}")


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return  # our object was deleted (and its directory pruned) already: nothing left to persist
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    """An object store in a local directory; safe for concurrent threads and processes on one host."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).expanduser().resolve()
        self._tmp = self._root / _TMP_DIR
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"cannot create local store at {self._root}: {e.strerror}") from e

    @property
    def root(self) -> Path:
        return self._root

    @property
    def url(self) -> str:
        return "file://" + str(self._root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self._root)!r})"

    def _path(self, key: str) -> Path:
        # validate_key forbids empty, "." and ".." components, so the join cannot leave the root.
        validate_key(key)
        if any(len(part) > _NAME_MAX for part in key.split("/")):
            # S3 would take it, but the filesystem would fail with ENAMETOOLONG, which is no outage.
            raise InvalidName(f"key {key!r} has a component over {_NAME_MAX} characters", key=key)
        return self._root / key

    def put(
        self, key: str, data: bytes | BinaryIO | Path, *, create_only: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        final = self._path(key)
        if create_only and if_match is not None:
            raise ValueError("create_only and if_match exclude each other")
        if isinstance(data, Path):
            # Opened before anything is written so a missing source is the caller's FileNotFoundError,
            # not a store failure.
            with data.open("rb") as src:
                return self._put(key, final, src, create_only=create_only, if_match=if_match)
        return self._put(key, final, data, create_only=create_only, if_match=if_match)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        locks = self._tmp / "locks"
        locks.mkdir(exist_ok=True)
        with (locks / hashlib.sha256(key.encode()).hexdigest()[:32]).open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield

    def _check_version(self, key: str, final: Path, if_match: str) -> None:
        try:
            current = _etag(final.stat())
        except FileNotFoundError as e:
            raise ObjectNotFound(f"no object {key!r}", key=key) from e
        if current != if_match:
            raise ObjectChanged(f"object {key!r} changed since it was read", key=key)

    def _put(
        self, key: str, final: Path, data: bytes | BinaryIO, *, create_only: bool, if_match: str | None
    ) -> ObjectInfo:
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        except OSError as e:
            raise StoreUnavailable(f"cannot write to local store {self._root}: {e.strerror}", key=key) from e
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _write_data(out, data)
                out.flush()
                # mtime is part of the ETag; coarse filesystem timestamps plus inode reuse could otherwise
                # give two different contents the same ETag.
                now = _unique_ns()
                os.utime(out.fileno(), ns=(now, now))
                os.fsync(out.fileno())
                st = os.fstat(out.fileno())
            if if_match is None:
                self._place(tmp, final, key, create_only=create_only)
            else:
                with self._key_lock(key):
                    self._check_version(key, final, if_match)
                    self._place(tmp, final, key, create_only=False)
            _fsync_dir(final.parent)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {key!r} to local store: {e.strerror}", key=key) from e
        finally:
            # After a rename the temp name is gone; after a link (or a failure) it must be removed.
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key=key, size=st.st_size, etag=_etag(st))

    def _place(self, tmp: Path, final: Path, key: str, *, create_only: bool) -> None:
        for _ in range(_PLACE_ATTEMPTS):
            new_dirs = self._missing_dirs(final.parent)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise self._conflict(key) from e  # an ancestor of the key is another key's file
            except FileNotFoundError:
                continue  # a concurrent delete pruned an ancestor mid-way
            try:
                if create_only:
                    os.link(tmp, final)
                else:
                    tmp.replace(final)
            except FileExistsError as e:
                if final.is_dir():
                    raise self._conflict(key) from e
                raise ObjectExists(f"object {key!r} already exists", key=key) from e
            except (IsADirectoryError, NotADirectoryError) as e:
                raise self._conflict(key) from e
            except FileNotFoundError:
                continue  # the parent directory was pruned between mkdir and rename
            # The object's own entry is synced by the caller; entries of directories we just made are not.
            for directory in new_dirs:
                _fsync_dir(directory.parent)
            return
        raise StoreUnavailable(f"could not place {key!r}: its directory kept vanishing", key=key)

    def _missing_dirs(self, directory: Path) -> list[Path]:
        missing = []
        while directory != self._root and not directory.exists():
            missing.append(directory)
            directory = directory.parent
        return missing

    @staticmethod
    def _conflict(key: str) -> StoreError:
        # S3 allows both "a" and "a/b"; a directory tree cannot, and saying so beats a raw OSError.
        return StoreError(f"key {key!r} collides with a directory or file of another key in the local store", key=key)

    def get(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFound(f"no object {key!r}", key=key) from e
        except OSError as e:
            raise StoreUnavailable(f"cannot read {key!r} from local store: {e.strerror}", key=key) from e
        # One fd for stat and read: the file behind it is never rewritten, so info and bytes agree.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ObjectNotFound(f"no object {key!r}", key=key)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        return StoredObject(info=ObjectInfo(key=key, size=len(data), etag=_etag(st)), data=data)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFound(f"no object {key!r}", key=key) from e
        except OSError as e:
            raise StoreUnavailable(f"cannot stat {key!r} in local store: {e.strerror}", key=key) from e
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no object {key!r}", key=key)
        return ObjectInfo(key=key, size=st.st_size, etag=_etag(st))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Validated here, not in the generator, so a bad prefix fails at the call and not at first next().
        return self._list(validate_key(prefix, prefix=True))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        directory, _, partial = prefix.rpartition("/")
        start = self._root / directory if directory else self._root
        keys = sorted(self._walk(start, directory + "/" if directory else "", partial))
        for key in keys:
            try:
                st = (self._root / key).stat()
            except FileNotFoundError:
                continue  # deleted while we listed; S3 listings are not snapshots either
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(key=key, size=st.st_size, etag=_etag(st))

    def _walk(self, directory: Path, key_prefix: str, partial: str) -> Iterator[str]:
        """Yield the keys of files under ``directory`` whose name there starts with ``partial``."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            # Dot names are never valid key components: this skips .tmp and anything foreign.
            if entry.name.startswith(".") or not entry.name.startswith(partial):
                continue
            key = key_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/", "")
            elif entry.is_file(follow_symlinks=False):
                yield key

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as e:
            raise StoreUnavailable(f"cannot delete {key!r} from local store: {e.strerror}", key=key) from e
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        # Empty directories are invisible to list() but would pile up forever after per-user deletes.
        while directory != self._root and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone): someone else owns it now
            directory = directory.parent

    def check(self) -> None:
        try:
            if not self._root.is_dir():
                raise StoreUnavailable(f"local store root {self._root} is not a directory")
            with tempfile.TemporaryFile(dir=self._tmp) as probe:
                probe.write(b"ok")
        except OSError as e:
            raise StoreUnavailable(f"local store {self._root} is not writable: {e.strerror}") from e
