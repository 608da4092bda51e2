"""Incremental backups in a store: stored bytes, backup time and restore time against full backups.

Run: ``python benchmarks/incremental.py [--map-mb 100] [--bytes-mb 256] [--quick]
[--s3] [--s3-mbps MBPS ...] [--s3-rtt-ms 0] [--s3-connect-rtt-ms 0] [--probe-mb 50] [--only-s3]``.

* A map section of ``--map-mb`` MB of msgpack (zstd), 1% of its keys changed
  at random between backups, with and without encryption: bytes the store
  gains per backup, incremental vs full (a store with ``incremental=False``
  given the same state); ``backup()`` time of each; ``restore()`` time
  through a chain of the maximum length vs from a full backup.
* A bytes section of ``--bytes-mb`` MB with one 1 MB region rewritten: bytes
  the store gains.

S3 (both need moto; every process gets dummy AWS credentials, region
us-east-1 and no instance metadata; all traffic stays on 127.0.0.1):

* ``--s3``: the plain map case on s3:// against a local moto server, as it
  is (writes cost next to nothing there).
* ``--s3-mbps 25 50 100``: the map case, plain and encrypted, through a
  bandwidth-limited proxy in front of the moto server
  (``benchmarks/throttle_proxy.py``, its own process), once per bandwidth:
  MB/s (10^6 bytes) each way, shared by all connections, like one client's
  link to a remote bucket. ``--s3-rtt-ms 20`` adds a round trip to each
  request (default 0). ``--s3-connect-rtt-ms`` (default 0) adds to each new
  connection: moto closes every connection after one response, so each
  request comes on a new one, while a client keeps its connections to a real
  bucket alive. Each bandwidth is first checked by putting and getting one
  ``--probe-mb`` (50) MB object through the proxy and straight to moto (the
  difference is what the proxy adds). Besides the ratios, these cases report
  ``export_s`` (the plugin's export alone, with its typed check: a full
  backup costs about that plus its upload, while an incremental backup
  leaves the typed check to the store, which checks only the changed
  entries) and ``target_holds_to_mbps``, the bandwidth at or below which the
  "incremental backup <= 0.4 x full" target holds, from the row's own times
  (what each backup spends besides moving its bytes is taken as fixed); a
  summary table ends the run.
* ``--only-s3``: skip the file:// cases.

Full and incremental backups, and the export alone, alternate step by step,
so machine load drifts hit them alike. Prints a table and writes JSON with
``--json``.
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
MB = 1_000_000  # in bandwidths and the probe


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


async def map_case(
    tmp: Path, mb: int, sealed: bool, rounds: int, s3: str | None = None, *, mbps: float = 0, rtt_ms: float = 0
) -> dict[str, Any]:
    """The map case on file://, or on s3:// at endpoint ``s3`` (a proxy limiting it to ``mbps`` MB/s, if given)."""
    rnd = random.Random(7)
    cls = SealedMapPlugin if sealed else MapPlugin
    plugin = cls(keyring=KEYRING)
    plugin.cache = make_map(mb, rnd)
    tag = "sealed" if sealed else "plain"
    where = ""
    if s3:
        where = f", s3 at {mbps:g} MB/s" if mbps else ", s3"
        where += f", rtt {rtt_ms:g} ms" if mbps and rtt_ms else ""
        tag += f"-{mbps:g}mbps-{rtt_ms:g}ms" if mbps else ""
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
    inc_bytes, full_bytes, inc_times, full_times, exports = [], [], [], [], []
    last_inc = last_full = ""
    for step in range(rounds):
        for k in rnd.sample(keys, len(keys) // 100):
            plugin.cache[k] = entry(rnd, step)
        before_inc, before_full = await stored(urls["inc"]), await stored(urls["full"])
        order = [(inc, inc_times), (None, exports), (full, full_times)]  # None: the export alone, between them
        for store, times in order if step % 2 else reversed(order):
            if store is None:
                times.append((await timed(plugin.export_for(st.StateCreationReason.BACKUP)))[1])  # dropped at once
                continue
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
    result = {
        "case": f"map {mb} MB, 1% of keys changed" + (", encrypted" if sealed else "") + where,
        "entries": len(keys),
        "full_stored_bytes": statistics.median(full_bytes),
        "incremental_stored_bytes": statistics.median(inc_bytes),
        "stored_ratio": statistics.median(inc_bytes) / statistics.median(full_bytes),
        "export_s": statistics.median(exports),
        "full_backup_s": statistics.median(full_times),
        "incremental_backup_s": statistics.median(inc_times),
        "backup_time_ratio": statistics.median(inc_times) / statistics.median(full_times),
        "chain_length": rounds,
        "full_restore_s": statistics.median(restore_full),
        "chain_restore_s": statistics.median(restore_inc),
        "restore_ratio": statistics.median(restore_inc) / statistics.median(restore_full),
    }
    if s3:
        for url in urls.values():  # moto keeps every object in this process: let the next case start empty
            await clear(url)
    if mbps:
        result |= {"s3_mbps": mbps, "s3_rtt_ms": rtt_ms, "target_holds_to_mbps": holds_to(result, mbps)}
    return result


def holds_to(r: dict[str, Any], mbps: float, target: float = 0.4) -> float | None:
    """The bandwidth (MB/s) at or below which incremental backup time <= ``target`` x full, from one row.

    Each backup's time is taken as fixed (export, hashing, requests: what the row measured besides moving its
    stored bytes at ``mbps``) plus its stored bytes over the bandwidth B; then inc <= target x full holds for
    B <= (target * S_full - S_inc) / (fixed_inc - target * fixed_full). None: it holds at any bandwidth.
    """
    rate = mbps * MB
    fixed_full = r["full_backup_s"] - r["full_stored_bytes"] / rate
    fixed_inc = r["incremental_backup_s"] - r["incremental_stored_bytes"] / rate
    spare = fixed_inc - target * fixed_full
    gain = target * r["full_stored_bytes"] - r["incremental_stored_bytes"]
    if spare <= 0:
        return None if gain >= 0 else 0.0
    return max(gain, 0) / spare / MB


async def clear(url: str) -> None:
    store = st.open_store(url)
    for obj in await store.list_objects(""):
        await store.delete_object(obj.key)


async def probe(endpoint: str, mb: int) -> tuple[float, float]:
    """Seconds to put, then get, one ``mb`` MB object at ``endpoint``."""
    url = f"s3://{BUCKET}/probe?endpoint={endpoint}&region=us-east-1"
    store = st.open_store(url)
    await store.list_objects("")  # the store's marker is written first, outside the timing
    data = random.Random(3).randbytes(mb * MB)
    _, put_s = await timed(store.write_object("probe", data))
    got, get_s = await timed(store.read_object("probe"))
    assert got == data
    await clear(url)
    return put_s, get_s


async def check_proxy(proxied: str, direct: tuple[float, float], mbps: float, mb: int) -> dict[str, float]:
    """The rates the proxy lets through each way: the probe's time through it less its time straight to moto."""
    put_s, get_s = await probe(proxied, mb)
    out = {"probe_mb": mb, "probe_put_s": put_s, "probe_get_s": get_s, "probe_direct_put_s": direct[0],
           "probe_direct_get_s": direct[1], "proxy_put_mbps": mb / max(put_s - direct[0], 1e-9),
           "proxy_get_mbps": mb / max(get_s - direct[1], 1e-9)}  # fmt: skip
    print(f"\nproxy at {mbps:g} MB/s: put {mb} MB in {put_s:.2f} s (direct {direct[0]:.2f} s), "
          f"get in {get_s:.2f} s (direct {direct[1]:.2f} s): the proxy adds {mb / mbps:.2f} s each way "
          f"at {mbps:g} MB/s, measured {put_s - direct[0]:.2f} s and {get_s - direct[1]:.2f} s")  # fmt: skip
    return out


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


def flavour(r: dict[str, Any]) -> str:
    return "encrypted" if "encrypted" in r["case"] else "plain"


def summary(results: list[dict[str, Any]], target: float = 0.4) -> None:
    """The proxied s3 cases side by side, and where the backup time target holds."""
    rows = [r for r in results if "s3_mbps" in r]
    if not rows:
        return
    r0 = rows[0]
    rtt = f"rtt {r0['s3_rtt_ms']:g} ms, {r0['s3_connect_rtt_ms']:g} ms more per connection"
    print(f"\ns3 through the proxy ({rtt}), medians:")
    print(f"  {'MB/s':>5} {'case':9} {'export':>7} {'full bk':>8} {'incr bk':>8} {'ratio':>6} "
          f"{'full rst':>8} {'chain rst':>9} {'ratio':>6} {'stored':>7}  proxy put/get MB/s")  # fmt: skip
    for r in rows:
        print(f"  {r['s3_mbps']:5g} {flavour(r):9} {r['export_s']:6.2f}s {r['full_backup_s']:7.2f}s "
              f"{r['incremental_backup_s']:7.2f}s {r['backup_time_ratio']:6.2f} "
              f"{r['full_restore_s']:7.2f}s {r['chain_restore_s']:8.2f}s {r['restore_ratio']:6.2f} "
              f"{r['stored_ratio']:7.2%}  {r['proxy_put_mbps']:.0f}/{r['proxy_get_mbps']:.0f}")  # fmt: skip
    held = [f"{r['s3_mbps']:g} MB/s {flavour(r)}" for r in rows if r["backup_time_ratio"] <= target]
    print(f"  incremental backup <= {target:g} x full, measured: {', '.join(held) or 'nowhere'}")
    estimates = [f"{'any' if r['target_holds_to_mbps'] is None else format(r['target_holds_to_mbps'], '.1f')} "
                 f"({r['s3_mbps']:g} {flavour(r)})" for r in rows]  # fmt: skip
    print(
        f"  estimated from each row (its fixed costs, its bytes at B MB/s), holds for B up to: {', '.join(estimates)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map-mb", type=int, default=100)
    parser.add_argument("--bytes-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=0, help="1%% changes per case (default: a full chain)")
    parser.add_argument("--quick", action="store_true", help="8 MB map, 16 MB bytes, 3 rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--s3", action="store_true", help="also the map case on s3:// (a local moto server)")
    parser.add_argument("--s3-mbps", type=float, nargs="+", default=[],
                        help="also the map cases on s3:// through a proxy limited to these MB/s each way")  # fmt: skip
    parser.add_argument("--s3-rtt-ms", type=float, default=0.0, help="round trip the proxy adds, ms (default 0)")
    parser.add_argument("--s3-connect-rtt-ms", type=float, default=0.0,
                        help="what the proxy adds to a new connection, ms (default 0: see the docstring)")  # fmt: skip
    parser.add_argument("--probe-mb", type=int, default=50, help="MB put and got to check each proxy's rate")
    parser.add_argument("--bytes-backups", type=int, default=2, help="backups in the bytes case")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--only-bytes", action="store_true", help="only the bytes case (e.g. 1024 MB, 10 backups)")
    only.add_argument("--only-s3", action="store_true", help="only the s3 cases (--s3, --s3-mbps)")
    args = parser.parse_args()
    if args.quick:
        args.map_mb, args.bytes_mb, args.rounds = 8, 16, args.rounds or 3
    rounds = args.rounds or st.SnapshotStore.chain_max_deltas
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sealed in () if args.only_bytes or args.only_s3 else (False, True):
            results.append(await map_case(Path(tmp), args.map_mb, sealed, rounds))
            show(results[-1:])
        if not args.only_s3:
            results.append(await bytes_case(Path(tmp), args.bytes_mb, args.bytes_backups))
            show(results[-1:])
        if (args.s3 or args.s3_mbps) and not args.only_bytes:
            from fuzz.fault_campaign import S3_ENV, moto_server
            from throttle_proxy import throttled

            os.environ.update(S3_ENV)  # dummy credentials, us-east-1, no instance metadata (the proxy inherits it)
            with moto_server() as endpoint:
                if args.s3:
                    results.append(await map_case(Path(tmp), args.map_mb, False, rounds, endpoint))
                    show(results[-1:])
                for mbps in args.s3_mbps:
                    direct = await probe(endpoint, args.probe_mb)  # just before: the machine's load drifts
                    with throttled(endpoint, mbps, args.s3_rtt_ms, args.s3_connect_rtt_ms) as proxied:
                        check = await check_proxy(proxied, direct, mbps, args.probe_mb)
                        for sealed in (False, True):
                            r = await map_case(
                                Path(tmp), args.map_mb, sealed, rounds, proxied, mbps=mbps, rtt_ms=args.s3_rtt_ms
                            )
                            results.append(r | check | {"s3_connect_rtt_ms": args.s3_connect_rtt_ms})
                            show(results[-1:])
            summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
