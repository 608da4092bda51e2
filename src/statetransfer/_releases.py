"""Releases and the state already in a store: a compatibility gate for deploys, and migrating stored snapshots.

- :func:`check_compat`: would the new code import what the store holds? The
  snapshots of a plugin are grouped by (plugin version, schema versions);
  the newest of each group is judged from its manifest alone (no section
  data is read) with the code's :meth:`~statetransfer.StatefulPlugin.plan`.
- :func:`migrate_store`: rewrite the snapshots below the code's section
  versions into new snapshots (reason ``MIGRATION``), and count which schema
  versions remain, so that migration steps nothing needs can be deleted.

The command line runs them as ``statetransfer check-compat`` and
``statetransfer migrate``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import msgspec

from ._checksum import calculate_checksum
from ._container import SnapshotHeader
from ._crypto import keyring_of
from ._model import SectionValidation, StateCreationReason, StateMetadata, StateSection, StateSnapshot
from ._plugin import StateTransferable
from ._stateful import StatefulPlugin
from .errors import StateTransferError
from .stores.base import SnapshotStore, UnreadableEntry

__all__ = [
    "CompatGroup",
    "CompatReport",
    "MigratedSnapshot",
    "MigrationReport",
    "SectionVerdict",
    "check_compat",
    "migrate_store",
]

#: The key in a migrated snapshot's ``metadata.custom`` naming the snapshot it was made from.
MIGRATED_FROM = "migrated_from"


class SectionVerdict(msgspec.Struct):
    """How the code would import one section of a group's newest snapshot.

    ``verdict`` is ``"as_is"``, ``"after_migration"``, ``"incompatible"``,
    ``"unknown"`` (a section the code does not declare: carried along
    unchanged) or ``"missing"`` (a section the code declares and the snapshot
    lacks: it keeps its current value).
    """

    schema_version: int | None
    verdict: str
    migration_path: list[int] = msgspec.field(default_factory=list)
    errors: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.verdict != "incompatible"


class CompatGroup(msgspec.Struct):
    """Snapshots sharing a plugin version and schema versions, judged by the newest of them."""

    plugin_version: str
    schema_version: int
    section_versions: dict[str, int]
    count: int
    newest: str
    newest_timestamp: int
    ok: bool
    sections: dict[str, SectionVerdict]
    errors: list[str] = msgspec.field(default_factory=list)


class CompatReport(msgspec.Struct):
    """The result of :func:`check_compat`: ``ok`` when every group would import."""

    plugin_id: str
    plugin_version: str
    #: The code's state schema version, and the version it writes of each section (empty for hand-written plugins).
    schema_version: int
    section_versions: dict[str, int]
    snapshots: int
    ok: bool
    groups: list[CompatGroup]
    unreadable: list[UnreadableEntry] = msgspec.field(default_factory=list)


class MigratedSnapshot(msgspec.Struct):
    """One stored snapshot below the code's versions, and what :func:`migrate_store` did with it.

    ``outcome`` is ``"migrated"``, ``"would migrate"`` (dry run),
    ``"already migrated"`` (an earlier run stored its replacement),
    ``"expired"`` (skipped) or ``"failed"`` (``error`` says why).
    """

    original: str
    section_versions: dict[str, int]
    outcome: str = "migrated"
    #: The new snapshot's id (``None`` in a dry run, or when the migration failed or was skipped).
    replacement: str | None = None
    error: str | None = None
    #: The original was deleted (or, in a dry run, would be).
    deleted: bool = False


class MigrationReport(msgspec.Struct):
    """The result of :func:`migrate_store`, with the census of schema versions left in the store."""

    plugin_id: str
    dry_run: bool
    delete_originals: bool
    #: The code's state schema version, and the version it writes of each section (empty for hand-written plugins).
    schema_version: int
    section_versions: dict[str, int]
    snapshots: list[MigratedSnapshot]
    #: Section -> schema version -> how many of the plugin's snapshots hold it (after the run, or as it would be).
    census: dict[str, dict[int, int]]
    unreadable: list[UnreadableEntry] = msgspec.field(default_factory=list)

    @property
    def failed(self) -> list[MigratedSnapshot]:
        """The snapshots that could not be migrated."""
        return [s for s in self.snapshots if s.outcome == "failed"]

    def older_versions(self) -> dict[str, list[int]]:
        """Per section, the schema versions below the code's that snapshots still hold (steps still needed)."""
        out: dict[str, list[int]] = {}
        for name, versions in self.census.items():
            current = self.section_versions.get(name)
            older = sorted(v for v in versions if current is not None and v < current)
            if older:
                out[name] = older
        return out


# -- reading headers --------------------------------------------------------------------------------
async def _headers(store: SnapshotStore, plugin_id: str) -> tuple[list[SnapshotHeader], list[UnreadableEntry]]:
    """The manifests of ``plugin_id``'s snapshots (no section data), and the unreadable entries that may be its."""
    found = await store._read_manifests()
    headers = [h for _, h, _ in found.headers if h.plugin_id == plugin_id]
    unreadable = [u for u in found.unreadable if u.plugin_id in (None, plugin_id)]
    return headers, unreadable


def _order(header: SnapshotHeader) -> tuple[int, str]:
    return (header.created_ns or header.timestamp * 1_000_000_000, header.id)


def _skeleton(header: SnapshotHeader) -> StateSnapshot:
    """A snapshot with the header's sections and no section bytes: enough for ``plan``, which reads no data."""
    sections = {
        sh.name: StateSection(sh.name, sh.schema_version, b"", sh.compressed, sh.encryption, sh.metadata)
        for sh in header.sections
    }
    return StateSnapshot(
        header.id, header.plugin_id, header.plugin_version, header.schema_version, header.timestamp,
        sections, header.metadata, header.checksum, header.created_ns, header.signature,
    )  # fmt: skip


def _versions(header: SnapshotHeader) -> dict[str, int]:
    return {sh.name: sh.schema_version for sh in sorted(header.sections, key=lambda s: s.name)}


def _declared(plugin: StateTransferable) -> dict[str, int] | None:
    """Section name -> version the code writes, for declarative plugins (None for hand-written ones)."""
    if isinstance(plugin, StatefulPlugin):
        return {name: sec.version for name, sec in plugin.sections.items()}
    return None


def _verdicts(
    plugin: StateTransferable, validations: Mapping[str, SectionValidation], header: SnapshotHeader
) -> dict[str, SectionVerdict]:
    stored = _versions(header)
    out = {
        name: SectionVerdict(stored.get(name), sv.verdict, list(sv.migration_path), list(sv.errors))
        for name, sv in sorted(validations.items())
    }
    for name in sorted(_declared(plugin) or {}):
        if name not in out:
            out[name] = SectionVerdict(None, "missing")
    return out


async def _judge(plugin: StateTransferable, header: SnapshotHeader, store: SnapshotStore) -> CompatGroup:
    """Judge one snapshot: from its header with ``plan``, or by reading it for plugins without one."""
    errors: list[str] = []
    if isinstance(plugin, StatefulPlugin):
        validations = plugin.plan(_skeleton(header))
        ours = plugin.state_schema_version()
        if header.schema_version > ours:
            errors.append(f"snapshot schema version {header.schema_version} is newer than the plugin's {ours}")
    else:
        try:
            validation = await plugin.validate_state(await store.get(header.id, keyring=keyring_of(plugin)))
        except StateTransferError as exc:
            errors.append(f"cannot read snapshot {header.id!r}: {exc}")
            validations = {}
        else:
            validations = validation.section_validations
            errors.extend(validation.errors)
    sections = _verdicts(plugin, validations, header)
    ok = not errors and all(v.ok for v in sections.values())
    return CompatGroup(header.plugin_version, header.schema_version, _versions(header), 0, header.id,
                       header.timestamp, ok, sections, errors)  # fmt: skip


async def check_compat(store: SnapshotStore, plugin: StateTransferable) -> CompatReport:
    """Would ``plugin``'s code import the snapshots of its id that ``store`` holds?

    Snapshots are grouped by (plugin version, snapshot schema version,
    section schema versions); the newest of each group is judged. For a
    :class:`StatefulPlugin` that takes its manifest only (``plan`` reads no
    section data); a hand-written plugin's ``validate_state`` gets the
    whole snapshot. Encrypted sections need the key in the plugin's keyring.

    Returns:
        The groups, newest first; ``ok`` is false when any would fail to import.
    """
    headers, unreadable = await _headers(store, plugin.metadata.id)
    groups: dict[tuple[str, int, tuple[tuple[str, int], ...]], list[SnapshotHeader]] = {}
    for header in headers:
        key = (header.plugin_version, header.schema_version, tuple(_versions(header).items()))
        groups.setdefault(key, []).append(header)
    judged = []
    for members in groups.values():
        group = await _judge(plugin, max(members, key=_order), store)
        group.count = len(members)
        judged.append(group)
    judged.sort(key=lambda g: (g.newest_timestamp, g.newest), reverse=True)
    declared = _declared(plugin) or {}
    return CompatReport(plugin.metadata.id, plugin.metadata.version, plugin.state_schema_version(), declared,
                        len(headers), all(g.ok for g in judged), judged, unreadable)  # fmt: skip


# -- migrating ----------------------------------------------------------------------------------------
def _below(plugin: StateTransferable, header: SnapshotHeader) -> bool:
    """Whether a snapshot holds a section (or, for hand-written plugins, a schema) older than the code writes."""
    declared = _declared(plugin)
    if declared is None:
        return header.schema_version < plugin.state_schema_version()
    return any(sh.name in declared and sh.schema_version < declared[sh.name] for sh in header.sections)


def _census(snapshots: Iterable[Mapping[str, int]]) -> dict[str, dict[int, int]]:
    counts: dict[str, Counter[int]] = {}
    for versions in snapshots:
        for name, version in versions.items():
            counts.setdefault(name, Counter())[version] += 1
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


async def _rewrite(plugin: StateTransferable, snapshot: StateSnapshot) -> StateSnapshot:
    """Import ``snapshot`` (migrating it) and export it again as a ``MIGRATION`` snapshot of the same moment.

    The new snapshot keeps the original's tags, expiry and time (one
    nanosecond later), so it never looks newer than snapshots made after
    the original; ``metadata.custom["migrated_from"]`` names the original.
    """
    await plugin.import_state(snapshot)
    fresh = await plugin.export_state()
    meta = snapshot.metadata
    metadata = StateMetadata(
        reason=StateCreationReason.MIGRATION,
        created_by=f"{plugin.metadata.id}@{plugin.metadata.version} (migrate)",
        tags=list(meta.tags), expires_at=meta.expires_at,
        custom={**meta.custom, MIGRATED_FROM: snapshot.id, "migrated_at": int(time.time())},
    )  # fmt: skip
    created = (snapshot.created_ns or snapshot.timestamp * 1_000_000_000) + 1
    rewritten = msgspec.structs.replace(fresh, timestamp=snapshot.timestamp, created_ns=created, metadata=metadata)
    return msgspec.structs.replace(rewritten, checksum=calculate_checksum(rewritten))


async def migrate_store(
    store: SnapshotStore,
    make: Callable[[], StateTransferable],
    *,
    dry_run: bool = False,
    delete_originals: bool = False,
) -> MigrationReport:
    """Rewrite the snapshots below the code's section versions into new ones, and count what remains.

    Each snapshot of the plugin's id holding a section older than the code
    writes is imported into a fresh instance (``make()``), which migrates
    it, and exported again as a new snapshot with reason ``MIGRATION``
    (the original's tags, expiry and time are kept; ``custom["migrated_from"]``
    names the original). Originals that already have such a replacement are
    not migrated twice; expired ones are skipped. A snapshot that fails to
    migrate is reported and the others go on.

    Args:
        store: the store to rewrite.
        make: returns a fresh instance of the new code (with its keyring, for encrypted sections).
        dry_run: judge each candidate with ``plan`` from its manifest and write nothing.
        delete_originals: delete each original once its replacement is stored
            (also originals migrated by an earlier run). By default originals
            are kept: the census then still counts their versions.

    Returns:
        What happened to each candidate, and the census of the schema
        versions the plugin's snapshots hold afterwards (in a dry run: would hold).
    """
    probe = make()
    plugin_id = probe.metadata.id
    declared = _declared(probe) or {}
    headers, unreadable = await _headers(store, plugin_id)
    replaced = {str(h.metadata.custom[MIGRATED_FROM]): h.id for h in headers if MIGRATED_FROM in h.metadata.custom}
    now = time.time()
    results: list[MigratedSnapshot] = []
    after = {h.id: _versions(h) for h in headers}  # what the census counts (updated as a dry run goes)
    for header in sorted(headers, key=_order):
        if not _below(probe, header):
            continue
        entry = MigratedSnapshot(header.id, _versions(header))
        results.append(entry)
        if header.id in replaced:
            entry.outcome, entry.replacement = "already migrated", replaced[header.id]
        elif header.metadata.expires_at is not None and header.metadata.expires_at < now:
            entry.outcome = "expired"
            continue
        elif dry_run:
            problems = _problems(probe, header)
            if problems:
                entry.outcome, entry.error = "failed", "; ".join(problems)
                continue
            entry.outcome = "would migrate"
            after[header.id + " (migrated)"] = {**entry.section_versions, **declared}
        else:
            try:
                plugin = make()  # its keyring opens (and keeps incremental) encrypted sections kept incrementally
                rewritten = await _rewrite(plugin, await store.get(header.id, keyring=keyring_of(plugin)))
                await store.put(rewritten, keyring=keyring_of(plugin))
            except StateTransferError as exc:
                entry.outcome, entry.error = "failed", str(exc)
                continue
            entry.replacement = rewritten.id
        if delete_originals:
            if not dry_run:
                await store.delete(header.id)
            entry.deleted = True
            del after[header.id]
    if not dry_run and results:
        after = {h.id: _versions(h) for h in (await _headers(store, plugin_id))[0]}
    return MigrationReport(plugin_id, dry_run, delete_originals, probe.state_schema_version(), declared, results,
                           _census(after.values()), unreadable)  # fmt: skip


def _problems(plugin: StateTransferable, header: SnapshotHeader) -> list[str]:
    """What would stop a migration of ``header``, from its manifest (hand-written plugins: nothing known)."""
    if not isinstance(plugin, StatefulPlugin):
        return []
    return [e for sv in plugin.plan(_skeleton(header)).values() for e in sv.errors]
