"""Move a plugin's state from one process to another through a snapshot store.

Run it: ``python examples/move_state.py [STORE_URL]`` (default: a temporary
directory store). This process fills a plugin and backs it up; a second
Python process (this same file with ``--restore``) restores the newest
snapshot of that plugin and prints what it got. Use an ``s3://`` URL to move
state between machines.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

import msgspec

import statetransfer as st


class Session(msgspec.Struct):
    user: str
    cart: list[str]


class Shop(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="shop", version="1.0.0")
    sessions = st.Section(dict[str, Session], compress=True, default=dict)
    orders = st.Section(int, default=int)


async def send(url: str) -> None:
    shop = Shop()
    shop.sessions = {f"s{i}": Session(f"user{i}", [f"item{j}" for j in range(i % 5)]) for i in range(2000)}
    shop.orders = 1234
    info = await st.backup(shop, st.open_store(url), tags=["moving"])
    print(f"[sender   {os.getpid()}] backed up {info.id} ({info.size} bytes) to {url}")


async def receive(url: str) -> None:
    shop = Shop()
    result = await st.restore(shop, st.open_store(url))
    print(f"[receiver {os.getpid()}] restored {sorted(result.imported_sections)}: "
          f"{len(shop.sessions)} sessions, {shop.orders} orders, s7 cart {shop.sessions['s7'].cart}")  # fmt: skip


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--restore":
        asyncio.run(receive(sys.argv[2]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        url = sys.argv[1] if len(sys.argv) > 1 else f"file://{tmp}/store"
        asyncio.run(send(url))
        return subprocess.run([sys.executable, __file__, "--restore", url], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
