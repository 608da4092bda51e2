"""Benchmarks against pickle, pickle+gzip and raw msgspec, measured side by side in one run.

Run: ``python benchmarks/run.py`` (the full reference workload and scaling up
to 1 GB; several minutes and ~10 GB of memory) or ``--quick`` (a small run).
Prints medians and ratios, and writes ``benchmarks/results.json`` (a full run)
or ``benchmarks/results-quick.json`` (``--quick``, never committed), unless
``--output`` says where. Only the
standard library and the project's dependencies are used.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import pickle
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reload_latency  # noqa: E402
import store_throughput  # noqa: E402
from workload import BYTES_PER_ENTRY, Config, Entry, Metrics, Workload, make_plugin, state_of  # noqa: E402

import statetransfer as st  # noqa: E402


class Bundle(msgspec.Struct, gc=False):
    """The same state as one typed msgspec value: the raw-encode/typed-decode floor."""

    config: Config
    cache: dict[str, Entry]
    secrets: dict[str, str]
    metrics: Metrics


def median_time(func: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
        del result
    return statistics.median(times)


async def amedian_time(func: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def core(entries: int, repeats: int) -> dict[str, float]:
    plugin = make_plugin(entries)
    keyring = plugin.keyring
    state = state_of(plugin)
    bundle = Bundle(plugin.config, plugin.cache, plugin.secrets, plugin.metrics)
    raw = msgspec.msgpack.encode(bundle)
    decoder = msgspec.msgpack.Decoder(Bundle)
    pickled = pickle.dumps(state, protocol=5)
    gz = gzip.compress(pickled)
    blob = st.dumps(await plugin.export_state())

    async def export_dumps() -> bytes:
        return st.dumps(await plugin.export_state())

    async def loads_import() -> None:
        target = Workload(keyring=keyring)
        await target.import_state(st.loads(blob))

    cases: dict[str, Callable[[], Any]] = {
        "pickle_dumps": lambda: pickle.dumps(state, protocol=5),
        "pickle_loads": lambda: pickle.loads(pickled),
        "msgspec_encode": lambda: msgspec.msgpack.encode(bundle),
        "msgspec_decode": lambda: decoder.decode(raw),
    }
    acases = {"export_dumps": export_dumps, "loads_import": loads_import}
    times: dict[str, list[float]] = {name: [] for name in [*cases, *acases]}
    for _ in range(repeats):  # interleaved rounds: every case sees the same machine conditions
        for name, func in cases.items():
            times[name].append(median_time(func, 1))
        for name, afunc in acases.items():
            times[name].append(await amedian_time(afunc, 1))
    r: dict[str, float] = {name: statistics.median(values) for name, values in times.items()}
    r.update({
        "msgpack_mb": len(raw) / 2**20,
        "gzip_pickle_dumps": median_time(lambda: gzip.compress(pickle.dumps(state, protocol=5)), max(3, repeats // 2)),
        "snapshot_bytes": len(blob),
        "gzip_pickle_bytes": len(gz),
        "pickle_bytes": len(pickled),
    })  # fmt: skip
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    await export_dumps()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    r["peak_extra_bytes"] = peak - base
    r["peak_ratio"] = (peak - base) / len(raw)
    return r


async def scaling(sizes_mb: list[int]) -> dict[int, float]:
    """Seconds per MB of msgpack state for export+dumps at each size."""
    out: dict[int, float] = {}
    for size in sizes_mb:
        plugin = make_plugin(size * (1 << 20) // BYTES_PER_ENTRY)
        mb = len(msgspec.msgpack.encode(plugin.cache)) / 2**20
        repeats = 3 if size <= 100 else 1
        secs = await amedian_time(lambda p=plugin: _export_dumps(p), repeats)
        out[size] = secs / mb
        del plugin
        gc.collect()
    return out


async def _export_dumps(plugin: Workload) -> bytes:
    return st.dumps(await plugin.export_state())


async def longest_stall(size_mb: int) -> float:
    """Longest gap between ticks of a ticker task while a plugin of ``size_mb`` exports.

    The heap is collected once after the workload is built, as in a service
    that has been running: otherwise the first full collection of the freshly
    built heap (unrelated to export) lands in the measurement.
    """
    plugin = make_plugin(size_mb * (1 << 20) // BYTES_PER_ENTRY)
    gc.collect()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await plugin.export_state()
    stop.set()
    await task
    return max(gaps)


def fmt_ratio(value: float, target: float, *, lower: bool = True) -> str:
    ok = value <= target if lower else value >= target
    return f"{value:6.2f}x  (target {'<=' if lower else '>='} {target}x)  {'met' if ok else 'MISSED'}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small workload, no 100 MB / 1 GB cases")
    parser.add_argument("--output", help="results file (default: results.json, or results-quick.json with --quick)")
    args = parser.parse_args()
    quick = args.quick
    output = Path(args.output or HERE / ("results-quick.json" if quick else "results.json"))
    entries = 20_000 if quick else 200_000
    repeats = 3 if quick else 7
    results: dict[str, Any] = {"quick": quick, "entries": entries, "python": platform.python_version()}

    r = await core(entries, repeats)
    results["core"] = r
    ratios = {
        "export_vs_pickle": r["export_dumps"] / r["pickle_dumps"],
        "export_vs_msgspec": r["export_dumps"] / r["msgspec_encode"],
        "import_vs_pickle": r["loads_import"] / r["pickle_loads"],
        "import_vs_msgspec": r["loads_import"] / r["msgspec_decode"],
        "size_vs_gzip_pickle": r["snapshot_bytes"] / r["gzip_pickle_bytes"],
        "peak_memory_vs_msgpack": r["peak_ratio"],
    }
    sizes = [1, 4] if quick else [1, 10, 100, 1000]
    per_mb = await scaling(sizes)
    mid = statistics.median(per_mb.values())
    ratios["scaling_max_deviation"] = max(abs(v / mid - 1) for v in per_mb.values())
    results["scaling_s_per_mb"] = per_mb
    stall_mb = 10 if quick else 100
    stall = await longest_stall(stall_mb)
    results["stall_ms"] = stall * 1e3
    reload = await reload_latency.measure(1, 10 if quick else 40)
    results["reload_1mb"] = reload
    with tempfile.TemporaryDirectory() as tmp:
        store_mb = 8 if quick else 100
        payload = __import__("os").urandom(store_mb << 20)
        snap = st.testing.make_snapshot("bench", sections={"cache": payload})
        data = st.dumps(snap)
        plain_times, store_times = [], []
        for _ in range(repeats):  # interleaved: disk and page-cache conditions drift on a shared machine
            plain_times.append(store_throughput.plain_file_round_trip(Path(tmp) / "p.bin", data))
            store_times.append(await store_throughput.store_round_trip(f"file://{tmp}/fs", snap))
        plain, file_store = statistics.median(plain_times), statistics.median(store_times)
    ratios["store_vs_file"] = file_store / plain
    results["store"] = {"mb": store_mb, "plain_s": plain, "file_store_s": file_store}
    results["ratios"] = ratios

    print(f"reference workload: {entries} cache entries, {r['msgpack_mb']:.1f} MB msgpack; medians of {repeats}")
    print(f"  pickle.dumps {r['pickle_dumps'] * 1e3:8.1f} ms   pickle.loads {r['pickle_loads'] * 1e3:8.1f} ms")
    print(f"  gzip(pickle) {r['gzip_pickle_dumps'] * 1e3:8.1f} ms   {r['gzip_pickle_bytes'] / 2**20:.2f} MB")
    print(f"  msgspec enc  {r['msgspec_encode'] * 1e3:8.1f} ms   typed dec    {r['msgspec_decode'] * 1e3:8.1f} ms")
    print(f"  export+dumps {r['export_dumps'] * 1e3:8.1f} ms   loads+import {r['loads_import'] * 1e3:8.1f} ms   "
          f"snapshot {r['snapshot_bytes'] / 2**20:.2f} MB")  # fmt: skip
    print("targets:")
    print(f"  export+dumps vs pickle.dumps      {fmt_ratio(ratios['export_vs_pickle'], 0.25)}")
    print(f"  export+dumps vs msgspec encode    {fmt_ratio(ratios['export_vs_msgspec'], 3.0)}")
    print(f"  loads+import vs pickle.loads      {fmt_ratio(ratios['import_vs_pickle'], 0.70)}")
    print(f"  loads+import vs typed decode      {fmt_ratio(ratios['import_vs_msgspec'], 1.30)}")
    print(f"  snapshot size vs gzip(pickle)     {fmt_ratio(ratios['size_vs_gzip_pickle'], 1.00)}")
    print(f"  peak extra memory vs msgpack size {fmt_ratio(ratios['peak_memory_vs_msgpack'], 2.5)}")
    per = ", ".join(f"{k} MB: {v * 1e3:.2f}" for k, v in per_mb.items())
    dev = ratios["scaling_max_deviation"]
    print(f"  ms per MB ({per})  max deviation {dev * 100:.0f}% (target 30%)  {'met' if dev <= 0.30 else 'MISSED'}")
    print(f"  longest event-loop stall, {stall_mb} MB export  {stall * 1e3:6.1f} ms (target 50 ms)  "
          f"{'met' if stall <= 0.05 else 'MISSED'}")  # fmt: skip
    print(f"  hot reload 1 MB p50               {reload['p50'] * 1e3:6.1f} ms (target 15 ms)  "
          f"{'met' if reload['p50'] <= 0.015 else 'MISSED'}")  # fmt: skip
    print(f"  store put+get {store_mb} MB vs file    {fmt_ratio(ratios['store_vs_file'], 1.5)}")
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    asyncio.run(main())
