"""Incremental sections in stores: exact round trips over change sequences, chains, prune, verify, encryption."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import statetransfer as st
from statetransfer.stores.base import SnapshotStore

from .conftest import damage

KEYRING = st.Keyring.generate()
_names = itertools.count()


class Cache(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="cache", version="1.0.0")
    entries = st.Section(dict[str, list[Any]], compress="zstd", default=dict)
    blob = st.Section(bytes, codec="raw", default=bytes)
    items = st.Section(list[int], default=list)


class Sealed(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="sealed", version="1.0.0")
    entries = st.Section(dict[str, list[Any]], compress="zstd", encrypt=True, default=dict)
    blob = st.Section(bytes, codec="raw", encrypt=True, default=bytes)


def small_chains(store: SnapshotStore, deltas: int = 3) -> SnapshotStore:
    """Every section kept incrementally, and short chains, so few backups cover bases and rewrites."""
    store.incremental_min_bytes = 1
    store.chain_max_deltas = deltas
    return store


def memory_store(deltas: int = 3) -> SnapshotStore:
    return small_chains(st.open_store(f"memory://incremental-{next(_names)}"), deltas)


async def stored_bytes(store: SnapshotStore) -> int:
    return sum(o.size for o in await store.list_objects("blobs/"))


def entry(rnd: random.Random, i: int) -> list[Any]:
    return [i, rnd.randbytes(24).hex(), rnd.random()]


def fill(plugin: Any, rnd: random.Random, count: int = 2000, blob: int = 200_000) -> None:
    plugin.entries = {f"k{i:06d}": entry(rnd, i) for i in range(count)}
    plugin.blob = rnd.randbytes(blob)
    if hasattr(plugin, "items"):
        plugin.items = list(range(count))


# -- round trips over random change sequences ---------------------------------------------------------
changes = hs.lists(
    hs.tuples(
        hs.sampled_from(
            ["set", "add", "delete", "move", "replace", "overwrite", "insert", "cut", "grow", "shrink", "items", "none"]
        ),
        hs.integers(0, 2**31),
    ),
    min_size=1,
    max_size=9,
)


def apply_change(plugin: Cache, kind: str, seed: int) -> None:
    rnd = random.Random(seed)
    keys = list(plugin.entries)
    blob = bytearray(plugin.blob)
    if kind == "set" and keys:
        for k in rnd.sample(keys, max(1, len(keys) // 100)):
            plugin.entries[k] = entry(rnd, seed)
    elif kind == "add":
        plugin.entries[f"new{seed}"] = entry(rnd, seed)
    elif kind == "delete" and keys:
        for k in rnd.sample(keys, min(len(keys), rnd.randint(1, 5))):
            del plugin.entries[k]
    elif kind == "move" and keys:  # an LRU touching a few entries: they move to the end
        for k in rnd.sample(keys, min(len(keys), 3)):
            plugin.entries[k] = plugin.entries.pop(k)
    elif kind == "replace":  # a new dict, in another order
        rnd.shuffle(keys)
        plugin.entries = {k: plugin.entries[k] for k in keys[: len(keys) - rnd.randint(0, 10)]}
    elif kind == "overwrite" and blob:
        start = rnd.randrange(len(blob))
        blob[start : start + 5000] = rnd.randbytes(5000)[: len(blob) - start]
    elif kind == "insert":
        at = rnd.randrange(len(blob) + 1)
        blob[at:at] = rnd.randbytes(rnd.randint(1, 3000))
    elif kind == "cut" and blob:
        at = rnd.randrange(len(blob))
        del blob[at : at + rnd.randint(1, 3000)]
    elif kind == "grow":  # more new bytes than the section had
        blob += rnd.randbytes(len(blob) + 20_000)
    elif kind == "shrink":
        del blob[rnd.randrange(len(blob) + 1) :]
    elif kind == "items":
        plugin.items[rnd.randrange(len(plugin.items) or 1) :] = [seed]
    plugin.blob = bytes(blob)


class Recording(Cache):
    """Remembers the snapshot each backup exported (to compare what a store gives back against it)."""

    exported: st.StateSnapshot | None = None

    async def export_for(self, reason: st.StateCreationReason, **options: Any) -> st.StateSnapshot:
        self.exported = await super().export_for(reason, **options)
        return self.exported


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=changes, prune_at=hs.integers(0, 9), keep=hs.integers(1, 3), via_backup=hs.booleans())
def test_every_kept_snapshot_restores_exactly(changes, prune_at, keep, via_backup):
    """Random change sequences, with a prune on the way: each kept snapshot gives back exactly what was backed up.

    Snapshots reach the store through ``backup()`` (the store is handed the
    plaintext the export had) or as a snapshot given to ``put()`` (the store
    opens it, and checks it can rebuild its bytes).
    """

    async def run() -> None:
        store = memory_store()
        plugin = Recording()
        fill(plugin, random.Random(0), count=300, blob=60_000)
        backed_up: dict[str, bytes] = {}
        values: dict[str, tuple[Any, ...]] = {}
        for step, (kind, seed) in enumerate([("none", 0), *changes]):
            apply_change(plugin, kind, seed)
            if via_backup:
                await st.backup(plugin, store)
                assert plugin.exported is not None
                snapshot = plugin.exported
            else:
                snapshot = await plugin.export_state(reason=st.StateCreationReason.BACKUP)
                await store.put(snapshot)
            backed_up[snapshot.id] = st.dumps(snapshot)
            values[snapshot.id] = (dict(plugin.entries), plugin.blob, list(plugin.items))
            if step == prune_at:
                for removed in (await store.prune(keep_last=keep)).removed:
                    del backed_up[removed]
        assert (await store.verify()).ok
        for snapshot_id, data in backed_up.items():
            assert st.dumps(await store.get(snapshot_id)) == data
            fresh = Cache()
            await st.restore(fresh, store, snapshot_id)
            assert (fresh.entries, fresh.blob, fresh.items) == values[snapshot_id]
            assert list(fresh.entries) == list(values[snapshot_id][0])  # the order too

    asyncio.run(run())


async def test_backups_rebuild_sections_made_of_many_pieces_at_any_level(tmp_path, monkeypatch):
    """Frames compressed from many encoded pieces, at a section's own level: backups chain, and a fresh store
    object (nothing remembered) gives back every snapshot byte for byte."""
    from statetransfer import _codecs, _sections

    monkeypatch.setattr(_codecs, "SLICE_ITEMS", 64)  # maps encoded in many slices ...
    monkeypatch.setattr(_sections, "FRAME_MIN", 16 << 10)  # ... grouped into many frames

    class Tuned(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="tuned", version="1.0.0")
        entries = st.Section(dict[str, list[Any]], compress="zstd", level=9, default=dict)
        sealed = st.Section(dict[str, list[Any]], compress="zstd", level=3, encrypt=True, default=dict)

    class Recorded(Tuned):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.exported: list[st.StateSnapshot] = []

        async def export_for(self, reason: st.StateCreationReason, **options: Any) -> st.StateSnapshot:
            self.exported.append(await super().export_for(reason, **options))
            return self.exported[-1]

    rnd = random.Random(5)
    url = f"file://{tmp_path}/store"
    store = small_chains(st.open_store(url), deltas=8)
    plugin = Recorded(keyring=KEYRING)
    plugin.entries = {f"k{i:05d}": entry(rnd, i) for i in range(3000)}
    plugin.sealed = {f"s{i:05d}": entry(rnd, i) for i in range(3000)}
    sizes, values = [], []
    for step in range(4):
        before = await stored_bytes(store)
        await st.backup(plugin, store)
        sizes.append(await stored_bytes(store) - before)
        values.append((dict(plugin.entries), dict(plugin.sealed)))
        for section in (plugin.entries, plugin.sealed):
            for k in rnd.sample(sorted(section), 30):
                section[k] = entry(rnd, step)
    frames = _sections.framing(plugin.exported[0].sections["entries"]).frames
    assert frames is not None and len(frames) > 3  # several frames, each of several pieces
    assert max(sizes[1:]) < sizes[0] / 10  # the later backups are deltas
    reader = st.open_store(url)
    for snapshot in plugin.exported:
        assert st.dumps(await reader.get(snapshot.id, keyring=KEYRING)) == st.dumps(snapshot)
    for snapshot, value in zip(plugin.exported, values, strict=True):
        fresh = Tuned(keyring=KEYRING)
        await st.restore(fresh, st.open_store(url), snapshot.id)
        assert (fresh.entries, fresh.sealed) == value


# -- what is stored ------------------------------------------------------------------------------------
async def test_a_small_change_stores_little(tmp_path):
    """1% of the entries changed, and one 5 KB region of a 2 MB bytes section: the store grows by a few percent.

    The region costs about two content-defined chunks (64 KiB on average) beside it.
    """
    store = small_chains(st.open_store(f"file://{tmp_path}/s"))
    rnd = random.Random(1)
    plugin = Cache()
    fill(plugin, rnd, count=20_000, blob=2_000_000)
    await st.backup(plugin, store)
    full = await stored_bytes(store)
    apply_change(plugin, "set", 5)
    apply_change(plugin, "overwrite", 6)
    info = await st.backup(plugin, store)
    assert await stored_bytes(store) - full < full * 0.08
    fresh = Cache()
    await st.restore(fresh, st.open_store(f"file://{tmp_path}/s"), info.id)  # another store object: no memory
    assert fresh.entries == plugin.entries and fresh.blob == plugin.blob


async def test_another_store_object_continues_the_chain(tmp_path):
    """A process that did not write the chain (nothing remembered) still stores only the change."""
    url = f"file://{tmp_path}/s"
    rnd = random.Random(2)
    plugin = Cache()
    fill(plugin, rnd, count=20_000)
    await st.backup(plugin, small_chains(st.open_store(url)))
    before = await stored_bytes(st.open_store(url))
    apply_change(plugin, "set", 1)
    info = await st.backup(plugin, small_chains(st.open_store(url)))
    assert await stored_bytes(st.open_store(url)) - before < before * 0.03
    fresh = Cache()
    await st.restore(fresh, st.open_store(url), info.id)
    assert fresh.entries == plugin.entries


async def test_chains_are_bounded():
    """After the maximum number of deltas, or a change larger than the allowed fraction, a backup is full again."""
    store = memory_store(deltas=2)
    rnd = random.Random(3)
    plugin = Cache()
    fill(plugin, rnd, count=5000, blob=1000)
    grown = []
    for step in range(4):
        before = await stored_bytes(store)
        await st.backup(plugin, store)
        grown.append(await stored_bytes(store) - before)
        apply_change(plugin, "set", step)
    full = grown[0]
    assert grown[1] < full * 0.1 and grown[2] < full * 0.1  # two deltas
    assert grown[3] > full * 0.5  # the third would pass chain_max_deltas: a new base
    store.chain_max_deltas = 8
    plugin.entries = {k: entry(rnd, 0) for k in plugin.entries}  # everything changed
    before = await stored_bytes(store)
    info = await st.backup(plugin, store)
    assert await stored_bytes(store) - before > full * 0.5
    fresh = Cache()
    await st.restore(fresh, store, info.id)
    assert fresh.entries == plugin.entries


async def test_prune_keeps_the_bases_kept_snapshots_need():
    store = memory_store(deltas=5)
    rnd = random.Random(4)
    plugin = Cache()
    fill(plugin, rnd, count=3000)
    ids, values = [], []
    for step in range(4):
        ids.append((await st.backup(plugin, store)).id)
        values.append(dict(plugin.entries))
        apply_change(plugin, "set", step)
    report = await store.prune(keep_last=1)
    assert set(report.removed) == set(ids[:3])
    assert report.blobs_removed == 0  # the base and the deltas all belong to the kept snapshot's chain
    assert (await store.verify()).ok
    fresh = Cache()
    await st.restore(fresh, store, ids[3])
    assert fresh.entries == values[3]
    await store.delete(ids[3])
    assert await store.list_objects("blobs/") == []


async def test_verify_and_get_detect_a_damaged_delta():
    store = memory_store()
    rnd = random.Random(5)
    plugin = Cache()
    fill(plugin, rnd, count=3000)
    first = (await st.backup(plugin, store)).id
    before = {o.key for o in await store.list_objects("blobs/")}
    apply_change(plugin, "set", 1)
    second = (await st.backup(plugin, store)).id
    new = [o for o in await store.list_objects("blobs/") if o.key not in before]
    delta_key = max(new, key=lambda o: o.size).key  # the delta of the map (the others hold no change)
    data = bytearray(await store.read_object(delta_key))
    data[len(data) // 2] ^= 0xFF
    await store.write_object(delta_key, bytes(data))
    report = await store.verify()
    assert not report.ok
    assert any(second in p and "damaged" in p for p in report.problems)
    assert not any(first in p for p in report.problems)
    with pytest.raises(st.ChecksumMismatch):
        await store.get(second)
    await store.get(first)  # the snapshot before the delta is intact


async def test_verify_rebuilds_every_chain_it_can_open():
    """verify(read_data=True) rebuilds each incremental section as a get would; sealed ones need the store's key."""
    store = memory_store()
    rnd = random.Random(8)
    plain, sealed = Cache(), Sealed(keyring=KEYRING)
    fill(plain, rnd, count=3000)
    fill(sealed, rnd, count=3000)
    for step in range(3):
        await st.backup(plain, store)
        await st.backup(sealed, store)
        apply_change(plain, "set", step)
        sealed.entries = {k: entry(rnd, step) if i % 50 == 0 else v for i, (k, v) in enumerate(sealed.entries.items())}
    report = await store.verify(read_data=True)
    assert report.ok, report.problems
    assert report.chains_skipped > 0  # the sealed plugin's deltas: the store has no key
    without_key = report.chains_rebuilt
    assert without_key > 0
    store.keyring = KEYRING
    report = await store.verify(read_data=True)
    assert report.ok and report.chains_skipped == 0 and report.chains_rebuilt > without_key
    assert (await store.verify(read_data=False)).chains_rebuilt == 0  # lengths only: nothing opened


async def test_a_compressor_that_no_longer_reproduces_its_output_is_reported(monkeypatch):
    """A chain rebuilt by a compressor whose output changed (e.g. after a library upgrade): verify names the
    sections, a get refuses them, and the snapshots before (the base) still read back."""
    from statetransfer.stores import _chain

    store = memory_store()
    plugin = Cache()
    fill(plugin, random.Random(10), count=3000)
    first = (await st.backup(plugin, store)).id
    apply_change(plugin, "set", 1)
    second = (await st.backup(plugin, store)).id
    real = _chain.compress
    monkeypatch.setattr(_chain, "compress", lambda data, algorithm, level=None: real(data, algorithm, level=5))
    report = await store.verify(read_data=True)
    assert not report.ok
    assert all(second in p and "rebuilds to other bytes" in p for p in report.problems)
    assert {p.split("section ")[1].split()[0] for p in report.problems} == {"'entries'"}  # the one that changed
    with pytest.raises(st.ChecksumMismatch):
        await store.get(second)
    await store.get(first)
    monkeypatch.setattr(_chain, "compress", real)
    assert (await store.verify(read_data=True)).ok


class Hits(msgspec.Struct):
    hits: int


class Counted(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="counted", version="1.0.0")
    items = st.Section(dict[str, Hits], default=dict)


async def test_a_backup_continuing_a_chain_refuses_a_changed_entry_of_the_wrong_type(tmp_path):
    """The store checks a backup's changed entries against the declared type before writing anything."""
    url = f"file://{tmp_path}/store"
    store = small_chains(st.open_store(url), deltas=8)
    plugin = Counted()
    plugin.items = {f"k{i:04d}": Hits(i) for i in range(3000)}
    await st.backup(plugin, store)
    plugin.items["k0017"] = Hits(1)
    await st.backup(plugin, store)
    stored = {o.key for o in await store.list_objects("")}
    plugin.items["k0042"] = Hits("many")  # type: ignore[arg-type]
    with pytest.raises(st.EncodingError, match=r'items\["k0042"\]\.hits: expected int, got str'):
        await st.backup(plugin, store)
    assert {o.key for o in await store.list_objects("")} == stored  # nothing written
    plugin.items["k0042"] = Hits(42)
    plugin.items["new"] = Hits(7)
    info = await st.backup(plugin, store)
    fresh = Counted()
    await st.restore(fresh, st.open_store(url), info.id)
    assert fresh.items == plugin.items


async def test_a_backup_under_a_changed_type_checks_every_entry(tmp_path):
    """New code declaring another type (a hot reload): entries the old code's backups checked are checked again."""

    class Label(msgspec.Struct):
        hits: str

    class Relabelled(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="counted", version="2.0.0")
        items = st.Section(dict[str, Label], default=dict)

    store = small_chains(st.open_store(f"file://{tmp_path}/store"), deltas=8)
    old = Counted()
    old.items = {f"k{i:04d}": Hits(i) for i in range(3000)}
    await st.backup(old, store)
    new = Relabelled()
    new.items = dict(old.items)  # type: ignore[arg-type]  # state carried over unconverted
    new.items["k0005"] = Label("five")
    with pytest.raises(st.EncodingError, match=r'items\["k0000"\]\.hits: expected str, got int'):
        await st.backup(new, store)


# -- encryption ----------------------------------------------------------------------------------------
async def test_encrypted_sections_are_incremental_and_reveal_nothing():
    store = memory_store()
    rnd = random.Random(6)
    plugin = Sealed(keyring=KEYRING)
    fill(plugin, rnd, count=5000, blob=2_000_000)
    plugin.entries["needle"] = ["plaintext-needle-0123456789"]
    await st.backup(plugin, store)
    full = await stored_bytes(store)
    plugin.entries["needle"] = ["plaintext-needle-9876543210"]
    apply_change(plugin, "overwrite", 2)
    info = await st.backup(plugin, store)
    assert await stored_bytes(store) - full < full * 0.08
    for obj in await store.list_objects(""):
        data = await store.read_object(obj.key)
        assert b"plaintext-needle" not in data and b"k000001" not in data
    with pytest.raises(st.MissingKey):
        await store.get(info.id)  # a rebuilt section must be sealed again: the key is needed
    fresh = Sealed(keyring=KEYRING)
    await st.restore(fresh, store, info.id)
    assert fresh.entries == plugin.entries and fresh.blob == plugin.blob


async def test_encrypted_sections_without_the_key_are_kept_whole():
    store = memory_store()
    plugin = Sealed(keyring=KEYRING)
    fill(plugin, random.Random(7), count=2000)
    snapshot = await plugin.export_state()
    await store.put(snapshot)  # no keyring given to the store
    assert st.dumps(await store.get(snapshot.id)) == st.dumps(snapshot)


async def test_sections_compressed_otherwise_still_round_trip():
    """A section the store cannot rebuild exactly (another compression level) is kept whole, never wrong."""

    class Tuned(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="tuned", version="1.0.0")
        entries = st.Section(dict[str, list[Any]], compress="zstd", level=9, default=dict)

    store = memory_store()
    plugin = Tuned()
    plugin.entries = {f"k{i}": [i, "x" * (i % 50)] for i in range(3000)}
    ids = []
    for step in range(3):
        snapshot = await plugin.export_state()
        await store.put(snapshot)
        ids.append((snapshot.id, st.dumps(snapshot)))
        plugin.entries[f"k{step}"] = [step]
    for snapshot_id, data in ids:
        assert st.dumps(await store.get(snapshot_id)) == data


async def test_file_dumps_are_unchanged_and_self_contained(tmp_path):
    store = small_chains(st.open_store(f"file://{tmp_path}/s"))
    plugin = Cache()
    fill(plugin, random.Random(8), count=3000)
    await st.backup(plugin, store)
    apply_change(plugin, "set", 3)
    snapshot = await plugin.export_state()
    await store.put(snapshot)
    data = st.dumps(await store.get(snapshot.id))
    assert data == st.dumps(snapshot)
    fresh = Cache()
    await fresh.import_state(st.loads(data))
    assert fresh.entries == plugin.entries


# -- hostile chains ------------------------------------------------------------------------------------
def _forge(objects: dict[str, bytes], section: str, index: int, data: bytes) -> dict[str, bytes]:
    """``objects`` with chain object ``index`` of ``section`` replaced by ``data``, digests made to match."""
    import msgspec

    from statetransfer._checksum import section_digest
    from statetransfer.stores._chain import ChainObject
    from statetransfer.stores._manifest import manifest_bytes, parse_chained

    header, chains = parse_chained(objects["manifests/fuzz-seed"], "fuzz-seed")
    ref = chains[section]
    digest = section_digest(data)
    chain = list(ref.objects)
    chain[index] = ChainObject(digest, len(data))
    chains[section] = msgspec.structs.replace(ref, objects=chain)
    out = dict(objects)
    out[f"blobs/{digest.hex()[:2]}/{digest.hex()}"] = data
    out["manifests/fuzz-seed"] = manifest_bytes(header, chains)
    return out


def _seed_store() -> dict[str, bytes]:
    from fuzz.targets import seed_stores

    return seed_stores()["chains"]


SEED_STORE = _seed_store()


def test_seed_store_reads_back():
    from fuzz.targets import check_stored

    assert check_stored(SEED_STORE).id == "fuzz-seed"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=hs.sampled_from(["cache", "secrets", "blob"]), data=hs.data())
def test_hostile_deltas_are_refused(section, data):
    """A delta object damaged and given a matching digest is refused (StateTransferError), never restored wrong."""
    from fuzz.targets import check_stored

    from statetransfer.stores._manifest import parse_chained

    _, chains = parse_chained(SEED_STORE["manifests/fuzz-seed"], "fuzz-seed")
    index = data.draw(hs.integers(0, len(chains[section].objects) - 1))
    digest = chains[section].objects[index].digest.hex()
    raw = damage(data, SEED_STORE[f"blobs/{digest[:2]}/{digest}"], most=3)
    forged = _forge(SEED_STORE, section, index, raw)
    try:
        snapshot = check_stored(forged)
    except st.StateTransferError:
        return
    assert st.dumps(snapshot) == st.dumps(check_stored(SEED_STORE))  # accepted only if it rebuilt exactly


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hs.data())
def test_hostile_chain_references(data):
    """A manifest's chains with a field set to a hostile value (digest recomputed) are refused or rebuild exactly."""
    import hashlib
    import struct

    import msgspec
    from fuzz.mutate import HOSTILE_VALUES, spots
    from fuzz.targets import check_stored

    raw = SEED_STORE["manifests/fuzz-seed"]
    body = raw[38:]
    (length,) = struct.unpack_from(">I", body)
    chains = msgspec.msgpack.decode(body[4 + length :])
    parent, key = data.draw(hs.sampled_from(spots(chains)))
    parent[key] = data.draw(hs.sampled_from(HOSTILE_VALUES))
    body = body[: 4 + length] + msgspec.msgpack.encode(chains)
    forged = dict(SEED_STORE, **{"manifests/fuzz-seed": raw[:6] + hashlib.sha256(body).digest() + body})
    try:
        snapshot = check_stored(forged)
    except st.StateTransferError:
        return
    assert st.dumps(snapshot) == st.dumps(check_stored(SEED_STORE))


@pytest.mark.parametrize(
    ("ops", "literal", "reason"),
    [
        ([-1, 3, -1, 5], b"abc", "literal bytes do not add up"),  # a run past the literal bytes
        ([-1, 2], b"abc", "literal bytes do not add up"),  # literal bytes left over
        ([0, 4, 1, 4], b"", "reaches outside"),  # a copy past the previous plaintext
        ([-2, 1], b"", "malformed operation list"),
        ([0, -1], b"", "malformed operation list"),
        ([0, 4, 0], b"", "malformed operation list"),
        ([0, 4] * 3, b"", "the manifest records 8"),  # builds 12 bytes where the manifest says 8
    ],
)
def test_deltas_that_do_not_fit_are_refused_before_anything_is_built(ops, literal, reason):
    from statetransfer.stores._chain import MAP_DELTA, apply_chain

    body = msgspec.msgpack.encode([ops, literal])
    with pytest.raises(st.CorruptSnapshot, match=reason):
        apply_chain("map", b"prev", [(MAP_DELTA, body)], section="s", built=8)


# -- crashes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["file", "sqlite"])
async def test_sigkill_during_incremental_puts(backend, tmp_path, monkeypatch):
    """Writers continuing chains, SIGKILLed at random moments: verify is clean, every acknowledged put reads back."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    worker = str(Path(__file__).with_name("store_worker.py"))
    url = f"file://{tmp_path}/store" if backend == "file" else f"sqlite://{tmp_path}/store.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "STORE_WORKER_INCREMENTAL": "1"}
    rng = random.Random(99)
    acked: set[str] = set()
    for round_no in range(15):
        mode = "churn" if round_no % 4 == 3 else "put"  # deletes collect garbage while chains share objects
        proc = subprocess.Popen(
            [sys.executable, worker, url, mode, f"r{round_no}", "1000"], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        if mode == "put":  # a churn worker's last put may be mid-delete when killed: not counted
            acked |= {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("put ")}
    store = st.open_store(url)
    report = await store.verify(read_data=True)
    assert report.ok, report.problems
    for snap_id in sorted(acked):
        await store.get(snap_id)
    assert acked
    await store.close()


async def test_an_unchanged_section_adds_nothing():
    """A backup whose incremental sections did not change writes no new object for them."""
    store = memory_store()
    plugin = Cache()
    fill(plugin, random.Random(9), count=3000)
    await st.backup(plugin, store)
    before = {o.key for o in await store.list_objects("blobs/")}
    info = await st.backup(plugin, store)
    assert {o.key for o in await store.list_objects("blobs/")} == before
    fresh = Cache()
    await st.restore(fresh, store, info.id)
    assert (fresh.entries, fresh.blob, fresh.items) == (plugin.entries, plugin.blob, plugin.items)
