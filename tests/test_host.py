"""Hot reload: quiesce, export, reload code, import, swap — with rollback and zero lost calls."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import pytest

import statetransfer as st
from statetransfer._host import ReloadEvent

COUNTER = """
import statetransfer as st

class Counter(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="counter", version="{version}")
    count = st.Section(int, version={count_version}, default=lambda: 0)
    {extra_section}
    {init}

    def incr(self):
        self.count += 1
        return self.count

    def tag(self):
        return "{tag}"
"""


RAISING_INIT = "def __init__(self, keyring=None):\n        raise {error}"


def render(version="1.0.0", tag="v1", count_version=1, extra_section="", init="", syntax_error=False) -> str:
    text = COUNTER.format(version=version, tag=tag, count_version=count_version, extra_section=extra_section, init=init)
    return text + ("\ndef broken(:\n" if syntax_error else "")


async def loaded(plugin_module, **host_options):
    name, write, _ = plugin_module
    write(render())
    host = st.PluginHost(**host_options)
    await host.load(f"{name}:Counter")
    return host


async def call(host, method="incr"):
    async with host.use("counter") as plugin:
        return getattr(plugin, method)()


async def test_load_and_use(plugin_module):
    """load registers the plugin under its metadata id; use routes calls to it."""
    host = await loaded(plugin_module)
    assert host.plugin_ids == ["counter"]
    assert await call(host) == 1
    with pytest.raises(st.StateTransferError, match="no plugin 'nope'"):
        async with host.use("nope"):
            pass


async def test_reload_carries_state_and_runs_new_code(plugin_module):
    """A good reload swaps in the new class with the old state, and reports timings."""
    name, write, _ = plugin_module
    host = await loaded(plugin_module)
    for _ in range(5):
        await call(host)
    write(render(version="1.1.0", tag="v2"))
    result = await host.reload("counter")
    assert result.ok and not result.rolled_back, result.error
    assert (result.old_version, result.new_version) == ("1.0.0", "1.1.0")
    assert await call(host, "tag") == "v2"
    assert await call(host) == 6
    assert type(host.get("counter")).__module__ == name
    assert sys.modules[name].Counter is type(host.get("counter"))
    assert {"quiesce", "export", "load", "validate", "import", "swap", "total"} <= set(result.timings)
    assert result.import_result.imported_sections == ["count"]


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        pytest.param({"syntax_error": True}, "SyntaxError", id="syntax-error"),
        pytest.param(
            {"init": "def __init__(self, keyring=None):\n        raise RuntimeError('boom')"}, "boom", id="init-raises"
        ),
        pytest.param({"count_version": 3}, "no migration from schema version 1 to 3", id="schema-unreachable"),
    ],
)
async def test_broken_reload_rolls_back(plugin_module, broken, error):
    """A broken new version is refused before callers are held; the old instance serves on, state untouched."""
    name, write, _ = plugin_module
    host = await loaded(plugin_module)
    old = host.get("counter")
    await call(host)
    write(render(version="1.1.0", **broken))
    result = await host.reload("counter")
    assert result.rolled_back and not result.ok
    assert error in result.error
    assert result.timings["pause"] == 0.0  # refused in the preflight: callers were never held
    assert host.get("counter") is old
    assert sys.modules[name].Counter is type(old)
    assert await call(host) == 2
    assert await call(host, "tag") == "v1"


async def test_dropped_section_rolls_back_unless_allowed(plugin_module):
    """New code that drops a section rolls back by default; when allowed, the section is carried along."""
    name, write, _ = plugin_module
    write(render(extra_section="notes = st.Section(dict[str, str], default=dict)"))
    host = st.PluginHost()
    await host.load(f"{name}:Counter")
    async with host.use("counter") as p:
        p.notes["keep"] = "me"
    write(render(version="1.1.0"))
    result = await host.reload("counter")
    assert result.rolled_back and "notes" in result.error
    assert result.timings["pause"] == 0.0
    assert host.get("counter").notes == {"keep": "me"}
    host.allow_dropped_sections = True
    assert (await host.reload("counter")).ok
    assert "notes" in (await host.get("counter").export_state()).sections
    write(render(version="1.2.0", extra_section="notes = st.Section(dict[str, str], default=dict)"))
    assert (await host.reload("counter")).ok
    assert host.get("counter").notes == {"keep": "me"}


async def test_schema_migration_reload_keeps_every_entry(plugin_module):
    """A reload v1 -> v2 with a migration keeps every entry."""
    name, write, _ = plugin_module
    v1 = """
    import statetransfer as st

    class Counter(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="counter", version="1.0.0")
        entries = st.Section(dict[str, int], default=dict)
    """
    v2 = """
    import statetransfer as st

    class Counter(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="counter", version="2.0.0")
        entries = st.Section(dict[str, list[int]], version=2, default=dict)

        @entries.migration(from_version=1)
        def _v1_v2(old):
            return {k: [v, v * 2] for k, v in old.items()}
    """
    write(v1)
    host = st.PluginHost()
    plugin = await host.load(f"{name}:Counter")
    plugin.entries.update({f"k{i}": i for i in range(10_000)})
    write(v2)
    result = await host.reload("counter")
    assert result.ok, result.error
    entries = host.get("counter").entries
    assert len(entries) == 10_000 and entries["k7"] == [7, 14]


async def test_bytecode_cache_never_stale(plugin_module):
    """Rewriting the file with the same size and the same modification time still runs the newest code."""
    name, write, path = plugin_module
    host = await loaded(plugin_module)
    tags = ["v2", "v3", "v4"]
    stamp = path.stat().st_mtime_ns
    for tag in tags:
        write(render(tag=tag))
        os.utime(path, ns=(stamp, stamp))  # what a stale .pyc check cannot tell apart
        assert (await host.reload("counter")).ok
        assert await call(host, "tag") == tag
    assert len({len(render(tag=t)) for t in tags}) == 1


async def test_concurrent_reloads_serialize(plugin_module):
    """Two reloads requested at once both complete, one after the other, state intact."""
    _, write, _ = plugin_module
    host = await loaded(plugin_module)
    await call(host)
    write(render(version="1.0.1", tag="v2"))
    first, second = await asyncio.gather(host.reload("counter"), host.reload("counter"))
    assert first.ok and second.ok
    assert await call(host) == 2


async def test_hanging_call_hits_quiesce_timeout(plugin_module):
    """A call hanging past the quiesce timeout makes the reload roll back; no call fails."""
    name, write, _ = plugin_module
    host = await loaded(plugin_module, quiesce_timeout=0.1, acquire_timeout=5)
    release = asyncio.Event()

    async def hanging():
        async with host.use("counter") as p:
            await release.wait()
            return p.incr()

    hang = asyncio.create_task(hanging())
    await asyncio.sleep(0.01)
    write(render(version="1.1.0", tag="v2"))
    reload_task = asyncio.create_task(host.reload("counter"))
    await asyncio.sleep(0.02)
    waiting = asyncio.create_task(call(host))  # arrives during the quiesce: waits, then runs on the old code
    result = await reload_task
    assert result.rolled_back and "quiesce timeout" in result.error
    release.set()
    assert await hang == 1 or await hang == 2
    assert await waiting in (1, 2)
    assert await call(host, "tag") == "v1"


async def test_waiting_caller_times_out_with_clear_error(plugin_module):
    """A caller waiting longer than acquire_timeout for a reload gets a PluginError naming the wait."""
    host = await loaded(plugin_module, acquire_timeout=0.05)
    gate = host._slots["counter"].gate
    gate.pause()
    with pytest.raises(st.StateTransferError, match=r"gave up after waiting 0\.05s"):
        await call(host)
    gate.resume()
    assert await call(host) == 1


async def test_events_and_logging(plugin_module, caplog):
    """Subscribers see started/loaded/exported/imported/swapped; a broken version emits rolled_back before any
    export; results are logged."""
    _, write, _ = plugin_module
    host = await loaded(plugin_module)
    events: list[ReloadEvent] = []
    unsubscribe = host.subscribe(events.append)
    caplog.set_level(logging.INFO, logger="statetransfer._host")
    write(render(tag="v2"))
    await host.reload("counter")
    assert [e.phase for e in events] == ["started", "loaded", "exported", "imported", "swapped"]
    events.clear()
    write(render(syntax_error=True))
    await host.reload("counter")
    assert [e.phase for e in events] == ["started", "rolled_back"]
    assert any("rolled back" in r.message for r in caplog.records)
    unsubscribe()
    await host.reload("counter")
    assert len(events) == 2


async def test_checkpoint_written_to_store(plugin_module):
    """With a store, a CHECKPOINT snapshot of the new instance is written after the swap."""
    _, write, _ = plugin_module
    store = st.open_store("memory://")
    host = await loaded(plugin_module, store=store)
    await call(host)
    write(render(tag="v2"))
    result = await host.reload("counter")
    infos = await store.list(plugin_id="counter")
    assert [i.id for i in infos] == [result.checkpoint_id]
    assert infos[0].reason == st.StateCreationReason.CHECKPOINT
    restored = await store.get(result.checkpoint_id)
    assert restored.sections["count"].data == (await host.get("counter").export_state()).sections["count"].data


async def test_unload(plugin_module):
    """unload drops the plugin; later calls get a clear error."""
    host = await loaded(plugin_module)
    await host.unload("counter")
    assert host.plugin_ids == []
    with pytest.raises(st.StateTransferError, match="no plugin 'counter'"):
        await call(host)


async def test_entry_point_loading(plugin_module, tmp_path):
    """A plugin is loadable by its name in the statetransfer.plugins entry-point group."""
    name, write, _ = plugin_module
    write(render())
    dist = tmp_path / "counterdist-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: counterdist\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[statetransfer.plugins]\ncounter = {name}:Counter\n")
    host = st.PluginHost()
    plugin = await host.load("counter")
    assert plugin.metadata.id == "counter"
    with pytest.raises(st.StateTransferError, match="no plugin entry point 'missing'"):
        await host.load("missing")


async def test_bad_specs(plugin_module):
    """Bad plugin specs give errors a person can act on."""
    name, write, _ = plugin_module
    write(render())
    host = st.PluginHost()
    with pytest.raises(st.StateTransferError, match="cannot find module"):
        await host.load("no_such_module_xyz:Thing")
    with pytest.raises(st.StateTransferError, match="has no class 'Nope'"):
        await host.load(f"{name}:Nope")
    await host.load(f"{name}:Counter")
    with pytest.raises(st.StateTransferError, match="already loaded"):
        await host.load(f"{name}:Counter")


async def test_watch_reloads_on_change(plugin_module):
    """watch() reloads a plugin when its source file changes, and stops on request."""
    _, write, _ = plugin_module
    host = await loaded(plugin_module)
    swapped = asyncio.Event()
    host.subscribe(lambda e: swapped.set() if e.phase == "swapped" else None)
    stop = asyncio.Event()
    watcher = asyncio.create_task(host.watch(debounce_ms=50, stop_event=stop))
    await asyncio.sleep(0.3)
    write(render(tag="watched"))
    await asyncio.wait_for(swapped.wait(), timeout=10)
    assert await call(host, "tag") == "watched"
    stop.set()
    await asyncio.wait_for(watcher, timeout=10)


async def test_load_test_zero_lost_calls(plugin_module):
    """8 callers increment while 50 reloads happen (a third broken): no call fails, none is lost."""
    _, write, _ = plugin_module
    host = await loaded(plugin_module)
    stop = asyncio.Event()
    served = 0
    failed = 0

    async def caller():
        nonlocal served, failed
        while not stop.is_set():
            try:
                async with host.use("counter") as p:
                    p.incr()
                    await asyncio.sleep(0)
                served += 1
            except Exception:
                failed += 1
            await asyncio.sleep(0)

    callers = [asyncio.create_task(caller()) for _ in range(8)]
    raising = RAISING_INIT.format(error="ValueError('x')")
    broken_kinds = [{"syntax_error": True}, {"init": raising}, {"count_version": 5}]
    results = []
    for i in range(50):
        broken = i % 3 == 2
        write(render(version=f"1.0.{i}", tag=f"r{i}", **(broken_kinds[i % 9 // 3] if broken else {})))
        results.append((broken, await host.reload("counter")))
        await asyncio.sleep(0.002)
    stop.set()
    await asyncio.gather(*callers)
    assert failed == 0
    assert host.get("counter").count == served
    assert served > 50
    assert all(r.rolled_back for broken, r in results if broken)
    assert all(r.ok for broken, r in results if not broken)
    assert sum(1 for broken, _ in results if broken) == 16


async def test_use_with_the_plugin_class(plugin_module):
    """use(id, Class) yields the instance, also after a reload re-executed the class; a wrong class is a TypeError."""
    name, write, _ = plugin_module
    host = await loaded(plugin_module)
    async with host.use("counter") as first:
        cls = type(first)
    async with host.use("counter", cls) as served:
        assert type(served) is cls
    write(render(version="1.1.0", tag="v2"))
    assert (await host.reload("counter")).ok
    async with host.use("counter", cls) as served:
        assert type(served) is not cls and type(served).__qualname__ == cls.__qualname__
    with pytest.raises(TypeError, match="not a dict"):
        async with host.use("counter", dict):
            pass
    await host.close()
