"""Backup and restore of a plugin's state through a snapshot store."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable
from typing import Any

import msgspec

from ._checksum import seal
from ._crypto import keyring_of
from ._model import StateCreationReason, StateImportResult, StateSnapshot
from ._plugin import StateTransferable
from ._sections import keeping_plaintext
from .errors import ChecksumMismatch, CorruptSnapshot, SnapshotNotFound, StoreWarning
from .stores.base import SnapshotInfo, SnapshotStore

__all__ = ["backup", "restore"]


async def backup(
    plugin: StateTransferable, store: SnapshotStore, *, tags: Iterable[str] = (), expires_at: int | None = None
) -> SnapshotInfo:
    """Export ``plugin``'s state (reason ``BACKUP``) and put it into ``store``.

    Unchanged sections (unencrypted ones; encryption draws fresh nonces) are
    not stored again: the store keeps one copy of each distinct section. Large
    sections are kept incrementally (only what changed since the previous
    backup); encrypted ones too, with the plugin's keyring.

    Raises:
        EncodingError: a section's value does not decode as its declared type
            (see ``StatefulPlugin.verify_exports``); nothing is stored.
    """
    with exporting_into(store):
        snapshot = await plugin.export_for(StateCreationReason.BACKUP, tags=tags, expires_at=expires_at)
        return await store.put(snapshot, keyring=keyring_of(plugin))


def exporting_into(store: SnapshotStore) -> contextlib.AbstractContextManager[None]:
    """The block of an export put into ``store``: the put compares the plaintext the export had without
    reopening it, and runs the export's type check itself (on only what changed, for a map continuing a chain)
    before writing anything — unless a subclass replaced ``put()``, which would not know to."""
    return keeping_plaintext(defer_checks=type(store).put is SnapshotStore.put)


async def restore(
    plugin: StateTransferable,
    store: SnapshotStore,
    snapshot_id: str | None = None,
    *,
    allow_older: bool = False,
    allow_expired: bool = False,
    **import_options: Any,
) -> StateImportResult:
    """Import a stored snapshot into ``plugin``: ``snapshot_id``, or the newest of that plugin.

    Without an id, the newest snapshot of the plugin is restored. If that one
    cannot be read (a damaged manifest that may belong to the plugin, or a
    damaged section), the restore is refused rather than silently going back
    to older state; ``allow_older=True`` restores the newest readable one
    instead. Expired snapshots (``expires_at`` in the past) are skipped, and
    refused by id, unless ``allow_expired=True``.

    Returns:
        The import result; its ``snapshot_id`` names the snapshot restored.

    Raises:
        SnapshotNotFound: no such snapshot, or none (unexpired) for this plugin.
        CorruptSnapshot: the newest snapshot is unreadable (its id is in the
            message and in ``snapshot_id``) and ``allow_older`` is false.
        ValidationFailed / ImportFailed: as :meth:`StateTransferable.import_state`.
    """
    with keeping_plaintext():  # the import decodes the plaintext a store rebuilt (incremental sections) as is
        if snapshot_id is not None:
            snapshot_id = await store.resolve(snapshot_id)
            snapshot = await store.get(snapshot_id, keyring=keyring_of(plugin))
            _check_expiry(snapshot, allow_expired)
        else:
            snapshot = await _newest(plugin, store, allow_older=allow_older, allow_expired=allow_expired)
        if allow_expired and snapshot.metadata.expires_at is not None:  # lift the expiry on the copy imported
            snapshot = seal(snapshot, metadata=msgspec.structs.replace(snapshot.metadata, expires_at=None))
        result = await plugin.import_state(snapshot, **import_options)
    return msgspec.structs.replace(result, snapshot_id=snapshot.id)


def _check_expiry(snapshot: StateSnapshot, allow_expired: bool) -> None:
    expires_at = snapshot.metadata.expires_at
    if not allow_expired and expires_at is not None and expires_at < time.time():
        msg = f"snapshot {snapshot.id!r} expired at {expires_at}; pass allow_expired=True to restore it anyway"
        raise SnapshotNotFound(msg, snapshot_id=snapshot.id)


async def _newest(
    plugin: StateTransferable, store: SnapshotStore, *, allow_older: bool, allow_expired: bool
) -> StateSnapshot:
    plugin_id = plugin.metadata.id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # unreadable entries are judged below
        listing = await store.list(plugin_id=plugin_id)
    now = time.time()
    infos = [i for i in listing if allow_expired or i.expires_at is None or i.expires_at >= now]
    newest = (infos[0].created_ns / 1e9 or infos[0].timestamp) if infos else 0.0
    # a damaged manifest may be the newest unless the store's clock says it is older (mtime 0: unknown)
    damaged = [u for u in listing.unreadable if u.snapshot_id is not None and (not u.mtime or u.mtime >= newest - 1)]
    if damaged and not allow_older:
        first = damaged[0]
        msg = (f"the newest snapshot of plugin {plugin_id!r} may be {first.snapshot_id!r}, which cannot be read "
               f"({first.reason}); refusing to restore older state (pass allow_older=True to restore the newest "
               "readable snapshot)")  # fmt: skip
        raise CorruptSnapshot(msg, snapshot_id=first.snapshot_id)
    for info in infos:
        try:
            return await store.get(info.id, keyring=keyring_of(plugin))
        except (ChecksumMismatch, CorruptSnapshot) as exc:
            if not allow_older:
                msg = (
                    f"the newest snapshot of plugin {plugin_id!r}, {info.id!r}, cannot be read ({exc}); refusing "
                    "to restore older state (pass allow_older=True to restore the newest readable one)"
                )
                raise CorruptSnapshot(msg, snapshot_id=info.id) from exc
    expired = len(listing) - len(infos)
    hint = f" ({expired} expired; pass allow_expired=True)" if expired else ""
    raise SnapshotNotFound(f"no readable snapshot of plugin {plugin_id!r} in {store!r}{hint}")
