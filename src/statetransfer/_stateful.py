"""Declarative plugins: typed Sections give export, import, validation and migrations for free."""

from __future__ import annotations

import asyncio
import datetime
import functools
import time
import typing
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

import msgspec

from . import _codecs as codecs
from ._checksum import calculate_checksum, section_digest
from ._crypto import Keyring
from ._migrations import MigrationStep, check_chain, find_path, make_step, missing_step, registered_steps
from ._model import (
    FailedSection,
    PluginMetadata,
    SectionValidation,
    StateCreationReason,
    StateImportResult,
    StateMetadata,
    StateSection,
    StateSnapshot,
    StateValidation,
    new_snapshot_id,
    now,
)
from ._plugin import StateTransferable
from ._sections import (
    DeferredCheck,
    SectionPacker,
    checks_deferred,
    framing,
    pack_section,
    reseal_section,
    unpack_section,
)
from ._validation import validate_snapshot
from .errors import (
    EncodingError,
    ImportFailed,
    InvalidArgument,
    MigrationError,
    StateTransferError,
    ValidationFailed,
)

__all__ = ["Section", "StatefulPlugin"]

T = TypeVar("T")
#: Attribute names a section may not take: the base class uses them.
_RESERVED = frozenset({"keyring", "metadata", "sections", "schema_version", "state_lock", "verify_exports"})
F = TypeVar("F", bound=Callable[[Any], Any])
#: Sections at least this large are packed/unpacked in a worker thread.
_THREAD_ABOVE = 1 << 20


class Section(Generic[T]):
    """A declared, typed part of a :class:`StatefulPlugin`'s state.

    The live value is the instance attribute with the section's name.

    Args:
        type: the declared type (a ``msgspec.Struct``, dataclass, or builtin
            container type such as ``dict[str, list[int]]``; ``bytes`` for ``"raw"``).
        version: the section's schema version (bump it when ``type`` changes).
        codec: ``"msgpack"`` (default), ``"json"`` or ``"raw"``.
        compress: ``True`` (zstd), ``False``, or ``"zstd"`` / ``"lz4"``. Stored
            raw whenever compression does not shrink the bytes.
        level: compression level (zstd default 1: fast enough for hot reload;
            use 3-9 for backups where size matters more than time).
        encrypt: seal the section with the plugin's keyring (default key).
        validate: a domain check called with the decoded value on import; it
            returns nothing (or an empty list) when fine, or raises / returns
            a list of error strings.
        default: a factory for the value when ``__init__`` does not set one.
    """

    @overload
    def __init__(
        self: Section[T],
        type: type[T],
        *,
        version: int = 1,
        codec: str = "msgpack",
        compress: bool | str = False,
        level: int | None = None,
        encrypt: bool = False,
        validate: Callable[[Any], Iterable[str] | None] | None = None,
        default: Callable[[], T] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Section[Any],
        type: Any,
        *,
        version: int = 1,
        codec: str = "msgpack",
        compress: bool | str = False,
        level: int | None = None,
        encrypt: bool = False,
        validate: Callable[[Any], Iterable[str] | None] | None = None,
        default: Callable[[], Any] | None = None,
    ) -> None: ...
    def __init__(
        self,
        type: Any,
        *,
        version: int = 1,
        codec: str = "msgpack",
        compress: bool | str = False,
        level: int | None = None,
        encrypt: bool = False,
        validate: Callable[[Any], Iterable[str] | None] | None = None,
        default: Callable[[], Any] | None = None,
    ) -> None:
        if codec not in codecs.CODECS:
            raise InvalidArgument(f"unknown codec {codec!r}; expected one of {codecs.CODECS}")
        if not isinstance(version, int) or version < 0:
            raise InvalidArgument(f"section version must be a non-negative int, got {version!r}")
        if compress is True:
            compress = "zstd"
        if compress not in (False, "zstd", "lz4", "none"):
            raise InvalidArgument(f"compress must be a bool, 'zstd' or 'lz4', got {compress!r}")
        self.type = type
        self.version = version
        self.codec = codec
        self.compression: str | None = compress or None
        self.level = level
        self.encrypt = encrypt
        self.validator = validate
        self.default: Callable[[], T] | None = default
        self.name = ""
        self.steps: list[MigrationStep] = []

    def __repr__(self) -> str:
        return f"Section({self.name!r}, version={self.version}, codec={self.codec!r})"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Section[T]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> T: ...
    def __get__(self, instance: object | None, owner: type) -> Section[T] | T:
        if instance is None:
            return self
        if self.default is None:
            msg = f"section {self.name!r} has no value: set self.{self.name} in __init__ or give Section(default=...)"
            raise AttributeError(msg)
        value = self.default()
        instance.__dict__[self.name] = value
        return value

    def migration(self, from_version: int, to_version: int | None = None) -> Callable[[F], F]:
        """Register ``func(old_value) -> new_value`` migrating ``from_version`` to ``to_version``.

        ``to_version`` defaults to ``from_version + 1``. A step down from
        ``version`` (``from_version=3, to_version=2`` in a section at version 3)
        is a downgrade step: ``export_state(target_versions=...)`` runs it to
        write state an older release can read. The chain is checked when the
        class is created (gaps, duplicates, steps past ``version``).
        """

        def register(func: F) -> F:
            self.steps.append(make_step(func, from_version, to_version))
            return func

        return register


def _walk(value: Any, path: list[MigrationStep], where: str, kind: str) -> Any:
    """``value`` passed through each step of ``path``; a step that raises is named in a :class:`MigrationError`."""
    for step in path:
        try:
            value = step.func(value)
        except Exception as exc:
            msg = f"section {where!r}: {kind} {step.describe()} raised {type(exc).__name__}: {exc}"
            raise MigrationError(msg, section=where) from exc
    return value


@dataclass
class _Staged:
    name: str
    value: Any
    warnings: list[str]


class StatefulPlugin(StateTransferable):
    """Base class for declarative plugins: declare :class:`Section` s, get the trait for free.

    Plugin authors: change live state inside ``async with self.state_lock:``
    whenever the change spans an ``await``; export and import hold the same
    lock while they read or replace state, so they never see it half-done.
    Changes that do not await are atomic with respect to export too, except
    for sections of more than 262,144 items: those are encoded in slices with
    the event loop free in between, so change them under the lock as well.
    """

    sections: ClassVar[dict[str, Section[Any]]] = {}
    #: The plugin's state schema version; defaults to the highest section version.
    schema_version: ClassVar[int] = 0
    #: Decode every exported section again with its declared type, so that no snapshot is written that this
    #: code could not import (a value of the wrong type raises :class:`EncodingError` naming the field path).
    #: Costs about one typed decode per export; hot-reload exports skip it (the import that follows checks).
    #: ``backup()`` and periodic host checkpoints leave it to the store's put, which checks only the entries
    #: that changed when a dict section continues a chain (see docs/stores.md).
    verify_exports: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Section[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Section):
                    found[name] = value
        reserved = sorted(n for n in found if n in _RESERVED or n.startswith("_") or hasattr(StatefulPlugin, n))
        if reserved:
            msg = (f"{cls.__qualname__}: section names {reserved} collide with StatefulPlugin's own attributes "
                   "(or are private); rename them")  # fmt: skip
            raise InvalidArgument(msg)
        cls.sections = found
        if "schema_version" not in vars(cls) or not cls.schema_version:
            cls.schema_version = max((s.version for s in found.values()), default=1)
        meta = vars(cls).get("metadata")
        if meta is not None and not isinstance(meta, PluginMetadata):
            raise StateTransferError(f"{cls.__qualname__}.metadata must be a PluginMetadata, got {type(meta).__name__}")
        plugin_id = getattr(cls, "metadata", None)
        for sec in found.values():
            where = f"{cls.__qualname__}.{sec.name}"
            extra = registered_steps(plugin_id.id, sec.name) if isinstance(plugin_id, PluginMetadata) else []
            check_chain([*sec.steps, *extra], sec.version, where)

    def __init__(self, *, keyring: Keyring | None = None) -> None:
        if not isinstance(getattr(type(self), "metadata", None), PluginMetadata):
            raise StateTransferError(f"{type(self).__qualname__} must set metadata = PluginMetadata(...)")
        self.keyring = keyring
        self._state_lock: asyncio.Lock | None = None
        self._preserved: dict[str, tuple[StateSection, str]] = {}

    # -- the lock ---------------------------------------------------------------------------------
    @property
    def state_lock(self) -> asyncio.Lock:
        """The per-plugin lock that export and import hold while touching live state."""
        if self._state_lock is None:
            self._state_lock = asyncio.Lock()
        return self._state_lock

    @classmethod
    def create(cls, *, keyring: Keyring | None = None) -> Self:
        """``cls(keyring=keyring)``: how a host makes an instance."""
        return cls(keyring=keyring)

    def state_schema_version(self) -> int:
        return type(self).schema_version

    # -- migrations -------------------------------------------------------------------------------
    def _steps(self, sec: Section[Any]) -> list[MigrationStep]:
        steps = [*sec.steps, *registered_steps(self.metadata.id, sec.name)]
        check_chain(steps, sec.version, f"{type(self).__qualname__}.{sec.name}")
        return steps

    def _downgrades(self, target_versions: Mapping[str, int] | None) -> dict[str, list[MigrationStep]]:
        """Per section to export below its version: the downgrade steps, checked before anything is encoded."""
        paths: dict[str, list[MigrationStep]] = {}
        for name, version in (target_versions or {}).items():
            sec = self.sections.get(name)
            if sec is None:
                raise MigrationError(f"target_versions names section {name!r}, which {self.metadata.id!r} lacks")
            if not isinstance(version, int) or version < 0 or version > sec.version:
                msg = f"section {name!r}: cannot export at version {version!r}; this code writes version {sec.version}"
                raise MigrationError(msg)
            steps = self._steps(sec)
            path = find_path(steps, sec.version, version)
            if path is None:
                stuck = missing_step(steps, sec.version, version)
                msg = f"section {name!r}: no downgrade step from {stuck} to {version} in {type(self).__name__}"
                raise MigrationError(msg)
            if path:
                paths[name] = path
        return paths

    def _lower(
        self, name: str, parts: list[bytes | memoryview], path: list[MigrationStep], snapshot_id: str
    ) -> StateSection:
        """The section ``name`` brought down ``path`` from its encoded current value, packed at the older version."""
        sec = self.sections[name]
        value = codecs.decode_untyped(parts[0] if len(parts) == 1 else b"".join(parts), sec.codec, where=name)
        payload = codecs.encode(_walk(value, path, name, "downgrade"), sec.codec, where=name)
        return pack_section(
            name, path[-1].to_version, payload, snapshot_id=snapshot_id, plugin_id=self.metadata.id,
            compression=sec.compression, level=sec.level, keyring=self.keyring, encrypt=sec.encrypt,
            metadata={"codec": sec.codec},
        )  # fmt: skip

    def plan(self, snapshot: StateSnapshot) -> dict[str, SectionValidation]:
        """Per section of ``snapshot``: verdict and migration path. Reads nothing, changes nothing."""
        return {name: self._plan_section(stored) for name, stored in snapshot.sections.items()}

    def _plan_section(self, stored: StateSection) -> SectionValidation:
        sec = self.sections.get(stored.name)
        if sec is None:
            warning = f"section {stored.name!r} is unknown to {self.metadata.id!r}; kept unchanged for the next export"
            return SectionValidation(warnings=[warning], verdict="unknown")
        errors: list[str] = []
        enc = stored.encryption
        if enc is not None and (self.keyring is None or enc.key_id not in self.keyring):
            errors.append(f"section {stored.name!r} is encrypted with key {enc.key_id!r}, which the keyring lacks")
        if stored.schema_version == sec.version:
            return SectionValidation(
                is_valid=not errors, errors=errors, verdict="as_is" if not errors else "incompatible"
            )
        try:
            path = find_path(self._steps(sec), stored.schema_version, sec.version)
        except MigrationError as exc:
            path, errors = None, [*errors, str(exc)]
        if path is None:
            errors.append(
                f"section {stored.name!r}: no migration from schema version {stored.schema_version} to {sec.version}"
            )
            return SectionValidation(is_valid=False, errors=errors, verdict="incompatible")
        walked = [stored.schema_version, *(s.to_version for s in path)]
        return SectionValidation(is_valid=not errors, errors=errors, verdict="after_migration", migration_path=walked)

    # -- staging (decode + migrate + validate), pure of live state --------------------------------
    def _stage(self, snapshot_id: str, plugin_id: str, stored: StateSection) -> _Staged:
        payload = unpack_section(stored, snapshot_id=snapshot_id, plugin_id=plugin_id, keyring=self.keyring)
        codec = self.sections[stored.name].codec
        return self._stage_payload(stored.name, payload, codec, stored.schema_version, framing(stored).slices)

    def _stage_payload(
        self, name: str, payload: bytes | memoryview, codec: str, version: int, slices: str | None = None
    ) -> _Staged:
        """Decode ``payload`` (section ``name`` at schema ``version``, encoded with ``codec``), migrate, validate."""
        sec = self.sections[name]
        warnings: list[str] = []
        if version == sec.version:
            value = codecs.decode(payload, sec.type, codec, where=name, slices=slices)
        else:
            path = find_path(self._steps(sec), version, sec.version)
            if path is None:
                msg = f"section {name!r}: no migration from {version} to {sec.version}"
                raise MigrationError(msg, section=name)
            value = _walk(codecs.decode_untyped(payload, codec, where=name), path, name, "migration")
            value = codecs.convert(value, sec.type, where=name, codec=codec)
            walked = " -> ".join(str(v) for v in [version, *(s.to_version for s in path)])
            warnings.append(f"section {name!r} migrated {walked}")
        if sec.validator is not None:
            try:
                problems = list(sec.validator(value) or ())
            except StateTransferError:
                raise
            except Exception as exc:
                msg = f"section {name!r} failed validation: {type(exc).__name__}: {exc}"
                raise EncodingError(msg, path=name) from exc
            if problems:
                msg = f"section {name!r} failed validation: {'; '.join(map(str, problems))}"
                raise EncodingError(msg, path=name)
        return _Staged(name, value, warnings)

    async def _stage_async(self, snapshot: StateSnapshot, stored: StateSection) -> _Staged:
        if len(stored.data) >= _THREAD_ABOVE:
            return await asyncio.to_thread(self._stage, snapshot.id, snapshot.plugin_id, stored)
        return self._stage(snapshot.id, snapshot.plugin_id, stored)

    # -- the trait --------------------------------------------------------------------------------
    async def validate_state(
        self, snapshot: StateSnapshot, *, deep: bool = False, allow_downgrade: bool = False
    ) -> StateValidation:
        """Validate ``snapshot`` for this plugin (the rules in the README, "Snapshots, validation, scoring").

        Args:
            snapshot: the snapshot to check.
            deep: also decrypt, decompress, decode, migrate and run each
                section's ``validate`` hook (what import would do), so type
                errors show up here with their field path.
            allow_downgrade: accept a snapshot of a newer schema when every
                section can be brought down by downgrade steps.
        """
        plan = self.plan(snapshot)
        if deep:
            for name, sv in plan.items():
                if sv.is_valid and sv.verdict != "unknown":
                    try:
                        await self._stage_async(snapshot, snapshot.sections[name])
                    except StateTransferError as exc:
                        plan[name] = msgspec.structs.replace(sv, is_valid=False, errors=[*sv.errors, str(exc)])
        missing = [name for name in self.sections if name not in snapshot.sections]
        return validate_snapshot(
            snapshot, self.metadata, self.state_schema_version(), plan,
            missing_sections=missing, allow_newer_schema=allow_downgrade,
        )  # fmt: skip

    async def import_state(
        self, snapshot: StateSnapshot, *, partial: bool = False, allow_downgrade: bool = False
    ) -> StateImportResult:
        """Validate, stage every section, then replace live state.

        Atomic by default: live state changes only when every section staged;
        otherwise :class:`ImportFailed` and the state is exactly as before.
        With ``partial=True`` the sections that staged are applied and the
        others are listed in ``failed_sections``.

        Raises:
            ValidationFailed: the snapshot is invalid for this plugin.
            ImportFailed: (atomic mode) a section failed to decode, migrate or validate.
        """
        started = time.perf_counter()
        validation = await self.validate_state(snapshot, allow_downgrade=allow_downgrade)
        # with partial=True, sections that fail validation (a missing key, no migration path) are
        # reported in failed_sections and the others applied; snapshot-level errors still refuse
        if not validation.is_valid and not (partial and not validation.errors):
            reasons = validation.errors + [
                f"{n}: {e}" for n, sv in validation.section_validations.items() for e in sv.errors
            ]
            msg = f"snapshot {snapshot.id!r} is not valid for {self.metadata.id!r}: {'; '.join(reasons)}"
            raise ValidationFailed(msg, validation=validation, snapshot_id=snapshot.id)
        staged: list[_Staged] = []
        failed: list[FailedSection] = []
        warnings = list(validation.warnings)
        unknown: dict[str, tuple[StateSection, str]] = {}
        for name, stored in snapshot.sections.items():
            sv = validation.section_validations[name]
            warnings.extend(sv.warnings)
            if sv.verdict == "unknown":
                unknown[name] = (stored, snapshot.id)
                continue
            if not sv.is_valid:
                failed.append(FailedSection(name=name, error="; ".join(sv.errors) or f"section {name!r} is not valid"))
                continue
            try:
                staged.append(await self._stage_async(snapshot, stored))
            except StateTransferError as exc:
                failed.append(FailedSection(name=name, error=str(exc)))
        if failed and not partial:
            msg = f"import of {snapshot.id!r} failed, state unchanged: " + "; ".join(f.error for f in failed)
            raise ImportFailed(msg, failed_sections=failed, snapshot_id=snapshot.id)
        async with self.state_lock:
            for item in staged:
                setattr(self, item.name, item.value)
                warnings.extend(item.warnings)
            self._preserved = unknown
        imported = [item.name for item in staged]
        elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        return StateImportResult(
            imported_sections=imported, failed_sections=failed, warnings=warnings, duration=elapsed
        )

    def _deferred_check(self, name: str, slices: str | None) -> DeferredCheck:
        """The export's type check of section ``name``, for the store to run (see :func:`checks_deferred`)."""
        sec = self.sections[name]
        whole = functools.partial(codecs.check_decodable, tp=sec.type, codec=sec.codec, where=name, slices=slices)
        entrywise = sec.codec == "msgpack" and typing.get_origin(sec.type) in (dict, Mapping, MutableMapping)
        entries = functools.partial(codecs.check_decodable, tp=sec.type, codec=sec.codec, where=name)
        return DeferredCheck(whole, entries if entrywise else None, (sec.type, sec.codec))

    async def export_for(
        self, reason: StateCreationReason, *, tags: Iterable[str] = (), expires_at: int | None = None
    ) -> StateSnapshot:
        """:meth:`export_state` with ``reason``, ``tags`` and ``expires_at`` recorded in its metadata."""
        return await self.export_state(reason=reason, tags=tags, expires_at=expires_at)

    async def export_state(
        self,
        *,
        reason: StateCreationReason = StateCreationReason.EXPORT,
        tags: Iterable[str] = (),
        expires_at: int | None = None,
        created_by: str | None = None,
        custom: dict[str, Any] | None = None,
        target_versions: Mapping[str, int] | None = None,
    ) -> StateSnapshot:
        """A snapshot of the live state: a consistent view, taken while holding :attr:`state_lock`.

        ``target_versions`` (section name -> schema version) writes those
        sections at an older version, through the section's downgrade steps,
        so that an older release can import the snapshot (a rollback); the
        snapshot's schema version goes down with them. A missing step raises
        :class:`MigrationError` naming it, before anything is encoded.

        Values are encoded under the lock. Dicts and lists of more than
        ``codecs.SLICE_MIN_SLICES * codecs.SLICE_ITEMS`` (262,144) items are encoded in slices with the event
        loop free between them (a 100 MB section does not stall other tasks);
        the lock is held throughout, so changes made under ``state_lock`` are
        never seen half-done — make changes to large sections under the lock.
        Compression, encryption and hashing of large sections run afterwards
        in a worker thread.
        """
        lowering = self._downgrades(target_versions)
        snapshot_id = new_snapshot_id()
        seconds, ns = now()
        packers: dict[str, SectionPacker] = {}
        encoded: dict[str, list[bytes | memoryview]] = {}
        async with self.state_lock:
            for name, sec in self.sections.items():
                packer = SectionPacker(
                    name, sec.version, snapshot_id=snapshot_id, plugin_id=self.metadata.id,
                    compression=None if name in lowering else sec.compression, level=sec.level,
                    keyring=self.keyring, encrypt=sec.encrypt, metadata={"codec": sec.codec},
                )  # fmt: skip
                value = getattr(self, name)
                codecs.check_finite(value, sec.codec, where=name)
                pieces = codecs.iter_pieces(value, sec.codec, where=name)
                kept = encoded[name] = []
                try:
                    while True:
                        try:
                            piece = next(pieces)
                            kept.append(piece)
                            packer.add(piece)
                        except StopIteration as done:
                            if done.value:
                                packer.metadata["slices"] = done.value
                            break
                        await asyncio.sleep(0)  # other tasks run while frames compress in worker threads
                except codecs.Resized:  # changed without the lock between slices: encode it whole, in one step
                    packer.reset()
                    kept[:] = [codecs.encode(value, sec.codec, where=name)]
                    packer.add(kept[0])
                packers[name] = packer
            preserved = dict(self._preserved)
        lowered = {name: encoded[name] for name in lowering}
        if reason is StateCreationReason.HOT_RELOAD or not self.verify_exports:
            encoded.clear()  # a hot reload imports at once: that import is the check
        elif checks_deferred():  # a backup: the store checks before writing, only what changed when it can
            for name in [n for n in encoded if n not in lowering]:
                packers[name].deferred_check = self._deferred_check(name, packers[name].metadata.get("slices"))
                del encoded[name]
        for name, parts in encoded.items():  # what this code could not import is never exported
            sec = self.sections[name]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            slices = None  # the pieces join to one valid encoding: one decode is cheapest
            if len(data) >= _THREAD_ABOVE:
                # decoded slice by slice in the worker: msgspec holds the GIL for a whole decode, and the
                # event loop gets it back only between slices
                slices = packers[name].metadata.get("slices")
                await asyncio.to_thread(codecs.check_decodable, data, sec.type, sec.codec, where=name, slices=slices)
            else:
                codecs.check_decodable(data, sec.type, sec.codec, where=name, slices=slices)
        del encoded
        sections: dict[str, StateSection] = {}
        for name, packer in packers.items():
            if name in lowering:
                big = packer.size >= _THREAD_ABOVE
                args = (name, lowered.pop(name), lowering[name], snapshot_id)
                sections[name] = await asyncio.to_thread(self._lower, *args) if big else self._lower(*args)
            elif packer.size >= _THREAD_ABOVE:
                sections[name] = await asyncio.to_thread(packer.finish)
            else:
                sections[name] = packer.finish()
        for name, (stored, origin) in preserved.items():
            if name not in sections:
                sections[name] = reseal_section(
                    stored, from_snapshot=origin, to_snapshot=snapshot_id,
                    plugin_id=self.metadata.id, keyring=self.keyring,
                )  # fmt: skip
        metadata = StateMetadata(
            reason=reason, created_by=created_by or f"{self.metadata.id}@{self.metadata.version}",
            tags=list(tags), expires_at=expires_at, custom=dict(custom or {}),
        )  # fmt: skip
        schema = self.state_schema_version()
        if lowering:  # the older release's schema: no newer than the newest section written
            schema = min(schema, max(s.schema_version for n, s in sections.items() if n in self.sections))
        snapshot = StateSnapshot(snapshot_id, self.metadata.id, self.metadata.version, schema,
                                 seconds, sections, metadata, "", ns)  # fmt: skip
        digests = None
        if sum(len(s.data) for s in sections.values()) >= _THREAD_ABOVE:
            digests = await asyncio.to_thread(lambda: {n: section_digest(s.data) for n, s in sections.items()})
        return msgspec.structs.replace(snapshot, checksum=calculate_checksum(snapshot, digests=digests))


async def transfer_state(
    source: StateTransferable, target: StateTransferable, *, min_score: float = 0.5, partial: bool = False
) -> StateImportResult:
    """Export ``source``'s state and import it into ``target``.

    Raises:
        ValidationFailed: the snapshot is invalid for ``target`` or scores below ``min_score``.
    """
    snapshot = await source.export_state()
    validation = await target.validate_state(snapshot)
    if not validation.is_valid or validation.compatibility_score < min_score:
        reasons = "; ".join(validation.errors) or "sections invalid"
        msg = (
            f"cannot transfer {snapshot.plugin_id!r} to {target.metadata.id!r}: "
            f"score {validation.compatibility_score:.2f} (minimum {min_score:.2f}), "
            f"valid={validation.is_valid}: {reasons}"
        )
        raise ValidationFailed(msg, validation=validation)
    if partial:
        return await target.import_state(snapshot, partial=True)  # type: ignore[call-arg]
    return await target.import_state(snapshot)
