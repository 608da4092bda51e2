"""Hot-reload host: quiesce -> export -> reload code -> import -> swap, with rollback.

Every call to a plugin goes through :meth:`PluginHost.use`. A reload first
stops admitting new calls and waits for the calls in flight (quiesce), so the
exported state is exactly the state the new code imports; any failure leaves
the old instance serving with its state untouched (rollback).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .checksum import calculate_checksum
from .crypto import Keyring
from .errors import PluginError, StateTransferError, ValidationFailed
from .model import SectionValidation, StateCreationReason, StateImportResult, StateSnapshot, StateValidation
from .plugin import Plugin, StateTransferable

if TYPE_CHECKING:
    from .stores.base import SnapshotStore

__all__ = ["ENTRY_POINT_GROUP", "PluginHost", "ReloadEvent", "ReloadResult"]

log = logging.getLogger("statetransfer.host")
ENTRY_POINT_GROUP = "statetransfer.plugins"
PHASES = ("started", "exported", "loaded", "imported", "swapped", "rolled_back")


class ReloadResult(msgspec.Struct):
    """The outcome of one :meth:`PluginHost.reload`.

    ``timings`` holds seconds per phase (``quiesce``, ``export``, ``load``,
    ``validate``, ``import``, ``checkpoint``, ``swap``) and ``total``.
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


class ReloadEvent(msgspec.Struct, frozen=True):
    """A progress event of a reload: ``phase`` is one of ``started``, ``exported``,
    ``loaded``, ``imported``, ``swapped``, ``rolled_back``."""

    plugin_id: str
    phase: str
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
    in_flight: int = 0
    paused: bool = False
    closed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.idle.set()
        self.resumed.set()


def _parse_spec(spec: str) -> tuple[str, str]:
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise PluginError(f"plugin spec {spec!r} must look like 'package.module:ClassName'")
    return module_name, class_name


def _exec_fresh_module(name: str) -> types.ModuleType:
    """Execute module ``name`` from its current source into a fresh module object.

    Source is compiled directly (never a cached ``.pyc``), so a file rewritten
    twice within one second with the same size still runs its newest text.
    ``sys.modules[name]`` points at the new module only while it executes and
    after it succeeds; on failure the previous module is restored.
    """
    old = sys.modules.get(name)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise PluginError(f"cannot find module {name!r}: {exc}") from exc
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot find module {name!r} (is its directory on sys.path?)")
    module = importlib.util.module_from_spec(spec)
    origin = spec.origin
    sys.modules[name] = module
    try:
        if origin and origin.endswith(".py"):
            source = Path(origin).read_bytes()
            code = compile(source, origin, "exec", dont_inherit=True)
            exec(code, module.__dict__)  # noqa: S102 - running the plugin's own source is the point
        else:
            spec.loader.exec_module(module)
    except BaseException as exc:
        if old is not None:
            sys.modules[name] = old
        else:
            sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
            raise
        raise PluginError(f"module {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    importlib.invalidate_caches()
    return module


def _instantiate(cls: Any, keyring: Keyring | None) -> Plugin:
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"{cls!r} is not a statetransfer Plugin subclass")
    try:
        params = inspect.signature(cls).parameters
        accepts = "keyring" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        instance: Plugin = cls(keyring=keyring) if accepts else cls()  # type: ignore[call-arg]
    except StateTransferError:
        raise
    except Exception as exc:
        raise PluginError(f"{cls.__qualname__}() raised {type(exc).__name__}: {exc}") from exc
    meta = getattr(instance, "metadata", None)
    if meta is None or not getattr(meta, "id", None):
        raise PluginError(f"{cls.__qualname__} has no metadata with an id")
    return instance


class PluginHost:
    """Loads plugins, routes calls to them, and hot-reloads their code without losing state.

    Args:
        keyring: passed to every plugin that accepts ``keyring=``.
        store: where reloads write a ``CHECKPOINT`` snapshot before swapping.
        quiesce_timeout: seconds a reload waits for calls in flight before it
            gives up (and rolls back; the calls go on).
        acquire_timeout: seconds a new call waits for a reload to finish
            before :meth:`use` raises :class:`PluginError`.
        reload_timeout: seconds the export/load/import phases may take.
        allow_dropped_sections: accept new code that no longer declares a
            section the old code had. Off by default: such a reload rolls
            back. When allowed, the dropped section is still carried
            unchanged through later exports (nothing is lost).
    """

    def __init__(
        self,
        keyring: Keyring | None = None,
        store: SnapshotStore | None = None,
        *,
        quiesce_timeout: float = 5.0,
        acquire_timeout: float = 30.0,
        reload_timeout: float = 60.0,
        allow_dropped_sections: bool = False,
    ) -> None:
        self.allow_dropped_sections = allow_dropped_sections
        self.keyring = keyring
        self.store = store
        self.quiesce_timeout = quiesce_timeout
        self.acquire_timeout = acquire_timeout
        self.reload_timeout = reload_timeout
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[Callable[[ReloadEvent], Any]] = []

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

    def subscribe(self, listener: Callable[[ReloadEvent], Any]) -> Callable[[], None]:
        """Call ``listener(event)`` on every reload progress event; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, plugin_id: str, phase: str, started: float, detail: str = "") -> None:
        event = ReloadEvent(plugin_id, phase, time.perf_counter() - started, detail)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("reload event listener %r failed", listener)

    # -- load / unload ----------------------------------------------------------------------------
    async def load(self, spec: str, *, also_reload: Iterable[str] = ()) -> Plugin:
        """Import, instantiate and register a plugin; returns the instance.

        Args:
            spec: ``"package.module:ClassName"``, or the name of an entry point
                in the ``statetransfer.plugins`` group.
            also_reload: further modules (e.g. the plugin's helpers) to
                re-execute from source, before the plugin's module, on each reload.
        """
        if ":" not in spec:
            spec = self._entry_point(spec)
        module_name, class_name = _parse_spec(spec)
        extra = tuple(also_reload)
        if module_name in sys.modules:
            module = sys.modules[module_name]
        else:
            for name in extra:
                _exec_fresh_module(name)
            module = _exec_fresh_module(module_name)
        cls = getattr(module, class_name, None)
        if cls is None:
            raise PluginError(f"module {module_name!r} has no class {class_name!r}")
        instance = _instantiate(cls, self.keyring)
        plugin_id = instance.metadata.id
        if plugin_id in self._slots:
            raise PluginError(f"a plugin with id {plugin_id!r} is already loaded; unload it first")
        origin = getattr(module, "__file__", None)
        source = Path(origin).resolve() if origin else None
        await instance.on_load()
        self._slots[plugin_id] = _Slot(plugin_id, instance, module_name, class_name, source, extra)
        log.info("loaded plugin %r (%s) from %s", plugin_id, instance.metadata.version, spec)
        return instance

    @staticmethod
    def _entry_point(name: str) -> str:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                return str(ep.value)
        msg = f"no plugin entry point {name!r} in group {ENTRY_POINT_GROUP!r}, and it is not 'module:Class'"
        raise PluginError(msg)

    async def unload(self, plugin_id: str) -> None:
        """Stop admitting calls, wait for those in flight, then drop the plugin."""
        slot = self._slot(plugin_id)
        async with slot.reload_lock:
            slot.paused = True
            slot.resumed.clear()
            try:
                await asyncio.wait_for(slot.idle.wait(), self.quiesce_timeout)
            except TimeoutError:
                slot.paused = False
                slot.resumed.set()
                msg = f"cannot unload {plugin_id!r}: {slot.in_flight} calls still running after {self.quiesce_timeout}s"
                raise PluginError(msg) from None
            slot.closed = True
            del self._slots[plugin_id]
            slot.resumed.set()
        await slot.instance.on_unload()

    # -- calls ------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, plugin_id: str) -> AsyncIterator[Any]:
        """Enter a call to ``plugin_id``; yields the instance serving it.

        While a reload is in progress new callers wait (up to
        ``acquire_timeout`` seconds, then :class:`PluginError`); calls already
        in flight finish first.
        """
        slot = self._slot(plugin_id)
        while slot.paused:
            try:
                await asyncio.wait_for(slot.resumed.wait(), self.acquire_timeout)
            except TimeoutError:
                msg = f"plugin {plugin_id!r} is reloading; gave up after waiting {self.acquire_timeout}s"
                raise PluginError(msg) from None
            if slot.closed:
                raise PluginError(f"plugin {plugin_id!r} was unloaded")
        slot.in_flight += 1
        slot.idle.clear()
        try:
            yield slot.instance
        finally:
            slot.in_flight -= 1
            if slot.in_flight == 0:
                slot.idle.set()

    # -- reload -----------------------------------------------------------------------------------
    async def reload(self, plugin_id: str) -> ReloadResult:
        """Replace ``plugin_id``'s code, carrying its state; roll back on any failure.

        Concurrent reloads of one plugin run one after the other.
        """
        slot = self._slot(plugin_id)
        async with slot.reload_lock:
            return await self._reload(slot)

    async def _reload(self, slot: _Slot) -> ReloadResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        old = slot.instance
        result = ReloadResult(slot.plugin_id, ok=False, rolled_back=False, old_version=old.metadata.version)
        mark = started

        def lap(phase: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            timings[phase] = now - mark
            mark = now

        saved_modules = {name: sys.modules.get(name) for name in (*slot.extra_modules, slot.module_name)}
        self._emit(slot.plugin_id, "started", started)
        slot.paused = True
        slot.resumed.clear()
        try:
            try:
                await asyncio.wait_for(slot.idle.wait(), self.quiesce_timeout)
            except TimeoutError:
                msg = f"quiesce timeout: {slot.in_flight} calls still in flight after {self.quiesce_timeout}s"
                raise PluginError(msg) from None
            lap("quiesce")
            async with asyncio.timeout(self.reload_timeout):
                new, snapshot, imported = await self._swap_in(slot, old, lap, started)
                result.new_version = new.metadata.version
                result.import_result = imported
                if self.store is not None and snapshot is not None:
                    checkpoint = _as_checkpoint(snapshot)
                    await self.store.put(checkpoint)
                    result.checkpoint_id = checkpoint.id
                    lap("checkpoint")
            slot.instance = new
            try:
                await old.on_unload()
            except Exception:
                log.exception("on_unload of the old %r instance failed (ignored; new code is serving)", slot.plugin_id)
            lap("swap")
            result.ok = True
            self._emit(slot.plugin_id, "swapped", started, result.new_version or "")
        except (Exception, asyncio.CancelledError) as exc:
            for name, module in saved_modules.items():
                if module is not None:
                    sys.modules[name] = module
            result.rolled_back = True
            result.error = _describe(exc)
            self._emit(slot.plugin_id, "rolled_back", started, result.error)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            slot.paused = False
            slot.resumed.set()
            timings["total"] = time.perf_counter() - started
            result.timings = timings
            level = logging.INFO if result.ok else logging.WARNING
            log.log(level, "reload %r: %s in %.1f ms%s", slot.plugin_id,
                    "ok" if result.ok else "rolled back", timings["total"] * 1e3,
                    f" ({result.error})" if result.error else "")  # fmt: skip
        return result

    async def _swap_in(
        self, slot: _Slot, old: Plugin, lap: Callable[[str], None], started: float
    ) -> tuple[Plugin, StateSnapshot | None, StateImportResult | None]:
        snapshot: StateSnapshot | None = None
        if isinstance(old, StateTransferable):
            snapshot = await _export(old, StateCreationReason.HOT_RELOAD)
            lap("export")
            self._emit(slot.plugin_id, "exported", started, f"{len(snapshot.sections)} sections")
        for name in slot.extra_modules:
            _exec_fresh_module(name)
        module = _exec_fresh_module(slot.module_name)
        cls = getattr(module, slot.class_name, None)
        if cls is None:
            raise PluginError(f"reloaded module {slot.module_name!r} has no class {slot.class_name!r}")
        new = _instantiate(cls, self.keyring)
        if new.metadata.id != slot.plugin_id:
            raise PluginError(f"reloaded plugin has id {new.metadata.id!r}, expected {slot.plugin_id!r}")
        lap("load")
        self._emit(slot.plugin_id, "loaded", started, new.metadata.version)
        imported: StateImportResult | None = None
        if snapshot is not None:
            if not isinstance(new, StateTransferable):
                raise PluginError(f"new code of {slot.plugin_id!r} can no longer import state")
            # Declarative plugins validate inside import_state; their plan() (no decoding, no hashing) is
            # enough to spot dropped sections first. Other plugins are validated here.
            plan = getattr(new, "plan", None)
            validation: StateValidation | None = None
            if callable(plan):
                verdicts: dict[str, SectionValidation] = plan(snapshot)
            else:
                validation = await new.validate_state(snapshot)
                verdicts = validation.section_validations
            lap("validate")
            declared_before = getattr(old, "sections", None)
            dropped = sorted(
                name
                for name, sv in verdicts.items()
                if sv.verdict == "unknown" and (not isinstance(declared_before, dict) or name in declared_before)
            )
            if dropped and not self.allow_dropped_sections:
                msg = f"new code no longer declares section(s) {dropped} (allowed by allow_dropped_sections=True)"
                raise PluginError(msg)
            if validation is not None and not validation.is_valid:
                reasons = validation.errors + [f"{n}: {e}" for n, sv in verdicts.items() for e in sv.errors]
                raise ValidationFailed("; ".join(reasons) or "snapshot invalid for the new code", validation=validation)
            imported = await new.import_state(snapshot)
            lap("import")
            self._emit(slot.plugin_id, "imported", started, ", ".join(imported.imported_sections))
        await new.on_load()
        return new, snapshot, imported

    # -- watching ---------------------------------------------------------------------------------
    async def watch(self, *, debounce_ms: int = 200, stop_event: asyncio.Event | None = None) -> None:
        """Reload a plugin whenever its source file changes, until cancelled (or ``stop_event``).

        Changes are debounced; reloads of one plugin run one at a time; each
        result is logged with :mod:`logging` (logger ``statetransfer.host``).
        """
        import watchfiles  # noqa: PLC0415 - only hosts that watch need it

        dirs = sorted({str(s.source.parent) for s in self._slots.values() if s.source is not None})
        if not dirs:
            raise PluginError("no loaded plugin has a source file to watch")
        log.info("watching %s for plugin source changes", dirs)
        async for changes in watchfiles.awatch(*dirs, debounce=debounce_ms, stop_event=stop_event):
            changed = {Path(path).resolve() for _, path in changes}
            for slot in list(self._slots.values()):
                sources = {slot.source, *(_module_file(m) for m in slot.extra_modules)}
                if changed & {s for s in sources if s is not None}:
                    await self.reload(slot.plugin_id)


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    return Path(origin).resolve() if origin else None


async def _export(plugin: StateTransferable, reason: StateCreationReason, **options: Any) -> StateSnapshot:
    """Export with ``reason`` (and tags, expires_at...) when export_state accepts them (declarative plugins do).

    A hand-written ``export_state()`` without keywords is called as is.
    """
    params = inspect.signature(plugin.export_state).parameters
    if "reason" in params:
        accepted = {k: v for k, v in options.items() if k in params and v is not None}
        return await plugin.export_state(reason=reason, **accepted)  # type: ignore[call-arg]
    return await plugin.export_state()


def _as_checkpoint(snapshot: StateSnapshot) -> StateSnapshot:
    meta = msgspec.structs.replace(snapshot.metadata, reason=StateCreationReason.CHECKPOINT)
    out = msgspec.structs.replace(snapshot, metadata=meta, signature=None)
    return msgspec.structs.replace(out, checksum=calculate_checksum(out))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "reload timed out"
    return f"{type(exc).__name__}: {exc}"
