"""Crash campaign: SIGKILL a writer at random moments during put, prune and delete; then check the store.

Run: ``python fuzz/crash_campaign.py [--kills 200] [--backends file,sqlite] [--ops put,prune,delete]
[--incremental]``.

With ``--incremental`` every section is kept incrementally (a chain of
deltas against the previous snapshot's), and each snapshot's own section is
the previous one with a 1 KiB region rewritten, so chains grow, share
objects and are pruned while the worker is killed.

For every local backend and operation, a worker process is killed ``--kills``
times at a random delay. The parent keeps the model of what was acknowledged
(a line is printed only after the store call returned). Afterwards:

- ``verify(read_data=True)`` reports no problem (no blob of a live snapshot is gone),
- every acknowledged, not-since-removed snapshot is readable and intact,
- every acknowledged removal is gone,
- a snapshot whose removal was in flight is either readable or gone, never damaged.
"""

from __future__ import annotations

import argparse
import asyncio
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

SHARED = bytes(range(256)) * 1024  # 256 KiB shared by every snapshot (dedup)
DRIFTING = random.Random(5).randbytes(256 << 10)


def own_section(incremental: bool) -> bytes:
    if not incremental:
        return os.urandom(32 << 10)
    at = random.randrange(len(DRIFTING) - 1024)
    return DRIFTING[:at] + os.urandom(1024) + DRIFTING[at + 1024 :]


async def worker(url: str, op: str, tag: str, incremental: str = "") -> None:
    store = st.open_store(url)
    if incremental:
        store.incremental_min_bytes = 1
    n = 0
    while True:
        if op == "put" or (op == "prune" and n % 3 != 2):
            snap_id = f"{tag}-{n}"
            own = own_section(bool(incremental))
            await store.put(make_snapshot(snap_id, "crash", sections={"shared": SHARED, "own": own}))
            print(f"put {snap_id}", flush=True)
        elif op == "prune":
            doomed = (await store.prune(keep_last=3, dry_run=True)).removed
            print(f"pruning {','.join(doomed)}", flush=True)
            report = await store.prune(keep_last=3)
            print(f"pruned {','.join(report.removed)}", flush=True)
        else:  # delete, oldest first; refill when few are left so kills keep landing mid-delete
            infos = await store.list()
            if len(infos) < 5:
                for i in range(5):
                    snap_id = f"{tag}-{n}-{i}"
                    await store.put(
                        make_snapshot(snap_id, "crash", sections={"shared": SHARED, "own": os.urandom(1024)})
                    )
                    print(f"put {snap_id}", flush=True)
                n += 1
                continue
            victim = infos[-1].id
            print(f"deleting {victim}", flush=True)
            await store.delete(victim)
            print(f"deleted {victim}", flush=True)
        n += 1


class Model:
    """What the parent knows was acknowledged."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.gone: set[str] = set()
        self.uncertain: set[str] = set()

    def feed(self, output: str) -> None:
        pending: set[str] = set()
        for line in output.splitlines():
            verb, _, arg = line.partition(" ")
            ids = [x for x in arg.split(",") if x]
            if verb == "put":
                self.live.update(ids)
            elif verb in ("deleting", "pruning"):
                pending = set(ids)
            elif verb in ("deleted", "pruned"):
                self.live.difference_update(ids)
                self.gone.update(ids)
                pending = set()
        self.uncertain |= pending
        self.live -= pending


async def check(url: str, model: Model) -> dict[str, object]:
    store = st.open_store(url)
    report = await store.verify(read_data=True)
    unreadable = []
    for snap_id in sorted(model.live):
        try:
            await store.get(snap_id)
        except st.StateTransferError as exc:
            unreadable.append(f"{snap_id}: {exc}")
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
        "damaged_in_flight": damaged_uncertain[:10],
    }


def run_campaign(
    backend: str, op: str, kills: int, rng: random.Random, tmp: Path, *, incremental: bool = False
) -> dict[str, object]:
    url = f"file://{tmp}/{backend}-{op}" if backend == "file" else f"sqlite://{tmp}/{backend}-{op}.db"
    model = Model()
    killed = 0
    started = time.perf_counter()
    for round_no in range(kills):
        extra = ["incremental"] if incremental else []
        proc = subprocess.Popen([sys.executable, __file__, "--worker", url, op, f"r{round_no}", *extra],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(rng.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        model.feed(out)
    result = asyncio.run(check(url, model))
    result.update(backend=backend, op=op, kills=killed, seconds=round(time.perf_counter() - started, 1))
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker(*sys.argv[2:6]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--backends", default="file,sqlite")
    parser.add_argument("--ops", default="put,prune,delete")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--incremental", action="store_true", help="keep sections as chains of deltas")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for op in args.ops.split(","):
                r = run_campaign(backend, op, args.kills, rng, Path(tmp), incremental=args.incremental)
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
