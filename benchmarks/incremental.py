"""Incremental backups in a store: stored bytes, backup time and restore time against full backups.

Run: ``python benchmarks/incremental.py [--map-mb 100] [--bytes-mb 256] [--quick]``.

* A map section of ``--map-mb`` MB of msgpack (zstd), 1% of its keys changed
  at random between backups, with and without encryption: bytes the store
  gains per backup, incremental vs full (a store with ``incremental=False``
  given the same state); ``backup()`` time of each; ``restore()`` time
  through a chain of the maximum length vs from a full backup.
* A bytes section of ``--bytes-mb`` MB with one 1 MB region rewritten: bytes
  the store gains.

Full and incremental backups alternate step by step on file:// stores, so
machine load drifts hit both alike. Prints a table and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fuzz package: its moto server

from fuzz.fault_campaign import BUCKET

import statetransfer as st

KEYRING = st.Keyring.generate()


class MapPlugin(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="bench-map", version="1.0.0")
    cache = st.Section(dict[str, list[Any]], compress="zstd", default=dict)


class SealedMapPlugin(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="bench-sealed", version="1.0.0")
    cache = st.Section(dict[str, list[Any]], compress="zstd", encrypt=True, default=dict)


class BytesPlugin(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="bench-bytes", version="1.0.0")
    blob = st.Section(bytes, codec="raw", default=bytes)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def entry(rnd: random.Random, i: int) -> list[Any]:
    return [i, rnd.random(), rnd.randbytes(48).hex(), ["tag-a", "tag-b"][: i % 3], rnd.randrange(1 << 30)]


def make_map(mb: int, rnd: random.Random) -> dict[str, list[Any]]:
    count = mb * (1 << 20) // 150  # about 150 bytes of msgpack per entry
    return {f"user:{i:09d}": entry(rnd, i) for i in range(count)}


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


async def stored(url: str) -> int:
    store = st.open_store(url)
    total = 0
    for prefix in ("blobs/", "manifests/"):
        total += sum(o.size for o in await store.list_objects(prefix))
    return total


async def map_case(tmp: Path, mb: int, sealed: bool, rounds: int, s3: str | None = None) -> dict[str, Any]:
    rnd = random.Random(7)
    cls = SealedMapPlugin if sealed else MapPlugin
    plugin = cls(keyring=KEYRING)
    plugin.cache = make_map(mb, rnd)
    tag = "sealed" if sealed else "plain"
    urls = {
        kind: f"s3://{BUCKET}/{kind}-{tag}?endpoint={s3}&region=us-east-1" if s3 else f"file://{tmp}/{kind}-{tag}"
        for kind in ("inc", "full")
    }
    inc = st.open_store(urls["inc"])
    full = st.open_store(urls["full"])
    full.incremental = False
    await st.backup(plugin, inc)  # the base
    await st.backup(plugin, full)
    keys = list(plugin.cache)
    inc_bytes, full_bytes, inc_times, full_times = [], [], [], []
    last_inc = last_full = ""
    for step in range(rounds):
        for k in rnd.sample(keys, len(keys) // 100):
            plugin.cache[k] = entry(rnd, step)
        before_inc, before_full = await stored(urls["inc"]), await stored(urls["full"])
        order = [(inc, inc_times), (full, full_times)]
        for store, times in order if step % 2 else reversed(order):
            info, seconds = await timed(st.backup(plugin, store))
            times.append(seconds)
            if store is inc:
                last_inc = info.id
            else:
                last_full = info.id
        inc_bytes.append(await stored(urls["inc"]) - before_inc)
        full_bytes.append(await stored(urls["full"]) - before_full)
    restore_inc, restore_full = [], []
    for _ in range(3):
        for store, sid, out in ((inc, last_inc, restore_inc), (full, last_full, restore_full)):
            fresh = cls(keyring=KEYRING)
            reader = st.open_store(urls["inc" if store is inc else "full"])
            _, seconds = await timed(st.restore(fresh, reader, sid))
            assert fresh.cache == plugin.cache
            out.append(seconds)
    return {
        "case": f"map {mb} MB, 1% of keys changed" + (", encrypted" if sealed else "") + (", s3" if s3 else ""),
        "entries": len(keys),
        "full_stored_bytes": statistics.median(full_bytes),
        "incremental_stored_bytes": statistics.median(inc_bytes),
        "stored_ratio": statistics.median(inc_bytes) / statistics.median(full_bytes),
        "full_backup_s": statistics.median(full_times),
        "incremental_backup_s": statistics.median(inc_times),
        "backup_time_ratio": statistics.median(inc_times) / statistics.median(full_times),
        "chain_length": rounds,
        "full_restore_s": statistics.median(restore_full),
        "chain_restore_s": statistics.median(restore_inc),
        "restore_ratio": statistics.median(restore_inc) / statistics.median(restore_full),
    }


async def bytes_case(tmp: Path, mb: int, backups: int = 2) -> dict[str, Any]:
    """``backups`` backups of a ``mb`` MB bytes section, one 1 MB region rewritten between them."""
    rnd = random.Random(11)
    plugin = BytesPlugin()
    plugin.blob = b"".join(rnd.randbytes(1 << 20) for _ in range(mb))
    store = st.open_store(f"file://{tmp}/bytes")
    await st.backup(plugin, store)
    base = du(tmp / "bytes")
    added, times, info = [], [], None
    for _ in range(backups - 1):
        data = bytearray(plugin.blob)
        start = rnd.randrange(len(data) - (1 << 20))
        data[start : start + (1 << 20)] = rnd.randbytes(1 << 20)
        plugin.blob = bytes(data)
        del data
        before = du(tmp / "bytes")
        info, seconds = await timed(st.backup(plugin, store))
        added.append(du(tmp / "bytes") - before)
        times.append(seconds)
    assert info is not None
    fresh = BytesPlugin()
    await st.restore(fresh, st.open_store(f"file://{tmp}/bytes"), info.id)
    assert fresh.blob == plugin.blob
    return {
        "case": f"bytes {mb} MB, one 1 MB region rewritten, {backups} backups",
        "full_stored_bytes": base,
        "incremental_stored_bytes": statistics.median(added),
        "stored_ratio": statistics.median(added) / base,
        "incremental_backup_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def show(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n{r['case']}")
        for key, value in r.items():
            if key != "case":
                print(f"  {key:26} {value:.4g}" if isinstance(value, float) else f"  {key:26} {value}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map-mb", type=int, default=100)
    parser.add_argument("--bytes-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=0, help="1%% changes per case (default: a full chain)")
    parser.add_argument("--quick", action="store_true", help="8 MB map, 16 MB bytes, 3 rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--s3", action="store_true", help="also the map case on s3:// (a local moto server)")
    parser.add_argument("--bytes-backups", type=int, default=2, help="backups in the bytes case")
    parser.add_argument("--only-bytes", action="store_true", help="only the bytes case (e.g. 1024 MB, 10 backups)")
    args = parser.parse_args()
    if args.quick:
        args.map_mb, args.bytes_mb, args.rounds = 8, 16, args.rounds or 3
    rounds = args.rounds or st.SnapshotStore.chain_max_deltas
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sealed in () if args.only_bytes else (False, True):
            results.append(await map_case(Path(tmp), args.map_mb, sealed, rounds))
            show(results[-1:])
        results.append(await bytes_case(Path(tmp), args.bytes_mb, args.bytes_backups))
        show(results[-1:])
        if args.s3 and not args.only_bytes:
            from fuzz.fault_campaign import moto_server

            with moto_server() as endpoint:
                results.append(await map_case(Path(tmp), args.map_mb, False, rounds, endpoint))
                show(results[-1:])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
