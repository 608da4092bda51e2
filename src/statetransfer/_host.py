"""Hot-reload host: preflight -> pause -> hand over -> commit -> resume, with exact rollback.

Every call to a plugin goes through :meth:`PluginHost.use`. A reload first
loads, instantiates and checks the new code while the old instance keeps
serving (preflight); only then does it hold new callers and wait for the
calls in flight, hand the state over and swap. Every piece of plugin code
runs before the swap (the commit); after it only the host's own code runs,
so any failure leaves the old instance serving with its state exactly as it
was. ``docs/hot-reload.md`` describes the phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import msgspec

from . import _handover
from ._checksum import section_digest
from ._crypto import Keyring, keyring_of
from ._gate import CallGate
from ._loading import (
    ENTRY_POINT_GROUP,
    exec_fresh_module,
    find_class,
    instantiate,
    module_file,
    parse_spec,
    resolve_spec,
)
from ._model import StateCreationReason, StateImportResult, StateSnapshot
from ._plugin import Plugin, StateTransferable
from ._stateful import StatefulPlugin
from ._watching import watch_sources
from .errors import InvalidArgument, PluginError, SnapshotNotFound, ValidationFailed

if TYPE_CHECKING:
    from .stores.base import SnapshotStore

__all__ = ["ENTRY_POINT_GROUP", "Phase", "PluginHost", "ReloadEvent", "ReloadResult"]

log = logging.getLogger("statetransfer._host")
T = TypeVar("T")
K = TypeVar("K")
#: A reload's progress, in order; ``rolled_back`` ends a reload that did not swap.
Phase = Literal["started", "loaded", "exported", "imported", "swapped", "rolled_back"]


class ReloadResult(msgspec.Struct, kw_only=True):
    """The outcome of one plugin's :meth:`PluginHost.reload` (or its part of :meth:`PluginHost.reload_many`).

    ``timings`` holds seconds per phase: ``load`` and ``validate`` (the
    preflight, while the old code serves), ``quiesce``, ``export``,
    ``import`` and ``swap`` (while callers are held), ``unload`` and
    ``checkpoint`` (after callers resumed), plus ``pause``, the seconds new
    callers were held (0.0 when the reload was refused before pausing), and
    ``total``.
    """

    plugin_id: str
    ok: bool
    rolled_back: bool
    old_version: str
    new_version: str | None = None
    import_result: StateImportResult | None = None
    error: str | None = None
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    checkpoint_id: str | None = None


class ReloadEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A progress event of a reload: ``phase`` is one of ``started``, ``loaded``,
    ``exported``, ``imported``, ``swapped``, ``rolled_back``."""

    plugin_id: str
    phase: Phase
    elapsed: float
    detail: str = ""


@dataclass
class _Slot:
    """One loaded plugin: its instance, where its code came from, and the call gate."""

    plugin_id: str
    instance: Plugin
    module_name: str
    class_name: str
    source: Path | None
    extra_modules: tuple[str, ...]
    gate: CallGate
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the restore made when it was loaded with ``restore=True`` (None: it started empty)
    restored: StateImportResult | None = None
    #: ``gate.admitted`` when the last checkpoint was exported (or the plugin loaded)
    checkpointed_calls: int = 0
    #: (schema version, digest) per section of the newest checkpoint written, and its ``created_ns``
    digests: dict[str, tuple[int, bytes]] | None = None
    checkpointed_ns: int = 0


class PluginHost:
    """Loads plugins, routes calls to them, and hot-reloads their code without losing state.

    Args:
        keyring: passed to every plugin through :meth:`Plugin.create`.
        store: where checkpoints go (``CHECKPOINT`` snapshots): after each
            reload, every ``checkpoint_interval`` seconds, and on
            :meth:`close`; where ``load(..., restore=True)`` restores from.
        checkpoint_interval: seconds between periodic checkpoints of every
            loaded plugin (None: none). A plugin no call reached since its
            last checkpoint is skipped without exporting; one whose export
            equals the last checkpoint section for section is not written
            again. The export holds the plugin's state lock; callers are not
            held while the snapshot is written. Needs ``store``.
        quiesce_timeout: seconds a reload waits for calls in flight before it
            gives up (and rolls back; the calls go on).
        acquire_timeout: seconds a new call waits for a reload to finish
            before :meth:`use` raises :class:`PluginError`. The default is
            longer than ``quiesce_timeout + reload_timeout``, so no caller
            fails while a reload is within its allowed time.
        reload_timeout: seconds the preflight (loading, ``__init__``,
            ``on_load``, checks) may take, and again seconds the handover
            may take while callers are held. Loading runs in a thread that
            cannot be stopped: after a timeout the old code goes on serving
            while that thread finishes (or never does) on its own.
        unload_timeout: seconds an instance's ``on_unload`` may take; callers
            are never held while it runs.
        allow_dropped_sections: accept new code that no longer declares a
            section the old code had. Off by default: such a reload is
            refused. When allowed, the dropped section is still carried
            unchanged through later exports (nothing is lost).
        live_handover: hand declarative plugins' unchanged sections to the
            new instance as the live objects (the default). ``False`` carries
            all state through export and import, copying it.
    """

    def __init__(
        self,
        keyring: Keyring | None = None,
        store: SnapshotStore | None = None,
        *,
        quiesce_timeout: float = 5.0,
        acquire_timeout: float = 70.0,
        reload_timeout: float = 60.0,
        unload_timeout: float = 10.0,
        allow_dropped_sections: bool = False,
        live_handover: bool = True,
        checkpoint_interval: float | None = None,
    ) -> None:
        if checkpoint_interval is not None:
            if store is None:
                raise InvalidArgument("checkpoint_interval needs a store to write the checkpoints to")
            if not checkpoint_interval > 0:
                msg = f"checkpoint_interval must be a positive number of seconds, got {checkpoint_interval!r}"
                raise InvalidArgument(msg)
        self.checkpoint_interval = checkpoint_interval
        self.allow_dropped_sections = allow_dropped_sections
        self.live_handover = live_handover
        self.keyring = keyring
        self.store = store
        self.quiesce_timeout = quiesce_timeout
        self.acquire_timeout = acquire_timeout
        self.reload_timeout = reload_timeout
        self.unload_timeout = unload_timeout
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[Callable[[ReloadEvent], object]] = []
        self._checkpointer: asyncio.Task[None] | None = None
        self._watch_stops: set[asyncio.Event] = set()
        self._closing: asyncio.Task[None] | None = None

    # -- registry ---------------------------------------------------------------------------------
    @property
    def plugin_ids(self) -> list[str]:
        """Ids of the loaded plugins."""
        return sorted(self._slots)

    def get(self, plugin_id: str) -> Plugin:
        """The instance currently serving ``plugin_id`` (prefer :meth:`use` for calls)."""
        return self._slot(plugin_id).instance

    def _slot(self, plugin_id: str) -> _Slot:
        try:
            return self._slots[plugin_id]
        except KeyError:
            msg = f"no plugin {plugin_id!r} is loaded (loaded: {self.plugin_ids})"
            raise PluginError(msg) from None

    def subscribe(self, listener: Callable[[ReloadEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` on every reload progress event; returns an unsubscribe function.

        Listeners are plain functions, called in order on the event loop; keep
        them quick (some events fire while callers are held).

        Raises:
            TypeError: ``listener`` is an ``async def`` function (schedule
                your own task from a plain function instead).
        """
        if inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(getattr(listener, "__call__", None)):  # noqa: B004
            msg = f"reload listeners must be plain functions, not async ones: {listener!r}"
            raise TypeError(msg)
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, plugin_id: str, phase: Phase, started: float, detail: str = "") -> None:
        event = ReloadEvent(plugin_id=plugin_id, phase=phase, elapsed=time.perf_counter() - started, detail=detail)
        for listener in list(self._listeners):
            try:
                outcome = listener(event)
            except Exception:
                log.exception("reload event listener %r failed", listener)
                continue
            if inspect.isawaitable(outcome):
                if isinstance(outcome, Coroutine):
                    outcome.close()
                log.error("reload event listener %r returned an awaitable, which is never awaited", listener)

    # -- load / unload ----------------------------------------------------------------------------
    async def load(
        self, spec: str, *, restore: bool = False, allow_older: bool = False, also_reload: Iterable[str] = ()
    ) -> Plugin:
        """Import, instantiate and register a plugin; returns the instance.

        Args:
            spec: ``"package.module:ClassName"``, or the name of an entry point
                in the ``statetransfer.plugins`` group.
            restore: start from the newest snapshot of the plugin's id in the
                host's store, migrated as the code needs, imported after
                ``on_load`` and before the plugin serves (see
                :func:`statetransfer.restore`). With no snapshot the plugin
                starts empty, and says so: a warning is logged and
                :meth:`restore_result` returns None.
            allow_older: with ``restore``, restore the newest *readable*
                snapshot when the newest one is damaged (else the load fails
                with :class:`CorruptSnapshot`).
            also_reload: further modules (e.g. the plugin's helpers) to
                re-execute from source, before the plugin's module, on each
                reload; :meth:`watch` reloads the plugin when their files change too.

        Raises:
            PluginError: the code cannot be loaded, a plugin of that id is
                loaded already, or the host is closed.
            InvalidArgument: ``restore`` without a store.
            CorruptSnapshot / ValidationFailed / ImportFailed: the restore
                failed (the plugin is not loaded).
        """
        if self._closing is not None:
            raise PluginError("the host is closed")
        if restore and self.store is None:
            raise InvalidArgument("load(..., restore=True) needs a host made with a store")
        module_name, class_name = parse_spec(resolve_spec(spec))
        extra = tuple(also_reload)
        module = sys.modules.get(module_name)
        if module is None:
            for name in extra:
                exec_fresh_module(name)
            module = exec_fresh_module(module_name)
        instance = instantiate(find_class(module, class_name), self.keyring)
        plugin_id = instance.metadata.id
        if plugin_id in self._slots:
            raise PluginError(f"a plugin with id {plugin_id!r} is already loaded; unload it first")
        origin = getattr(module, "__file__", None)
        source = Path(origin).resolve() if origin else None
        await instance.on_load()
        slot = _Slot(plugin_id, instance, module_name, class_name, source, extra, CallGate(plugin_id))
        if restore:
            try:
                slot.restored = await self._restore(instance, allow_older=allow_older)
                await self._seed_checkpoint(slot)
            except BaseException:
                await self._call_on_unload(instance, plugin_id)
                raise
        if plugin_id in self._slots or self._closing is not None:  # loaded, or the host closed, meanwhile
            await self._call_on_unload(instance, plugin_id)
            why = "the host is closed" if self._closing is not None else f"a plugin with id {plugin_id!r} is loaded"
            raise PluginError(why)
        self._slots[plugin_id] = slot
        log.info("loaded plugin %r (%s) from %s", plugin_id, instance.metadata.version, spec)
        if self.checkpoint_interval is not None and self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop(self.checkpoint_interval))
        return instance

    async def _restore(self, instance: Plugin, *, allow_older: bool) -> StateImportResult | None:
        """Import the newest snapshot of ``instance``'s id from the store; None (and a warning) when there is none."""
        from ._backup import restore  # noqa: PLC0415 - backup imports this module

        assert self.store is not None  # checked by load
        plugin_id = instance.metadata.id
        if not isinstance(instance, StateTransferable):
            raise PluginError(f"plugin {plugin_id!r} cannot import state, so it cannot be restored")
        try:
            result = await restore(instance, self.store, allow_older=allow_older)
        except SnapshotNotFound as exc:
            log.warning("restoring %r: %s; it starts empty", plugin_id, exc)
            return None
        log.info("restored %r from snapshot %s", plugin_id, result.snapshot_id)
        return result

    async def _seed_checkpoint(self, slot: _Slot) -> None:
        """Count the snapshot just restored as ``slot``'s last checkpoint: an unchanged state is not written again."""
        restored = slot.restored
        if self.store is None or restored is None or restored.snapshot_id is None or restored.failed_sections:
            return
        try:
            header = await self.store._header(restored.snapshot_id)
        except Exception:  # only an optimisation: the next checkpoint is then written
            log.debug("cannot read the header of restored snapshot %s", restored.snapshot_id, exc_info=True)
            return
        slot.digests = {sh.name: (sh.schema_version, sh.digest) for sh in header.sections}
        slot.checkpointed_ns = header.created_ns

    def restore_result(self, plugin_id: str) -> StateImportResult | None:
        """How ``plugin_id`` was restored by ``load(..., restore=True)``: the import result
        (its ``snapshot_id`` names the snapshot), or None when there was nothing to restore
        and it started empty (or it was loaded without ``restore``)."""
        return self._slot(plugin_id).restored

    async def unload(self, plugin_id: str) -> None:
        """Stop admitting calls, wait for those in flight, drop the plugin, then call its ``on_unload``.

        Raises:
            PluginError: no such plugin, or calls were still running after ``quiesce_timeout``.
        """
        slot = self._slot(plugin_id)
        async with slot.reload_lock:
            if slot.gate.closed:
                raise PluginError(f"plugin {plugin_id!r} was unloaded")
            slot.gate.pause()
            try:
                await slot.gate.quiesce(self.quiesce_timeout)
            except PluginError as exc:
                slot.gate.resume()
                raise PluginError(f"cannot unload {plugin_id!r}: {exc}") from None
            slot.gate.close()
            del self._slots[plugin_id]
        await self._call_on_unload(slot.instance, plugin_id)

    async def close(self) -> None:
        """Stop watching and checkpointing, write a final checkpoint of each plugin, unload them all.

        Each plugin's new callers are held and its calls in flight awaited (up
        to ``quiesce_timeout``; then it is closed with them running), so the
        final checkpoint has every change acknowledged before it; it is
        written when the host has a store and the state differs from the last
        checkpoint. Later calls get :class:`PluginError`. Calling ``close``
        again (or concurrently) waits for the first and does nothing more.
        Failures are logged, never raised: closing always completes.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for stop in list(self._watch_stops):
            stop.set()
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        for slot in reversed(_dependency_order(list(self._slots.values()), lambda slot: slot.instance)):
            await self._close_slot(slot)

    async def _close_slot(self, slot: _Slot) -> None:
        export: _Export | None = None
        async with slot.reload_lock:
            if slot.gate.closed:
                return
            slot.gate.pause()
            try:
                await slot.gate.quiesce(self.quiesce_timeout)
            except PluginError as exc:
                log.warning("closing %r with calls still running: %s", slot.plugin_id, exc)
            try:
                export = await self._export_checkpoint(slot)
            except Exception:
                log.exception("final checkpoint of %r failed", slot.plugin_id)
            slot.gate.close()
            self._slots.pop(slot.plugin_id, None)
        if export is not None:
            try:
                await self._write_checkpoint(slot, export, always=False)
            except Exception:
                log.exception("final checkpoint of %r failed", slot.plugin_id)
        await self._call_on_unload(slot.instance, slot.plugin_id)

    # -- checkpoints ------------------------------------------------------------------------------
    async def checkpoint(self) -> dict[str, str | None]:
        """Checkpoint every loaded plugin now, as the periodic checkpoints do.

        Returns:
            Plugin id -> the id of the snapshot written, or None when it was
            skipped (no change since the last checkpoint, or no store).

        Raises:
            StoreError / OSError: the store failed (the periodic checkpoints
                log such failures instead); the next checkpoint tries again.
        """
        return {slot.plugin_id: await self._checkpoint(slot) for slot in list(self._slots.values())}

    async def _checkpoint_loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + interval, loop.time())  # a late tick is not made up for by a burst
            for slot in list(self._slots.values()):
                try:
                    await self._checkpoint(slot)
                except Exception:
                    log.exception("periodic checkpoint of %r failed (the next one tries again)", slot.plugin_id)

    async def _checkpoint(self, slot: _Slot) -> str | None:
        """One periodic checkpoint of ``slot``: skipped with no call since the last one, or no change."""
        if self.store is None or slot.gate.admitted == slot.checkpointed_calls:
            return None
        from ._backup import exporting_into  # noqa: PLC0415 - as restore() above

        with exporting_into(self.store):
            async with slot.reload_lock:  # exports the instance serving, never one being swapped out
                if slot.gate.closed:
                    return None
                export = await self._export_checkpoint(slot)
            return None if export is None else await self._write_checkpoint(slot, export, always=False)

    async def _export_checkpoint(self, slot: _Slot) -> _Export | None:
        """A ``CHECKPOINT`` export of the serving instance (the caller holds ``slot.reload_lock``)."""
        instance = slot.instance
        if self.store is None or not isinstance(instance, StateTransferable):
            return None
        calls = slot.gate.admitted
        async with asyncio.timeout(self.reload_timeout):
            snapshot = await instance.export_for(StateCreationReason.CHECKPOINT)
        return _Export(snapshot, calls)

    async def _write_checkpoint(self, slot: _Slot, export: _Export, *, always: bool) -> str | None:
        """Put the export into the store unless its sections equal the last checkpoint's (``always``: put anyway).

        Only once it is stored (or found unchanged) do the calls before it count as checkpointed:
        after a failed write the next checkpoint tries again.
        """
        assert self.store is not None
        snapshot = export.snapshot
        digests = await _section_digests(snapshot)
        written = None
        if always or digests != slot.digests:
            async with asyncio.timeout(self.reload_timeout):
                written = (await self.store.put(snapshot, keyring=keyring_of(slot.instance))).id
        if snapshot.created_ns >= slot.checkpointed_ns:
            slot.digests, slot.checkpointed_ns = digests, snapshot.created_ns
            slot.checkpointed_calls = max(slot.checkpointed_calls, export.calls)
        return written

    async def _call_on_unload(self, instance: Plugin, plugin_id: str) -> None:
        """``instance.on_unload()``, bounded by ``unload_timeout``; failures are logged, never raised."""
        try:
            await asyncio.wait_for(instance.on_unload(), self.unload_timeout)
        except TimeoutError:
            log.warning("on_unload of %r still running after %ss; no longer waited for", plugin_id,
                        self.unload_timeout)  # fmt: skip
        except Exception:
            log.exception("on_unload of %r failed (ignored)", plugin_id)

    # -- calls ------------------------------------------------------------------------------------
    @overload
    def use(self, plugin_id: str) -> contextlib.AbstractAsyncContextManager[Any]: ...
    @overload
    def use(self, plugin_id: str, kind: type[T]) -> contextlib.AbstractAsyncContextManager[T]: ...
    def use(self, plugin_id: str, kind: type[Any] | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        """Enter a call to ``plugin_id``; yields the instance serving it.

        While a reload holds callers, new callers wait (up to
        ``acquire_timeout`` seconds, then :class:`PluginError`); calls already
        in flight finish first.

        Args:
            plugin_id: the plugin to call.
            kind: the plugin's class, so type checkers know what is yielded
                (``async with host.use("cache", Cache) as cache``). A reload
                re-executes the class's module, so the instance is accepted
                when its class has the same module and qualified name.

        Raises:
            PluginError: no such plugin, or it stayed paused past ``acquire_timeout``.
            TypeError: the serving instance is not a ``kind``.
        """
        return self._use(plugin_id, kind)

    @contextlib.asynccontextmanager
    async def _use(self, plugin_id: str, kind: type[Any] | None) -> AsyncIterator[Any]:
        slot = self._slot(plugin_id)
        async with slot.gate.enter(self.acquire_timeout):
            instance = slot.instance
            if kind is not None and not _is_kind(instance, kind):
                msg = f"plugin {plugin_id!r} is a {type(instance).__qualname__}, not a {kind.__qualname__}"
                raise TypeError(msg)
            yield instance

    # -- reload -----------------------------------------------------------------------------------
    async def reload(self, plugin_id: str) -> ReloadResult:
        """Replace ``plugin_id``'s code, carrying its state; roll back on any failure.

        Concurrent reloads of one plugin run one after the other.

        Raises:
            PluginError: no such plugin, or it was unloaded while this reload waited its turn.
        """
        return (await self.reload_many([plugin_id]))[0]

    async def reload_many(self, plugin_ids: Iterable[str]) -> list[ReloadResult]:
        """Replace several plugins' code as one unit: every plugin swaps, or none does.

        The phases of :meth:`reload` run for all of them together: each
        preflight (while the old code serves), then all their callers are held
        and their calls in flight awaited, every handover is staged, and the
        swaps happen at one point with nothing awaited in between. A plugin
        that declares ``depends_on`` is prepared after the plugins it depends
        on (as the serving code declares them) and handed over after them (as
        the new code declares them). Any failure rolls every plugin back: each old
        instance serves on with its state exactly as it was, and each result
        says why (``rolled_back``, ``error``).

        Returns:
            One result per plugin, in dependency order.

        Raises:
            PluginError: an id is not loaded, was unloaded meanwhile, or the
                serving code's declared dependencies form a cycle (nothing was
                changed; a cycle in the new code's rolls every plugin back).
        """
        slots = _dependency_order([self._slot(i) for i in dict.fromkeys(plugin_ids)], lambda slot: slot.instance)
        async with contextlib.AsyncExitStack() as locks:
            for slot in sorted(slots, key=lambda s: s.plugin_id):  # one order for every caller: no deadlock
                await locks.enter_async_context(slot.reload_lock)
                if slot.gate.closed:
                    raise PluginError(f"plugin {slot.plugin_id!r} was unloaded before its reload could start")
            return await _Release(self, [_Reload(self, slot) for slot in slots]).run()

    # -- watching ---------------------------------------------------------------------------------
    async def watch(self, *, debounce_ms: int = 200, stop_event: asyncio.Event | None = None) -> None:
        """Reload a plugin whenever its source file changes, until cancelled (or ``stop_event``).

        Changes are debounced; reloads of one plugin run one at a time; each
        result is logged with :mod:`logging` (logger ``statetransfer._host``).
        :meth:`close` stops it too.
        """
        stop = asyncio.Event()
        relay = None if stop_event is None else asyncio.get_running_loop().create_task(_relay(stop_event, stop))
        self._watch_stops.add(stop)
        try:
            if self._closing is None:
                await watch_sources(self._sources, self.reload, debounce_ms=debounce_ms, stop_event=stop)
        finally:
            self._watch_stops.discard(stop)
            if relay is not None:
                relay.cancel()

    def _sources(self) -> dict[str, set[Path]]:
        """Plugin id -> the source files whose change reloads it (its module and ``also_reload`` helpers)."""
        out: dict[str, set[Path]] = {}
        for slot in self._slots.values():
            files = {slot.source, *(module_file(m) for m in slot.extra_modules)}
            out[slot.plugin_id] = {f for f in files if f is not None}
        return out


@dataclass
class _Export:
    """A checkpoint exported, and how many calls the plugin had admitted when it was taken."""

    snapshot: StateSnapshot
    calls: int


@dataclass
class _Candidate:
    """The new code, loaded and checked by the preflight."""

    instance: Plugin
    plan: _handover.HandoverPlan | None
    loaded: bool = False  # its on_load ran
    #: sections the new code declares at lower versions: the serving code exports them at those
    target_versions: dict[str, int] = field(default_factory=dict)


class _Reload:
    """One reload of one slot, as phase methods; see ``docs/hot-reload.md``.

    Phases: preflight (load, instantiate, plan, ``on_load``; callers are not
    held) -> pause (quiesce, hand over or export/import) -> commit (the swap)
    -> resume -> after the commit (old ``on_unload``, checkpoint).
    """

    def __init__(self, host: PluginHost, slot: _Slot) -> None:
        self.host = host
        self.slot = slot
        self.old: Plugin | None = slot.instance
        self.started = self.mark = time.perf_counter()
        self.timings: dict[str, float] = {"pause": 0.0}
        self.result = ReloadResult(
            plugin_id=slot.plugin_id, ok=False, rolled_back=False, old_version=slot.instance.metadata.version
        )
        names = (*slot.extra_modules, slot.module_name)
        self.saved: dict[str, types.ModuleType | None] = {name: sys.modules.get(name) for name in names}
        self.abandoned = threading.Event()  # set when the preflight thread's work is no longer wanted
        self.undo: Callable[[], None] | None = None  # reverses what the host-only handover step did

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self.mark
        self.mark = now

    def emit(self, phase: Phase, detail: str = "") -> None:
        self.host._emit(self.slot.plugin_id, phase, self.started, detail)

    # -- preflight: nothing is held ----------------------------------------------------------------
    async def preflight(self) -> _Candidate:
        """Load, instantiate and check the new code while the old instance serves."""
        old = self.slot.instance
        try:
            async with asyncio.timeout(self.host.reload_timeout):
                candidate = await _in_daemon_thread(self.load_new)
                self.lap("load")
                self.emit("loaded", candidate.instance.metadata.version)
                await self.check(old, candidate)
                self.lap("validate")
                await candidate.instance.on_load()
                candidate.loaded = True
                self.lap("load")
        except TimeoutError:
            msg = (
                f"reload timed out after {self.host.reload_timeout}s before pausing callers (the old code "
                "serves on; a module or __init__ still running goes on in its thread, which cannot be stopped)"
            )
            raise PluginError(msg) from None
        return candidate

    def load_new(self) -> _Candidate:
        """Execute the new modules and instantiate the class (in a worker thread)."""
        slot = self.slot
        created: dict[str, types.ModuleType] = {}
        try:
            for name in (*slot.extra_modules, slot.module_name):
                if self.abandoned.is_set():
                    raise PluginError("reload abandoned")
                created[name] = exec_fresh_module(name)
            new = instantiate(find_class(created[slot.module_name], slot.class_name), self.host.keyring)
            if new.metadata.id != slot.plugin_id:
                raise PluginError(f"reloaded plugin has id {new.metadata.id!r}, expected {slot.plugin_id!r}")
            plan = None
            old = slot.instance
            if isinstance(old, StatefulPlugin) and isinstance(new, StatefulPlugin):
                before = {name: vars(m) for name, m in self.saved.items() if m is not None}
                plan = _handover.plan_handover(old, new, before, {name: vars(m) for name, m in created.items()})
            return _Candidate(new, plan)
        finally:
            if self.abandoned.is_set():
                self.restore_modules(created.values())

    async def check(self, old: Plugin, candidate: _Candidate) -> None:
        """Refuse new code that cannot take the old state: dropped sections, unreachable schemas."""
        new = candidate.instance
        if not isinstance(old, StateTransferable):
            return
        if not isinstance(new, StateTransferable):
            raise PluginError(f"new code of {self.slot.plugin_id!r} can no longer import state")
        candidate.target_versions = _lowered_sections(old, new)
        if candidate.target_versions:  # older code: the serving code converts its state down, through a snapshot
            candidate.plan = None
        if candidate.plan is not None:
            _handover.check_plan(candidate.plan, allow_dropped=self.host.allow_dropped_sections)
            return
        draft = await self.export_old(old, candidate)
        validation = await new.validate_state(draft)
        dropped = sorted(n for n, sv in validation.section_validations.items() if sv.verdict == "unknown")
        if dropped and not self.host.allow_dropped_sections:
            msg = f"new code no longer declares section(s) {dropped} (allowed by allow_dropped_sections=True)"
            raise PluginError(msg)
        if not validation.is_valid:
            raise ValidationFailed(_reasons(validation), validation=validation)

    # -- the pause: callers held (see _Release.switch) -------------------------------------------
    async def transfer(
        self, old: Plugin, candidate: _Candidate, held: contextlib.AsyncExitStack
    ) -> Callable[[], StateImportResult | None] | None:
        """Run every step that may fail or run plugin code; returns the host-only step that finishes it."""
        new = candidate.instance
        if not (isinstance(old, StateTransferable) and isinstance(new, StateTransferable)):
            return None
        plan = candidate.plan
        if plan is not None and self.host.live_handover:
            assert isinstance(old, StatefulPlugin) and isinstance(new, StatefulPlugin)  # a plan is made for these only
            await held.enter_async_context(old.state_lock)
            await held.enter_async_context(new.state_lock)
            staged = await _handover.stage(old, new, plan)
            self.lap("export")
            self.emit("exported", f"{len(old.sections)} sections handed over")
            self.undo = lambda: _handover.revert(old, plan)
            return lambda: _handover.apply(old, new, plan, staged)
        snapshot = await self.export_old(old, candidate)
        self.lap("export")
        self.emit("exported", f"{len(snapshot.sections)} sections")
        if not isinstance(new, StatefulPlugin):  # declarative plugins validate inside import_state
            validation = await new.validate_state(snapshot)
            if not validation.is_valid:
                raise ValidationFailed(_reasons(validation), validation=validation)
        imported = await new.import_state(snapshot)
        return lambda: imported

    async def export_old(self, old: StateTransferable, candidate: _Candidate) -> StateSnapshot:
        """The serving instance's state for the new code; at the new code's lower section versions if it is older.

        Raises:
            MigrationError: the serving code has no downgrade step to a version the new code needs.
        """
        if candidate.target_versions:
            assert isinstance(old, StatefulPlugin)  # only declarative plugins' versions are compared
            reason = StateCreationReason.HOT_RELOAD
            return await old.export_state(reason=reason, target_versions=candidate.target_versions)
        return await old.export_for(StateCreationReason.HOT_RELOAD)

    def commit(self, new: Plugin) -> None:
        """The point of no return: the new instance serves from the next call on."""
        self.slot.instance = new
        self.result.ok = True
        self.result.new_version = new.metadata.version
        self.lap("swap")

    # -- after the commit: callers run again -------------------------------------------------------
    async def after_commit(self) -> None:
        """Call the old instance's ``on_unload`` (bounded) and write the checkpoint; neither can undo the swap."""
        old, self.old = self.old, None  # the host keeps no reference to the old code after this
        self.saved.clear()
        if old is not None:
            await self.host._call_on_unload(old, self.slot.plugin_id)
            del old
            self.lap("unload")
        if self.host.store is not None and isinstance(self.slot.instance, StateTransferable):
            try:
                export = await self.host._export_checkpoint(self.slot)
                if export is not None:
                    self.result.checkpoint_id = await self.host._write_checkpoint(self.slot, export, always=True)
            except Exception:
                log.exception("checkpoint of %r after its reload failed (the new code serves on)", self.slot.plugin_id)
            self.lap("checkpoint")

    # -- rollback and bookkeeping ------------------------------------------------------------------
    def roll_back(self, exc: BaseException) -> None:
        """Before the commit: put the old modules back; the old instance never stopped being current."""
        self.abandoned.set()
        self.restore_modules(None)
        self.result.rolled_back = True
        self.result.error = self.describe(exc)
        self.emit("rolled_back", self.result.error)

    def describe(self, exc: BaseException) -> str:
        """What a failure of this reload is reported as."""
        if isinstance(exc, TimeoutError):
            return f"reload timed out after {self.host.reload_timeout}s while callers were held"
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)

    def restore_modules(self, only: Iterable[types.ModuleType] | None) -> None:
        """Point ``sys.modules`` back at the modules saved before the reload (those replaced by ``only``)."""
        ours = None if only is None else {id(m) for m in only}
        for name, module in self.saved.items():
            current = sys.modules.get(name)
            if module is not None and current is not module and (ours is None or id(current) in ours):
                sys.modules[name] = module

    def finish(self) -> ReloadResult:
        self.timings["total"] = time.perf_counter() - self.started
        self.result.timings = self.timings
        level = logging.INFO if self.result.ok else logging.WARNING
        outcome = "ok" if self.result.ok else "rolled back"
        log.log(level, "reload %r: %s, callers held %.1f ms, total %.1f ms%s", self.slot.plugin_id, outcome,
                self.timings["pause"] * 1e3, self.timings["total"] * 1e3,
                f" ({self.result.error})" if self.result.error else "")  # fmt: skip
        return self.result


class _Release:
    """Reloads of one or more plugins carried out as one unit: all swap, or none does.

    Each plugin's preflight runs in turn (dependencies first); then every
    gate is paused, every call in flight awaited and every handover staged;
    the host-only steps and the swaps follow with nothing awaited in between.
    A failure anywhere rolls them all back.
    """

    def __init__(self, host: PluginHost, reloads: list[_Reload]) -> None:
        self.host = host
        self.reloads = reloads
        self.culprit: _Reload | None = None  # the reload whose step failed

    async def run(self) -> list[ReloadResult]:
        for reload in self.reloads:
            reload.emit("started")
        candidates: list[_Candidate] = []
        try:
            for reload in self.reloads:
                self.culprit = reload
                candidates.append(await reload.preflight())
            self.culprit = None
            self.reorder(candidates)
            await self.switch(candidates)
        except (Exception, asyncio.CancelledError) as exc:
            self.roll_back(exc)
            if isinstance(exc, asyncio.CancelledError):
                self.finish()
                raise
            for reload, candidate in zip(self.reloads, candidates, strict=False):
                if candidate.loaded:
                    await self.host._call_on_unload(candidate.instance, reload.slot.plugin_id)
            return self.finish()
        try:
            for reload in self.reloads:
                await reload.after_commit()
        finally:
            results = self.finish()
        return results

    def reorder(self, candidates: list[_Candidate]) -> None:
        """Put the reloads (and ``candidates``) in the dependency order the new code declares."""
        pairs = _dependency_order(list(zip(self.reloads, candidates, strict=True)), lambda pair: pair[1].instance)
        self.reloads[:] = [reload for reload, _ in pairs]
        candidates[:] = [candidate for _, candidate in pairs]

    async def switch(self, candidates: list[_Candidate]) -> None:
        """Hold every plugin's callers, stage every handover, then swap them all (the commit), resume callers."""
        paused = time.perf_counter()
        for reload in self.reloads:
            reload.mark = paused
            reload.slot.gate.pause()
        try:
            deadline = paused + self.host.quiesce_timeout
            for reload in self.reloads:
                self.culprit = reload
                await reload.slot.gate.quiesce(max(0.0, deadline - time.perf_counter()))
                reload.lap("quiesce")
            async with contextlib.AsyncExitStack() as held:
                finishers = []
                async with asyncio.timeout(self.host.reload_timeout):
                    for reload, candidate in zip(self.reloads, candidates, strict=True):
                        self.culprit = reload
                        reload.mark = time.perf_counter()
                        finishers.append(await reload.transfer(reload.slot.instance, candidate, held))
                # From here on: host code only, nothing awaited until callers resume.
                done: list[_Reload] = []
                try:
                    for reload, finish in zip(self.reloads, finishers, strict=True):
                        self.culprit = reload
                        reload.mark = time.perf_counter()
                        reload.result.import_result = finish() if finish is not None else None
                        done.append(reload)
                        reload.lap("import")
                except BaseException:
                    for reload in reversed(done):
                        if reload.undo is not None:
                            reload.undo()
                    raise
                for reload, candidate in zip(self.reloads, candidates, strict=True):
                    reload.commit(candidate.instance)
        finally:
            for reload in self.reloads:
                reload.timings["pause"] = reload.slot.gate.resume()
        for reload in self.reloads:  # listeners run after callers resumed
            if reload.result.import_result is not None:
                reload.emit("imported", ", ".join(reload.result.import_result.imported_sections))
            reload.emit("swapped", reload.result.new_version or "")

    def roll_back(self, exc: BaseException) -> None:
        """Before the commit: every plugin keeps its old instance; the one that failed says why, the others name it."""
        culprit = self.culprit
        for reload in reversed(self.reloads):
            if culprit is None or reload is culprit or isinstance(exc, asyncio.CancelledError):
                reload.roll_back(exc)
            else:
                why = culprit.describe(exc)
                reload.roll_back(PluginError(f"rolled back with {culprit.slot.plugin_id!r}, which failed: {why}"))

    def finish(self) -> list[ReloadResult]:
        return [reload.finish() for reload in self.reloads]


def _lowered_sections(old: Plugin, new: Plugin) -> dict[str, int]:
    """Section name -> the new code's version, for each section it declares at a lower version than the serving code."""
    if not (isinstance(old, StatefulPlugin) and isinstance(new, StatefulPlugin)):
        return {}
    return {
        name: new.sections[name].version
        for name, sec in old.sections.items()
        if name in new.sections and new.sections[name].version < sec.version
    }


def _dependency_order(items: list[K], plugin: Callable[[K], Plugin]) -> list[K]:
    """``items`` ordered so that each comes after those its plugin ``depends_on`` (ties: by plugin id).

    Raises:
        PluginError: the declared dependencies among ``items`` form a cycle.
    """
    by_id = {plugin(item).metadata.id: item for item in items}
    needs = {pid: {d for d in type(plugin(item)).depends_on if d in by_id and d != pid} for pid, item in by_id.items()}
    ordered: list[K] = []
    while needs:
        ready = sorted(pid for pid, deps in needs.items() if not deps)
        if not ready:
            raise PluginError(f"plugins {sorted(needs)} declare dependencies (depends_on) that form a cycle")
        for pid in ready:
            ordered.append(by_id[pid])
            del needs[pid]
        for deps in needs.values():
            deps.difference_update(ready)
    return ordered


def _reasons(validation: Any) -> str:
    reasons = validation.errors + [f"{n}: {e}" for n, sv in validation.section_validations.items() for e in sv.errors]
    return "; ".join(reasons) or "snapshot invalid for the new code"


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _section_digests(snapshot: StateSnapshot) -> dict[str, tuple[int, bytes]]:
    """(schema version, digest of the stored bytes) per section; large ones hashed in a worker thread."""

    def digests() -> dict[str, tuple[int, bytes]]:
        return {n: (s.schema_version, section_digest(s.data)) for n, s in snapshot.sections.items()}

    if sum(len(s.data) for s in snapshot.sections.values()) >= 1 << 20:
        return await asyncio.to_thread(digests)
    return digests()


async def _in_daemon_thread(func: Callable[[], T]) -> T:
    """``func()`` in a new daemon thread; awaiting it can be cancelled, the thread cannot.

    A daemon thread (not the default executor) so that code that never
    returns keeps neither the event loop's shutdown nor the interpreter's
    exit waiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    # The thread takes func from one box and leaves its outcome in another, so once func
    # returned the thread refers to nothing it produced (the old code can be collected).
    calls: list[Callable[[], T]] = [func]
    outcomes: list[tuple[T | None, BaseException | None]] = []

    def deliver() -> None:
        value, error = outcomes.pop()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, value))  # no error: func returned a T

    def work() -> None:
        call = calls.pop()
        try:
            outcomes.append((call(), None))
        except BaseException as exc:  # handed to the awaiting task
            outcomes.append((None, exc))
        del call
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver)

    threading.Thread(target=work, name="statetransfer-preflight", daemon=True).start()
    return await future


def _is_kind(instance: object, kind: type[Any]) -> bool:
    """``isinstance``, or an instance of the same class re-executed by a reload (same module and name)."""
    if isinstance(instance, kind):
        return True
    return any(c.__module__ == kind.__module__ and c.__qualname__ == kind.__qualname__ for c in type(instance).__mro__)
