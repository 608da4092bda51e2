"""A child process for crash and concurrency tests: puts (or deletes) snapshots and acknowledges each on stdout.

Usage: python store_worker.py URL put PREFIX COUNT
       python store_worker.py URL churn PREFIX COUNT   (put then delete its own snapshots)
Prints "ready" once the store is open; each later line ("put <id>" / "deleted <id>") is written
only after the store call returned. With STORE_WORKER_INCREMENTAL=1 in the environment, every
section is kept incrementally and the unique section is the previous one with 1 KiB rewritten.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import statetransfer as st
from statetransfer.testing import make_snapshot

SHARED = bytes(range(256)) * 2048  # 512 KiB shared by every snapshot: exercises dedup
DRIFTING = bytes(random.Random(5).randbytes(64 * 1024))


async def main(url: str, mode: str, prefix: str, count: int) -> None:
    store = st.open_store(url)
    incremental = bool(os.environ.get("STORE_WORKER_INCREMENTAL"))
    if incremental:
        store.incremental_min_bytes = 1
    print("ready", flush=True)
    for i in range(count):
        snap_id = f"{prefix}-{i}"
        unique = os.urandom(64) * 1024
        if incremental:
            at = random.randrange(len(DRIFTING) - 1024)
            unique = DRIFTING[:at] + os.urandom(1024) + DRIFTING[at + 1024 :]
        await store.put(make_snapshot(snap_id, prefix, sections={"shared": SHARED, "unique": unique}))
        print(f"put {snap_id}", flush=True)
        if mode == "churn":
            await store.delete(snap_id)
            print(f"deleted {snap_id}", flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
