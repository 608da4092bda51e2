"""``statetransfer check-compat`` over a file:// store of many small snapshots (target: 10,000 in <= 60 s).

Run: ``python benchmarks/check_compat.py [--count N] [--store DIR]``. Fills a
store with ``N`` small snapshots of one plugin made by three releases (and a
few of another plugin), then times the command line end to end (process
start, reading every manifest, grouping, ``plan()`` per group, the table) and
the library call :func:`statetransfer._releases.check_compat` alone. With
``--store DIR`` an existing store from an earlier run is reused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import statetransfer as st
from statetransfer._releases import check_compat

PLUGINS = textwrap.dedent("""
    import statetransfer as st


    class CartV1(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="1.4.0")
        items = st.Section(list[str], version=1, default=list)
        owner = st.Section(str, version=1, default=str)


    class CartV2(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="2.0.0")
        items = st.Section(dict[str, int], version=2, default=dict)
        owner = st.Section(str, version=1, default=str)


    class Cart(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="3.0.0")
        items = st.Section(dict[str, list[int]], version=3, default=dict, compress=True)
        owner = st.Section(str, version=1, default=str)

        @items.migration(from_version=1)
        def _count(old):
            return dict.fromkeys(old, 1)

        @items.migration(from_version=2)
        def _price(old):
            return {name: [count, 0] for name, count in old.items()}

        @items.migration(from_version=3, to_version=2)
        def _no_price(new):
            return {name: count for name, (count, _price) in new.items()}
""")


async def fill(url: str, count: int) -> None:
    sys.path.insert(0, str(Path(url.removeprefix("file://")).parent))
    import bench_cart

    store = st.open_store(url)
    makers = [bench_cart.CartV1, bench_cart.CartV2, bench_cart.Cart]
    values = [lambda i: [f"sku{i}"], lambda i: {f"sku{i}": i}, lambda i: {f"sku{i}": [i, 100]}]
    batch = []
    for i in range(count):
        release = i * 3 // count  # oldest release first
        plugin = makers[release]()
        plugin.items = values[release](i)
        plugin.owner = f"user{i % 50}"
        batch.append(plugin.export_state(reason=st.StateCreationReason.CHECKPOINT))
        if len(batch) == 200 or i == count - 1:
            for snap in await asyncio.gather(*batch):
                await store.put(snap)
            batch = []
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--store", help="Directory of a store filled by an earlier run (reused).")
    args = parser.parse_args()
    work = Path(args.store).parent if args.store else Path(tempfile.mkdtemp(prefix="check-compat-"))
    (work / "bench_cart.py").write_text(PLUGINS)
    url = f"file://{args.store or work / 'store'}"
    if not args.store:
        started = time.perf_counter()
        asyncio.run(fill(url, args.count))
        print(f"filled {url} with {args.count} snapshots in {time.perf_counter() - started:.1f} s")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), *sys.path])}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "statetransfer", "check-compat", url, "--plugin", "bench_cart:Cart"],
                          capture_output=True, text=True, env=env, cwd=work, check=False)  # fmt: skip
    cli = time.perf_counter() - started
    print(proc.stdout, end="")
    print(f"check-compat (command line, end to end): {cli:.2f} s, exit {proc.returncode}")

    async def library() -> float:
        sys.path.insert(0, str(work))
        import bench_cart

        store = st.open_store(url, create=False)
        started = time.perf_counter()
        report = await check_compat(store, bench_cart.Cart())
        elapsed = time.perf_counter() - started
        assert report.snapshots >= args.count * 0.99, report.snapshots
        await store.close()
        return elapsed

    print(f"check_compat() alone: {asyncio.run(library()):.2f} s")


if __name__ == "__main__":
    main()
