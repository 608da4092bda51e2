"""``sqlite:///path.db``: one SQLite file (WAL mode) holding manifests and blobs; fast listing.

Every write is one durable transaction. A store created by this version
keeps a small reserve file beside the database (``<db>.reserve``), given back
to the disk when it is full so that ``delete`` and ``prune`` can still run
and free space; freed pages are returned to the file system
(``auto_vacuum=INCREMENTAL``). A database a user may only read is opened
read-only: listing, reading and verifying work.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit

from ..errors import InvalidStoreURL, StoreError, StoreNotFound
from ._locking import FileLock, Held, in_thread
from .base import BLOBS, MANIFESTS, ObjectInfo, SnapshotStore

__all__ = ["SQLiteStore"]

R = TypeVar("R")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB NOT NULL);
"""
_RESERVE_BYTES = 8 << 20


def _table(key: str) -> tuple[str, str, str]:
    """(table, key column, row key) of an object key."""
    if key.startswith(BLOBS):
        return "blobs", "digest", key.rsplit("/", 1)[-1]
    if key.startswith(MANIFESTS):
        return "manifests", "id", key[len(MANIFESTS) :]
    return "objects", "key", key


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class SQLiteStore(SnapshotStore):
    """A snapshot store in one SQLite database file.

    Args:
        path: the database file.
        create: create the database if missing; with ``False``, a missing
            file raises :class:`StoreNotFound` and nothing is created.
    """

    scheme = "sqlite"
    verify_dedup_bytes = 64 << 20

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self.create = create
        self.read_only = False
        self._mutex = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> Self:
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise InvalidStoreURL(f"SQLite store URL {url!r} has no path; use sqlite:///absolute/path.db")
        store = cls(path, create=create)
        store._check_location()
        return store

    def _check_location(self) -> None:
        if self.path.exists():
            if not self.path.is_file():
                raise StoreError(f"{str(self.path)!r} is not a file: refusing to use it as a SQLite store")
        elif not self.create:
            raise StoreNotFound(f"no store at {str(self.path)!r} (the file does not exist)", location=str(self.path))

    def _connect(self) -> sqlite3.Connection:
        self._check_location()
        if not self.path.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self.read_only = not os.access(self.path, os.W_OK)
        uri = f"file:{quote(str(self.path.resolve()))}" + ("?mode=ro" if self.read_only else "")
        db = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            tables = self._store_tables(db)
            if not self.read_only:
                if not tables:
                    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before WAL and tables
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                if not tables:
                    self._create_schema(db)
                self._make_reserve()
        except BaseException:
            db.close()
            raise
        return db

    def _store_tables(self, db: sqlite3.Connection) -> set[str]:
        """The database's tables; raises StoreError when it has some but is not a statetransfer store."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not {"blobs", "manifests"} <= tables:
            msg = f"{str(self.path)!r} is a SQLite database but not a statetransfer store: refusing to use it"
            raise StoreError(msg)
        return tables

    def _create_schema(self, db: sqlite3.Connection) -> None:
        """Make the store's tables in one transaction: a process opening the same new file at the same moment
        sees no table or all of them, never a part (which it would refuse as a foreign database)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            self._store_tables(db)  # another opener may have made it meanwhile: refused if it is foreign
            for statement in filter(None, map(str.strip, _SCHEMA.split(";"))):
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _make_reserve(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self._reserve_path(), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < _RESERVE_BYTES:
                    os.posix_fallocate(fd, 0, _RESERVE_BYTES)
            finally:
                os.close(fd)

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self._reserve_path())
        except OSError:
            return False
        return True

    async def close(self) -> None:
        with self._mutex:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.asynccontextmanager
    async def _process_lock(self, exclusive: bool) -> AsyncIterator[Held | None]:
        await self._call(lambda db: None)  # open (and, with create, make) the database before its lock file
        async with FileLock(str(self.path) + ".lock", timeout=self.lock_timeout).hold(exclusive):
            yield None
        if exclusive:
            await self._call(self._reclaim)

    def _reclaim(self, db: sqlite3.Connection) -> None:
        """Give freed pages back to the disk, then restore the reserve."""
        if self.read_only:
            return
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA incremental_vacuum")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._make_reserve()

    def _run(self, func: Callable[[sqlite3.Connection], R]) -> R:
        with self._mutex:
            if self._db is None:
                self._db = self._connect()
            return func(self._db)

    async def _call(self, func: Callable[[sqlite3.Connection], R]) -> R:
        return await in_thread(repr(self), self._run, func)

    async def read_object(self, key: str) -> bytes:
        table, column, row = _table(key)
        sql = f"SELECT CAST(data AS BLOB) FROM {table} WHERE {column} = ?"  # noqa: S608 - fixed names
        found = await self._call(lambda db: db.execute(sql, (row,)).fetchone())
        if found is None:
            raise KeyError(key)
        return bytes(found[0])

    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        table, _, row = _table(key)
        verb = "INSERT" if exclusive else "INSERT OR REPLACE"

        def insert(db: sqlite3.Connection) -> None:
            try:
                db.execute(f"{verb} INTO {table} VALUES (?, ?)", (row, data))
            except sqlite3.IntegrityError:
                raise FileExistsError(key) from None

        await self._call(insert)

    async def delete_object(self, key: str) -> None:
        table, column, row = _table(key)
        sql = f"DELETE FROM {table} WHERE {column} = ?"  # noqa: S608 - fixed names

        def delete(db: sqlite3.Connection) -> None:
            try:
                db.execute(sql, (row,))
            except sqlite3.OperationalError as exc:
                if not (_is_full(exc) and self._release_reserve()):
                    raise
                db.execute(sql, (row,))  # the disk was full: retried with the reserve given back

        await self._call(delete)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def rows(db: sqlite3.Connection) -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            if BLOBS.startswith(prefix) or prefix.startswith(BLOBS):
                out += [
                    ObjectInfo(f"{BLOBS}{d[:2]}/{d}", n)
                    for d, n in db.execute("SELECT digest, length(data) FROM blobs")
                ]
            if MANIFESTS.startswith(prefix) or prefix.startswith(MANIFESTS):
                out += [ObjectInfo(MANIFESTS + i, n) for i, n in db.execute("SELECT id, length(data) FROM manifests")]
            out += [ObjectInfo(k, n) for k, n in db.execute("SELECT key, length(data) FROM objects")]
            return [o for o in out if o.key.startswith(prefix)]

        return await self._call(rows)

    async def stat_object(self, key: str) -> ObjectInfo | None:
        table, column, row = _table(key)
        sql = f"SELECT length(data) FROM {table} WHERE {column} = ?"  # noqa: S608 - fixed names
        found: Any = await self._call(lambda db: db.execute(sql, (row,)).fetchone())
        return None if found is None else ObjectInfo(key, int(found[0]))
