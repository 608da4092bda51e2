"""Hot-reload latency: p50/p95 of ReloadResult.timings["total"] for 1 MB and 100 MB of plugin state.

Run: ``python benchmarks/reload_latency.py [--quick]``. Prints medians and the
per-phase split; the export+dumps of the same state is measured alongside as
the baseline a reload cannot beat by much.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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
    cache = st.Section(dict[str, Entry], compress=True, default=dict)
"""


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(size_mb: int, reloads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big_plugin.py"
        path.write_text(textwrap.dedent(SOURCE.format(n=0)))
        sys.path.insert(0, tmp)
        try:
            host = st.PluginHost()
            plugin = await host.load("big_plugin:Big")
            entry = sys.modules["big_plugin"].Entry
            count = size_mb * 1_000_000 // 40  # ~40 bytes of msgpack per entry
            plugin.cache = {f"key-{i:09d}": entry(f"n{i}", i * 0.5, i) for i in range(count)}
            totals: list[float] = []
            phases: dict[str, list[float]] = {}
            for n in range(1, reloads + 1):
                path.write_text(textwrap.dedent(SOURCE.format(n=n)))
                result = await host.reload("big")
                assert result.ok, result.error
                totals.append(result.timings["total"])
                for phase, secs in result.timings.items():
                    phases.setdefault(phase, []).append(secs)
            baseline = []
            for _ in range(max(3, reloads // 2)):
                started = time.perf_counter()
                st.dumps(await host.get("big").export_state())
                baseline.append(time.perf_counter() - started)
            assert len(host.get("big").cache) == count
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("big_plugin", None)
    out = {
        "p50": statistics.median(totals),
        "p95": quantile(totals, 0.95),
        "export_dumps_p50": statistics.median(baseline),
    }
    out.update({f"phase_{k}": statistics.median(v) for k, v in phases.items() if k != "total"})
    out["entries"] = count
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 MB only, few reloads")
    args = parser.parse_args()
    plan = [(1, 10)] if args.quick else [(1, 40), (100, 7)]
    print(f"{'state':>8} {'reloads':>8} {'p50 ms':>9} {'p95 ms':>9} {'export+dumps ms':>16}  phases (median ms)")
    for size, reloads in plan:
        r = await measure(size, reloads)
        phases = " ".join(f"{k[6:]}={v * 1e3:.1f}" for k, v in r.items() if k.startswith("phase_"))
        print(f"{size:>6}MB {reloads:>8} {r['p50'] * 1e3:>9.1f} {r['p95'] * 1e3:>9.1f} "
              f"{r['export_dumps_p50'] * 1e3:>16.1f}  {phases}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
