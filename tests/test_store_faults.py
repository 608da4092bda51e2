"""Local stores under faults: SIGKILL during put, concurrent writer processes, damage on disk."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import statetransfer as st

WORKER = str(Path(__file__).with_name("store_worker.py"))
BACKENDS = [pytest.param("file", id="file"), pytest.param("sqlite", id="sqlite")]


def url_for(backend: str, tmp_path: Path) -> str:
    return f"file://{tmp_path}/store" if backend == "file" else f"sqlite://{tmp_path}/store.db"


def spawn(url: str, mode: str, prefix: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, WORKER, url, mode, prefix, str(count)], stdout=subprocess.PIPE, text=True, env=env
    )


def acknowledged(output: str, verb: str = "put") -> set[str]:
    return {line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(verb + " ")}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigkill_during_put(backend, tmp_path):
    """A writer SIGKILLed 50 times at random moments: verify is clean and every acknowledged put is readable."""
    url = url_for(backend, tmp_path)
    rng = random.Random(1234)
    acked: set[str] = set()
    kills = 0
    for round_no in range(50):
        proc = spawn(url, "put", f"r{round_no}", 1000)
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": interpreter and store are up, however slow the machine is
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
        acked |= acknowledged(out)
    assert kills == 50
    store = st.open_store(url)
    report = await store.verify(read_data=True)
    assert report.ok, report.problems
    listed = {info.id for info in await store.list()}
    assert acked <= listed
    for snap_id in sorted(acked):
        snap = await store.get(snap_id)
        assert snap.id == snap_id
    assert len(acked) > 0
    await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_writer_processes(backend, tmp_path):
    """Two processes putting and one deleting (garbage collection) at once lose no acknowledged snapshot."""
    url = url_for(backend, tmp_path)
    procs = [spawn(url, "put", "a", 25), spawn(url, "put", "b", 25), spawn(url, "churn", "c", 25)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    store = st.open_store(url)
    ids = {info.id for info in await store.list()}
    assert ids == acknowledged(outputs[0]) | acknowledged(outputs[1])
    assert len(ids) == 50
    report = await store.verify(read_data=True)
    assert report.ok, report.problems
    assert report.unreferenced_blobs == 0
    for snap_id in ids:
        await store.get(snap_id)
    await store.close()


async def test_damaged_blob_file_on_disk(tmp_path):
    """A blob file damaged on disk: get raises ChecksumMismatch, verify names the snapshot, others stay readable."""
    from statetransfer.testing import make_snapshot

    store = st.open_store(f"file://{tmp_path}/store")
    await store.put(make_snapshot("intact", sections={"s": b"a" * 5000}))
    await store.put(make_snapshot("hit", sections={"s": os.urandom(5000)}))
    digest = (await store.section_digests("hit"))["s"]
    blob = next((tmp_path / "store" / "blobs").rglob(digest))
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(st.ChecksumMismatch, match="'s'"):
        await store.get("hit")
    await store.get("intact")
    report = await store.verify()
    assert [p for p in report.problems if "'hit'" in p] == report.problems and len(report.problems) == 1
