"""Locks that keep garbage collection away from puts: in-process, across processes, across machines.

Puts hold a store's lock *shared*; ``delete``/``prune`` hold it *exclusive*
while they decide which blobs are unreferenced and delete them. Three layers:

* :class:`RWLock` orders the tasks of one process (writer-preferring);
* :class:`FileLock` (``flock``) orders the processes of one machine on a
  local store; the kernel releases it when a process dies;
* :class:`ObjectLock` orders processes on any number of machines sharing an
  object-store prefix, with lock objects, as restic does. The protocol and
  the argument for its safety are in ``docs/stores.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import random
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ..errors import StoreError, StoreLocked

if TYPE_CHECKING:
    from .base import ObjectInfo, SnapshotStore

__all__ = ["FileLock", "ObjectLock", "RWLock", "in_thread"]

P = ParamSpec("P")
R = TypeVar("R")

#: Prefix of lock objects in an object store.
LOCKS = "locks/"


class RWLock:
    """A writer-preferring reader/writer lock for the tasks of one process.

    Futures are created on the running loop at each wait, so one store object
    can be used from successive event loops (``asyncio.run`` twice).
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def _wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Held by any number of tasks at once, never while a writer holds or waits."""
        while self._writer or self._writers_waiting:
            await self._wait()
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._wake()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held by one task, with no reader."""
        self._writers_waiting += 1
        try:
            while self._writer or self._readers:
                await self._wait()
        except BaseException:
            self._writers_waiting -= 1
            self._wake()
            raise
        self._writers_waiting -= 1
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._wake()


async def _backoff(attempt: int, cap: float) -> None:
    await asyncio.sleep(min(cap, 0.002 * 2**attempt) * (0.5 + random.random()))


class FileLock:
    """Shared/exclusive ``flock`` on one file, polled without blocking a thread.

    Works across processes and across open descriptors within one process;
    the kernel releases it when the holder dies (SIGKILL included).
    """

    def __init__(self, path: str, *, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def hold(self, exclusive: bool) -> AsyncIterator[None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {self.path!r}: {exc.strerror or exc}") from exc
        try:
            deadline = time.monotonic() + self.timeout
            attempt = 0
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        mode = "exclusive" if exclusive else "shared"
                        msg = f"could not take the {mode} lock {self.path!r} within {self.timeout:g} s"
                        raise StoreLocked(msg) from None
                    await _backoff(attempt, 0.05)
                    attempt += 1
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class ObjectLock:
    """Shared/exclusive locking through lock objects under ``locks/`` of an object store.

    To acquire, a process writes its own lock object (``<token>.x`` for
    exclusive, ``<token>.s`` for shared), then lists ``locks/``. It holds the
    lock once a listing made after its own object was written shows no
    conflicting live lock: for a shared lock, no exclusive one; for an
    exclusive lock, no other lock at all. With read-after-write consistent
    listings (S3 and its compatibles), two conflicting holders cannot both see
    an empty field: the later writer's listing shows the earlier's object.

    A lock object whose last-modified time (the server's clock) is more than
    ``stale`` seconds older than the acquirer's own fresh object is dead (its
    process crashed) and is removed. Holders rewrite their object every
    ``stale / 4`` seconds, and check :meth:`Held.fresh` before a commit point.
    """

    def __init__(self, store: SnapshotStore, *, stale: float, timeout: float) -> None:
        self.store = store
        self.stale = stale
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def hold(self, exclusive: bool) -> AsyncIterator[Held]:
        token = f"{time.time_ns():x}-{secrets.token_hex(6)}"
        key = f"{LOCKS}{token}.{'x' if exclusive else 's'}"
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "exclusive": exclusive}).encode()
        held = Held(self, key, body)
        try:
            await held.write()
            refresher = asyncio.ensure_future(held.refresh_forever())
            try:
                await self.acquire(held, exclusive)
                yield held
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
        finally:
            with contextlib.suppress(StoreError):
                await self.store.delete_object(key)

    async def acquire(self, held: Held, exclusive: bool) -> None:
        """Wait until a listing made after ``held``'s object was written shows no conflicting live lock."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            found = await self._blockers(held.key, exclusive)
            if found is None:
                await held.write()
                continue
            blockers, yield_to_other = found
            if not blockers:
                break
            if time.monotonic() >= deadline:
                names = ", ".join(b.key.removeprefix(LOCKS) for b in blockers)
                msg = f"{self.store!r} stayed locked for {self.timeout:g} s by: {names}"
                raise StoreLocked(msg)
            if yield_to_other:  # step aside so the older exclusive request (or the writer) goes first
                await self.store.delete_object(held.key)
                held.present = False
                await _backoff(attempt, 0.5)
                await held.write()
            else:
                await _backoff(attempt, 0.2)
            attempt += 1
        held.lapsed = False

    async def _blockers(self, key: str, exclusive: bool) -> tuple[list[ObjectInfo], bool] | None:
        """Live locks that conflict with ours, and whether we should step aside for them.

        ``None`` when our own object is missing from the listing (removed as
        dead while this process was slow): it must be written again.
        """
        locks = [o for o in await self.store.list_objects(LOCKS) if o.regular]
        mine = next((o for o in locks if o.key == key), None)
        if mine is None:
            return None
        blockers: list[ObjectInfo] = []
        yield_to_other = False
        for other in locks:
            if other.key == key or not other.key.endswith((".x", ".s")):
                continue
            if mine.mtime - other.mtime > self.stale:
                with contextlib.suppress(StoreError):
                    await self.store.delete_object(other.key)  # its holder stopped refreshing: it is dead
                continue
            other_exclusive = other.key.endswith(".x")
            if exclusive or other_exclusive:
                blockers.append(other)
                if not exclusive or (other_exclusive and (other.mtime, other.key) < (mine.mtime, key)):
                    yield_to_other = True
        return blockers, yield_to_other


class Held:
    """A lock object this process holds: refreshed in the background, checked before commit points."""

    def __init__(self, lock: ObjectLock, key: str, body: bytes) -> None:
        self.lock = lock
        self.key = key
        self.body = body
        self.exclusive = key.endswith(".x")
        self.present = False
        self.refreshed = 0.0  # time.monotonic() when the last successful write began
        #: Whether, since the lock was acquired, its object went unrefreshed long enough that another
        #: process may have judged it dead (and removed it, and started collecting garbage). A later
        #: successful refresh does not undo that: the holder must acquire the lock again.
        self.lapsed = False

    async def write(self) -> None:
        begun = time.monotonic()
        await self.lock.store.write_object(self.key, self.body)
        if self.present and time.monotonic() - self.refreshed >= self.lock.stale / 2:
            self.lapsed = True
        self.present = True
        self.refreshed = begun

    async def refresh_forever(self) -> None:
        interval = self.lock.stale / 4
        while True:
            await asyncio.sleep(interval)
            if self.present:
                with contextlib.suppress(StoreError):
                    await self.write()

    def fresh(self) -> bool:
        """Whether no other process can yet have judged this lock dead: refreshed within half the stale
        time, and never left unrefreshed longer than that since it was acquired."""
        return not self.lapsed and time.monotonic() - self.refreshed < self.lock.stale / 2

    async def still_present(self) -> bool:
        """Whether the lock object still exists (another process removes it only after judging it dead)."""
        return await self.lock.store.stat_object(self.key) is not None

    async def reacquire(self) -> None:
        """Take the lock again after it may have lapsed: write its object, then wait out conflicting locks.

        A process that judged this lock dead may be collecting garbage right now; rewriting the object
        alone would not stop it. Once this returns, that collector has finished (or was itself judged
        dead, and stops at its next :meth:`fresh` check), and no new one can start while we hold.
        """
        await self.write()
        await self.lock.acquire(self, self.exclusive)


async def in_thread(where: str, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run blocking ``func`` in a worker thread; OS and SQLite errors become :class:`StoreError`.

    ``KeyError`` (absent object), ``FileExistsError`` (exclusive write of an
    existing key) and :class:`StoreError` pass through.
    """
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except (KeyError, FileExistsError, StoreError):
        raise
    except OSError as exc:
        detail = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StoreError(f"{where}: {detail} ({exc.filename or ''})") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{where}: SQLite error: {exc}") from exc
