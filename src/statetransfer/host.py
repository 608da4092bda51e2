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
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import msgspec

from . import _handover
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
from ._watching import watch_sources
from .crypto import Keyring
from .errors import PluginError, ValidationFailed
from .model import StateCreationReason, StateImportResult, StateSnapshot
from .plugin import Plugin, StateTransferable
from .stateful import StatefulPlugin

if TYPE_CHECKING:
    from .stores.base import SnapshotStore

__all__ = ["ENTRY_POINT_GROUP", "Phase", "PluginHost", "ReloadEvent", "ReloadResult"]

log = logging.getLogger("statetransfer.host")
T = TypeVar("T")
#: A reload's progress, in order; ``rolled_back`` ends a reload that did not swap.
Phase = Literal["started", "loaded", "exported", "imported", "swapped", "rolled_back"]


class ReloadResult(msgspec.Struct, kw_only=True):
    """The outcome of one :meth:`PluginHost.reload`.

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


class PluginHost:
    """Loads plugins, routes calls to them, and hot-reloads their code without losing state.

    Args:
        keyring: passed to every plugin through :meth:`Plugin.create`.
        store: where a reload writes a ``CHECKPOINT`` snapshot of the new
            instance, after callers resumed.
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
    ) -> None:
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
    async def load(self, spec: str, *, also_reload: Iterable[str] = ()) -> Plugin:
        """Import, instantiate and register a plugin; returns the instance.

        Args:
            spec: ``"package.module:ClassName"``, or the name of an entry point
                in the ``statetransfer.plugins`` group.
            also_reload: further modules (e.g. the plugin's helpers) to
                re-execute from source, before the plugin's module, on each reload.
        """
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
        self._slots[plugin_id] = _Slot(plugin_id, instance, module_name, class_name, source, extra, CallGate(plugin_id))
        log.info("loaded plugin %r (%s) from %s", plugin_id, instance.metadata.version, spec)
        return instance

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
    @contextlib.asynccontextmanager
    async def use(self, plugin_id: str) -> AsyncIterator[Any]:
        """Enter a call to ``plugin_id``; yields the instance serving it.

        While a reload holds callers, new callers wait (up to
        ``acquire_timeout`` seconds, then :class:`PluginError`); calls already
        in flight finish first.
        """
        slot = self._slot(plugin_id)
        async with slot.gate.enter(self.acquire_timeout):
            yield slot.instance

    # -- reload -----------------------------------------------------------------------------------
    async def reload(self, plugin_id: str) -> ReloadResult:
        """Replace ``plugin_id``'s code, carrying its state; roll back on any failure.

        Concurrent reloads of one plugin run one after the other.

        Raises:
            PluginError: no such plugin, or it was unloaded while this reload waited its turn.
        """
        slot = self._slot(plugin_id)
        async with slot.reload_lock:
            if slot.gate.closed:
                raise PluginError(f"plugin {plugin_id!r} was unloaded before its reload could start")
            return await _Reload(self, slot).run()

    # -- watching ---------------------------------------------------------------------------------
    async def watch(self, *, debounce_ms: int = 200, stop_event: asyncio.Event | None = None) -> None:
        """Reload a plugin whenever its source file changes, until cancelled (or ``stop_event``).

        Changes are debounced; reloads of one plugin run one at a time; each
        result is logged with :mod:`logging` (logger ``statetransfer.host``).
        """
        await watch_sources(self._sources, self.reload, debounce_ms=debounce_ms, stop_event=stop_event)

    def _sources(self) -> dict[str, set[Path]]:
        """Plugin id -> the source files whose change reloads it (its module and ``also_reload`` helpers)."""
        out: dict[str, set[Path]] = {}
        for slot in self._slots.values():
            files = {slot.source, *(module_file(m) for m in slot.extra_modules)}
            out[slot.plugin_id] = {f for f in files if f is not None}
        return out


@dataclass
class _Candidate:
    """The new code, loaded and checked by the preflight."""

    instance: Plugin
    plan: _handover.HandoverPlan | None
    loaded: bool = False  # its on_load ran


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

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self.mark
        self.mark = now

    def emit(self, phase: Phase, detail: str = "") -> None:
        self.host._emit(self.slot.plugin_id, phase, self.started, detail)

    async def run(self) -> ReloadResult:
        self.emit("started")
        candidate: _Candidate | None = None
        try:
            candidate = await self.preflight()
            await self.switch(candidate)
        except (Exception, asyncio.CancelledError) as exc:
            self.roll_back(exc)
            if isinstance(exc, asyncio.CancelledError):
                self.finish()
                raise
            if candidate is not None and candidate.loaded:
                await self.host._call_on_unload(candidate.instance, self.slot.plugin_id)
            return self.finish()
        try:
            await self.after_commit()
        finally:
            self.finish()
        return self.result

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
        if candidate.plan is not None:
            _handover.check_plan(candidate.plan, allow_dropped=self.host.allow_dropped_sections)
            return
        draft = await old.export_for(StateCreationReason.HOT_RELOAD)
        validation = await new.validate_state(draft)
        dropped = sorted(n for n, sv in validation.section_validations.items() if sv.verdict == "unknown")
        if dropped and not self.host.allow_dropped_sections:
            msg = f"new code no longer declares section(s) {dropped} (allowed by allow_dropped_sections=True)"
            raise PluginError(msg)
        if not validation.is_valid:
            raise ValidationFailed(_reasons(validation), validation=validation)

    # -- the pause: callers held, ends with the commit ---------------------------------------------
    async def switch(self, candidate: _Candidate) -> None:
        """Hold callers, carry the state over, swap (the commit), resume callers."""
        gate = self.slot.gate
        new = candidate.instance
        self.mark = time.perf_counter()
        gate.pause()
        try:
            await gate.quiesce(self.host.quiesce_timeout)
            self.lap("quiesce")
            old = self.slot.instance
            async with contextlib.AsyncExitStack() as held:
                async with asyncio.timeout(self.host.reload_timeout):
                    transfer = await self.transfer(old, candidate, held)
                # From here on: host code only, nothing awaited until callers resume.
                self.result.import_result = transfer() if transfer is not None else None
                self.lap("import")
                self.commit(new)
        finally:
            self.timings["pause"] = gate.resume()
        if self.result.import_result is not None:  # listeners run after callers resumed
            self.emit("imported", ", ".join(self.result.import_result.imported_sections))
        self.emit("swapped", self.result.new_version or "")

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
            return lambda: _handover.apply(old, new, plan, staged)
        snapshot = await old.export_for(StateCreationReason.HOT_RELOAD)
        self.lap("export")
        self.emit("exported", f"{len(snapshot.sections)} sections")
        if not isinstance(new, StatefulPlugin):  # declarative plugins validate inside import_state
            validation = await new.validate_state(snapshot)
            if not validation.is_valid:
                raise ValidationFailed(_reasons(validation), validation=validation)
        imported = await new.import_state(snapshot)
        return lambda: imported

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
        store, new = self.host.store, self.slot.instance
        if store is not None and isinstance(new, StateTransferable):
            try:
                async with asyncio.timeout(self.host.reload_timeout):
                    snapshot = await new.export_for(StateCreationReason.CHECKPOINT)
                    info = await store.put(snapshot)
                self.result.checkpoint_id = info.id
            except Exception:
                log.exception("checkpoint of %r after its reload failed (the new code serves on)", self.slot.plugin_id)
            self.lap("checkpoint")

    # -- rollback and bookkeeping ------------------------------------------------------------------
    def roll_back(self, exc: BaseException) -> None:
        """Before the commit: put the old modules back; the old instance never stopped being current."""
        self.abandoned.set()
        self.restore_modules(None)
        self.result.rolled_back = True
        self.result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)
        if isinstance(exc, TimeoutError):
            self.result.error = f"reload timed out after {self.host.reload_timeout}s while callers were held"
        self.emit("rolled_back", self.result.error)

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


def _reasons(validation: Any) -> str:
    reasons = validation.errors + [f"{n}: {e}" for n, sv in validation.section_validations.items() for e in sv.errors]
    return "; ".join(reasons) or "snapshot invalid for the new code"


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


async def _export(plugin: StateTransferable, reason: StateCreationReason, **options: Any) -> StateSnapshot:
    """``plugin.export_for(reason, tags=..., expires_at=...)`` (kept for callers of the former helper)."""
    return await plugin.export_for(reason, tags=options.get("tags") or (), expires_at=options.get("expires_at"))
