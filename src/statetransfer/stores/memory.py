"""``memory://name``: an in-process store, for tests and examples (shared by name within a process)."""

from __future__ import annotations

import time
from typing import ClassVar, Self

from ..errors import StoreNotFound
from .base import ObjectInfo, SnapshotStore

__all__ = ["MemoryStore"]


class MemoryStore(SnapshotStore):
    """Keeps objects in a dict; ``open_store("memory://x")`` twice gives the same store.

    Nothing survives the process: a memory store cannot carry state to another process.
    """

    scheme = "memory"
    verify_dedup_bytes = 1 << 62  # reading is free: always check content on a dedup hit
    _named: ClassVar[dict[str, MemoryStore]] = {}

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._objects: dict[str, tuple[bytes, float]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> Self:
        name = url.partition("://")[2]
        existing = cls._named.get(name) if name else None
        if existing is None and not create:
            raise StoreNotFound(f"no store at {url!r} (no memory store of that name in this process)", location=url)
        if not name:
            return cls()
        if existing is None:
            existing = cls._named[name] = cls(name)
        return existing  # type: ignore[return-value]

    async def read_object(self, key: str) -> bytes:
        return self._objects[key][0]

    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        if exclusive and key in self._objects:
            raise FileExistsError(key)
        self._objects[key] = (bytes(data), time.time())

    async def delete_object(self, key: str) -> None:
        self._objects.pop(key, None)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(d), t) for k, (d, t) in list(self._objects.items()) if k.startswith(prefix)]

    async def stat_object(self, key: str) -> ObjectInfo | None:
        entry = self._objects.get(key)
        return None if entry is None else ObjectInfo(key, len(entry[0]), entry[1])
