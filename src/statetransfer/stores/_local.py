"""Helpers shared by the local backends: inter-process locking and blocking I/O off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from ..errors import StoreError

__all__ = ["FileLock", "in_thread"]

P = ParamSpec("P")
R = TypeVar("R")


class FileLock:
    """Shared/exclusive ``flock`` on one file: puts share it, garbage collection takes it alone.

    Works across processes and across open descriptors within one process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.asynccontextmanager
    async def hold(self, exclusive: bool) -> AsyncIterator[None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {str(self.path)!r}: {exc}") from exc
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


async def in_thread(where: str, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run blocking ``func`` in a worker thread; OS and SQLite errors become :class:`StoreError`.

    ``KeyError`` (absent blob/manifest) and :class:`StoreError` pass through.
    """
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except (KeyError, StoreError):
        raise
    except OSError as exc:
        raise StoreError(f"{where}: {exc.strerror or exc} ({exc.filename or ''})") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{where}: SQLite error: {exc}") from exc
