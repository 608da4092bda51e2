"""Lock objects (stores shared by machines): a holder judged dead while it was slow never loses a snapshot.

Two store objects over one dict of objects stand for two machines sharing an
S3 prefix. A put whose lock goes unrefreshed for longer than ``lock_stale``
(a stalled network, a suspended laptop) is judged dead by a collector on the
other machine, which then deletes the blobs no manifest references yet: the
put's. When the put resumes it must wait for that collector to finish before
it writes its blobs again; rewriting its lock object is not enough.
"""

from __future__ import annotations

import asyncio
import contextlib

import statetransfer as st
from statetransfer.errors import StoreError
from statetransfer.stores.base import ObjectInfo
from statetransfer.stores.memory import MemoryStore
from statetransfer.testing import make_snapshot

STALE = 0.3


class Machine(MemoryStore):
    """A memory store whose objects are shared like a bucket's; with hooks to make one machine slow."""

    shared_by_machines = True
    lock_stale = STALE
    lock_timeout = 20.0

    def __init__(self, name: str, bucket: Machine | None = None) -> None:
        super().__init__(name)
        if bucket is not None:
            self._objects = bucket._objects
        self.lock_writes_fail = False  # its refresh writes are lost (a stalled network)
        self.stall: asyncio.Event | None = None  # while set to an unset event, its writes hang
        self.after_blob_write: asyncio.Event | None = None  # the put pauses after its first blob write
        self.resume: asyncio.Event | None = None
        self.before_blob_delete: asyncio.Event | None = None  # set when its collector starts deleting blobs
        self.after_blob_list: asyncio.Event | None = None  # its collector pauses after listing blobs

    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        if key.startswith("locks/") and self.lock_writes_fail:
            raise StoreError("lock write lost")
        if self.stall is not None and not key.startswith("blobs/"):
            await self.stall.wait()
        await super().write_object(key, data, exclusive=exclusive)
        if key.startswith("blobs/") and self.after_blob_write is not None and self.resume is not None:
            self.after_blob_write.set()
            self.after_blob_write = None
            await self.resume.wait()

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        found = await super().list_objects(prefix)
        if prefix == "blobs/" and self.after_blob_list is not None and self.resume is not None:
            self.after_blob_list.set()
            self.after_blob_list = None
            await self.resume.wait()
        return found

    async def delete_object(self, key: str) -> None:
        if key.startswith("blobs/") and self.before_blob_delete is not None:
            self.before_blob_delete.set()
            await asyncio.sleep(0.05)  # a slow network: the other machine runs meanwhile
        await super().delete_object(key)


async def machines() -> tuple[Machine, Machine]:
    a = Machine("a")
    b = Machine("b", bucket=a)
    await b.put(make_snapshot("old", sections={"x": b"old " * 100}))
    await b.put(make_snapshot("doomed", sections={"x": b"doomed " * 100}))
    return a, b


async def test_put_judged_dead_waits_for_the_collector():
    """A put whose refreshes were lost resumes while the collector that judged it dead is deleting its blob."""
    a, b = await machines()
    a.after_blob_write, a.resume, b.before_blob_delete = asyncio.Event(), asyncio.Event(), asyncio.Event()
    put = asyncio.ensure_future(a.put(make_snapshot("slow", sections={"y": b"new " * 100})))
    await a.after_blob_write.wait()  # a holds its lock and wrote its blob; now its refreshes are lost
    a.lock_writes_fail = True
    await asyncio.sleep(STALE * 1.5)
    collect = asyncio.ensure_future(b.delete("doomed"))  # judges a's lock dead, collects a's blob
    await b.before_blob_delete.wait()
    a.lock_writes_fail = False
    a.resume.set()  # a resumes before the collector got to its blob
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(put), 1.0)
    await collect
    await put
    snap = await a.get("slow")  # acknowledged: must be intact
    assert snap.sections["y"].data
    assert (await a.verify()).ok


async def test_refresh_after_a_stall_does_not_hide_the_lapse():
    """The refresher rewriting the lock after a stall makes it look fresh; the put must still notice the lapse."""
    a, b = await machines()
    a.after_blob_write, a.resume, b.before_blob_delete = asyncio.Event(), asyncio.Event(), asyncio.Event()
    put = asyncio.ensure_future(a.put(make_snapshot("slow", sections={"y": b"new " * 100})))
    await a.after_blob_write.wait()
    a.stall = asyncio.Event()  # every write of a (its lock refreshes, its manifest) hangs from now on
    a.resume.set()
    await asyncio.sleep(STALE * 1.5)
    collect = asyncio.ensure_future(b.delete("doomed"))  # judges a's lock dead, lists before a's manifest lands
    await b.before_blob_delete.wait()
    a.stall.set()  # the network is back: a's refresher rewrites its lock, its manifest lands
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(put), 1.0)
    await collect
    await put
    snap = await a.get("slow")
    assert snap.sections["y"].data
    assert (await a.verify()).ok


async def test_collector_whose_lock_lapsed_stops():
    """A collector stalled mid-way (judged dead, then refreshed again) must not delete a blob a put reused."""
    a, b = await machines()
    b.after_blob_list, b.resume = asyncio.Event(), asyncio.Event()
    collect = asyncio.ensure_future(b.delete("doomed"))  # its blob is an orphan once the manifest is gone
    await b.after_blob_list.wait()  # b decided what to delete; now it stalls
    b.lock_writes_fail = True
    await asyncio.sleep(STALE * 1.5)
    await a.put(make_snapshot("reuse", sections={"x": b"doomed " * 100}))  # b judged dead: a dedups onto it
    b.lock_writes_fail = False
    await asyncio.sleep(STALE / 2)  # b's refresher writes its lock again: it looks fresh
    b.resume.set()
    with contextlib.suppress(st.StoreLocked):  # b must notice its lock lapsed, and stop
        await collect
    snap = await a.get("reuse")
    assert snap.sections["x"].data
    assert (await a.verify()).ok
