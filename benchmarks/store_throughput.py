"""Store put+get of a large snapshot vs writing+reading the same bytes to a plain file; dedup of repeated backups.

Run: ``python benchmarks/store_throughput.py [--quick] [--size-mb N]``. Prints
medians and ratios measured in the same run; the plain-file baseline also
fsyncs (the stores do), so the ratio is the cost of the store itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import statetransfer as st
from statetransfer.testing import make_snapshot


def plain_file_round_trip(path: Path, data: bytes) -> float:
    started = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    assert len(path.read_bytes()) == len(data)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


async def store_round_trip(url: str, snapshot: st.StateSnapshot) -> float:
    store = st.open_store(url)
    started = time.perf_counter()
    await store.put(snapshot)
    got = await store.get(snapshot.id)
    elapsed = time.perf_counter() - started
    assert got.checksum == snapshot.checksum
    await store.delete(snapshot.id)
    await store.close()
    return elapsed


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def dedup(tmp: Path, size_mb: int, backups: int) -> tuple[int, int, int]:
    """Stored bytes of ``backups`` backups where 1% of the state changes between backups."""
    cold = os.urandom(size_mb * (1 << 20) * 99 // 100)  # incompressible: stored size == logical size
    url = f"file://{tmp}/dedup"
    store = st.open_store(url)
    logical = 0
    for i in range(backups):
        hot = os.urandom(size_mb * (1 << 20) // 100)
        snap = make_snapshot(f"b{i}", sections={"cache": cold, "hot": hot})
        logical += sum(len(s.data) for s in snap.sections.values())
        await store.put(snap)
    stored = du(tmp / "dedup" / "blobs") + du(tmp / "dedup" / "manifests")
    await store.close()
    return logical, stored, len(cold) + len(hot)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    size = 8 if args.quick else args.size_mb
    repeats = 3 if args.quick else 5
    payload = os.urandom(size << 20)
    snapshot = make_snapshot("big", sections={"cache": payload})
    data = st.dumps(snapshot)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        runs: dict[str, list[float]] = {
            "plain file write+fsync+read": [],
            "file:// put+get": [],
            "sqlite:// put+get": [],
        }
        for _ in range(repeats):  # interleaved, so drifting disk conditions hit every case alike
            runs["plain file write+fsync+read"].append(plain_file_round_trip(tmp / "plain.bin", data))
            runs["file:// put+get"].append(await store_round_trip(f"file://{tmp}/fs", snapshot))
            runs["sqlite:// put+get"].append(await store_round_trip(f"sqlite://{tmp}/db.sqlite", snapshot))
        rows = [(label, statistics.median(times)) for label, times in runs.items()]
        baseline = rows[0][1]
        print(f"{size} MB snapshot, median of {repeats}")
        for label, secs in rows:
            print(f"  {label:30} {secs * 1e3:8.1f} ms  {size / secs:8.1f} MB/s  ratio {secs / baseline:5.2f}x")
        logical, stored, once = await dedup(tmp, size, 10)
        print(f"10 backups of a {size} MB state, 1% changed between backups:")
        print(f"  logical {logical / 2**20:.1f} MiB, stored {stored / 2**20:.1f} MiB "
              f"({stored / logical:.3f} of logical; one full copy is {once / 2**20:.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
