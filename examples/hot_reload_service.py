"""A service plugin whose source is edited on disk while a load generator calls it.

Run it: ``python examples/hot_reload_service.py``. The host watches the
plugin's file (watchfiles); each edit is hot-reloaded while 8 callers keep
calling. It prints calls served, calls failed, reloads done, and the state
carried over.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import textwrap
from pathlib import Path

import statetransfer as st
from statetransfer._host import ReloadEvent

SOURCE = """
import statetransfer as st

class Visits(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="visits", version="{version}")
    hits = st.Section(dict[str, int], default=dict)

    def visit(self, page: str) -> str:
        self.hits[page] = self.hits.get(page, 0) + 1
        return "{greeting}"
"""


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "visits_plugin.py"
        path.write_text(textwrap.dedent(SOURCE.format(version="1.0.0", greeting="hello")))
        sys.path.insert(0, tmp)
        host = st.PluginHost()
        await host.load("visits_plugin:Visits")
        finished: list[ReloadEvent] = []  # one "swapped" or "rolled_back" event per reload
        done = asyncio.Event()

        def on_event(event: ReloadEvent) -> None:
            if event.phase in ("swapped", "rolled_back"):
                finished.append(event)
                done.set()

        host.subscribe(on_event)
        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(host.watch(debounce_ms=50, stop_event=stop_watch))
        served = failed = 0
        stop = asyncio.Event()

        async def caller(i: int) -> None:
            nonlocal served, failed
            while not stop.is_set():
                try:
                    async with host.use("visits") as plugin:
                        plugin.visit(f"/page/{i % 4}")
                    served += 1
                except st.StateTransferError:
                    failed += 1
                await asyncio.sleep(0.001)

        callers = [asyncio.create_task(caller(i)) for i in range(8)]
        await asyncio.sleep(0.5)
        for n, greeting in enumerate(["bonjour", "hola", "hallo"], start=1):
            done.clear()
            path.write_text(textwrap.dedent(SOURCE.format(version=f"1.{n}.0", greeting=greeting)))
            await asyncio.wait_for(done.wait(), timeout=20)
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*callers)
        stop_watch.set()
        await watcher
        async with host.use("visits") as plugin:
            total = sum(plugin.hits.values())
            greeting = plugin.visit("/")
        ok = [e for e in finished if e.phase == "swapped"]
        print(f"calls served:  {served}")
        print(f"calls failed:  {failed}")
        print(f"reloads done:  {len(ok)} of {len(finished)} (versions {[e.detail for e in ok]})")
        print(f"state carried: {total} hits recorded across all versions (= calls served: {total == served})")
        print(f"now serving:   {greeting!r}")
        sys.path.remove(tmp)
        return 0 if failed == 0 and total == served and len(ok) == 3 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
