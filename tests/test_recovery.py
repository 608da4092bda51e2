"""Restarts, crashes and releases: restore on start, periodic checkpoints, close, and multi-plugin reloads."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import statetransfer as st
from statetransfer.stores.memory import MemoryStore

from .conftest import backups_with_newest_damaged

SERVICE = Path(__file__).with_name("checkpoint_service.py")


class Notes(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="notes", version="1.0.0")
    items = st.Section(dict[str, str], default=dict)
    hits = st.Section(int, default=int)


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write importable plugin modules: ``modules(source) -> "module:Class"`` prefix (the module name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"rec_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


NOTES_MODULE = """
import statetransfer as st

class Notes(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="notes", version="1.0.0")
    items = st.Section(dict[str, str], default=dict)
    hits = st.Section(int, default=int)
"""


async def bump(host, key="k"):
    async with host.use("notes") as notes:
        notes.hits += 1
        notes.items[key] = str(notes.hits)


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_interval_needs_a_store():
    with pytest.raises(st.InvalidArgument, match="store"):
        st.PluginHost(checkpoint_interval=1.0)
    with pytest.raises(st.InvalidArgument, match="positive"):
        st.PluginHost(store=st.open_store("memory://"), checkpoint_interval=0)


async def test_checkpoint_is_skipped_when_nothing_changed(modules):
    """No call since the last checkpoint, or calls that changed no section: nothing is written."""
    store = st.open_store("memory://")
    host = st.PluginHost(store=store)
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    assert await host.checkpoint() == {"notes": None}  # no call yet: the empty state was never changed
    await bump(host)
    first = (await host.checkpoint())["notes"]
    assert first is not None
    assert await host.checkpoint() == {"notes": None}  # no call since
    async with host.use("notes") as notes:  # a call that reads only
        assert notes.hits == 1
    assert await host.checkpoint() == {"notes": None}
    await bump(host)
    second = (await host.checkpoint())["notes"]
    assert second not in (None, first)
    listing = await store.list(plugin_id="notes")
    assert [info.id for info in listing] == [second, first]
    restored = Notes()
    await st.restore(restored, store)
    assert restored.items == {"k": "2"} and restored.hits == 2
    assert (await store.get(second)).metadata.reason is st.StateCreationReason.CHECKPOINT
    await host.close()


async def test_periodic_checkpoints_follow_changes(modules):
    """With checkpoint_interval the host writes checkpoints by itself, one per change burst."""
    store = st.open_store("memory://")
    host = st.PluginHost(store=store, checkpoint_interval=0.02)
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await bump(host)
    await wait_for_snapshots(store, 1)
    await bump(host)
    await wait_for_snapshots(store, 2)
    restored = Notes()
    await st.restore(restored, store)
    assert restored.hits == 2
    await host.close()


async def test_a_periodic_checkpoint_refuses_a_value_of_the_wrong_type(modules, caplog):
    """The store runs the export's type check of a periodic checkpoint: a wrong value is never stored."""
    caplog.set_level(logging.ERROR)
    store = st.open_store("memory://")
    host = st.PluginHost(store=store, checkpoint_interval=0.02)
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    async with host.use("notes") as notes:
        notes.items["bad"] = 5
    for _ in range(1000):
        if "periodic checkpoint" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert 'items["bad"]: expected str, got int' in caplog.text
    assert await store.list(plugin_id="notes") == []
    async with host.use("notes") as notes:
        notes.items["bad"] = "5"
    await wait_for_snapshots(store, 1)
    restored = Notes()
    await st.restore(restored, store)
    assert restored.items == {"bad": "5"}
    await host.close()


async def wait_for_snapshots(store, count):
    for _ in range(1000):
        if len(await store.list(plugin_id="notes")) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {count} snapshots written")


class SlowStore(MemoryStore):
    """A store whose puts wait until released."""

    def __init__(self):
        super().__init__()
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def put(self, snapshot, **options):
        self.writing.set()
        await self.release.wait()
        return await super().put(snapshot, **options)


async def test_callers_are_not_held_while_a_checkpoint_is_written(modules):
    store = SlowStore()
    host = st.PluginHost(store=store)
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await bump(host)
    checkpoint = asyncio.ensure_future(host.checkpoint())
    await store.writing.wait()
    await bump(host, "during")  # served while the write is pending
    async with host.use("notes") as notes:
        assert notes.items == {"k": "1", "during": "2"}
    store.release.set()
    written = (await checkpoint)["notes"]
    assert (await store.get(written)).sections.keys() == {"items", "hits"}
    restored = Notes()
    await st.restore(restored, store)
    assert restored.items == {"k": "1"}  # the state when the export was taken
    await host.close()


class FlakyStore(MemoryStore):
    """A store whose next put fails once."""

    fail = False

    async def put(self, snapshot, **options):
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        return await super().put(snapshot, **options)


async def test_a_failed_checkpoint_is_retried_without_further_calls(modules):
    store = FlakyStore()
    host = st.PluginHost(store=store)
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await bump(host)
    store.fail = True
    with pytest.raises(OSError, match="disk full"):
        await host.checkpoint()
    written = (await host.checkpoint())["notes"]  # no call since: the change is still owed to the store
    assert written is not None and (await store.list(plugin_id="notes"))[0].id == written
    await host.close()


# -- restore on start ----------------------------------------------------------------------------
async def test_load_with_restore_starts_from_the_newest_snapshot(modules):
    store = st.open_store("memory://")
    first = st.PluginHost(store=store)
    await first.load(f"{modules(NOTES_MODULE)}:Notes")
    await bump(first)
    await bump(first)
    await first.close()
    host = st.PluginHost(store=store)
    await host.load(f"{modules(NOTES_MODULE)}:Notes", restore=True)
    async with host.use("notes") as notes:
        assert notes.items == {"k": "2"} and notes.hits == 2
    result = host.restore_result("notes")
    assert result is not None and result.snapshot_id == (await store.list(plugin_id="notes"))[0].id
    assert await host.checkpoint() == {"notes": None}  # a call that changed nothing: the restored one stands
    await host.close()
    assert len(await store.list(plugin_id="notes")) == 1  # nor is it written again on close


async def test_load_with_restore_and_no_snapshot_starts_empty_and_says_so(modules, caplog):
    host = st.PluginHost(store=st.open_store("memory://"))
    with caplog.at_level(logging.WARNING, logger="statetransfer._host"):
        await host.load(f"{modules(NOTES_MODULE)}:Notes", restore=True)
    assert host.restore_result("notes") is None
    assert any("starts empty" in r.getMessage() and "notes" in r.getMessage() for r in caplog.records)
    async with host.use("notes") as notes:
        assert notes.items == {} and notes.hits == 0
    await host.close()


async def test_load_with_restore_needs_a_store(modules):
    with pytest.raises(st.InvalidArgument, match="store"):
        await st.PluginHost().load(f"{modules(NOTES_MODULE)}:Notes", restore=True)


NOTES_V2_MODULE = """
import statetransfer as st

class Notes(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="notes", version="2.0.0")
    items = st.Section(list[tuple[str, str]], version=2, default=list)
    hits = st.Section(int, default=int)

    @items.migration(from_version=1)
    def _pairs(old):
        return sorted(old.items())
"""


async def test_load_with_restore_migrates_older_snapshots(modules):
    store = st.open_store("memory://")
    old = Notes()
    old.items = {"b": "2", "a": "1"}
    await st.backup(old, store)
    host = st.PluginHost(store=store)
    await host.load(f"{modules(NOTES_V2_MODULE)}:Notes", restore=True)
    async with host.use("notes") as notes:
        assert notes.items == [("a", "1"), ("b", "2")]
    result = host.restore_result("notes")
    assert result is not None and any("migrated 1 -> 2" in w for w in result.warnings)
    await host.close()


async def test_load_with_restore_refuses_a_damaged_newest_snapshot_unless_allowed(modules, tmp_path):
    older, newest = await backups_with_newest_damaged(Notes(), "hits", tmp_path / "store")
    store = st.open_store(f"file://{tmp_path}/store")
    spec = f"{modules(NOTES_MODULE)}:Notes"
    host = st.PluginHost(store=store)
    with pytest.raises(st.CorruptSnapshot, match=newest.id):
        await host.load(spec, restore=True)
    assert host.plugin_ids == []
    await host.load(spec, restore=True, allow_older=True)
    result = host.restore_result("notes")
    assert result is not None and result.snapshot_id == older.id
    async with host.use("notes") as notes:
        assert notes.hits == 1
    await host.close()


# -- close ---------------------------------------------------------------------------------------
async def test_close_writes_a_final_checkpoint_and_unloads_everything(modules):
    store = st.open_store("memory://")
    host = st.PluginHost(store=store, checkpoint_interval=3600)
    instance = await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await bump(host)
    held = asyncio.Event()

    async def slow_call():  # a call in flight when close starts: its change is in the final checkpoint
        async with host.use("notes") as notes:
            held.set()
            await asyncio.sleep(0.05)
            notes.items["late"] = "yes"

    call = asyncio.ensure_future(slow_call())
    await held.wait()
    await asyncio.gather(host.close(), host.close())
    await call
    assert host.plugin_ids == []
    restored = Notes()
    await st.restore(restored, store)
    assert restored.items == {"k": "1", "late": "yes"}
    assert len(await store.list()) == 1
    with pytest.raises(st.PluginError):
        async with host.use("notes"):
            pass
    with pytest.raises(st.PluginError, match="closed"):
        await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await host.close()  # again: nothing more
    assert len(await store.list()) == 1
    del instance


async def test_close_stops_watching(modules):
    host = st.PluginHost()
    await host.load(f"{modules(NOTES_MODULE)}:Notes")
    watching = asyncio.ensure_future(host.watch(debounce_ms=10))
    await asyncio.sleep(0.05)
    await host.close()
    await asyncio.wait_for(watching, 10)


async def test_close_without_a_store_unloads(modules):
    host = st.PluginHost()
    notes = await host.load(f"{modules(NOTES_MODULE)}:Notes")
    await host.close()
    assert host.plugin_ids == []
    with pytest.raises(st.PluginError):
        host.get(notes.metadata.id)


# -- the crash: SIGKILL a real service and restart it --------------------------------------------
def test_sigkill_loses_at_most_one_interval_of_changes(tmp_path):
    """A service killed mid-run and restarted with restore=True has everything acknowledged one interval
    before the kill (plus the time that checkpoint took to write)."""
    interval = 0.2
    url = f"file://{tmp_path}/store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(SERVICE), url]
    acks: list[tuple[int, float]] = []
    writes: list[float] = []

    def record(line: str) -> None:
        kind, *values = line.split()
        if kind == "ack":
            acks.append((int(values[0]), float(values[1])))
        elif kind == "put":
            writes.append(float(values[1]) - float(values[0]))

    serve = [*command, "serve", str(interval)]
    with subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            while len(writes) < 4 or len(acks) < 20:  # a few checkpoints in, then kill it between two
                line = proc.stdout.readline()
                assert line, "the service stopped early"
                record(line)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            for line in proc.stdout.read().splitlines():
                record(line)
        finally:
            proc.kill()
    restart = subprocess.run([*command, "restore"], capture_output=True, text=True, env=env, timeout=60)
    assert restart.returncode == 0, restart.stderr
    kind, count, _ = restart.stdout.split()
    assert kind == "restored"
    window = interval + max(writes)
    owed = max(v for v, at in acks if at <= killed_at - window)
    assert owed > 0
    assert owed <= int(count) <= acks[-1][0] + 1


# -- releases: several plugins as one unit -------------------------------------------------------
RELEASE = """
import statetransfer as st
ORDER = []

class P(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="{pid}", version="{version}")
    depends_on = {depends}
    items = st.Section(dict[str, int], version={items_version}, default=dict)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        ORDER.append("{pid}")
        {init}

    def code(self):
        return "{version}"
    {body}
"""


def release_module(pid, version="1.0.0", depends=(), items_version=1, init="", body=""):
    return RELEASE.format(pid=pid, version=version, depends=repr(tuple(depends)), items_version=items_version,
                          init=init or "pass", body=body)  # fmt: skip


async def three_plugins(modules):
    """A host serving plugins a, b (depends on c) and c, each with some state; returns the host and module names."""
    names = {pid: modules(release_module(pid, depends=("c",) if pid == "b" else ())) for pid in "abc"}
    host = st.PluginHost()
    for pid, name in names.items():
        plugin = await host.load(f"{name}:P")
        plugin.items = {pid: 1}
    return host, names


async def served(host):
    out = {}
    for pid in host.plugin_ids:
        async with host.use(pid) as plugin:
            out[pid] = (plugin.code(), dict(plugin.items))
    return out


async def test_reload_many_swaps_every_plugin_in_dependency_order(modules):
    host, names = await three_plugins(modules)
    for pid, name in names.items():
        modules(release_module(pid, "2.0.0", depends=("c",) if pid == "b" else ()), name=name)
    results = await host.reload_many(["a", "b", "c"])
    assert [r.plugin_id for r in results] == ["a", "c", "b"]  # b after c, which it depends on
    assert all(r.ok and not r.rolled_back for r in results)
    assert await served(host) == {pid: ("2.0.0", {pid: 1}) for pid in "abc"}
    assert all(r.timings["pause"] > 0 for r in results)


FAILING_STEP = """
    @items.migration(from_version=1)
    def up(old):
        raise ValueError("bad step")
"""


@pytest.mark.parametrize(
    "broken",
    [
        {"init": "raise RuntimeError('broken build')"},  # fails in the preflight
        {"items_version": 2, "body": FAILING_STEP},  # in the handover
    ],
    ids=["preflight", "handover"],
)
async def test_one_failure_rolls_every_plugin_back(modules, broken):
    host, names = await three_plugins(modules)
    before = await served(host)
    instances = {pid: host.get(pid) for pid in "abc"}
    for pid, name in names.items():
        options = broken if pid == "c" else {}  # c is the second of a, c, b
        modules(release_module(pid, "2.0.0", depends=("c",) if pid == "b" else (), **options), name=name)
    results = await host.reload_many(["a", "b", "c"])
    assert [r.plugin_id for r in results] == ["a", "c", "b"]
    assert all(not r.ok and r.rolled_back for r in results)
    assert (results[1].timings["pause"] > 0) == ("body" in broken)  # a handover failure happened while paused
    assert "rolled back with 'c'" in (results[0].error or "")
    assert "rolled back with" not in (results[1].error or "")
    assert ("broken build" if "init" in broken else "bad step") in (results[1].error or "")
    assert await served(host) == before
    assert {pid: host.get(pid) for pid in "abc"} == instances
    assert {pid: sys.modules[name].P for pid, name in names.items()} == {p: type(i) for p, i in instances.items()}


async def test_dependency_cycles_are_refused_before_anything_runs(modules):
    names = {pid: modules(release_module(pid, depends=("b",) if pid == "a" else ("a",))) for pid in "ab"}
    host = st.PluginHost()
    for name in names.values():
        await host.load(f"{name}:P")
    with pytest.raises(st.PluginError, match="cycle"):
        await host.reload_many(["a", "b"])
    assert (await served(host))["a"][0] == "1.0.0"


async def test_reloading_to_older_code_converts_the_state_down_first(modules):
    """Older code (lower section versions): the serving code's downgrade steps convert the state before it imports."""
    name = modules(release_module("a", "2.0.0", items_version=2, body=UP_AND_DOWN))
    host = st.PluginHost()
    plugin = await host.load(f"{name}:P")
    plugin.items = {"x": 10}  # at version 2 values are tenfold
    modules(release_module("a", "1.0.0"), name=name)
    result = await host.reload("a")
    assert result.ok, result.error
    assert await served(host) == {"a": ("1.0.0", {"x": 1})}


async def test_reloading_to_older_code_without_a_downgrade_step_is_refused(modules):
    name = modules(release_module("a", "2.0.0", items_version=2, body=UP_ONLY))
    host = st.PluginHost()
    plugin = await host.load(f"{name}:P")
    plugin.items = {"x": 10}
    modules(release_module("a", "1.0.0"), name=name)
    result = await host.reload("a")
    assert result.rolled_back and "no downgrade step from 2 to 1" in (result.error or "")
    assert result.timings["pause"] == 0.0  # refused in the preflight
    assert await served(host) == {"a": ("2.0.0", {"x": 10})}


UP_ONLY = """
    @items.migration(from_version=1)
    def up(old):
        return {k: v * 10 for k, v in old.items()}
"""
UP_AND_DOWN = (
    UP_ONLY
    + """
    @items.migration(from_version=2, to_version=1)
    def down(new):
        return {k: v // 10 for k, v in new.items()}
"""
)


async def test_watch_reloads_a_plugin_when_an_also_reload_module_changes(modules, tmp_path):
    """also_reload names helper modules: re-executed before the plugin's on each reload, and watched like it."""
    helper = modules('GREETING = "hello"\n')
    plugin = modules(f"""
        import statetransfer as st
        import {helper}

        class Greeter(st.StatefulPlugin):
            metadata = st.PluginMetadata(id="greeter", version="1.0.0")
            said = st.Section(int, default=int)

            def greet(self):
                self.said += 1
                return {helper}.GREETING
    """)
    host = st.PluginHost()
    await host.load(f"{plugin}:Greeter", also_reload=[helper])
    swapped = asyncio.Event()
    host.subscribe(lambda event: swapped.set() if event.phase == "swapped" else None)
    watching = asyncio.ensure_future(host.watch(debounce_ms=20))
    await asyncio.sleep(0.3)
    (tmp_path / f"{helper}.py").write_text('GREETING = "bonjour"\n')
    await asyncio.wait_for(swapped.wait(), 10)
    async with host.use("greeter") as greeter:
        assert greeter.greet() == "bonjour"
    await host.close()
    await asyncio.wait_for(watching, 10)
