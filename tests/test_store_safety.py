"""Regressions of the store-safety reports: each test reproduces a way stores lost or damaged data before."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import statetransfer as st
from statetransfer.stores.file import MARKER
from statetransfer.testing import make_snapshot

from .conftest import backups_with_newest_damaged


# -- 3. nothing outside the store is touched ------------------------------------------------------
async def test_prune_never_empties_a_symlinked_tmp(tmp_path):
    """tmp/ replaced by a symlink: the store refuses to follow it and the target keeps its files."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "0123456789abcdef.tmp").write_text("user data")
    store = st.open_store(f"file://{tmp_path}/store")
    await store.put(make_snapshot("a"))
    (tmp_path / "store" / "tmp").rmdir()
    (tmp_path / "store" / "tmp").symlink_to(outside)
    with pytest.raises(st.StoreError, match="symlink"):
        await store.prune(keep_last=0)
    assert (outside / "0123456789abcdef.tmp").read_text() == "user data"


async def test_gc_never_deletes_through_a_symlinked_blob_dir(tmp_path):
    """A blobs/xx symlink to an outside directory: GC reports it as a stray and deletes nothing there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("ab" + "0" * 62)
    victim.write_text("not a blob")
    store = st.open_store(f"file://{tmp_path}/store")
    await store.put(make_snapshot("a"))
    (tmp_path / "store" / "blobs" / "ab").symlink_to(outside)
    await store.put(make_snapshot("b"))
    await store.delete("b")
    await store.prune(keep_last=0)
    assert victim.read_text() == "not a blob"
    report = await store.verify()
    assert "blobs/ab" in report.strays


def test_refuses_to_adopt_an_application_directory(tmp_path):
    """open_store on a non-empty directory that is not a store is refused, naming the path; nothing is created."""
    app = tmp_path / "app"
    (app / "tmp").mkdir(parents=True)
    (app / "tmp" / "session.tmp").write_text("x")
    (app / "config.ini").write_text("[x]")
    with pytest.raises(st.StoreError, match=r"app.*not a statetransfer store"):
        st.open_store(f"file://{app}")
    assert sorted(p.name for p in app.iterdir()) == ["config.ini", "tmp"]


def test_create_false_creates_nothing(tmp_path):
    """open_store(create=False) on a missing store raises StoreNotFound and creates nothing, for every local backend."""
    for url in (f"file://{tmp_path}/nope", f"sqlite://{tmp_path}/sub/none.db", "memory://never-made"):
        with pytest.raises(st.StoreNotFound) as info:
            st.open_store(url, create=False)
        assert isinstance(info.value, st.StoreError)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(st.StoreNotFound):
        st.open_store(f"file://{tmp_path}/empty", create=False)
    assert list((tmp_path / "empty").iterdir()) == []


def test_malformed_urls_are_usage_errors(tmp_path, monkeypatch):
    """file:/x (one slash) is refused instead of creating ./file:/x; bad URLs are InvalidStoreURL (a ValueError)."""
    monkeypatch.chdir(tmp_path)
    for url in ("file:/x", "sqlite:/x.db", "", "s3://", "file://host/x", "ftp://h/x"):
        with pytest.raises(st.InvalidStoreURL) as info:
            st.open_store(url)
        assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


async def test_stray_entries_never_break_the_store(tmp_path):
    """A directory, a FIFO and .DS_Store among manifests and blobs: list, prune and verify skip and report them."""
    store = st.open_store(f"file://{tmp_path}/store")
    await store.put(make_snapshot("a", timestamp=1_700_000_000))
    await store.put(make_snapshot("b", timestamp=1_700_000_001, sections={"x": b"b" * 50}))
    root = tmp_path / "store"
    (root / "manifests" / "subdir").mkdir()
    os.mkfifo(root / "manifests" / "fifo")
    (root / "manifests" / ".DS_Store").write_bytes(b"junk")
    (root / "blobs" / ".DS_Store").write_bytes(b"junk")
    os.mkfifo(root / "blobs" / "pipe")
    with pytest.warns(st.StoreWarning):
        listing = await asyncio.wait_for(store.list(), 10)
    assert [i.id for i in listing] == ["b", "a"]
    assert {u.key for u in listing.unreadable} == {"manifests/subdir", "manifests/fifo", "manifests/.DS_Store"}
    report = await asyncio.wait_for(store.verify(), 10)
    assert report.ok and {"blobs/.DS_Store", "blobs/pipe"} <= set(report.strays)
    pruned = await asyncio.wait_for(store.prune(keep_last=1), 10)
    assert pruned.removed == ["a"]
    assert (root / "manifests" / ".DS_Store").exists() and (root / "blobs" / "pipe").exists()


async def test_store_files_are_private(tmp_path):
    """Store directories are 0700 and files 0600 (state often holds secrets)."""
    store = st.open_store(f"file://{tmp_path}/store")
    await store.put(make_snapshot("a"))
    root = tmp_path / "store"
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    sq = st.open_store(f"sqlite://{tmp_path}/s.db")
    await sq.put(make_snapshot("a"))
    await sq.close()
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600


# -- 4. no silent restore of older state ----------------------------------------------------------
class Counter(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="counter", version="1.0.0")
    value = st.Section(int, default=int)


async def test_restore_refuses_when_newest_is_unreadable(tmp_path):
    """The newest manifest damaged: restore refuses naming it; allow_older restores the older one and says which."""
    old, new = await backups_with_newest_damaged(Counter(), "value", tmp_path / "store")
    store = st.open_store(f"file://{tmp_path}/store")
    fresh = Counter()
    with pytest.raises(st.StateTransferError, match=new.id) as info:
        await st.restore(fresh, store)
    assert getattr(info.value, "snapshot_id", None) == new.id and fresh.value == 0
    result = await st.restore(fresh, store, allow_older=True)
    assert result.snapshot_id == old.id and fresh.value == 1


async def test_restore_refuses_when_newest_blob_is_damaged(tmp_path):
    """The newest snapshot's section damaged: restore refuses instead of falling back silently."""
    store = st.open_store(f"file://{tmp_path}/store")
    plugin = Counter()
    plugin.value = 1
    await st.backup(plugin, store)
    time.sleep(0.01)
    plugin.value = 2
    new = await st.backup(plugin, store)
    digest = (await store.section_digests(new.id))["value"]
    blob = next((tmp_path / "store" / "blobs").rglob(digest))
    blob.write_bytes(b"\x00" + blob.read_bytes()[1:])
    with pytest.raises(st.CorruptSnapshot, match=new.id):
        await st.restore(Counter(), store)
    assert (await st.restore(Counter(), store, allow_older=True)).snapshot_id != new.id


async def test_restore_names_the_snapshot():
    """restore's result names the snapshot it imported; a unique id prefix is accepted."""
    store = st.open_store("memory://")
    plugin = Counter()
    plugin.value = 7
    info = await st.backup(plugin, store)
    assert (await st.restore(Counter(), store)).snapshot_id == info.id
    assert (await st.restore(Counter(), store, info.id[:8])).snapshot_id == info.id


# -- 5. writes that never destroy the previous file -----------------------------------------------
def _fill_disk_and_write(kind: str, path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a child: limit file size so the rewrite fails like a full disk, then try it."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    try:
        if kind == "keyring":
            ring = st.Keyring.generate("k1")
            for i in range(20):
                ring.add(f"extra-{i}", os.urandom(32))
            ring.to_file(path)
        else:
            st.dump(make_snapshot("big", sections={"x": os.urandom(4096)}), path)
        queue.put("no error")
    except st.WriteFailed as exc:
        queue.put(f"WriteFailed {isinstance(exc, OSError)} {exc.path == path}")
    except BaseException as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["keyring", "snapshot"])
def test_failed_rewrite_keeps_the_previous_file(tmp_path, kind):
    """A rewrite that fails part-way (full disk) raises WriteFailed and leaves the previous file intact."""
    path = tmp_path / "target"
    previous = b"x" * 10
    path.write_bytes(previous)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fill_disk_and_write, args=(kind, str(path), queue))
    proc.start()
    proc.join(60)
    assert queue.get(timeout=5) == "WriteFailed True True"
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # no temporary file left behind


def test_keyring_file_becomes_private(tmp_path):
    """to_file leaves the keyring 0600 even when the file existed with a wider mode."""
    path = tmp_path / "ring.json"
    path.write_text("{}")
    path.chmod(0o644)
    st.Keyring.generate("k1").to_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert st.Keyring.from_file(path).default_key_id == "k1"


# -- 6. the STORE marker ----------------------------------------------------------------------------
async def test_torn_marker_is_repaired(tmp_path):
    """A STORE marker torn by a crash while it was written does not wedge the store."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "STORE").write_text(MARKER[:7])
    store = st.open_store(f"file://{root}")
    await store.put(make_snapshot("a"))
    assert (root / "STORE").read_text() == MARKER


def _open_and_put(url: str, n: int, queue: multiprocessing.Queue, start: Any) -> None:  # type: ignore[type-arg]
    try:
        start.wait(30)
        store = st.open_store(url)
        asyncio.run(store.put(make_snapshot(f"p{n}")))
        queue.put("ok")
    except BaseException as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("scheme", ["file", "sqlite"])
@pytest.mark.parametrize("round_", range(6))
def test_concurrent_first_open(tmp_path, scheme, round_):
    """Four processes opening one fresh store at the same moment all succeed (none sees it half made)."""
    url = f"file://{tmp_path}/fresh" if scheme == "file" else f"sqlite://{tmp_path}/fresh.db"
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    queue, start = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_open_and_put, args=(url, n, queue, start)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert sorted(queue.get(timeout=5) for _ in procs) == ["ok"] * 4


# -- 7. never acknowledge what cannot be restored ------------------------------------------------
class Item(msgspec.Struct):
    hits: int


class Fragile(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="fragile", version="1.0.0")
    config = st.Section(dict[str, float | None], codec="json", default=dict)
    items = st.Section(dict[str, Item], default=dict)


async def test_backup_refuses_nan_in_json():
    """NaN in a JSON section is refused at export (JSON would store null), naming the field."""
    plugin = Fragile()
    plugin.config = {"ratio": math.nan}
    store = st.open_store("memory://")
    with pytest.raises(st.EncodingError, match=r'config\["ratio"\]: NaN'):
        await st.backup(plugin, store)
    assert await store.list() == []


async def test_backup_refuses_value_of_wrong_type():
    """A value that does not match its declared type is refused at export with its field path."""
    plugin = Fragile()
    plugin.items = {"a": Item(1), "b": Item("many")}  # type: ignore[arg-type]
    store = st.open_store("memory://")
    with pytest.raises(st.EncodingError, match=r'items\["b"\]\.hits: expected int, got str'):
        await st.backup(plugin, store)
    assert await store.list() == []


# -- 10. partial import with a missing key --------------------------------------------------------
class Mixed(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="mixed", version="1.0.0")
    plain = st.Section(dict[str, int], default=dict)
    secret = st.Section(dict[str, str], encrypt=True, default=dict)


async def test_partial_import_applies_what_it_can():
    """partial=True applies the sections it can when another section's key is missing."""
    source = Mixed(keyring=st.Keyring.generate("k1"))
    source.plain = {"a": 1}
    source.secret = {"t": "v"}
    snapshot = await source.export_state()
    target = Mixed(keyring=st.Keyring.generate("other"))
    result = await target.import_state(snapshot, partial=True)
    assert result.imported_sections == ["plain"] and target.plain == {"a": 1}
    assert [f.name for f in result.failed_sections] == ["secret"] and "k1" in result.failed_sections[0].error
    with pytest.raises(st.ValidationFailed):
        await Mixed(keyring=st.Keyring.generate("other")).import_state(snapshot)


# -- also: sqlite -----------------------------------------------------------------------------------
async def test_sqlite_refuses_a_foreign_database(tmp_path):
    """A SQLite file of another application is refused, not adopted."""
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    store = st.open_store(f"sqlite://{path}")
    with pytest.raises(st.StoreError, match="not a statetransfer store"):
        await store.list()


async def test_sqlite_read_only_open(tmp_path, monkeypatch):
    """A store the user may only read opens read-only: list and get work."""
    url = f"sqlite://{tmp_path}/ro.db"
    store = st.open_store(url)
    snap = make_snapshot("a")
    await store.put(snap)
    await store.close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    reader = st.open_store(url, create=False)
    assert [i.id for i in await reader.list()] == ["a"] and await reader.get("a") == snap
    assert reader.read_only  # type: ignore[attr-defined]
    await reader.close()


def test_nothing_left_outside(tmp_path):
    """Opening and using stores leaves nothing beside them but their own files."""
    asyncio.run(_use(tmp_path))
    own = {"f", "s.db", "s.db-shm", "s.db-wal", "s.db.lock", "s.db.reserve"}
    assert {p.name for p in tmp_path.iterdir()} <= own


async def _use(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}/f", f"sqlite://{tmp_path}/s.db"):
        store = st.open_store(url)
        await store.put(make_snapshot("a"))
        await store.delete("a")
        await store.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB file system of its own (tmpfs), so a store can really fill its disk."""
    import subprocess

    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.decode().strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


async def test_sqlite_frees_space_on_a_full_disk(small_disk):
    """With the disk full, delete and prune still run and free space, so puts work again."""
    store = st.open_store(f"sqlite://{small_disk}/store.db")
    ids = []
    with pytest.raises(st.StoreError, match="full"):
        for i in range(100):
            await store.put(make_snapshot(f"s{i}", sections={"x": os.urandom(1 << 20)}))
            ids.append(f"s{i}")
    assert len(ids) > 3
    await store.delete(ids[0])
    report = await store.prune(keep_last=1)
    assert report.removed and report.blobs_removed
    await store.put(make_snapshot("after", sections={"x": os.urandom(1 << 20)}))
    listed = [i.id for i in await store.list()]
    assert "after" in listed and len(listed) == 2
    await store.close()
