"""Hot reload without a pause that grows with the state, and without ways for a plugin to wedge the host."""

from __future__ import annotations

import asyncio
import gc
import pickle
import sys
import threading
import weakref

import msgspec
import pytest

import statetransfer as st
from statetransfer._loading import load_class

SHOP = """
import asyncio, dataclasses, functools, pathlib, time
import msgspec
import statetransfer as st

UNLOADS = []
{prelude}

class Entry(msgspec.Struct):
    name: str
    hits: int
    {entry_extra}

@dataclasses.dataclass
class Point:
    x: int
    y: int

@functools.singledispatch
def describe(value):
    return "other"

@describe.register
def _(value: Entry):
    return "entry {tag}"

class Shop(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="shop", version="{version}")
    entries = st.Section(dict[str, Entry], version={entries_version}, default=dict)
    points = st.Section(list[Point], default=list)
    notes = st.Section(dict[str, list[int]], default=dict{notes_options})
    {body}

    async def on_unload(self):
        UNLOADS.append(self.metadata.version)
        {on_unload}

    def tag(self):
        return "{tag}"
"""


def shop(version="1.0.0", tag="v1", prelude="", entry_extra="", entries_version=1, notes_options="", body="",
         on_unload="") -> str:  # fmt: skip
    fields = {"prelude": prelude, "entry_extra": entry_extra, "entries_version": entries_version, "body": body}
    return SHOP.format(version=version, tag=tag, notes_options=notes_options, on_unload=on_unload, **fields)


async def loaded_shop(plugin_module, v1=None, **host_options):
    """A host serving the shop plugin with a few entries, points and notes."""
    name, write, _ = plugin_module
    write(v1 or shop())
    host = st.PluginHost(**host_options)
    plugin = await host.load(f"{name}:Shop")
    module = sys.modules[name]
    plugin.entries = {f"k{i}": module.Entry(f"n{i}", i) for i in range(100)}
    plugin.points = [module.Point(1, 2), module.Point(3, 4)]
    plugin.notes = {"a": [1, 2]}
    return host


async def tag(host):
    async with host.use("shop") as plugin:
        return plugin.tag()


def as_builtins(plugin):
    return {name: msgspec.to_builtins(getattr(plugin, name)) for name in ("entries", "points", "notes")}


async def wait_for(predicate, what):
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- handover without copying ------------------------------------------------------------------------
async def test_unchanged_sections_are_handed_over_as_the_live_objects(plugin_module):
    """Sections whose schema and type did not change reach the new instance as the very same objects."""
    host = await loaded_shop(plugin_module)
    old = host.get("shop")
    notes, entries = old.notes, old.entries
    write = plugin_module[1]
    write(shop(version="1.1.0", tag="v2"))
    result = await host.reload("shop")
    assert result.ok, result.error
    new = host.get("shop")
    assert new is not old and await tag(host) == "v2"
    assert new.notes is notes and new.entries is entries
    assert sorted(result.import_result.imported_sections) == ["entries", "notes", "points"]
    assert result.timings["pause"] > 0.0


async def test_redefined_classes_are_rebound_to_the_new_code(plugin_module):
    """Struct and dataclass values are re-pointed at the reloaded classes: isinstance, singledispatch, pickle."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    entries = host.get("shop").entries
    old_entry_class = type(entries["k1"])
    write(shop(version="1.1.0", tag="v2"))
    assert (await host.reload("shop")).ok
    module = sys.modules[name]
    new = host.get("shop")
    assert new.entries is entries
    assert module.Entry is not old_entry_class
    assert all(type(v) is module.Entry for v in new.entries.values())
    assert all(isinstance(p, module.Point) for p in new.points)
    assert module.describe(new.entries["k1"]) == "entry v2"
    assert pickle.loads(pickle.dumps(new.entries["k1"])) == new.entries["k1"]
    assert new.entries["k7"] == module.Entry("n7", 7)


async def test_changed_structure_is_carried_through_encode_decode_for_that_section_only(plugin_module):
    """A section whose class gained a field is decoded into the new class; the other sections stay live."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    old = host.get("shop")
    entries, notes = old.entries, old.notes
    write(shop(version="1.1.0", entry_extra="extra: int = 5"))
    result = await host.reload("shop")
    assert result.ok, result.error
    new = host.get("shop")
    assert new.notes is notes
    assert new.entries is not entries
    assert new.entries["k3"] == sys.modules[name].Entry("n3", 3, 5)


async def test_copying_handover_can_be_chosen(plugin_module):
    """With live_handover=False every section is carried by export and import (copies), as before."""
    _, write, _ = plugin_module
    host = await loaded_shop(plugin_module, live_handover=False)
    before = as_builtins(host.get("shop"))
    notes = host.get("shop").notes
    write(shop(version="1.1.0", tag="v2"))
    assert (await host.reload("shop")).ok
    assert host.get("shop").notes is not notes
    assert as_builtins(host.get("shop")) == before


async def test_no_old_instance_module_or_class_kept_alive(plugin_module):
    """After a swap nothing holds the old instance, its module or its classes."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    old = host.get("shop")
    refs = [weakref.ref(x) for x in (old, type(old), sys.modules[name], sys.modules[name].Entry)]
    del old
    write(shop(version="1.1.0", tag="v2"))
    assert (await host.reload("shop")).ok
    for _ in range(3):  # finalizers and weakref callbacks of one collection can free more for the next
        gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


# -- rollback stays exact ----------------------------------------------------------------------------
async def test_on_load_mutating_state_then_failing_leaves_old_state_exact(plugin_module):
    """New code whose on_load changes state and raises is refused; the old state is exactly as before."""
    _, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    old = host.get("shop")
    notes, before = old.notes, as_builtins(old)
    on_load = """async def on_load(self):
        self.notes.clear()
        self.notes["evil"] = [666]
        for e in self.entries.values():
            e.hits = -1
        raise RuntimeError("on_load broke")"""
    write(shop(version="1.1.0", tag="v2", body=on_load))
    result = await host.reload("shop")
    assert result.rolled_back and "on_load broke" in result.error
    assert host.get("shop") is old and old.notes is notes
    assert as_builtins(old) == before
    assert await tag(host) == "v1"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            {"entries_version": 2, "body": "@entries.migration(from_version=1)\n    def _up(old):\n"
             "        old.clear()\n        raise ValueError('migration broke')"},
            id="migration-raises",
        ),
        pytest.param(
            {"notes_options": ", validate=lambda v: v.clear() or ['validator broke']"}, id="validator-fails"
        ),
    ],
)  # fmt: skip
async def test_failure_while_callers_are_held_leaves_old_state_exact(plugin_module, change):
    """Plugin code run during the handover (migrations, validate hooks) sees copies: a failure changes nothing."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    old = host.get("shop")
    module = sys.modules[name]
    objects = (old.entries, old.notes, old.points)
    before = as_builtins(old)
    write(shop(version="1.1.0", tag="v2", **change))
    result = await host.reload("shop")
    assert result.rolled_back and "broke" in result.error
    assert host.get("shop") is old and sys.modules[name] is module
    assert (old.entries, old.notes, old.points) == objects and all(
        a is b for a, b in zip((old.entries, old.notes, old.points), objects, strict=True)
    )
    assert all(type(v) is module.Entry for v in old.entries.values())
    assert as_builtins(old) == before
    assert await tag(host) == "v1"


# -- preflight: broken or slow new code costs callers nothing -----------------------------------------
async def test_slow_import_runs_while_the_old_code_serves(plugin_module, tmp_path):
    """While the new module takes its time to import, calls are served by the old code without waiting."""
    _, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    started, release = tmp_path / "started", tmp_path / "release"
    prelude = f"pathlib.Path({str(started)!r}).touch()\nwhile not pathlib.Path({str(release)!r}).exists():\n"
    write(shop(version="1.1.0", tag="v2", prelude=prelude + "    time.sleep(0.005)"))
    reloading = asyncio.create_task(host.reload("shop"))
    await wait_for(started.exists, "the new module to start importing")
    served = [await tag(host) for _ in range(5)]
    assert served == ["v1"] * 5 and not reloading.done()
    release.touch()
    result = await reloading
    assert result.ok, result.error
    assert await tag(host) == "v2"


ENDLESS = "while not pathlib.Path({release!r}).exists():\n{indent}pass"
ENDLESS_INIT = "def __init__(self, keyring=None):\n        super().__init__(keyring=keyring)\n        " + ENDLESS


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda release: {"prelude": ENDLESS.format(release=release, indent="    ")}, id="module"),
        pytest.param(lambda release: {"body": ENDLESS_INIT.format(release=release, indent=" " * 12)}, id="init"),
    ],
)
async def test_code_that_never_ends_times_out_and_old_code_serves_on(plugin_module, tmp_path, where):
    """A module or __init__ looping forever makes the reload time out; the old code serves on with its module."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module, reload_timeout=0.3)
    module = sys.modules[name]
    release = tmp_path / "release"
    write(shop(version="1.1.0", tag="v2", **where(str(release))))
    reloading = asyncio.create_task(host.reload("shop"))
    await asyncio.sleep(0.05)
    assert await tag(host) == "v1"
    result = await reloading
    assert result.rolled_back and "timed out" in result.error
    assert result.timings["pause"] == 0.0
    assert sys.modules[name] is module and await tag(host) == "v1"
    release.touch()  # let the abandoned thread finish; its module must not replace the serving one
    await wait_for(lambda: not any(t.name == "statetransfer-preflight" for t in threading.enumerate()), "the thread")
    assert sys.modules[name] is module and await tag(host) == "v1"


# -- nothing wedges the host ---------------------------------------------------------------------------
async def test_hanging_on_unload_does_not_hold_callers(plugin_module):
    """The old instance's on_unload hanging after the swap neither holds callers nor the reload for long."""
    name, write, _ = plugin_module
    v1 = shop(on_unload="await asyncio.Event().wait()")
    host = await loaded_shop(plugin_module, v1=v1, unload_timeout=0.3)
    old_module = sys.modules[name]
    swapped = asyncio.Event()
    host.subscribe(lambda e: swapped.set() if e.phase == "swapped" else None)
    write(shop(version="1.1.0", tag="v2"))
    reloading = asyncio.create_task(host.reload("shop"))
    await asyncio.wait_for(swapped.wait(), 10)
    assert await tag(host) == "v2" and not reloading.done()
    result = await reloading
    assert result.ok and old_module.UNLOADS == ["1.0.0"]
    assert await tag(host) == "v2"


async def test_reload_queued_behind_unload_fails_cleanly(plugin_module):
    """A reload waiting for unload() to finish fails with a clear error and never runs on the closed plugin."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    module = sys.modules[name]
    release = asyncio.Event()

    async def long_call():
        async with host.use("shop"):
            await release.wait()

    call = asyncio.create_task(long_call())
    await asyncio.sleep(0.01)
    unloading = asyncio.create_task(host.unload("shop"))
    await asyncio.sleep(0.01)
    write(shop(version="1.1.0", tag="v2"))
    reloading = asyncio.create_task(host.reload("shop"))
    await asyncio.sleep(0.01)
    release.set()
    await call
    await unloading
    with pytest.raises(st.StateTransferError, match="unloaded"):
        await reloading
    assert host.plugin_ids == [] and module.UNLOADS == ["1.0.0"]
    assert sys.modules[name] is module


async def test_cancelling_after_the_swap_is_not_a_rollback(plugin_module):
    """Cancelling a reload once the new code serves reports no rollback and keeps the new module current."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module, v1=shop(on_unload="await asyncio.Event().wait()"))
    phases: list[str] = []
    host.subscribe(lambda e: phases.append(e.phase))
    write(shop(version="1.1.0", tag="v2"))
    reloading = asyncio.create_task(host.reload("shop"))
    await wait_for(lambda: "swapped" in phases, "the swap")
    reloading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reloading
    assert "rolled_back" not in phases
    assert sys.modules[name].Shop is type(host.get("shop"))
    assert await tag(host) == "v2"


async def test_cancelling_before_the_swap_rolls_back(plugin_module, tmp_path):
    """Cancelling a reload during its preflight leaves the old code and module serving."""
    name, write, _ = plugin_module
    host = await loaded_shop(plugin_module)
    module = sys.modules[name]
    started, release = tmp_path / "started", tmp_path / "release"
    prelude = f"pathlib.Path({str(started)!r}).touch()\nwhile not pathlib.Path({str(release)!r}).exists():\n"
    write(shop(version="1.1.0", tag="v2", prelude=prelude + "    time.sleep(0.005)"))
    phases: list[str] = []
    host.subscribe(lambda e: phases.append(e.phase))
    reloading = asyncio.create_task(host.reload("shop"))
    await wait_for(started.exists, "the new module to start importing")
    reloading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reloading
    release.touch()
    await wait_for(lambda: not any(t.name == "statetransfer-preflight" for t in threading.enumerate()), "the thread")
    assert phases[-1] == "rolled_back"
    assert sys.modules[name] is module and await tag(host) == "v1"


def test_default_timeouts_let_callers_outwait_an_allowed_reload():
    """By default a caller waits longer than a reload may hold it (quiesce plus handover)."""
    host = st.PluginHost()
    assert host.acquire_timeout > host.quiesce_timeout + host.reload_timeout


def test_async_listeners_are_refused():
    """subscribe() refuses an async def listener instead of silently never running it."""
    host = st.PluginHost()

    async def listener(event):
        pass

    with pytest.raises(TypeError, match="plain functions"):
        host.subscribe(listener)


# -- plugins that are not declarative, and the shared loader ------------------------------------------
HANDWRITTEN = """
import msgspec
import statetransfer as st

class Notes(st.StateTransferable):
    metadata = st.PluginMetadata(id="notes", version="{version}")

    def __init__(self):
        self.notes = {{}}

    def state_schema_version(self):
        return 1

    async def export_state(self):
        section = st.StateSection("notes", 1, msgspec.msgpack.encode(self.notes))
        snap = st.StateSnapshot("s-" + str(id(self)), "notes", self.metadata.version, 1, 0, {{"notes": section}},
                                st.StateMetadata())
        return msgspec.structs.replace(snap, checksum=st.calculate_checksum(snap))

    async def import_state(self, snapshot):
        self.notes = msgspec.msgpack.decode(snapshot.sections["notes"].data)
        return st.StateImportResult(imported_sections=["notes"])

    async def validate_state(self, snapshot):
        return st.StateValidation(is_valid=True, schema_compatible=True, version_compatible=True)
"""


async def test_handwritten_plugin_reloads_through_export_and_import(plugin_module):
    """A plugin with bare export_state()/import_state() reloads by copy, and its checkpoint says CHECKPOINT."""
    name, write, _ = plugin_module
    write(HANDWRITTEN.format(version="1.0.0"))
    store = st.open_store("memory://")
    host = st.PluginHost(store=store)
    plugin = await host.load(f"{name}:Notes")
    plugin.notes = {"k": "v"}
    write(HANDWRITTEN.format(version="1.1.0"))
    result = await host.reload("notes")
    assert result.ok, result.error
    assert host.get("notes").metadata.version == "1.1.0" and host.get("notes").notes == {"k": "v"}
    (info,) = await store.list(plugin_id="notes")
    assert info.id == result.checkpoint_id and info.reason == st.StateCreationReason.CHECKPOINT


def test_loader_adds_a_search_path_once(plugin_module, tmp_path):
    """Loading plugin classes repeatedly (as the CLI does) puts the search path on sys.path only once."""
    name, write, _ = plugin_module
    write(shop())
    for _ in range(3):
        assert load_class(f"{name}:Shop", search_path=str(tmp_path)).__name__ == "Shop"
    assert sys.path.count(str(tmp_path)) == 1
    with pytest.raises(st.StateTransferError, match="not a statetransfer Plugin"):
        load_class(f"{name}:Entry")


async def test_classes_of_also_reloaded_helpers_are_rebound(plugin_module, tmp_path):
    """Values whose class lives in a helper module re-executed with also_reload= are re-pointed too."""
    name, write, _ = plugin_module
    helper = f"{name}_types"
    (tmp_path / f"{helper}.py").write_text("import msgspec\n\nclass Item(msgspec.Struct):\n    n: int\n")
    source = f"""
import statetransfer as st
from {helper} import Item

class Box(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="box", version="{{version}}")
    items = st.Section(list[Item], default=list)
"""
    write(source.format(version="1.0.0"))
    host = st.PluginHost()
    try:
        plugin = await host.load(f"{name}:Box", also_reload=[helper])
        plugin.items = [sys.modules[helper].Item(i) for i in range(3)]
        items = plugin.items
        write(source.format(version="1.1.0"))
        assert (await host.reload("box")).ok
        new = host.get("box")
        assert new.items is items
        assert all(type(i) is sys.modules[helper].Item for i in new.items)
    finally:
        sys.modules.pop(helper, None)
