"""``file:///path``: a directory of manifests and content-addressed blobs; the embedded default.

Every write goes to a temporary file in ``tmp/``, is fsynced, then moved
into place and the directory fsynced, so a reader (or a process restarted
after SIGKILL) never sees a torn file. Manifests are created with
``link()``, which fails if the name exists: two writers never overwrite each
other. Every path inside the store is opened relative to its directory with
``O_NOFOLLOW``: a symlink planted inside the store is reported, never
followed, and the store only deletes names of the forms it writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

from ..errors import InvalidStoreURL, StoreError, StoreNotFound
from ._locking import FileLock, Held, in_thread
from .base import ObjectInfo, SnapshotStore

__all__ = ["FileStore"]

MARKER = "statetransfer-store/1\n"
_SUBDIRS = ("manifests", "blobs", "tmp")
_TMP_NAME = re.compile(r"^[0-9a-f]{16}\.tmp$")
_MARKER_TMP = re.compile(r"^\.STORE\.[0-9a-f]{12}\.tmp$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Entries a store directory holds once created (a crash during creation may leave any subset of them).
_OWN_ENTRIES = frozenset({"STORE", "lock", "damaged", *_SUBDIRS})


class FileStore(SnapshotStore):
    """A snapshot store in a local directory.

    Args:
        root: the store's directory.
        create: create the store if the directory is missing or empty;
            with ``False``, a missing store raises :class:`StoreNotFound`.
    """

    scheme = "file"
    verify_dedup_bytes = 64 << 20

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        self.create = create
        self._opened = False

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> Self:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidStoreURL(f"file store URL {url!r} names host {parts.netloc!r}; use file:///absolute/path")
        path = unquote(parts.path)
        if not path:
            raise InvalidStoreURL(f"file store URL {url!r} has no path")
        store = cls(path, create=create)
        store._open_sync()  # a few local system calls: a missing store is reported at once
        return store

    # -- opening -----------------------------------------------------------------------------------
    def _open_sync(self) -> None:
        try:
            self._open_or_create()
        except (StoreError, KeyError):
            raise
        except OSError as exc:
            raise StoreError(f"cannot open store directory {str(self.root)!r}: {exc.strerror or exc}") from exc
        self._opened = True

    def _open_or_create(self) -> None:
        root = str(self.root)
        if not self.root.exists():
            if not self.create:
                raise StoreNotFound(f"no store at {root!r} (the directory does not exist)", location=root)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not self._check_marker(fd):
                foreign = sorted(n for n in os.listdir(fd) if n not in _OWN_ENTRIES and not _MARKER_TMP.match(n))
                # checked again after listing: another process may have created the store meanwhile
                if not self._check_marker(fd):
                    if foreign or self._own_entries_hold_data(fd):
                        shown = ", ".join(foreign[:5]) or "data"
                        msg = f"{root!r} is not empty and is not a statetransfer store ({shown}); refusing to use it"
                        raise StoreError(msg)
                    if not self.create:
                        raise StoreNotFound(f"no store at {root!r} (the directory holds no store)", location=root)
                    self._write_marker(fd, replace=False)
            for sub in _SUBDIRS:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub, 0o700, dir_fd=fd)
                os.close(self._open_dir(fd, sub, root))  # refuse a symlink or a file in its place
        finally:
            os.close(fd)

    def _check_marker(self, fd: int) -> bool:
        """Whether the directory is a store; a torn marker (a crash while creating it) is rewritten."""
        try:
            mfd = os.open("STORE", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"{str(self.root)!r}: its STORE marker is not a regular file ({exc.strerror})") from exc
        with os.fdopen(mfd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise StoreError(f"{str(self.root)!r}: its STORE marker is not a regular file")
            content = fh.read(256)
        if content == MARKER.encode():
            return True
        if MARKER.encode().startswith(content):  # torn: written by a process that crashed while creating it
            self._write_marker(fd, replace=True)
            return True
        raise StoreError(f"{str(self.root)!r} is a store of another format: {content[:40]!r}")

    def _own_entries_hold_data(self, fd: int) -> bool:
        """Whether the store-named entries of a marker-less directory hold anything (then it is not ours)."""
        for sub in _SUBDIRS:
            try:
                sfd = os.open(sub, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError:
                return True
            try:
                if os.listdir(sfd):
                    return True
            finally:
                os.close(sfd)
        return False

    @staticmethod
    def _write_marker(fd: int, *, replace: bool) -> None:
        tmp = f".STORE.{secrets.token_hex(6)}.tmp"
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            with os.fdopen(tfd, "wb") as fh:
                fh.write(MARKER.encode())
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, "STORE", src_dir_fd=fd, dst_dir_fd=fd)
            else:
                with contextlib.suppress(FileExistsError):  # another process won the race: same content
                    os.link(tmp, "STORE", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
        os.fsync(fd)

    def _open_dir(self, parent: int, name: str, shown: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                msg = f"{shown}/{name} in {self!r} is a symlink or not a directory: refusing to follow it"
                raise StoreError(msg) from exc
            raise

    async def _ensure_open(self) -> None:
        if not self._opened:
            await in_thread(repr(self), self._open_sync)

    # -- paths -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _dir(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the store directory ``parts``, opened without following any symlink inside the store.

        Raises ``KeyError`` if it is missing (and not ``create``).
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = self._open_dir(fd, part, "/".join(parts[:i]) or ".")
                except FileNotFoundError:
                    if not create:
                        raise KeyError("/".join(parts)) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    nfd = self._open_dir(fd, part, "/".join(parts[:i]) or ".")
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _split(key: str) -> tuple[list[str], str]:
        *parts, name = key.split("/")
        if not all(_PART.match(p) and ".." not in p for p in [*parts, name]):
            raise StoreError(f"unsafe object key {key!r}")
        return parts, name

    # -- locking -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _process_lock(self, exclusive: bool) -> AsyncIterator[Held | None]:
        await self._ensure_open()
        async with FileLock(str(self.root / "lock"), timeout=self.lock_timeout).hold(exclusive):
            if exclusive:  # no put is running anywhere: leftovers in tmp/ are from crashes
                await in_thread(repr(self), self._clean_tmp)
            yield None

    def _clean_tmp(self) -> None:
        with self._dir(["tmp"]) as fd:
            for entry in os.scandir(fd):
                if _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)

    # -- the object primitives ---------------------------------------------------------------------
    def _read_sync(self, key: str) -> bytes:
        parts, name = self._split(key)
        with self._dir(parts) as dfd:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                raise KeyError(key) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StoreError(f"{key} in {self!r} is a symlink: refusing to follow it") from exc
                raise
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StoreError(f"{key} in {self!r} is not a regular file")
                return fh.read()

    async def read_object(self, key: str) -> bytes:
        await self._ensure_open()
        return await in_thread(repr(self), self._read_sync, key)

    def _write_sync(self, key: str, data: bytes, exclusive: bool) -> None:
        parts, name = self._split(key)
        with self._dir(["tmp"], create=True) as tfd:
            tmp = f"{secrets.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                with self._dir(parts, create=True) as dfd:
                    if exclusive:
                        os.link(tmp, name, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
                    else:
                        os.replace(tmp, name, src_dir_fd=tfd, dst_dir_fd=dfd)
                    os.fsync(dfd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=tfd)

    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        await self._ensure_open()
        await in_thread(repr(self), self._write_sync, key, data, exclusive)

    def _delete_sync(self, key: str) -> None:
        parts, name = self._split(key)
        try:
            with self._dir(parts) as dfd:
                try:
                    info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if not stat.S_ISREG(info.st_mode):
                    return  # never delete what the store did not write
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
                os.fsync(dfd)
        except KeyError:
            return

    async def delete_object(self, key: str) -> None:
        await self._ensure_open()
        await in_thread(repr(self), self._delete_sync, key)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        parts = [p for p in prefix.split("/") if p]
        self._split("/".join([*parts, "x"]))
        out: list[ObjectInfo] = []
        try:
            with self._dir(parts) as fd:
                self._scan(
                    fd, prefix if prefix.endswith("/") else prefix + "/", out, depth=2 if parts[:1] == ["blobs"] else 1
                )
        except KeyError:
            pass
        return out

    def _scan(self, fd: int, prefix: str, out: list[ObjectInfo], depth: int) -> None:
        for entry in os.scandir(fd):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            key = prefix + entry.name
            if stat.S_ISREG(info.st_mode):
                out.append(ObjectInfo(key, info.st_size, info.st_mtime))
            elif stat.S_ISDIR(info.st_mode) and depth > 1 and _PART.match(entry.name):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    out.append(ObjectInfo(key, 0, info.st_mtime, regular=False))
                    continue
                try:
                    self._scan(sub, key + "/", out, depth - 1)
                finally:
                    os.close(sub)
            else:
                out.append(ObjectInfo(key, 0, info.st_mtime, regular=False))

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        await self._ensure_open()
        return await in_thread(repr(self), self._list_sync, prefix)

    def _stat_sync(self, key: str) -> ObjectInfo | None:
        parts, name = self._split(key)
        try:
            with self._dir(parts) as dfd:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (KeyError, FileNotFoundError):
            return None
        return ObjectInfo(key, info.st_size, info.st_mtime, regular=stat.S_ISREG(info.st_mode))

    async def stat_object(self, key: str) -> ObjectInfo | None:
        await self._ensure_open()
        return await in_thread(repr(self), self._stat_sync, key)
