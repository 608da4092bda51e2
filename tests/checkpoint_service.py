"""A small service for the crash tests and the recovery benchmark: a PluginHost with periodic checkpoints.

Usage: python checkpoint_service.py STORE_URL serve INTERVAL [PAYLOAD_BYTES]
       python checkpoint_service.py STORE_URL restore

``serve`` loads the plugin with ``restore=True`` and counts up forever, one
call per count; after each call returns it prints ``ack <count> <monotonic
time>``, and after each checkpoint written ``put <monotonic start> <monotonic
end>``. ``restore`` loads the plugin with ``restore=True``, prints ``restored
<count> <seconds from the start of main to serving>`` and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import statetransfer as st


class Tally(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="tally", version="1.0.0")
    count = st.Section(int, default=int)
    payload = st.Section(bytes, codec="raw", default=bytes)


async def main(url: str, mode: str, interval: float | None, payload: int) -> None:
    started = time.perf_counter()
    store = st.open_store(url)
    put = store.put

    async def timed_put(snapshot: st.StateSnapshot, **options: Any) -> Any:
        begun = time.monotonic()
        info = await put(snapshot, **options)
        print(f"put {begun} {time.monotonic()}", flush=True)
        return info

    store.put = timed_put  # type: ignore[method-assign]
    host = st.PluginHost(store=store, checkpoint_interval=interval)
    await host.load("checkpoint_service:Tally", restore=True)
    async with host.use("tally") as tally:
        if mode == "restore":
            print(f"restored {tally.count} {time.perf_counter() - started}", flush=True)
            return
        if payload and len(tally.payload) != payload:
            tally.payload = bytes(payload)
    while True:
        async with host.use("tally") as tally:
            tally.count += 1
            value = tally.count
        print(f"ack {value} {time.monotonic()}", flush=True)
        await asyncio.sleep(0.002)


if __name__ == "__main__":
    arg_url, arg_mode = sys.argv[1], sys.argv[2]
    arg_interval = float(sys.argv[3]) if len(sys.argv) > 3 else None
    arg_payload = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    asyncio.run(main(arg_url, arg_mode, arg_interval, arg_payload))
