"""Backup and restore of a plugin's state through a snapshot store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import SnapshotNotFound
from .host import _export
from .model import StateCreationReason, StateImportResult
from .plugin import StateTransferable
from .stores.base import SnapshotInfo, SnapshotStore

__all__ = ["backup", "restore"]


async def backup(
    plugin: StateTransferable, store: SnapshotStore, *, tags: Iterable[str] = (), expires_at: int | None = None
) -> SnapshotInfo:
    """Export ``plugin``'s state (reason ``BACKUP``) and put it into ``store``.

    Unchanged sections (unencrypted ones; encryption draws fresh nonces) are
    not stored again: the store keeps one copy of each distinct section.
    """
    snapshot = await _export(plugin, StateCreationReason.BACKUP, tags=list(tags), expires_at=expires_at)
    return await store.put(snapshot)


async def restore(
    plugin: StateTransferable, store: SnapshotStore, snapshot_id: str | None = None, **import_options: Any
) -> StateImportResult:
    """Import a stored snapshot into ``plugin``: ``snapshot_id``, or the newest of that plugin.

    Raises:
        SnapshotNotFound: no such snapshot, or none for this plugin.
        ValidationFailed / ImportFailed: as :meth:`StateTransferable.import_state`.
    """
    if snapshot_id is None:
        infos = await store.list(plugin_id=plugin.metadata.id)
        if not infos:
            raise SnapshotNotFound(f"no snapshot of plugin {plugin.metadata.id!r} in {store!r}")
        snapshot_id = infos[0].id
    snapshot = await store.get(snapshot_id)
    if import_options:
        return await plugin.import_state(snapshot, **import_options)
    return await plugin.import_state(snapshot)
