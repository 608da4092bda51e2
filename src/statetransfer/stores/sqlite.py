"""``sqlite:///path.db``: one SQLite file (WAL mode) holding manifests and blobs; fast listing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import StoreError
from ._local import FileLock, in_thread
from .base import SnapshotStore

__all__ = ["SQLiteStore"]

R = TypeVar("R")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (id TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class SQLiteStore(SnapshotStore):
    """A snapshot store in one SQLite database file; every write is one durable transaction."""

    scheme = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {str(self.path)!r}: {exc}") from exc
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise StoreError(f"SQLite store URL {url!r} has no path; use sqlite:///absolute/path.db")
        return cls(path)

    async def close(self) -> None:
        with self._mutex:
            self._db.close()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._lock.hold(exclusive=True):
            yield

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[None]:
        async with self._lock.hold(exclusive=False):
            yield

    def _run(self, func: Callable[[sqlite3.Connection], R]) -> R:
        with self._mutex:
            return func(self._db)

    async def _call(self, func: Callable[[sqlite3.Connection], R]) -> R:
        return await in_thread(repr(self), self._run, func)

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        row = await self._call(lambda db: db.execute(sql, args).fetchone())
        if row is None:
            raise KeyError(args[0])
        return row[0]

    async def _put_blob(self, digest: str, data: bytes) -> None:
        await self._call(lambda db: db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (digest, data)))

    async def _get_blob(self, digest: str) -> bytes:
        return bytes(await self._one("SELECT CAST(data AS BLOB) FROM blobs WHERE digest = ?", (digest,)))

    async def _has_blob(self, digest: str) -> bool:
        row = await self._call(lambda db: db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone())
        return row is not None

    async def _delete_blob(self, digest: str) -> None:
        await self._call(lambda db: db.execute("DELETE FROM blobs WHERE digest = ?", (digest,)))

    async def _list_blobs(self) -> set[str]:
        return await self._call(lambda db: {r[0] for r in db.execute("SELECT digest FROM blobs")})

    async def _put_manifest(self, snapshot_id: str, data: bytes) -> None:
        def insert(db: sqlite3.Connection) -> None:
            try:
                db.execute("INSERT INTO manifests VALUES (?, ?)", (snapshot_id, data))
            except sqlite3.IntegrityError:
                raise StoreError(f"snapshot {snapshot_id!r} already exists in {self!r}") from None

        await self._call(insert)

    async def _get_manifest(self, snapshot_id: str) -> bytes:
        return bytes(await self._one("SELECT CAST(data AS BLOB) FROM manifests WHERE id = ?", (snapshot_id,)))

    async def _list_manifests(self) -> list[tuple[str, bytes]]:
        sql = "SELECT id, CAST(data AS BLOB) FROM manifests"
        return await self._call(lambda db: [(r[0], bytes(r[1])) for r in db.execute(sql)])

    async def _delete_manifest(self, snapshot_id: str) -> None:
        await self._call(lambda db: db.execute("DELETE FROM manifests WHERE id = ?", (snapshot_id,)))
