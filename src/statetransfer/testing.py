"""Checks to reuse in your own test suite.

- :func:`check_plugin` / :func:`acheck_plugin`: one call that exercises a
  plugin's round trip, every migration path you give a sample for, partial
  and atomic import, unknown-section preservation and, given the previous
  release's class, state going both ways between the two releases.
- :class:`StoreContract`: the shared test suite every snapshot store backend
  passes. Backend authors subclass it in their pytest suite and implement
  :meth:`~StoreContract.make_store` (needs pytest-asyncio in auto mode).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from . import _codecs as codecs
from ._backup import backup, restore
from ._checksum import seal, sign
from ._container import dumps, loads
from ._crypto import Keyring
from ._migrations import find_path, missing_step
from ._model import PluginMetadata, StateCreationReason, StateMetadata, StateSection, StateSnapshot
from ._sections import framing, pack_section, unpack_section
from ._stateful import Section, StatefulPlugin
from .errors import (
    ChecksumMismatch,
    EncodingError,
    ImportFailed,
    MigrationError,
    SnapshotNotFound,
    StateTransferError,
    StoreError,
    StoreWarning,
)
from .stores.base import BLOBS, SnapshotStore, VerifyReport, blob_key
from .stores.memory import MemoryStore

__all__ = ["PluginCheckReport", "StoreContract", "acheck_plugin", "check_plugin", "make_snapshot"]

DAY = 86_400


def make_snapshot(
    snapshot_id: str,
    plugin_id: str = "plugin",
    *,
    sections: dict[str, bytes] | None = None,
    timestamp: int | None = None,
    created_ns: int | None = None,
    tags: list[str] | None = None,
    expires_at: int | None = None,
    reason: StateCreationReason = StateCreationReason.BACKUP,
) -> StateSnapshot:
    """A valid snapshot with the given raw section payloads (zstd-compressed when it helps)."""
    ts = int(time.time()) if timestamp is None else timestamp
    secs = {
        name: pack_section(name, 1, data, snapshot_id=snapshot_id, plugin_id=plugin_id)
        for name, data in (sections if sections is not None else {"main": b"state " * 100}).items()
    }
    snap = StateSnapshot(
        snapshot_id, plugin_id, "1.0.0", 1, ts, secs,
        StateMetadata(reason=reason, tags=list(tags or []), expires_at=expires_at),
        "", ts * 1_000_000_000 if created_ns is None else created_ns,
    )  # fmt: skip
    return seal(snap)


def _incremental_snapshot(snapshot_id: str, entries: dict[str, Any], blob: bytes) -> StateSnapshot:
    """A snapshot with a compressed msgpack map section and a raw bytes section, as plugins export them."""
    payload = codecs.encode(entries)
    secs = {
        "entries": pack_section("entries", 1, payload, snapshot_id=snapshot_id, plugin_id="inc",
                                metadata={"codec": "msgpack"}),
        "blob": pack_section("blob", 1, blob, snapshot_id=snapshot_id, plugin_id="inc", compression=None,
                             metadata={"codec": "raw"}),
    }  # fmt: skip
    ts = int(time.time())
    return seal(StateSnapshot(snapshot_id, "inc", "1.0.0", 1, ts, secs, StateMetadata(), "", time.time_ns()))


class _Backed(StatefulPlugin):
    """The plugin the store contract backs up: a map, an encrypted map and bytes."""

    metadata = PluginMetadata(id="contract-backups", version="1.0.0")
    entries = Section(dict[str, list[Any]], default=dict)
    secrets = Section(dict[str, str], encrypt=True, default=dict)
    blob = Section(bytes, codec="raw", default=bytes)


@dataclass
class PluginCheckReport:
    """What :func:`check_plugin` exercised."""

    plugin_id: str
    sections: list[str]
    migration_paths: list[tuple[str, list[int]]] = field(default_factory=list)
    unexercised_paths: list[tuple[str, int]] = field(default_factory=list)
    #: The previous release's class, when state was exchanged with it both ways (``previous=``).
    previous: str | None = None
    #: Sections the rollback wrote at the previous release's version: ``(section, [from, ..., to])``.
    downgrade_paths: list[tuple[str, list[int]]] = field(default_factory=list)


def _values(snapshot: StateSnapshot, keyring: Any) -> dict[str, Any]:
    """Decoded (untyped) value of every section, for equality checks."""
    out = {}
    for name, sec in snapshot.sections.items():
        payload = unpack_section(sec, snapshot_id=snapshot.id, plugin_id=snapshot.plugin_id, keyring=keyring)
        out[name] = codecs.decode_untyped(payload, framing(sec).codec, where=name)
    return out


def _with_section(snapshot: StateSnapshot, section: StateSection) -> StateSnapshot:
    snap = msgspec.structs.replace(snapshot, sections={**snapshot.sections, section.name: section})
    return seal(snap)


async def acheck_plugin(
    plugin_cls: type[StatefulPlugin],
    *,
    make: Callable[[], StatefulPlugin] | None = None,
    keyring: Any = None,
    old_values: Mapping[tuple[str, int], Any] | None = None,
    require_all_paths: bool = False,
    previous: type[StatefulPlugin] | None = None,
    make_previous: Callable[[], StatefulPlugin] | None = None,
) -> PluginCheckReport:
    """Exercise a declarative plugin the way a host will; raise ``AssertionError`` on any misbehaviour.

    Args:
        plugin_cls: the :class:`StatefulPlugin` subclass under test.
        make: returns a populated instance (default: ``plugin_cls(keyring=keyring)``).
        keyring: the keyring fresh instances get (for encrypted sections); by
            default the keyring of the instance ``make`` returned, or a
            throwaway one.
        old_values: sample values of older section schemas, keyed by
            ``(section, schema_version)``; each one is imported through its
            migration path.
        require_all_paths: fail if a migration source version has no sample.
        previous: the previous release's class. Its state must go both ways:
            upgrade (its export imported by ``plugin_cls`` with nothing
            failing), then rollback (that state exported with
            ``target_versions`` at ``previous``'s section versions, through
            ``plugin_cls``'s downgrade steps, and imported by ``previous``,
            equal to what it had). A missing step is named in the error.
        make_previous: returns a populated ``previous`` instance (default:
            ``previous(keyring=keyring)``).
    """
    if make_previous is not None and previous is None:
        raise TypeError("make_previous= needs previous= (the previous release's class)")

    def fresh() -> StatefulPlugin:
        return plugin_cls(keyring=keyring)

    older = make_previous() if make_previous is not None else None
    source = make() if make is not None else None
    if keyring is None:
        given = [p.keyring for p in (source, older) if p is not None and p.keyring is not None]
        keyring = given[0] if given else Keyring.generate("check-plugin")
    if source is None:
        source = fresh()
    snapshot = loads(dumps(await source.export_state()))
    report = PluginCheckReport(source.metadata.id, sorted(snapshot.sections))

    # 1. round trip through bytes
    target = fresh()
    result = await target.import_state(snapshot)
    assert not result.failed_sections, f"round trip: sections failed to import: {result.failed_sections}"
    again = await target.export_state()
    assert _values(again, keyring) == _values(snapshot, keyring), "round trip: re-exported state differs"

    # 2. every migration path we have a sample for
    for name, sec in plugin_cls.sections.items():
        steps = target._steps(sec)
        for version in sorted({s.from_version for s in steps} - {sec.version}):  # downgrades from it: step 5
            path = find_path(steps, version, sec.version)
            if path is None:
                continue
            if old_values is None or (name, version) not in old_values:
                report.unexercised_paths.append((name, version))
                continue
            payload = codecs.encode(old_values[name, version], sec.codec, where=name)
            old = pack_section(name, version, payload, snapshot_id=snapshot.id, plugin_id=snapshot.plugin_id,
                               keyring=keyring, encrypt=sec.encrypt, metadata={"codec": sec.codec})  # fmt: skip
            migrated = fresh()
            try:
                res = await migrated.import_state(_with_section(snapshot, old))
            except StateTransferError as exc:
                raise AssertionError(f"migration {name} v{version} -> v{sec.version} failed: {exc}") from exc
            assert name in res.imported_sections, f"migration {name} v{version}: not imported: {res.failed_sections}"
            report.migration_paths.append((name, [version, *(s.to_version for s in path)]))
    if require_all_paths:
        assert not report.unexercised_paths, f"migration sources without a sample: {report.unexercised_paths}"

    # 3. atomic and partial import with one damaged section
    victim = next((n for n, s in plugin_cls.sections.items() if s.codec != "raw" and n in snapshot.sections), None)
    if victim is not None:
        garbage = StateSection(victim, plugin_cls.sections[victim].version, b"\xc1", False, None, {})
        damaged = _with_section(snapshot, garbage)
        target = fresh()
        before = _values(await target.export_state(), keyring)
        try:
            await target.import_state(damaged)
        except ImportFailed:
            pass
        else:
            raise AssertionError(f"atomic import of a damaged {victim!r} section did not raise ImportFailed")
        after = _values(await target.export_state(), keyring)
        assert after == before, "a failed atomic import changed the plugin's state"
        res = await target.import_state(damaged, partial=True)
        assert [f.name for f in res.failed_sections] == [victim], f"partial import: {res.failed_sections}"
        assert sorted(res.imported_sections) == sorted(set(snapshot.sections) - {victim})

    # 4. an unknown section survives the next export unchanged
    unknown = StateSection("__check_plugin_unknown__", 1, b"opaque bytes", False, None, {"k": "v"})
    target = fresh()
    await target.import_state(_with_section(snapshot, unknown))
    carried = (await target.export_state()).sections.get(unknown.name)
    assert carried == unknown, "an unknown section was not carried unchanged into the next export"

    # 5. state goes both ways between this release and the previous one
    if previous is not None:
        older = older or previous(keyring=keyring)
        await _check_release_pair(
            plugin_cls, previous=previous, older=older, fresh=fresh, keyring=keyring, report=report
        )
    return report


async def _check_release_pair(
    plugin_cls: type[StatefulPlugin],
    *,
    previous: type[StatefulPlugin],
    older: StatefulPlugin,
    fresh: Callable[[], StatefulPlugin],
    keyring: Any,
    report: PluginCheckReport,
) -> None:
    """Upgrade ``older``'s state into ``plugin_cls``, roll it back into ``previous``: nothing may be lost."""
    new, old = plugin_cls.__name__, previous.__name__
    report.previous = old
    before = loads(dumps(await older.export_state()))
    upgraded = fresh()
    for name, stored in before.sections.items():  # name a missing upgrade step the way export names a downgrade
        sec = plugin_cls.sections.get(name)
        if sec is None or stored.schema_version >= sec.version:
            continue
        steps = upgraded._steps(sec)
        if find_path(steps, stored.schema_version, sec.version) is None:
            stuck = missing_step(steps, stored.schema_version, sec.version)
            raise AssertionError(f"upgrade from {old}: section {name!r}: no upgrade step from {stuck} to {sec.version} "
                                 f"in {new}")  # fmt: skip
    try:
        result = await upgraded.import_state(before)
    except StateTransferError as exc:
        raise AssertionError(f"upgrade from {old} to {new} failed: {exc}") from exc
    assert not result.failed_sections, f"upgrade from {old} to {new}: sections failed: {result.failed_sections}"

    targets = {
        name: sec.version
        for name, sec in previous.sections.items()
        if name in plugin_cls.sections and sec.version < plugin_cls.sections[name].version
    }
    try:
        back = loads(dumps(await upgraded.export_state(target_versions=targets)))
    except MigrationError as exc:
        raise AssertionError(f"rollback from {new} to {old}: {exc}") from exc
    for name, version in sorted(targets.items()):
        path = find_path(upgraded._steps(plugin_cls.sections[name]), plugin_cls.sections[name].version, version)
        report.downgrade_paths.append((name, [plugin_cls.sections[name].version, *(s.to_version for s in path or ())]))
    restored = previous(keyring=keyring)
    try:
        result = await restored.import_state(back)
    except StateTransferError as exc:
        raise AssertionError(f"rollback from {new} to {old}: {old} cannot import the state: {exc}") from exc
    assert not result.failed_sections, f"rollback from {new} to {old}: sections failed: {result.failed_sections}"
    had, got = _values(before, keyring), _values(await restored.export_state(), keyring)
    for name, value in had.items():
        assert got.get(name) == value, (
            f"upgrade to {new} and rollback to {old} changed section {name!r}: {value!r} came back as {got.get(name)!r}"
        )


def check_plugin(plugin_cls: type[StatefulPlugin], **options: Any) -> PluginCheckReport:
    """Synchronous :func:`acheck_plugin` (for plain test functions; use the async one inside a running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop: run one below, outside this handler, so a failed check is not chained to this error
    else:
        raise RuntimeError("check_plugin() was called inside a running event loop: use 'await acheck_plugin(...)'")
    return asyncio.run(acheck_plugin(plugin_cls, **options))


class StoreContract:
    """The behaviour every :class:`SnapshotStore` backend must show."""

    async def make_store(self, tmp_path: Any) -> SnapshotStore:
        """A fresh, empty store of the backend under test."""
        raise NotImplementedError

    async def corrupt_blob(self, store: SnapshotStore, digest: str) -> None:
        """Damage the stored bytes of blob ``digest`` (one byte flipped, same length) behind the store's back."""
        key = blob_key(digest)
        data = bytearray(await store.read_object(key))
        data[len(data) // 2] ^= 0xFF
        await store.write_object(key, bytes(data))

    async def blob_count(self, store: SnapshotStore) -> int:
        return sum(1 for o in await store.list_objects("blobs/") if o.regular)

    @pytest.fixture
    async def store(self, tmp_path: Any) -> AsyncIterator[SnapshotStore]:
        store = await self.make_store(tmp_path)
        try:
            yield store
        finally:
            await store.close()

    async def test_put_get_round_trip(self, store: SnapshotStore) -> None:
        """A snapshot put into the store comes back equal."""
        snap = make_snapshot("s1", sections={"a": b"x" * 1000, "b": b"", "c": bytes(range(256))})
        info = await store.put(snap)
        assert info.id == "s1" and info.plugin_id == "plugin" and info.reason == StateCreationReason.BACKUP
        assert info.size >= sum(len(s.data) for s in snap.sections.values())
        assert await store.get("s1") == snap

    async def test_get_verifies_signature(self, store: SnapshotStore) -> None:
        """get(verify_key=...) returns signed snapshots and refuses unsigned or wrongly signed ones."""
        key = b"k" * 32
        await store.put(sign(make_snapshot("signed"), key))
        await store.put(make_snapshot("unsigned"))
        assert (await store.get("signed", verify_key=key)).signature
        with pytest.raises(ChecksumMismatch, match="not signed"):
            await store.get("unsigned", verify_key=key)
        with pytest.raises(ChecksumMismatch, match="bad signature"):
            await store.get("signed", verify_key=b"o" * 32)

    async def test_get_missing(self, store: SnapshotStore) -> None:
        """get of an absent id raises SnapshotNotFound, which is also a KeyError."""
        with pytest.raises(SnapshotNotFound):
            await store.get("absent")
        with pytest.raises(KeyError):
            await store.get("absent")

    async def test_no_overwrite(self, store: SnapshotStore) -> None:
        """A second put with the same id is refused and the first stays intact."""
        first = make_snapshot("same", sections={"a": b"first"})
        await store.put(first)
        with pytest.raises(StoreError, match="already exists"):
            await store.put(make_snapshot("same", sections={"a": b"second"}))
        assert await store.get("same") == first

    async def test_refuses_wrong_checksum(self, store: SnapshotStore) -> None:
        """A snapshot whose checksum is stale is refused."""
        snap = make_snapshot("s1")
        stale = msgspec.structs.replace(snap, sections={"x": StateSection("x", 1, b"y")})
        with pytest.raises(ChecksumMismatch):
            await store.put(stale)

    @pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "x\x00y", "", "..", ".hidden", "a" * 300])
    async def test_unsafe_ids_rejected(self, store: SnapshotStore, bad: str) -> None:
        """Ids that could escape the store (traversal, absolute, NUL) are rejected with StoreError."""
        with pytest.raises(StoreError, match="unsafe"):
            await store.put(make_snapshot(bad))
        with pytest.raises(StoreError, match="unsafe"):
            await store.put(make_snapshot("ok-id", plugin_id=bad))
        with pytest.raises(StoreError, match="unsafe"):
            await store.get(bad)

    async def test_list_newest_first_and_filters(self, store: SnapshotStore) -> None:
        """list is newest first (even within one second), filtered by plugin and tags."""
        base = 1_700_000_000
        await store.put(make_snapshot("a", "p1", timestamp=base, created_ns=base * 10**9 + 5, tags=["x"]))
        await store.put(make_snapshot("b", "p1", timestamp=base, created_ns=base * 10**9 + 9, tags=["x", "y"]))
        await store.put(make_snapshot("c", "p2", timestamp=base - 10))
        assert [i.id for i in await store.list()] == ["b", "a", "c"]
        assert [i.id for i in await store.list(plugin_id="p1")] == ["b", "a"]
        assert [i.id for i in await store.list(tags=["y"])] == ["b"]
        assert [i.id for i in await store.list(plugin_id="p2", tags=["x"])] == []

    async def test_delete(self, store: SnapshotStore) -> None:
        """delete removes a snapshot; deleting it again raises SnapshotNotFound."""
        await store.put(make_snapshot("d"))
        await store.delete("d")
        assert await store.list() == []
        with pytest.raises(SnapshotNotFound):
            await store.delete("d")

    async def test_dedup_and_safe_delete(self, store: SnapshotStore) -> None:
        """Identical sections are stored once; deleting one snapshot keeps blobs another uses."""
        big = bytes(range(256)) * 400
        await store.put(make_snapshot("one", sections={"cache": big, "meta": b"v1"}))
        await store.put(make_snapshot("two", sections={"cache": big, "meta": b"v2"}))
        assert await self.blob_count(store) == 3
        await store.delete("one")
        assert (await store.get("two")).sections["cache"].data == make_snapshot(
            "two", sections={"cache": big}
        ).sections["cache"].data
        assert await self.blob_count(store) == 2
        report = await store.verify()
        assert report.ok and report.unreferenced_blobs == 0

    async def test_prune_keep_last_and_expired(self, store: SnapshotStore) -> None:
        """keep_last keeps the N newest per plugin; expired snapshots always go; dry_run changes nothing."""
        now = int(time.time())
        for i in range(5):
            await store.put(make_snapshot(f"p1-{i}", "p1", timestamp=now - 100 + i))
            await store.put(make_snapshot(f"p2-{i}", "p2", timestamp=now - 100 + i))
        await store.put(make_snapshot("p1-expired", "p1", timestamp=now, expires_at=now - 1))
        dry = await store.prune(keep_last=2, dry_run=True)
        assert dry.dry_run and len(await store.list()) == 11
        report = await store.prune(keep_last=2)
        assert sorted(report.removed) == sorted(["p1-0", "p1-1", "p1-2", "p2-0", "p2-1", "p2-2", "p1-expired"])
        assert sorted(report.removed) == sorted(dry.removed)
        assert sorted(i.id for i in await store.list()) == ["p1-3", "p1-4", "p2-3", "p2-4"]
        assert (await store.verify()).ok

    async def test_prune_only_expired_without_rules(self, store: SnapshotStore) -> None:
        """prune with no keep rule removes only expired snapshots."""
        now = int(time.time())
        await store.put(make_snapshot("live", expires_at=now + 3600))
        await store.put(make_snapshot("forever"))
        await store.put(make_snapshot("gone", expires_at=now - 5))
        report = await store.prune()
        assert report.removed == ["gone"]
        assert sorted(i.id for i in await store.list()) == ["forever", "live"]

    async def test_prune_daily_weekly(self, store: SnapshotStore) -> None:
        """keep_daily keeps the newest of each recent day; keep_weekly of each recent ISO week."""
        monday = 1_700_438_400  # 2023-11-20 00:00 UTC, a Monday
        for day in range(21):
            for hour in (1, 13):
                ts = monday + day * DAY + hour * 3600
                await store.put(make_snapshot(f"d{day:02d}h{hour:02d}", timestamp=ts))
        report = await store.prune(keep_daily=3, keep_weekly=2, dry_run=True)
        assert sorted(report.kept) == ["d13h13", "d18h13", "d19h13", "d20h13"]

    async def test_verify_reports_damage(self, store: SnapshotStore) -> None:
        """A damaged blob: get raises ChecksumMismatch, verify names the snapshot, others stay readable."""
        good = make_snapshot("good", sections={"a": b"fine" * 100})
        bad = make_snapshot("bad", sections={"a": b"doomed" * 100})
        await store.put(good)
        await store.put(bad)
        assert (await store.verify()).ok
        digest = (await store.section_digests("bad"))["a"]
        await self.corrupt_blob(store, digest)
        with pytest.raises(ChecksumMismatch):
            await store.get("bad")
        assert await store.get("good") == good
        report = await store.verify(read_data=True)
        assert not report.ok and report.checked == 2
        assert len(report.problems) == 1 and "'bad'" in report.problems[0]

    async def test_verify_missing_blob(self, store: SnapshotStore) -> None:
        """A missing blob is reported by verify even without reading data."""
        await store.put(make_snapshot("m"))
        (digest,) = (await store.section_digests("m")).values()
        await store.delete_object(blob_key(digest))
        report = await store.verify(read_data=False)
        assert not report.ok and "missing" in report.problems[0]
        with pytest.raises(ChecksumMismatch, match="missing"):
            await store.get("m")

    async def test_concurrent_puts(self, store: SnapshotStore) -> None:
        """Many puts at once lose nothing."""
        snaps = [make_snapshot(f"c{i}", sections={"s": f"payload {i}".encode() * 50}) for i in range(20)]
        await asyncio.gather(*(store.put(s) for s in snaps))
        assert sorted(i.id for i in await store.list()) == sorted(s.id for s in snaps)
        for snap in snaps:
            assert await store.get(snap.id) == snap

    async def test_incremental_chains(self, store: SnapshotStore) -> None:
        """Sections kept as chains of deltas read back exactly; prune keeps what kept snapshots need."""
        store.incremental_min_bytes = 1
        entries = {f"k{i:05d}": [i, f"value {i}" * 3] for i in range(3000)}
        blob = bytes(range(256)) * 400
        stored: dict[str, bytes] = {}
        for step in range(4):
            entries[f"k{step * 7:05d}"] = [step]
            blob = blob[: 9000 * step] + b"changed" + blob[9000 * step :]
            snap = _incremental_snapshot(f"inc-{step}", entries, blob)
            await store.put(snap)
            stored[snap.id] = dumps(snap)
        for snapshot_id, data in stored.items():
            assert dumps(await store.get(snapshot_id)) == data
        report = await store.prune(keep_last=1)
        assert sorted(report.removed) == ["inc-0", "inc-1", "inc-2"]
        assert (await store.verify()).ok
        assert dumps(await store.get("inc-3")) == stored["inc-3"]
        await store.delete("inc-3")
        assert await self.blob_count(store) == 0

    async def test_incremental_backups(self, store: SnapshotStore) -> None:
        """backup() hands the store what its export encoded: chains grow, every backup restores exactly, a value
        of the wrong type is refused before anything is written, and verify rebuilds every chain."""
        store.incremental_min_bytes = 1
        store.keyring = keyring = Keyring.generate()
        plugin = _Backed(keyring=keyring)
        plugin.entries = {f"k{i:05d}": [i, f"value {i}" * 3] for i in range(3000)}
        plugin.secrets = {f"s{i:05d}": f"secret {i}" for i in range(2000)}
        plugin.blob = bytes(range(256)) * 400
        backed_up: dict[str, tuple[Any, ...]] = {}
        sizes = []
        for step in range(4):
            before = sum(o.size for o in await store.list_objects(BLOBS))
            info = await backup(plugin, store)
            sizes.append(sum(o.size for o in await store.list_objects(BLOBS)) - before)
            backed_up[info.id] = (dict(plugin.entries), dict(plugin.secrets), plugin.blob)
            plugin.entries[f"k{step * 7:05d}"] = [step]
            plugin.secrets[f"s{step * 11:05d}"] = f"changed {step}"
            plugin.blob = plugin.blob[: 9000 * step] + b"changed" + plugin.blob[9000 * step :]
        assert max(sizes[1:]) < sizes[0] / 4  # deltas, not whole sections
        plugin.secrets["bad"] = 5  # type: ignore[assignment]
        with pytest.raises(EncodingError, match=r'secrets\["bad"\]: expected str, got int'):
            await backup(plugin, store)
        assert len(await store.list()) == len(backed_up)
        report = await store.verify(read_data=True)
        assert report.ok and report.chains_rebuilt >= 6, report
        for snapshot_id, values in backed_up.items():
            fresh = _Backed(keyring=keyring)
            await restore(fresh, store, snapshot_id)
            assert (fresh.entries, fresh.secrets, fresh.blob) == values

    async def test_put_rewrites_damaged_blob(self, store: SnapshotStore) -> None:
        """A put whose section matches a damaged stored blob rewrites it: the acknowledged snapshot is readable."""
        payload = {"a": b"shared section" * 200}
        first = make_snapshot("first", sections=payload)
        await store.put(first)
        await self.corrupt_blob(store, (await store.section_digests("first"))["a"])
        second = make_snapshot("second", sections=payload)
        await store.put(second)
        assert await store.get("second") == second
        assert await store.get("first") == first  # healed for both

    async def test_gc_never_deletes_a_blob_of_an_acknowledged_put(self, store: SnapshotStore) -> None:
        """Puts racing deletes of scratch snapshots in one process: every acknowledged snapshot stays whole."""
        shared = {"common": b"c" * 3000}
        acknowledged: list[StateSnapshot] = []

        async def keeper() -> None:
            for i in range(12):
                snap = make_snapshot(f"keep-{i}", sections={**shared, "own": f"k{i}".encode() * 50})
                await store.put(snap)
                acknowledged.append(snap)

        async def scratcher() -> None:
            for i in range(12):
                await store.put(make_snapshot(f"scratch-{i}", sections={**shared, "own": f"s{i}".encode() * 50}))
                await store.delete(f"scratch-{i}")

        await asyncio.gather(keeper(), scratcher())
        for snap in acknowledged:
            assert await store.get(snap.id) == snap
        assert (await store.verify()).ok

    async def test_verify_never_alarms_during_prune(self, store: SnapshotStore) -> None:
        """verify running while snapshots are pruned reports no damage in a healthy store."""
        for i in range(15):
            await store.put(make_snapshot(f"v{i}", timestamp=1_700_000_000 + i, sections={"s": f"{i}".encode() * 99}))
        pruning = asyncio.ensure_future(store.prune(keep_last=1))
        reports: list[VerifyReport] = await asyncio.gather(*(store.verify() for _ in range(3)))
        await pruning
        for report in reports:
            assert report.ok, report.problems

    async def test_unreadable_manifest_reported(self, store: SnapshotStore) -> None:
        """A damaged manifest is named by list (with a StoreWarning) and by prune, which then frees no blob."""
        await store.put(make_snapshot("fine", timestamp=1_700_000_000))
        await store.put(make_snapshot("old", timestamp=1_600_000_000, sections={"x": b"old" * 100}))
        await store.write_object("manifests/broken", b"not a manifest")
        with pytest.warns(StoreWarning, match="broken"):
            listing = await store.list()
        assert [i.id for i in listing] == ["fine", "old"]
        assert [u.snapshot_id for u in listing.unreadable] == ["broken"]
        with pytest.warns(StoreWarning, match="broken"):
            report = await store.prune(keep_last=1)
        assert report.removed == ["old"] and [u.snapshot_id for u in report.unreadable] == ["broken"]
        assert report.blobs_removed == 0

    async def test_retention_groups_by_reason(self, store: SnapshotStore) -> None:
        """Checkpoints never push out backups: keep_last applies per plugin and reason by default."""
        for i in range(3):
            await store.put(make_snapshot(f"backup-{i}", timestamp=1_700_000_000 + i))
        for i in range(12):
            snap = make_snapshot(f"ckpt-{i}", timestamp=1_700_001_000 + i, reason=StateCreationReason.HOT_RELOAD)
            await store.put(snap)
        report = await store.prune(keep_last=2)
        assert sorted(report.kept) == ["backup-1", "backup-2", "ckpt-10", "ckpt-11"]
        everything = await store.prune(keep_last=2, group_by=("plugin_id",), dry_run=True)
        assert sorted(everything.kept) == ["ckpt-10", "ckpt-11"]

    async def test_verify_repair_from_replica(self, store: SnapshotStore) -> None:
        """verify(repair=True, source=replica) rewrites a damaged blob from an intact copy."""
        snap = make_snapshot("r", sections={"a": b"precious" * 100})
        replica = MemoryStore()
        await store.put(snap)
        await replica.put(snap)
        await self.corrupt_blob(store, (await store.section_digests("r"))["a"])
        report = await store.verify(repair=True, source=replica)
        assert report.repaired and not report.problems
        assert await store.get("r") == snap
        assert (await store.verify()).ok
