"""Crash campaign: SIGKILL a writer at random moments during put, prune and delete; then check the store.

Run: ``python fuzz/crash_campaign.py [--kills 200] [--backends file,sqlite[,s3]] [--ops put,prune,delete]
[--incremental]``.

With ``--incremental`` every section is kept incrementally (a chain of
deltas against the previous snapshot's), and each snapshot's own section is
the previous one with a 1 KiB region rewritten, so chains grow, share
objects and are pruned while the worker is killed.

For every backend and operation, a worker process is killed ``--kills``
times at a random delay (0.2-0.6 s after it opened the store; 1.5-5 s on S3,
whose worker may first wait out the lock a killed predecessor left,
``lock_stale=3``). On S3 a delete or prune whose lease lapsed (a starved
process) stops with ``StoreLocked``, as it must: the worker then says so and
ends, and its removal counts as in flight (``stopped_locked``).
The ``s3`` backend runs against a moto server the script starts on
127.0.0.1 (as ``fuzz/fault_campaign.py`` does). The parent keeps the model of
what was acknowledged (a line is printed only after the store call returned,
with a digest of the snapshot put). Afterwards:

- ``verify(read_data=True)`` reports no problem (no blob of a live snapshot is gone),
- every acknowledged, not-since-removed snapshot reads back exactly as it was put (same digest),
- every acknowledged removal is gone,
- a snapshot whose removal was in flight is either readable or gone, never damaged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statetransfer as st
from statetransfer.testing import make_snapshot

BUCKET = "campaign"  # the bucket fuzz/fault_campaign.py's moto server creates
SHARED = bytes(range(256)) * 1024  # 256 KiB shared by every snapshot (dedup)
DRIFTING = random.Random(5).randbytes(256 << 10)


def digest(snap: st.StateSnapshot) -> str:
    return hashlib.sha256(st.dumps(snap)).hexdigest()[:32]


async def put(store: st.SnapshotStore, snap: st.StateSnapshot) -> None:
    await store.put(snap)
    print(f"put {snap.id} {digest(snap)}", flush=True)


def own_section(incremental: bool) -> bytes:
    if not incremental:
        return os.urandom(32 << 10)
    at = random.randrange(len(DRIFTING) - 1024)
    return DRIFTING[:at] + os.urandom(1024) + DRIFTING[at + 1024 :]


async def worker(url: str, op: str, tag: str, incremental: str = "") -> None:
    store = st.open_store(url)
    if incremental:
        store.incremental_min_bytes = 1
    print("ready", flush=True)
    n = 0
    while True:
        if op == "put" or (op == "prune" and n % 3 != 2):
            snap_id = f"{tag}-{n}"
            own = own_section(bool(incremental))
            await put(store, make_snapshot(snap_id, "crash", sections={"shared": SHARED, "own": own}))
        elif op == "prune":
            doomed = (await store.prune(keep_last=3, dry_run=True)).removed
            print(f"pruning {','.join(doomed)}", flush=True)
            try:
                report = await store.prune(keep_last=3)
            except st.StoreLocked:  # S3: its lease lapsed (a starved process), the collection stopped midway
                print("stopped", flush=True)
                return
            print(f"pruned {','.join(report.removed)}", flush=True)
        else:  # delete, oldest first; refill when few are left so kills keep landing mid-delete
            infos = await store.list()
            if len(infos) < 5:
                for i in range(5):
                    snap_id = f"{tag}-{n}-{i}"
                    await put(
                        store, make_snapshot(snap_id, "crash", sections={"shared": SHARED, "own": os.urandom(1024)})
                    )
                n += 1
                continue
            victim = infos[-1].id
            print(f"deleting {victim}", flush=True)
            try:
                await store.delete(victim)
            except st.StoreLocked:  # as for prune
                print("stopped", flush=True)
                return
            print(f"deleted {victim}", flush=True)
        n += 1


class Model:
    """What the parent knows was acknowledged."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.digests: dict[str, str] = {}  # id -> digest of what was put
        self.gone: set[str] = set()
        self.uncertain: set[str] = set()
        self.stopped = 0  # removals that stopped with StoreLocked (in flight: may or may not have happened)

    def feed(self, output: str) -> None:
        pending: set[str] = set()
        for line in output.splitlines():
            verb, _, arg = line.partition(" ")
            ids = [x for x in arg.split(",") if x]
            if verb == "put":
                snap_id, _, put_digest = arg.partition(" ")
                self.live.add(snap_id)
                self.digests[snap_id] = put_digest
            elif verb in ("deleting", "pruning"):
                pending = set(ids)
            elif verb in ("deleted", "pruned"):
                self.live.difference_update(ids)
                self.gone.update(ids)
                pending = set()
            elif verb == "stopped":
                self.stopped += 1
        self.uncertain |= pending
        self.live -= pending


async def check(url: str, model: Model) -> dict[str, object]:
    store = st.open_store(url)
    report = await store.verify(read_data=True)
    unreadable = []
    for snap_id in sorted(model.live):
        try:
            snap = await store.get(snap_id)
        except st.StateTransferError as exc:
            unreadable.append(f"{snap_id}: {exc}")
            continue
        if digest(snap) != model.digests.get(snap_id):
            unreadable.append(f"{snap_id}: reads back other bytes than were put")
    resurrected = []
    for snap_id in sorted(model.gone):
        try:
            await store.get(snap_id)
            resurrected.append(snap_id)
        except st.SnapshotNotFound:
            pass
    damaged_uncertain = []
    for snap_id in sorted(model.uncertain):
        try:
            await store.get(snap_id)
        except st.SnapshotNotFound:
            pass
        except st.StateTransferError as exc:
            damaged_uncertain.append(f"{snap_id}: {exc}")
    await store.close()
    return {
        "verify_ok": report.ok,
        "verify_problems": report.problems[:10],
        "snapshots_checked": report.checked,
        "live_acknowledged": len(model.live),
        "unreadable": unreadable[:10],
        "removed_acknowledged": len(model.gone),
        "resurrected": resurrected[:10],
        "in_flight_removals": len(model.uncertain),
        "stopped_locked": model.stopped,
        "damaged_in_flight": damaged_uncertain[:10],
    }


def run_campaign(
    backend: str, op: str, kills: int, rng: random.Random, tmp: Path, *, incremental: bool = False, endpoint: str = ""
) -> dict[str, object]:
    if backend == "s3":
        url = f"s3://{BUCKET}/{op}-{rng.randrange(1 << 30):x}?endpoint={endpoint}&region=us-east-1&lock_stale=3"
        window = (1.5, 5.0)
    else:
        url = f"file://{tmp}/{backend}-{op}" if backend == "file" else f"sqlite://{tmp}/{backend}-{op}.db"
        window = (0.2, 0.6)
    model = Model()
    killed = 0
    started = time.perf_counter()
    for round_no in range(kills):
        extra = ["incremental"] if incremental else []
        # Unbuffered: readline takes the "ready" line and nothing after it (communicate reads the pipe itself).
        proc = subprocess.Popen([sys.executable, __file__, "--worker", url, op, f"r{round_no}", *extra],
                                stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # the kill lands in store work, not in the interpreter's start-up
        time.sleep(rng.uniform(*window))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        model.feed((ready + out).decode())
    result = asyncio.run(check(url, model))
    result.update(backend=backend, op=op, kills=killed, seconds=round(time.perf_counter() - started, 1))
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker(*sys.argv[2:6]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--backends", default="file,sqlite", help="file, sqlite and/or s3 (moto on 127.0.0.1)")
    parser.add_argument("--ops", default="put,prune,delete")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--incremental", action="store_true", help="keep sections as chains of deltas")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        endpoint = ""
        if "s3" in backends:
            from fuzz.fault_campaign import moto_server  # noqa: PLC0415 - only the S3 campaign needs moto

            endpoint = stack.enter_context(moto_server())
        for backend in backends:
            for op in args.ops.split(","):
                r = run_campaign(backend, op, args.kills, rng, Path(tmp), incremental=args.incremental,
                                 endpoint=endpoint)  # fmt: skip
                results.append(r)
                ok = r["verify_ok"] and not r["unreadable"] and not r["resurrected"] and not r["damaged_in_flight"]
                print(f"{backend:6} {op:6} kills {r['kills']:3}  acknowledged live {r['live_acknowledged']:4}  "
                      f"removed {r['removed_acknowledged']:4}  in-flight {r['in_flight_removals']:3}  "
                      f"verify {'ok' if r['verify_ok'] else 'PROBLEMS'}  unreadable {len(r['unreadable'])}  "  # type: ignore[arg-type]
                      f"{r['seconds']} s  {'survived' if ok else 'FAILED'}", flush=True)  # fmt: skip
                if not ok:
                    print(json.dumps(r, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = [r for r in results if not r["verify_ok"] or r["unreadable"] or r["resurrected"] or r["damaged_in_flight"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
