"""One process-wide pool of worker threads for CPU work that releases the GIL (hashing, compression)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["pool"]

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """The shared pool (created on first use; one worker per core, at most 4)."""
    global _pool  # noqa: PLW0603 - one lazily created pool per process
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="statetransfer")
        return _pool
