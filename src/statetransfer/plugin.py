"""The plugin interfaces: Plugin (identity, lifecycle) and the StateTransferable trait."""

from __future__ import annotations

import abc

from .model import PluginMetadata, StateImportResult, StateSnapshot, StateValidation

__all__ = ["Plugin", "StateTransferable"]


class Plugin:
    """A plugin: anything with ``metadata``. Lifecycle hooks default to doing nothing.

    A host calls :meth:`on_load` after instantiating (and importing state),
    and :meth:`on_unload` before dropping an instance (unload or reload swap).
    """

    metadata: PluginMetadata

    async def on_load(self) -> None:
        """Called by a host once the instance is ready to serve."""

    async def on_unload(self) -> None:
        """Called by a host before the instance stops serving."""


class StateTransferable(Plugin, abc.ABC):
    """A plugin that can export and import its state (the reference's trait)."""

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
