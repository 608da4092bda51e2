"""``statetransfer demo``: the whole story in one run, each step checked and measured."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from ._backup import backup
from ._host import PluginHost
from ._sections import framing
from .stores import open_store

__all__ = ["run_demo"]

MODULE = "statetransfer_demo_inventory"
SKUS = 20_000
#: ``progress(description, total)``: a context manager yielding ``update(done)`` (the CLI shows it on a terminal).
ProgressFactory = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]

V1 = '''
import statetransfer as st

class Inventory(st.StatefulPlugin):
    """Release 1: stock is a count per SKU."""
    metadata = st.PluginMetadata(id="inventory", version="1.0.0")
    stock = st.Section(dict[str, int], compress=True, default=dict)

    def add(self, sku: str, qty: int) -> int:
        self.stock[sku] = self.stock.get(sku, 0) + qty
        return self.stock[sku]

    def total(self) -> int:
        return sum(self.stock.values())
'''

V2 = '''
import msgspec
import statetransfer as st

class Item(msgspec.Struct):
    qty: int
    reserved: int = 0

class Inventory(st.StatefulPlugin):
    """Release 2: each SKU holds an Item; a migration converts release 1's counts."""
    metadata = st.PluginMetadata(id="inventory", version="2.0.0")
    stock = st.Section(dict[str, Item], version=2, compress=True, default=dict)

    @stock.migration(from_version=1)
    def _counts_to_items(old):
        return {sku: {"qty": qty, "reserved": 0} for sku, qty in old.items()}

    def add(self, sku: str, qty: int) -> int:
        item = self.stock.setdefault(sku, Item(0))
        item.qty += qty
        return item.qty

    def total(self) -> int:
        return sum(item.qty for item in self.stock.values())
'''

RESTORE = """
import asyncio, json, os, sys
import statetransfer as st
from {module} import Inventory

async def main():
    plugin = Inventory()
    store = st.open_store(sys.argv[1])
    result = await st.restore(plugin, store)
    print(json.dumps({{"entries": len(plugin.stock), "total": plugin.total(), "version": plugin.metadata.version,
                      "imported": result.imported_sections, "pid": os.getpid()}}))

asyncio.run(main())
"""


class _Load:
    """8 callers adding stock through the host until stopped; counts what they did."""

    def __init__(self, host: PluginHost, skus: int) -> None:
        self.host = host
        self.skus = skus
        self.served = 0
        self.failed = 0
        self.added = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _caller(self, n: int) -> None:
        i = n
        while not self._stop.is_set():
            try:
                async with self.host.use("inventory") as plugin:
                    plugin.add(f"sku-{i % self.skus:05d}", 1)
                self.served += 1
                self.added += 1
            except Exception:
                self.failed += 1
            i += 8
            await asyncio.sleep(0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._caller(n)) for n in range(8)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def _no_progress(description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda done: None)


async def run_demo(
    console: Console, store_url: str | None = None, *, skus: int = SKUS, progress: ProgressFactory = _no_progress
) -> bool:
    """Run the demo with ``skus`` items of state, printing each step; True when every check held."""
    checks: list[tuple[str, bool]] = []

    def step(title: str, ok: bool, figures: str) -> None:
        checks.append((title, ok))
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"{mark} [bold]{title}[/]: {figures}")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="statetransfer-demo-") as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / f"{MODULE}.py"
        source.write_text(textwrap.dedent(V1))
        sys.path.insert(0, tmp)
        try:
            host = PluginHost()
            plugin: Any = await host.load(f"{MODULE}:Inventory")
            with progress("adding stock", skus) as update:
                for i in range(skus):
                    plugin.add(f"sku-{i:05d}", 10)
                    if i % 10_000 == 0:
                        update(i)
                        await asyncio.sleep(0)  # let the progress display breathe on large runs
                update(skus)
            initial = plugin.total()
            step("load v1", len(plugin.stock) == skus,
                 f"plugin {plugin.metadata.id} {plugin.metadata.version}, {skus} SKUs, {initial} units")  # fmt: skip

            load = _Load(host, skus)
            load.start()
            await asyncio.sleep(0.5)
            step("serve calls", load.failed == 0 and load.served > 0,
                 f"{load.served} calls served by 8 callers, {load.failed} failed")  # fmt: skip

            source.write_text(textwrap.dedent(V2))
            result = await host.reload("inventory")
            reloaded: Any = host.get("inventory")
            entries_after = len(reloaded.stock)
            t = result.timings
            figures = (
                f"{result.old_version} -> {result.new_version} in {t['total'] * 1e3:.1f} ms "
                f"(export {t.get('export', 0) * 1e3:.1f} ms, import {t.get('import', 0) * 1e3:.1f} ms); "
                f"entries before {skus}, after {entries_after}"
            )
            if result.error:
                figures += f"; error: {result.error}"
            step("hot-reload to v2 (schema migration 1 -> 2) while calls continue",
                 result.ok and entries_after == skus, figures)  # fmt: skip

            await asyncio.sleep(0.5)
            await load.stop()
            final: Any = host.get("inventory")
            expected = initial + load.added
            step("no call lost", load.failed == 0 and final.total() == expected,
                 f"{load.served} calls served, {load.failed} failed; units {final.total()} = "
                 f"{initial} + {load.added} calls")  # fmt: skip

            url = store_url or f"file://{tmpdir / 'store'}"
            store = open_store(url)
            with progress(f"backing up to {url}", None):
                info = await backup(final, store, tags=["demo"])
                raw = await _original_size(store, info.id)
            step("back up", info.size > 0, f"snapshot {info.id} -> {url}: {info.size} bytes stored "
                 f"({raw} bytes of encoded state, {raw / max(info.size, 1):.1f}x compression)")  # fmt: skip
            await store.close()

            env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, *sys.path])}
            with progress("restoring in a fresh process", None):
                proc = subprocess.run(
                    [sys.executable, "-c", RESTORE.format(module=MODULE), url],
                    capture_output=True, text=True, env=env, timeout=600, check=False,
                )  # fmt: skip
            restored = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
            ok = restored.get("entries") == skus and restored.get("total") == expected
            figures = (
                f"pid {restored.get('pid')} (this one is {os.getpid()}): {restored.get('entries')} entries, "
                f"{restored.get('total')} units, version {restored.get('version')}"
            )
            step("restore in a fresh process", ok, figures if proc.returncode == 0 else proc.stderr.strip()[-300:])
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(MODULE, None)
    passed = all(ok for _, ok in checks)
    verdict = "[green]all checks passed[/]" if passed else "[red]some checks FAILED[/]"
    console.print(f"{verdict} in {time.perf_counter() - started:.1f} s")
    return passed


async def _original_size(store: Any, snapshot_id: str) -> int:
    snapshot = await store.get(snapshot_id)
    return sum(framing(s).original_size or len(s.data) for s in snapshot.sections.values())
