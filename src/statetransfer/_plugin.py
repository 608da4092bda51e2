"""The plugin interfaces: Plugin (identity, lifecycle) and the StateTransferable trait."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Self

import msgspec

from ._checksum import calculate_checksum
from ._model import (
    PluginMetadata,
    StateCreationReason,
    StateImportResult,
    StateSnapshot,
    StateValidation,
)

if TYPE_CHECKING:
    from ._crypto import Keyring

__all__ = ["Plugin", "StateTransferable"]


class Plugin:
    """A plugin: anything with ``metadata``. Lifecycle hooks default to doing nothing.

    A host creates an instance with :meth:`create`, calls :meth:`on_load`
    before the instance receives any state (on :meth:`PluginHost.load` and
    on a reload alike, while the previous version still serves), and calls
    :meth:`on_unload` after the instance stopped serving (unload or reload swap).
    """

    metadata: PluginMetadata
    #: Ids of plugins this one depends on: :meth:`PluginHost.reload_many` prepares and hands
    #: over those first (dependencies outside the reloaded set are ignored).
    depends_on: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def create(cls, *, keyring: Keyring | None = None) -> Self:
        """A new instance, as a host makes it: ``cls()`` (override to use ``keyring``)."""
        return cls()

    async def on_load(self) -> None:
        """Called by a host on a new instance, before it receives state and serves."""

    async def on_unload(self) -> None:
        """Called by a host after the instance stopped serving."""


class StateTransferable(Plugin, abc.ABC):
    """A plugin that can export and import its state.

    The three abstract methods are the trait; the others have defaults built
    on them, which declarative plugins (:class:`StatefulPlugin`) override.
    """

    @abc.abstractmethod
    async def export_state(self) -> StateSnapshot:
        """A snapshot of the current state."""

    @abc.abstractmethod
    async def import_state(self, snapshot: StateSnapshot) -> StateImportResult:
        """Replace the state from ``snapshot``; validates first."""

    @abc.abstractmethod
    async def validate_state(self, snapshot: StateSnapshot) -> StateValidation:
        """Whether (and how well) ``snapshot`` can be imported, without changing anything."""

    @abc.abstractmethod
    def state_schema_version(self) -> int:
        """The schema version of the state this code exports."""

    async def export_for(
        self, reason: StateCreationReason, *, tags: Iterable[str] = (), expires_at: int | None = None
    ) -> StateSnapshot:
        """A snapshot whose metadata records why it was taken (what hosts and backups call).

        The default takes :meth:`export_state` and writes ``reason``, ``tags``
        and ``expires_at`` into its metadata (recomputing the checksum, and
        dropping a signature the change would invalidate).
        """
        snapshot = await self.export_state()
        tag_list = list(tags)
        meta = snapshot.metadata
        if (meta.reason, meta.tags, meta.expires_at) == (reason, tag_list, expires_at):
            return snapshot
        meta = msgspec.structs.replace(meta, reason=reason, tags=tag_list, expires_at=expires_at)
        out = msgspec.structs.replace(snapshot, metadata=meta, signature=None)
        return msgspec.structs.replace(out, checksum=calculate_checksum(out))
