"""Hot-reload latency: how long callers are held, by state size, with and without copying the state.

Run: ``python benchmarks/reload_latency.py [--quick] [--gb [--gb-only] [--gb-serialized]]``.

For each size (1 MB, 100 MB; 1 GB with ``--gb``) and each case it reloads a
plugin whose one section holds that much state (measured as msgpack bytes):

* ``unchanged``: builtin values (``dict[str, tuple[str, float, int]]``), schema unchanged;
* ``redefined``: msgspec Struct values whose class the reload redefines with
  the same structure (the values are re-pointed at the new class);
* ``serialized``: the same two plugins with ``PluginHost(live_handover=False)``,
  i.e. every section encoded and decoded while callers are held (the path
  every reload took before live handover), measured in the same run.

It prints p50/p99 of ``ReloadResult.timings["pause"]`` (seconds the call gate
held callers) and of the longest wait a probe caller saw during each reload
(event-loop stalls included), with the ratios against the serialized path.
With few reloads per size p99 is the largest sample.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import statetransfer as st

SOURCE = """
import msgspec
import statetransfer as st

class Entry(msgspec.Struct, gc=False):
    name: str
    score: float
    hits: int

class Big(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="big", version="1.0.{n}")
    cache = st.Section({section_type}, compress=True, default=dict)
"""
TYPES = {"unchanged": "dict[str, tuple[str, float, int]]", "redefined": "dict[str, Entry]"}
BYTES_PER_ENTRY = 40  # msgpack bytes of one entry, measured on this workload


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _probe(host: st.PluginHost, stop: asyncio.Event, waits: list[float]) -> None:
    """A caller calling in a loop; records how long each call waited to enter."""
    while not stop.is_set():
        asked = time.perf_counter()
        async with host.use("big"):
            waits.append(time.perf_counter() - asked)
        await asyncio.sleep(0)


async def measure(size_mb: float, reloads: int, *, case: str = "redefined", live: bool = True) -> dict[str, Any]:
    """Reload ``reloads`` times with ``size_mb`` MB of state; p50/p95 of the total, p50/p99 of the pause."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big_plugin.py"
        path.write_text(textwrap.dedent(SOURCE.format(n=0, section_type=TYPES[case])))
        sys.path.insert(0, tmp)
        try:
            host = st.PluginHost(live_handover=live, reload_timeout=3600, acquire_timeout=3700)  # 1 GB is slow
            plugin = await host.load("big_plugin:Big")
            entry = sys.modules["big_plugin"].Entry if case == "redefined" else (lambda *a: a)
            count = int(size_mb * 1_000_000) // BYTES_PER_ENTRY
            plugin.cache = {f"key-{i:09d}": entry(f"n{i}", i * 0.5, i) for i in range(count)}
            del plugin
            gc.collect()
            totals: list[float] = []
            pauses: list[float] = []
            caller: list[float] = []
            for n in range(1, reloads + 1):
                path.write_text(textwrap.dedent(SOURCE.format(n=n, section_type=TYPES[case])))
                waits: list[float] = []
                stop = asyncio.Event()
                probe = asyncio.create_task(_probe(host, stop, waits))
                await asyncio.sleep(0)
                result = await host.reload("big")
                stop.set()
                await probe
                assert result.ok, result.error
                totals.append(result.timings["total"])
                pauses.append(result.timings["pause"])
                caller.append(max(waits))
            assert len(host.get("big").cache) == count
            await host.unload("big")
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("big_plugin", None)
            gc.collect()
    return {
        "p50": statistics.median(totals),
        "p95": quantile(totals, 0.95),
        "pause_p50": statistics.median(pauses),
        "pause_p99": quantile(pauses, 0.99),
        "caller_p50": statistics.median(caller),
        "caller_p99": quantile(caller, 0.99),
        "entries": count,
        "reloads": reloads,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 MB only, few reloads")
    parser.add_argument("--gb", action="store_true", help="also 1 GB (live cases only: ~8 GB of RAM, minutes)")
    parser.add_argument("--gb-serialized", action="store_true", help="with --gb, the serialized path at 1 GB too")
    parser.add_argument("--gb-only", action="store_true", help="with --gb, skip the 1 MB and 100 MB runs")
    args = parser.parse_args()
    plan: list[tuple[float, int, bool]] = [(1, 10, True)] if args.quick else [(1, 40, True), (100, 7, True)]
    if args.gb:
        plan = [*([] if args.gb_only else plan), (1000, 5, args.gb_serialized)]
    print(f"{'state':>7} {'case':>10} {'reloads':>7} {'pause p50':>10} {'p99':>8} {'caller p50':>11} {'p99':>8}"
          f"  {'serialized p50':>15} {'ratio':>7}")  # fmt: skip
    for size, reloads, with_baseline in plan:
        for case in ("unchanged", "redefined"):
            live = await measure(size, reloads, case=case)
            line = (f"{size:>5.0f}MB {case:>10} {reloads:>7} {live['pause_p50'] * 1e3:>8.2f}ms "
                    f"{live['pause_p99'] * 1e3:>6.2f}ms {live['caller_p50'] * 1e3:>9.2f}ms "
                    f"{live['caller_p99'] * 1e3:>6.2f}ms")  # fmt: skip
            print(line, end="" if with_baseline else "\n", flush=True)
            if with_baseline:
                base = await measure(size, max(3, reloads // 2) if size < 1000 else 2, case=case, live=False)
                ratio = live["pause_p50"] / base["pause_p50"]
                tail = f"(serialized p99 {base['pause_p99'] * 1e3:.1f}ms, caller p50 {base['caller_p50'] * 1e3:.1f}ms)"
                print(f"  {base['pause_p50'] * 1e3:>13.1f}ms {ratio:>7.3f}  {tail}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
