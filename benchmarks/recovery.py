"""Checkpoint cost and recovery time: what periodic checkpoints cost callers, and how fast a killed service is back.

Run: ``python benchmarks/recovery.py [--quick]``.

* **checkpoint**: a :class:`PluginHost` with a ``file://`` store serves the
  reference workload (``workload.py``) grown to about 100 MB of msgpack
  (1 MB with ``--quick``). Each round changes one entry, then times
  ``host.checkpoint()`` (export + store write) while two probe callers run:
  one makes plain calls through ``host.use()`` (its longest wait is the
  longest event-loop stall), one takes the plugin's ``state_lock`` inside its
  call, as a caller changing a large section must (its longest wait is what
  the export's lock costs callers).
* **recovery**: ``tests/checkpoint_service.py`` serves a plugin of 100 MB
  (1 MB with ``--quick``) with ``checkpoint_interval=0.2`` on a ``file://``
  store, is killed with SIGKILL after a few checkpoints, and is restarted with
  ``load(..., restore=True)``: the time from starting the new process to its
  first call served on the restored state, and the part of it inside the
  process (open the store, load, restore).

Prints the medians over the rounds. ``--no-verify`` sets
``verify_exports = False`` on the workload, to show what the typed re-decode
of each export (which holds the GIL in its worker thread) costs callers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICE = HERE.parent / "tests" / "checkpoint_service.py"
sys.path.insert(0, str(HERE))

from workload import BYTES_PER_ENTRY, Entry, Workload, make_cache  # noqa: E402

import statetransfer as st  # noqa: E402


async def probe(host: st.PluginHost, waits: list[float], stop: asyncio.Event, *, lock: bool) -> None:
    """Calls every millisecond; records how much longer than that each took (event-loop stalls included)."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        async with host.use("reference") as plugin:
            if lock:
                async with plugin.state_lock:
                    pass
        waits.append(max(0.0, time.perf_counter() - started - 0.001))


async def checkpoint_rounds(megabytes: int, rounds: int, root: Path) -> dict[str, float]:
    keyring = st.Keyring.generate("bench")
    host = st.PluginHost(keyring, store=st.open_store(f"file://{root}/store"))
    plugin = await host.load("workload:Workload")
    assert isinstance(plugin, Workload)
    plugin.cache = make_cache(megabytes * 1_000_000 // BYTES_PER_ENTRY)
    totals: list[float] = []
    plain: list[float] = []
    locked: list[float] = []
    for i in range(rounds):
        async with host.use("reference") as plugin:
            plugin.cache[f"round-{i}"] = Entry(name="x", score=1.0, hits=i, tags=[])
        stop = asyncio.Event()
        waits: tuple[list[float], list[float]] = ([], [])
        probes = [
            asyncio.ensure_future(probe(host, w, stop, lock=lock)) for w, lock in zip(waits, (False, True), strict=True)
        ]
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        written = await host.checkpoint()
        totals.append(time.perf_counter() - started)
        stop.set()
        await asyncio.gather(*probes)
        assert written["reference"] is not None
        plain.append(max(waits[0]))
        locked.append(max(waits[1]))
    await host.close()
    restores: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        again = st.PluginHost(keyring, store=st.open_store(f"file://{root}/store"))
        await again.load("workload:Workload", restore=True)
        restores.append(time.perf_counter() - started)
        await again.close()
    return {
        "restore_on_load_s": statistics.median(restores),
        "checkpoint_total_s": statistics.median(totals),
        "plain_call_longest_wait_s": statistics.median(plain),
        "state_lock_call_longest_wait_s": statistics.median(locked),
    }


def recovery_rounds(megabytes: int, rounds: int, root: Path) -> dict[str, float]:
    url = f"file://{root}/service-store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(SERVICE), url]
    serve = [*command, "serve", "0.2", str(megabytes * 1_000_000)]
    with subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            puts = 0
            while puts < 3:
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit("the service stopped early")
                puts += line.startswith("put ")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
    walls: list[float] = []
    inside: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        restore = [*command, "restore"]
        with subprocess.Popen(
            restore, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        ) as restart:
            assert restart.stdout is not None
            kind, _count, seconds = restart.stdout.readline().split()
            walls.append(time.perf_counter() - started)
        assert kind == "restored", kind
        inside.append(float(seconds))
    return {"restart_to_serving_s": statistics.median(walls), "in_process_restore_s": statistics.median(inside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MB and fewer rounds: a smoke run")
    parser.add_argument(
        "--no-verify", action="store_true", help="checkpoint without re-decoding each export (verify_exports=False)"
    )
    args = parser.parse_args()
    Workload.verify_exports = not args.no_verify
    megabytes, rounds = (1, 2) if args.quick else (100, 5)
    with tempfile.TemporaryDirectory() as tmp:
        cost = asyncio.run(checkpoint_rounds(megabytes, rounds, Path(tmp)))
        print(f"checkpoint of ~{megabytes} MB, median of {rounds}:")
        print(f"  export + write (host.checkpoint())       {cost['checkpoint_total_s'] * 1e3:9.1f} ms")
        print(f"  longest wait of a plain call              {cost['plain_call_longest_wait_s'] * 1e3:9.1f} ms")
        print(f"  longest wait of a call taking state_lock  {cost['state_lock_call_longest_wait_s'] * 1e3:9.1f} ms")
        print(f"  load(restore=True) of that checkpoint     {cost['restore_on_load_s'] * 1e3:9.1f} ms")
        back = recovery_rounds(megabytes, rounds, Path(tmp))
        print(f"recovery after SIGKILL, {megabytes} MB of state, median of {rounds}:")
        print(f"  new process started -> serving restored state  {back['restart_to_serving_s'] * 1e3:9.1f} ms")
        print(f"  of which inside the process (store, load, restore) {back['in_process_restore_s'] * 1e3:5.1f} ms")


if __name__ == "__main__":
    main()
