"""``file:///path``: a directory of manifests and content-addressed blobs; the embedded default.

Every write goes to a temporary file, is fsynced, then moved into place and
the directory fsynced, so a reader (or a process restarted after SIGKILL)
never sees a torn file. Manifests are created with ``link()``, which fails
if the name exists: two writers never overwrite each other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import StoreError
from ._local import FileLock, in_thread
from .base import SnapshotStore

__all__ = ["FileStore"]

MARKER = "statetransfer-store/1\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(SnapshotStore):
    """A snapshot store in a local directory (created on first use)."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            for sub in ("manifests", "blobs", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            marker = self.root / "STORE"
            if not marker.exists():
                marker.write_text(MARKER)
            elif marker.read_text() != MARKER:
                raise StoreError(f"{self.root} is a store of another format: {marker.read_text()!r}")
        except OSError as exc:
            raise StoreError(f"cannot open store directory {str(self.root)!r}: {exc}") from exc
        self._lock = FileLock(self.root / "lock")

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @classmethod
    def from_url(cls, url: str) -> FileStore:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file store URL {url!r} names host {parts.netloc!r}; use file:///absolute/path")
        path = unquote(parts.path)
        if not path:
            raise StoreError(f"file store URL {url!r} has no path")
        return cls(path)

    # -- locking -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._lock.hold(exclusive=True):
            await in_thread(repr(self), self._clean_tmp)  # no put is running: leftovers are from crashes
            yield

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[None]:
        async with self._lock.hold(exclusive=False):
            yield

    def _clean_tmp(self) -> None:
        for entry in os.scandir(self.root / "tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)

    # -- paths -------------------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _write_tmp(self, data: bytes) -> Path:
        tmp = self.root / "tmp" / f"{secrets.token_hex(8)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    # -- primitives --------------------------------------------------------------------------------
    def _put_blob_sync(self, digest: str, data: bytes) -> None:
        final = self._blob_path(digest)
        final.parent.mkdir(exist_ok=True)
        tmp = self._write_tmp(data)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    async def _put_blob(self, digest: str, data: bytes) -> None:
        await in_thread(repr(self), self._put_blob_sync, digest, data)

    async def _get_blob(self, digest: str) -> bytes:
        return await in_thread(repr(self), self._read, self._blob_path(digest))

    async def _has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).exists()

    async def _delete_blob(self, digest: str) -> None:
        await in_thread(repr(self), self._unlink, self._blob_path(digest))

    def _list_blobs_sync(self) -> set[str]:
        out: set[str] = set()
        for sub in os.scandir(self.root / "blobs"):
            if sub.is_dir():
                out.update(e.name for e in os.scandir(sub.path) if len(e.name) == 64)
        return out

    async def _list_blobs(self) -> set[str]:
        return await in_thread(repr(self), self._list_blobs_sync)

    def _put_manifest_sync(self, snapshot_id: str, data: bytes) -> None:
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, self.root / "manifests" / snapshot_id)
        except FileExistsError:
            raise StoreError(f"snapshot {snapshot_id!r} already exists in {self!r}") from None
        finally:
            os.unlink(tmp)
        _fsync_dir(self.root / "manifests")

    async def _put_manifest(self, snapshot_id: str, data: bytes) -> None:
        await in_thread(repr(self), self._put_manifest_sync, snapshot_id, data)

    async def _get_manifest(self, snapshot_id: str) -> bytes:
        return await in_thread(repr(self), self._read, self.root / "manifests" / snapshot_id)

    def _list_manifests_sync(self) -> list[tuple[str, bytes]]:
        out = []
        for entry in os.scandir(self.root / "manifests"):
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                out.append((entry.name, Path(entry.path).read_bytes()))
        return out

    async def _list_manifests(self) -> list[tuple[str, bytes]]:
        return await in_thread(repr(self), self._list_manifests_sync)

    async def _delete_manifest(self, snapshot_id: str) -> None:
        await in_thread(repr(self), self._unlink, self.root / "manifests" / snapshot_id)

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(path.name) from None

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_dir(path.parent)
