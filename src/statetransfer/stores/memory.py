"""``memory://name``: an in-process store, for tests and examples (shared by name within a process)."""

from __future__ import annotations

from typing import ClassVar

from ..errors import StoreError
from .base import SnapshotStore

__all__ = ["MemoryStore"]


class MemoryStore(SnapshotStore):
    """Keeps blobs and manifests in dicts; ``open_store("memory://x")`` twice gives the same store."""

    scheme = "memory"
    _named: ClassVar[dict[str, MemoryStore]] = {}

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._blobs: dict[str, bytes] = {}
        self._manifests: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        name = url.partition("://")[2]
        if not name:
            return cls()
        if name not in cls._named:
            cls._named[name] = cls(name)
        return cls._named[name]

    async def _put_blob(self, digest: str, data: bytes) -> None:
        self._blobs[digest] = bytes(data)

    async def _get_blob(self, digest: str) -> bytes:
        return self._blobs[digest]

    async def _has_blob(self, digest: str) -> bool:
        return digest in self._blobs

    async def _delete_blob(self, digest: str) -> None:
        self._blobs.pop(digest, None)

    async def _list_blobs(self) -> set[str]:
        return set(self._blobs)

    async def _put_manifest(self, snapshot_id: str, data: bytes) -> None:
        if snapshot_id in self._manifests:
            raise StoreError(f"snapshot {snapshot_id!r} already exists in {self!r}")
        self._manifests[snapshot_id] = data

    async def _get_manifest(self, snapshot_id: str) -> bytes:
        return self._manifests[snapshot_id]

    async def _list_manifests(self) -> list[tuple[str, bytes]]:
        return list(self._manifests.items())

    async def _delete_manifest(self, snapshot_id: str) -> None:
        self._manifests.pop(snapshot_id, None)
