"""Fault campaign: workers sharing one store, SIGKILLed and stalled at random, judged against what was acknowledged.

Run (all three backends, 10,000 operations each; the S3 backend runs against a
moto server this script starts on 127.0.0.1, with ``lock_stale=3``)::

    python fuzz/fault_campaign.py [--ops 10000] [--backends file,sqlite,s3] [--workers 3] [--seed 1] [--json FILE]
    python fuzz/fault_campaign.py --incremental [--chain-max-deltas 3] [--ops 10000] ...

For every backend, ``--workers`` processes share ONE store and each does a
random mix of ``put`` / ``delete`` / ``prune`` / ``verify`` / ``get``. Snapshots
share sections from a small pool (dedup), so a delete or prune often frees a
blob that a concurrent put is about to reuse. At random moments the parent
SIGKILLs a random worker and starts a new one in its place, or (a share
``--pause-share`` of the faults) SIGSTOPs it and SIGCONTs it later: a stalled
process, which on S3 stays stopped longer than ``lock_stale``, so that others
judge its lock dead while it is in the middle of a put or a collection.
The first fault of each backend is always a kill.

With ``--incremental`` every snapshot also carries three sections the store
keeps as chains (a base and deltas; ``incremental_min_bytes`` is 16 KiB, so
the pool sections stay whole blobs beside them): a msgpack map (1,500
entries, zstd, as ``StatefulPlugin`` exports it), 256 KiB of raw bytes, and an
AES-GCM-encrypted msgpack map, with a keyring every worker derives from
``--seed`` (given as ``store.keyring`` or to each put and get, at random per
worker). Each put changes a few map entries (now and then adds, removes or
moves one) and a 1 KiB region of the bytes, so a put continues the chain of
the plugin's newest snapshot, its own or another worker's; chains hold at
most ``--chain-max-deltas`` (3) deltas, so new bases are written often, and
half of the workers keep the default ``chain_max_ratio`` (bytes chains cut by
size) while half allow 2.0. Deletes and prunes thus race with puts extending a
chain whose base a collector may be removing. Each put's line reports its
chains (deltas and base, per section), from which the figures count chained
puts (puts that wrote a delta), bases, depths and chains continued by another
process; a chain deeper than ``--chain-max-deltas`` fails the run.

A worker prints a line only after a store call returned: the id it put (with
a digest of the snapshot's serialized bytes), the id it deleted, the ids a
prune removed, a verify's result, a get's result (with the digest of what it
read). Before a delete or a prune it prints its intent, so a removal in flight
when the worker was killed is known to "may or may not have happened". Every
line carries the (wall clock) times the call started and returned. From these
the parent judges:

- lost snapshots: an acknowledged put, not removed by an acknowledged delete
  or prune, and not the target of a removal in flight, that is missing or
  damaged at the end, or whose ``get`` (or ``delete``) by a worker failed
  mid-run although no removal of it had started before that call returned;
  every such snapshot must read back at the end, and every ``get`` of it
  mid-run must have read, exactly the snapshot that was put (same digest);
- false verify alarms: any ``verify`` during the run reporting a problem;
- the final ``verify(read_data=True)`` must be ok, and a snapshot removed by an
  acknowledged delete or prune must stay gone;
- outside files touched: a canary directory beside the store (pointed to by
  symlinks planted inside a file store: ``blobs/zz``, ``manifests/canary-link``
  and a blob-shaped link) must be unchanged, and so must the stray entries
  planted inside the store (``.DS_Store`` files); for S3, objects of the bucket
  outside the store's prefix. A worker now and then tries to get or delete the
  planted ``canary-link``: the store must refuse.

The script exits non-zero on any loss, false alarm, resurrection, touched file
or worker crash. ``tests/test_fault_campaign.py`` runs bounded versions, with
and without ``--incremental``.
``--log FILE`` keeps every worker line (``FILE.<backend>``) for investigation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import statetransfer as st
from statetransfer import _codecs as codecs
from statetransfer._sections import pack_section
from statetransfer.stores._manifest import parse_chained

PLUGIN = "campaign"
BUCKET = "campaign"
#: Shared section payloads: every snapshot takes two of them (dedup across snapshots and section names).
POOL = [random.Random(f"pool-{i}").randbytes(12 << 10) for i in range(8)]
ID_RE = re.compile(r"^w\d+g\d+-\d+-s(\d)$")
PLANTED_LINK = "canary-link"
#: A blob-shaped name planted as a symlink in a file store (its content is never what the store would write).
PLANTED_BLOB = "ab" + "0" * 62
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# -- the snapshots -----------------------------------------------------------------------------------
def payloads(snap_id: str) -> dict[str, bytes]:
    """The raw sections of snapshot ``snap_id``: two shared ones from the pool (chosen by its id) and its own."""
    match = ID_RE.match(snap_id)
    k = int(match.group(1)) if match else 0
    own = hashlib.sha256(snap_id.encode()).digest()
    return {"a": POOL[k], "b": POOL[(k + 1 + k // 2) % len(POOL)], "own": own * 64}


def make_snapshot(
    snap_id: str,
    sections: dict[str, st.StateSection],
    *,
    timestamp: int | None = None,
    created_ns: int | None = None,
    expires_at: int | None = None,
) -> st.StateSnapshot:
    """A sealed snapshot of the campaign's plugin (``statetransfer.testing.make_snapshot``, without pytest)."""
    ts = int(time.time()) if timestamp is None else timestamp
    meta = st.StateMetadata(reason=st.StateCreationReason.BACKUP, expires_at=expires_at)
    created = ts * 1_000_000_000 if created_ns is None else created_ns
    return st.seal(st.StateSnapshot(snap_id, PLUGIN, "1.0.0", 1, ts, sections, meta, "", created))  # fmt: skip


def whole_sections(snap_id: str) -> dict[str, st.StateSection]:
    """The sections of :func:`payloads`, packed (zstd-compressed when it helps)."""
    return {name: pack_section(name, 1, data, snapshot_id=snap_id, plugin_id=PLUGIN)
            for name, data in payloads(snap_id).items()}  # fmt: skip


def build(snap_id: str, expires_at: int | None = None, chained: Chained | None = None) -> st.StateSnapshot:
    """Snapshot ``snap_id``: the sections of :func:`payloads`, and with ``chained`` its next chained sections."""
    if chained is None:
        return make_snapshot(snap_id, whole_sections(snap_id), expires_at=expires_at)
    sections = {**whole_sections(snap_id), **chained.next_sections(snap_id)}
    return make_snapshot(snap_id, sections, created_ns=time.time_ns(), expires_at=expires_at)


def intact(snap: st.StateSnapshot, chained: bool = False) -> bool:
    """Whether a snapshot read back holds exactly the sections it was put with.

    With ``chained``, the sections :func:`payloads` gives (those it has not are checked by digest, see
    :func:`snapshot_digest`), and the chained sections' names.
    """
    want = {n: s.data for n, s in whole_sections(snap.id).items()}
    got = {n: s.data for n, s in snap.sections.items()}
    if not chained:
        return got == want
    return set(got) == {*want, *CHAINED_SECTIONS} and all(got[n] == data for n, data in want.items())


def snapshot_digest(snap: st.StateSnapshot) -> str:
    """What an acknowledgement line says a snapshot was: a digest of its serialized bytes."""
    return hashlib.sha256(st.dumps(snap)).hexdigest()[:32]


# -- chained sections (--incremental) -----------------------------------------------------------------
#: Sections kept as chains: a msgpack map, raw bytes, an encrypted msgpack map. The pool and own sections
#: (12 KiB, 2 KiB) stay below ``CHAIN_MIN_BYTES``: whole blobs, shared by dedup, beside the chains.
CHAINED_SECTIONS = ("entries", "blob", "sealed")
CHAIN_MIN_BYTES = 16 << 10
MAP_ENTRIES, SEALED_ENTRIES, BLOB_BYTES, HOT_BYTES = 1500, 900, 256 << 10, 24 << 10


def campaign_keyring(seed: int) -> st.Keyring:
    """The keyring every worker of a campaign shares (derived from ``--seed``)."""
    return st.Keyring({f"campaign-{seed}": hashlib.sha256(f"fault-campaign-key-{seed}".encode()).digest()})


class Chained:
    """The chained sections a worker puts: each snapshot's is the previous one with a little changed.

    Every worker starts from the same content (derived from the campaign seed). Per put, the maps change a
    few values (now and then a key is added, removed or moved to the end, as an LRU does), cumulatively
    within the worker. The blob is the seed's base with a 1 KiB region rewritten in a hot window of
    ``HOT_BYTES`` (and now and then a second one anywhere), so any two snapshots differ in a region or two
    and a put may continue a chain another worker started. A bytes delta costs a content-defined chunk or
    two (tens of KiB): with the default ``chain_max_ratio`` (0.5) a blob chain is cut by size after a delta
    or two, so half of the workers allow 2.0 and their blob chains are cut by ``chain_max_deltas``.
    """

    def __init__(self, seed: int, rng: random.Random) -> None:
        base = random.Random(f"chains-{seed}")
        self.entries = {f"k{i:05d}": [i, base.randbytes(12).hex(), base.randrange(1000)] for i in range(MAP_ENTRIES)}
        self.sealed = {f"s{i:05d}": [i, base.randbytes(12).hex()] for i in range(SEALED_ENTRIES)}
        self.base_blob = base.randbytes(BLOB_BYTES)
        self.hot = base.randrange(BLOB_BYTES - HOT_BYTES)
        self.keyring = campaign_keyring(seed)
        self.rng = rng

    def next_sections(self, snap_id: str) -> dict[str, st.StateSection]:
        rng, entries = self.rng, self.entries
        for key in rng.sample(list(entries), rng.randint(1, 4)):
            entries[key] = [rng.randrange(1 << 20), rng.randbytes(12).hex(), rng.randrange(1000)]
        if rng.random() < 0.15:
            entries[f"n{rng.randrange(1 << 40):010x}"] = [0, rng.randbytes(12).hex(), 0]
        if rng.random() < 0.15 and len(entries) > MAP_ENTRIES // 2:
            del entries[rng.choice(list(entries))]
        if rng.random() < 0.1:
            key = rng.choice(list(entries))
            entries[key] = entries.pop(key)
        for key in rng.sample(list(self.sealed), rng.randint(1, 2)):
            self.sealed[key] = [rng.randrange(1 << 20), rng.randbytes(12).hex()]
        blob = bytearray(self.base_blob)
        regions = [self.hot + rng.randrange(HOT_BYTES - 1024)]
        if rng.random() < 0.2:
            regions.append(rng.randrange(BLOB_BYTES - 1024))
        for at in regions:
            blob[at : at + 1024] = rng.randbytes(1024)
        where = {"snapshot_id": snap_id, "plugin_id": PLUGIN}
        return {
            "entries": pack_section("entries", 1, codecs.encode(entries), **where, metadata={"codec": "msgpack"}),
            "blob": pack_section("blob", 1, bytes(blob), **where, compression=None, metadata={"codec": "raw"}),
            "sealed": pack_section("sealed", 1, codecs.encode(self.sealed), **where, keyring=self.keyring,
                                   encrypt=True, metadata={"codec": "msgpack"}),
        }  # fmt: skip


async def chain_spec(store: st.SnapshotStore, snap_id: str) -> str:
    """Each chain of the manifest just put: section, deltas, and the chain's base (a digest prefix).

    Like ``blob:1:3f09a2c4,entries:3:b0e1d2aa,sealed:0:77c1e0f3``; ``?`` when it cannot be read back (gone
    meanwhile: another worker deleted it).
    """
    try:
        data = await store.read_object("manifests/" + snap_id)
        _, chains = parse_chained(data, snap_id)
    except (KeyError, st.StateTransferError):
        return "?"
    return ",".join(f"{name}:{len(ref.objects) - 1}:{ref.objects[0].digest.hex()[:8]}"
                    for name, ref in sorted(chains.items())) or "none"  # fmt: skip


# -- the worker --------------------------------------------------------------------------------------
def emit(t0: float, verb: str, rest: str = "") -> None:
    """One acknowledgement line: start and end time of the call, what it did."""
    print(f"{t0:.6f} {time.time():.6f} {verb} {rest}".rstrip(), flush=True)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


async def worker(url: str, tag: str, seed: int, chain_seed: int | None = None, max_deltas: int = 3) -> None:
    """Random operations on the store at ``url`` until killed; ids are ``<tag>-<n>-s<k>``.

    With ``chain_seed`` (``--incremental``) the store keeps sections of ``CHAIN_MIN_BYTES`` or more as chains
    of at most ``max_deltas`` deltas, and every put carries the next :class:`Chained` sections.
    """
    rng = random.Random(seed)
    store = st.open_store(url)
    chained = None
    keyring = None  # given to each put and get; or the store's own (either way, at random per worker)
    if chain_seed is not None:
        chained = Chained(chain_seed, rng)
        store.incremental_min_bytes = CHAIN_MIN_BYTES
        store.chain_max_deltas = max_deltas
        store.chain_max_ratio = rng.choice([0.5, 2.0])
        if rng.random() < 0.5:
            store.keyring = chained.keyring
        else:
            keyring = chained.keyring
    emit(time.time(), "ready")
    n = 0
    while True:
        n += 1
        t0 = time.time()
        try:
            listing = await store.list_objects("manifests/")
        except st.StateTransferError as exc:
            emit(t0, "error", f"list {'locked' if isinstance(exc, st.StoreLocked) else 'store'} {one_line(exc)}")
            continue
        names = [o.key.removeprefix("manifests/") for o in listing if o.regular]
        ours = [name for name in names if ID_RE.match(name)]
        planted = [o.key.removeprefix("manifests/") for o in listing if not o.regular]
        few, many = len(ours) < 8, len(ours) > 24
        op = rng.choices(
            ["put", "delete", "prune", "get", "verify"],
            weights=[60 if few else 10 if many else 34, 4 if few else 40 if many else 20, 8, 30, 6],
        )[0]
        if op in ("delete", "get") and not ours:
            op = "put"
        target = rng.choice(ours) if ours else ""
        if op in ("delete", "get") and planted and rng.random() < 0.03:
            target = rng.choice(planted)  # must be refused: it is a symlink the store did not write
        await run_op(store, op, target, f"{tag}-{n}-s{rng.randrange(len(POOL))}", rng, chained=chained, keyring=keyring)


async def run_op(
    store: st.SnapshotStore,
    op: str,
    target: str,
    new_id: str,
    rng: random.Random,
    *,
    chained: Chained | None = None,
    keyring: st.Keyring | None = None,
) -> None:
    """One operation, and its acknowledgement line (put: id, expiry, digest, then its chains when chained)."""
    t0 = time.time()
    try:
        if op == "put":
            expires = int(time.time()) + rng.randint(-1, 4) if rng.random() < 0.3 else None
            snap = build(new_id, expires, chained)
            t0 = time.time()
            await store.put(snap, keyring=keyring)
            digest = snapshot_digest(snap)
            chains = f" {await chain_spec(store, new_id)}" if chained is not None else ""
            emit(t0, "put", f"{new_id} {'-' if expires is None else expires} {digest}{chains}")
        elif op == "delete":
            emit(t0, "begin-delete", target)
            t0 = time.time()
            try:
                await store.delete(target)
                emit(t0, "delete", f"{target} ok")
            except st.SnapshotNotFound:
                emit(t0, "delete", f"{target} notfound")
            except st.StoreError as exc:
                if ID_RE.match(target):
                    raise
                emit(t0, "delete", f"{target} refused {one_line(exc)}")
        elif op == "prune":
            emit(t0, "begin-prune")
            t0 = time.time()
            # Only expired snapshots go (a huge keep_last keeps every other one), so every removal is modelled.
            report = await (store.prune() if rng.random() < 0.5 else store.prune(keep_last=1 << 30))
            emit(t0, "prune", "ok " + ",".join(report.removed))
        elif op == "get":
            try:
                snap = await store.get(target, keyring=keyring)
                good = intact(snap, chained is not None)
                emit(t0, "get", f"{target} {'ok ' + snapshot_digest(snap) if good else 'damaged content differs'}")
            except st.SnapshotNotFound:
                emit(t0, "get", f"{target} notfound")
            except st.CorruptSnapshot as exc:
                emit(t0, "get", f"{target} damaged {one_line(exc)}")
            except st.StoreError as exc:
                if ID_RE.match(target):
                    raise
                emit(t0, "get", f"{target} refused {one_line(exc)}")
        else:
            report = await store.verify(read_data=rng.random() < 0.5)
            emit(t0, "verify", "ok" if report.ok else "alarm " + json.dumps(report.problems[:5]))
    except st.StateTransferError as exc:
        emit(t0, "error", f"{op} {'locked' if isinstance(exc, st.StoreLocked) else 'store'} {one_line(exc)}")
    except Exception as exc:  # a bug: reported, and the campaign fails
        emit(t0, "error", f"{op} crash {one_line(exc)}")


# -- the model ---------------------------------------------------------------------------------------
@dataclass
class Model:
    """What the workers acknowledged, and the judgement of every failed read against it."""

    chained: bool = False  # --incremental: snapshots carry chained sections (checked by digest)
    puts: dict[str, int | None] = field(default_factory=dict)  # id -> expires_at
    digests: dict[str, str] = field(default_factory=dict)  # id -> snapshot_digest() of what was put
    #: id -> section -> (deltas, base digest prefix) of its chains, from the put's line (None: not read back)
    chains: dict[str, dict[str, tuple[int, str]] | None] = field(default_factory=dict)
    got: list[tuple[str, str]] = field(default_factory=list)  # (id, digest) of every mid-run get that succeeded
    removed: set[str] = field(default_factory=set)  # by an acknowledged delete or prune
    delete_started: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # id -> [(time, op key)]
    prune_started: list[float] = field(default_factory=list)
    unresolved_deletes: set[str] = field(default_factory=set)
    unresolved_prunes: list[float] = field(default_factory=list)  # the latest moment each may have acted
    failed_reads: list[tuple[str, float, str, str]] = field(default_factory=list)  # id, end, own op key, what
    alarms: list[str] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)  # kind -> messages
    refused: int = 0
    torn: int = 0
    ops: int = 0
    open_intent: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # tag -> (verb, target, key)

    def feed(self, tag: str, line: str, seq: int) -> None:
        """One line a worker printed (``seq`` numbers it within the campaign)."""
        if not line.endswith("\n"):  # cut short by SIGKILL: not an acknowledgement
            self.torn += 1
            return
        try:
            t0s, t1s, verb, *more = line.rstrip("\n").split(" ", 3)
            t1 = float(t1s)
            float(t0s)
        except ValueError:
            self.errors.setdefault("garbled", []).append(f"{tag}: {line!r}")
            return
        rest = more[0] if more else ""
        key = f"{tag}#{seq}"
        if verb == "ready":
            return
        if verb == "begin-delete":
            self.delete_started.setdefault(rest, []).append((t1, key))
            self.open_intent[tag] = ("delete", rest, key)
            return
        if verb == "begin-prune":
            self.prune_started.append(t1)
            self.open_intent[tag] = ("prune", "", key)
            return
        self.ops += 1
        intent = self.open_intent.pop(tag, None)
        target, _, outcome = rest.partition(" ")
        if verb == "put":
            expires, digest, depths = [*outcome.split(" "), "", ""][:3]
            self.puts[target] = None if expires == "-" else int(expires)
            if digest:
                self.digests[target] = digest
            if depths:
                parts = [[*item.split(":"), ""][:3] for item in depths.split(",") if ":" in item]
                self.chains[target] = None if depths == "?" else {n: (int(d), b) for n, d, b in parts}
        elif verb == "delete":
            if outcome == "ok":
                self.removed.add(target)
            elif outcome == "notfound":
                self.failed_reads.append((target, t1, intent[2] if intent else "", "delete: not found"))
            else:
                self.refused += 1
        elif verb == "prune":
            self.removed.update(x for x in outcome.split(",") if x)
        elif verb == "get":
            result, _, digest = outcome.partition(" ")
            if result == "refused":
                self.refused += 1
            elif result == "ok":
                if digest:
                    self.got.append((target, digest))
            else:
                self.failed_reads.append((target, t1, "", f"get: {outcome}"))
        elif verb == "verify":
            if rest != "ok":
                self.alarms.append(f"{tag}: {rest}")
        elif verb == "error":
            op, kind, msg = [*rest.split(" ", 2), "", ""][:3]
            self.errors.setdefault(kind, []).append(f"{tag} {op}: {msg}")
            if intent is not None:
                self.close_unresolved(intent, t1)
        else:
            self.errors.setdefault("garbled", []).append(f"{tag}: {line!r}")

    def close_unresolved(self, intent: tuple[str, str, str], until: float) -> None:
        """A removal that may or may not have happened (its worker was killed, or it failed midway)."""
        verb, target, _ = intent
        if verb == "delete":
            self.unresolved_deletes.add(target)
        else:
            self.unresolved_prunes.append(until)

    def killed(self, tag: str, when: float) -> None:
        intent = self.open_intent.pop(tag, None)
        if intent is not None:
            self.close_unresolved(intent, when)

    def removal_started(self, snap_id: str, before: float, except_key: str = "") -> bool:
        """Whether a removal of ``snap_id`` (other than ``except_key``) started before ``before``."""
        if any(t < before and k != except_key for t, k in self.delete_started.get(snap_id, ())):
            return True
        expires = self.puts.get(snap_id)
        return expires is not None and expires < before + 1 and any(t < before for t in self.prune_started)

    def lost_midrun(self) -> dict[str, str]:
        """Acknowledged snapshots a worker failed to read (or delete) while no removal of them had started."""
        lost: dict[str, str] = {}
        for snap_id, end, own, what in self.failed_reads:
            if snap_id in self.puts and not self.removal_started(snap_id, end, own):
                lost.setdefault(snap_id, f"mid-run {what}")
        for snap_id, digest in self.got:  # a get that "succeeded" with other bytes than were put
            if self.digests.get(snap_id, digest) != digest:
                lost.setdefault(snap_id, "mid-run get: not the snapshot that was put")
        return lost

    def chain_figures(self, max_deltas: int) -> dict[str, Any]:
        """How the acknowledged puts kept their chained sections (from the chains their lines report)."""
        known = {i: c for i, c in self.chains.items() if c is not None}
        depths = [{n: d for n, (d, _) in c.items()} for c in known.values()]
        writers: dict[tuple[str, str], set[str]] = {}  # (section, base) -> worker processes whose puts share it
        for snap_id, chains in known.items():
            for name, (_, base) in chains.items():
                writers.setdefault((name, base), set()).add(snap_id.partition("-")[0])
        return {
            # every put changes every chained section: a chain with deltas means this put wrote one
            "chained_puts": sum(1 for d in depths if any(d.values())),
            "deltas_by_section": {n: sum(1 for d in depths if d.get(n, 0) > 0) for n in CHAINED_SECTIONS},
            "bases_by_section": {n: sum(1 for d in depths if d.get(n) == 0) for n in CHAINED_SECTIONS},
            "depth_histogram": dict(sorted(Counter(v for d in depths for v in d.values()).items())),
            "chains": len(writers),
            "chains_continued_by_another_process": sum(1 for w in writers.values() if len(w) > 1),
            "chains_too_deep": sum(1 for d in depths for v in d.values() if v > max_deltas),
            "puts_not_chained": sum(1 for d in depths if set(d) != set(CHAINED_SECTIONS)),
            "puts_not_read_back": len(self.chains) - len(known),
        }

    def damaged_during_removal(self) -> list[str]:
        """Reads that reported damage (not "not found") of a snapshot being removed: allowed, but counted."""
        return [f"{i}: {w}" for i, _, _, w in self.failed_reads if "damaged" in w]

    def maybe_removed(self, snap_id: str) -> bool:
        expires = self.puts.get(snap_id)
        if snap_id in self.unresolved_deletes:
            return True
        return expires is not None and any(expires < until + 1 for until in self.unresolved_prunes)


# -- canaries: what the store must never touch -------------------------------------------------------
def entry_state(path: Path) -> str:
    """Kind, content digest or link target, mode and mtime of ``path`` (not following a symlink)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "missing"
    if path.is_symlink():
        what = "link " + os.readlink(path)
    elif path.is_file():
        what = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        what = "dir"
    return f"{what} {info.st_mode:o} {info.st_mtime_ns}"


def tree_state(root: Path) -> dict[str, str]:
    """:func:`entry_state` of ``root`` and of everything under it."""
    out = {".": entry_state(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = entry_state(path)
    return out


def make_canary(canary: Path) -> None:
    (canary / "nested").mkdir(parents=True)
    (canary / "secret.txt").write_text("must never be touched\n")
    (canary / "nested" / "data.bin").write_bytes(os.urandom(4096))
    (canary / "nested" / ("cd" + "1" * 62)).write_bytes(b"looks like a blob\n")


def plant_file_store(root: Path, canary: Path) -> list[Path]:
    """Symlinks to the canary and stray files inside a file store; returns what was planted."""
    planted = [
        root / "blobs" / "zz",
        root / "manifests" / PLANTED_LINK,
        root / "blobs" / "ab" / PLANTED_BLOB,
        root / ".DS_Store",
        root / "blobs" / ".DS_Store",
        root / "manifests" / ".DS_Store",
    ]
    (root / "blobs" / "ab").mkdir(exist_ok=True)
    planted[0].symlink_to(canary)
    planted[1].symlink_to(canary / "secret.txt")
    planted[2].symlink_to(canary / "nested" / "data.bin")
    for stray in planted[3:]:
        stray.write_bytes(b"\x00\x00\x00\x01Bud1 stray\n")
    return planted


# -- S3 on moto --------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port with the campaign's bucket; yields its endpoint."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - heavy, and only the parent needs it

    # No line per request; nor moto's own races (a 500 the client retries, e.g. a PUT racing a DELETE of one key).
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")  # noqa: S310 - http://127.0.0.1
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - the same
        yield endpoint
    finally:
        server.stop()


def s3_put(endpoint: str, key: str, data: bytes) -> None:
    request = urllib.request.Request(f"{endpoint}/{BUCKET}/{key}", data=data, method="PUT")  # noqa: S310 - moto
    urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - http://127.0.0.1 only


def s3_objects(endpoint: str, prefix: str, planted: list[str]) -> dict[str, str]:
    """Objects of the bucket outside ``prefix/``, and the ``planted`` keys: key -> digest of its content."""
    import obstore  # noqa: PLC0415 - only the S3 campaign needs it
    from obstore.store import S3Store  # noqa: PLC0415

    client = S3Store(BUCKET, endpoint=endpoint, region="us-east-1", client_options={"allow_http": True})
    out: dict[str, str] = {}
    for batch in obstore.list(client):
        for meta in batch:
            key = str(meta["path"])
            if not key.startswith(prefix + "/") or key in planted:
                out[key] = hashlib.sha256(bytes(obstore.get(client, key).bytes())).hexdigest()
    return out


# -- one backend -------------------------------------------------------------------------------------
@dataclass
class Slot:
    """One worker position: its current process and the thread reading its lines."""

    index: int
    generation: int = 0
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    @property
    def tag(self) -> str:
        return f"w{self.index}g{self.generation}"


def start(
    slot: Slot, url: str, rng: random.Random, lines: queue.Queue[tuple[str, str | None]], extra: list[str]
) -> None:
    slot.generation += 1
    tag = slot.tag
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", url, tag, str(rng.randrange(1 << 30)), *extra],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((tag, line))
        lines.put((tag, None))

    slot.proc = proc
    slot.reader = threading.Thread(target=read, daemon=True)
    slot.reader.start()


def stop(slot: Slot) -> None:
    """SIGKILL the slot's worker and wait for it (its reader thread then reaches the end of its output)."""
    if slot.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait()


def run_backend(backend: str, args: argparse.Namespace, rng: random.Random, tmp: Path, endpoint: str) -> dict[str, Any]:
    started = time.monotonic()
    canary = tmp / f"{backend}-canary"
    make_canary(canary)
    planted: list[Path] = []
    s3_planted: list[str] = []
    prefix = ""
    s3_before: dict[str, str] = {}
    if backend == "file":
        url = f"file://{tmp}/{backend}-store"
        st.open_store(url)
        planted = plant_file_store(tmp / f"{backend}-store", canary)
    elif backend == "sqlite":
        url = f"sqlite://{tmp}/{backend}-store.db"
    else:
        prefix = f"store-{rng.randrange(1 << 30):x}"
        url = (f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1"
               f"&lock_stale={args.lock_stale:g}&lock_timeout=60")  # fmt: skip
        s3_put(endpoint, f"{prefix}/STORE", b"statetransfer-store/1\n")
        s3_planted = [f"{prefix}/manifests/.DS_Store", f"{prefix}/blobs/zz/.DS_Store", f"{prefix}/blobs/.DS_Store"]
        for key in s3_planted:
            s3_put(endpoint, key, b"\x00\x00\x00\x01Bud1 stray\n")
        s3_put(endpoint, f"{prefix}-neighbour/manifests/x", b"a neighbouring prefix\n")
        s3_put(endpoint, f"{prefix}x/blobs/00/{'0' * 64}", b"a prefix that starts with the store's\n")
        s3_before = s3_objects(endpoint, prefix, s3_planted)
    canary_before = tree_state(canary)
    planted_before = {str(p): entry_state(p) for p in planted}

    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    log = open(f"{args.log}.{backend}", "w") if args.log else None  # noqa: SIM115 - closed below
    model = Model(chained=args.incremental)
    extra = [str(args.seed), str(args.chain_max_deltas)] if args.incremental else []
    slots = {f"w{i}": Slot(i) for i in range(args.workers)}
    for slot in slots.values():
        start(slot, url, rng, lines, extra)
    counts = {"kills": 0, "pauses": 0, "unexpected_exits": 0, "seq": 0}
    stopping: set[str] = set()

    def take(tag: str, line: str | None) -> None:
        if log is not None:
            log.write(f"{tag} {line or 'EOF'}".rstrip("\n") + "\n")
        if line:
            counts["seq"] += 1
            model.feed(tag, line, counts["seq"])
            return
        model.killed(tag, time.time())  # its output ended: any removal it had begun is in flight
        if tag in stopping:
            stopping.discard(tag)
            return
        slot = slots[tag.partition("g")[0]]  # it exited by itself: a crash of the worker
        counts["unexpected_exits"] += 1
        code = slot.proc.wait() if slot.proc is not None and slot.tag == tag else "?"
        model.errors.setdefault("crash", []).append(f"{tag} exited with {code}")
        if slot.tag == tag:
            start(slot, url, rng, lines, extra)

    def kill(slot: Slot) -> None:
        stopping.add(slot.tag)
        stop(slot)
        while slot.tag in stopping:  # what it printed before dying, then its end of output
            take(*lines.get())

    gap = args.s3_kill_gap if backend == "s3" else args.kill_gap
    # A pause (SIGSTOP, then SIGCONT) stands for a stalled process: on S3, long enough for its lock to go stale.
    pause_for = (args.lock_stale + 0.2, args.lock_stale + 2.0) if backend == "s3" else (0.05, 1.0)
    paused: dict[str, tuple[Slot, float]] = {}  # tag -> (slot, when to continue it)
    next_fault = time.monotonic() + rng.uniform(*gap)
    last_progress = time.monotonic()
    stalled = False
    target = args.s3_ops if backend == "s3" and args.s3_ops is not None else args.ops
    while model.ops < target:
        with contextlib.suppress(queue.Empty):
            take(*lines.get(timeout=0.02))
            last_progress = time.monotonic()
        now = time.monotonic()
        for tag, (slot, until) in list(paused.items()):
            if now >= until or slot.tag != tag:
                del paused[tag]
                if slot.tag == tag and slot.proc is not None:
                    slot.proc.send_signal(signal.SIGCONT)
        if now >= next_fault:
            victim = rng.choice(list(slots.values()))
            first = counts["kills"] == 0  # the first fault is a kill: every run has at least one
            if not first and victim.tag not in paused and rng.random() < args.pause_share:
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGSTOP)
                paused[victim.tag] = (victim, now + rng.uniform(*pause_for))
                counts["pauses"] += 1
            else:
                paused.pop(victim.tag, None)
                kill(victim)
                counts["kills"] += 1
                start(victim, url, rng, lines, extra)
            next_fault = now + rng.uniform(*gap)
        if now - last_progress > args.stall:
            stalled = True
            break
    for slot in slots.values():
        kill(slot)
    while not lines.empty():
        take(*lines.get())
    if log is not None:
        log.close()
    result = asyncio.run(final_check(url, model, campaign_keyring(args.seed) if args.incremental else None))
    canary_after = tree_state(canary)
    touched = sorted(
        k for k in canary_before.keys() | canary_after.keys() if canary_before.get(k) != canary_after.get(k)
    )
    planted_after = {str(p): entry_state(p) for p in planted}
    touched_planted = sorted(k for k in planted_before if planted_before[k] != planted_after[k])
    if backend == "s3":
        s3_after = s3_objects(endpoint, prefix, s3_planted)
        changed = {k for k in s3_before.keys() | s3_after.keys() if s3_before.get(k) != s3_after.get(k)}
        touched += sorted(k for k in changed if k not in s3_planted)
        touched_planted += sorted(k for k in changed if k in s3_planted)
    lost = {**model.lost_midrun(), **result.pop("lost")}
    result.update(
        backend=backend,
        incremental=args.incremental,
        ops=model.ops,
        kills=counts["kills"],
        pauses=counts["pauses"],
        acknowledged_puts=len(model.puts),
        acknowledged_removals=len(model.removed),
        in_flight_removals=len(model.unresolved_deletes) + len(model.unresolved_prunes),
        lost=len(lost),
        lost_detail=[f"{k}: {v}" for k, v in sorted(lost.items())][:10],
        false_alarms=len(model.alarms),
        alarm_detail=model.alarms[:5],
        outside_touched=len(touched),
        touched_detail=[str(t) for t in touched[:10]],
        planted_touched=len(touched_planted),
        planted_detail=touched_planted[:10],
        damaged_reads_during_removal=len(model.damaged_during_removal()),
        reads_compared=sum(1 for snap_id, _ in model.got if snap_id in model.digests),
        torn_lines=model.torn,
        refused=model.refused,
        errors={k: len(v) for k, v in model.errors.items()},
        error_detail={k: v[:3] for k, v in model.errors.items()},
        unexpected_exits=counts["unexpected_exits"],
        stalled=stalled,
        seconds=round(time.monotonic() - started, 1),
    )
    if args.incremental:
        result.update(chain_max_deltas=args.chain_max_deltas, **model.chain_figures(args.chain_max_deltas))
    return result


async def final_check(url: str, model: Model, keyring: st.Keyring | None = None) -> dict[str, Any]:
    """Verify the store, and read back every acknowledged snapshot: exactly what was put, or gone if removed."""
    store = st.open_store(url)
    store.keyring = keyring
    report = await store.verify(read_data=True)
    lost: dict[str, str] = {}
    resurrected: list[str] = []
    live = 0
    for snap_id in sorted(model.puts):
        try:
            snap = await store.get(snap_id)
            exact = model.digests.get(snap_id, "") in ("", snapshot_digest(snap))
            state = "ok" if exact and intact(snap, model.chained) else "content differs"
        except st.SnapshotNotFound:
            state = "not found"
        except st.StateTransferError as exc:
            state = one_line(exc)
        if snap_id in model.removed:
            if state != "not found":
                resurrected.append(snap_id)
        elif state == "ok":
            live += 1
        elif state != "not found" or not model.maybe_removed(snap_id):
            lost[snap_id] = f"at the end: {state}"
    await store.close()
    return {
        "final_verify_ok": report.ok,
        "final_verify_problems": report.problems[:5],
        "final_snapshots": report.checked,
        "final_live_acknowledged": live,
        "unreferenced_blobs": report.unreferenced_blobs,
        "strays": len(report.strays),
        "resurrected": resurrected[:10],
        "lost": lost,
    }


def failed(r: dict[str, Any]) -> bool:
    return bool(
        r["lost"] or r["false_alarms"] or r["outside_touched"] or r["planted_touched"] or r["resurrected"]
        or not r["final_verify_ok"] or r["errors"].get("crash") or r["errors"].get("garbled") or r["stalled"]
        or r.get("chains_too_deep")
    )  # fmt: skip


def gap(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=10_000, help="acknowledged operations per backend")
    parser.add_argument("--s3-ops", type=int, help="operations for the S3 backend (default: --ops)")
    parser.add_argument("--backends", default="file,sqlite,s3")
    parser.add_argument("--workers", type=int, default=3, help="worker processes sharing the store")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lock-stale", type=float, default=3.0, help="S3 lock_stale in seconds")
    parser.add_argument("--kill-gap", type=gap, default=(0.02, 0.5), help="seconds between kills: LO,HI (local)")
    parser.add_argument("--s3-kill-gap", type=gap, default=(0.5, 3.5), help="seconds between kills: LO,HI (S3)")
    parser.add_argument("--pause-share", type=float, default=0.2, help="share of faults that are SIGSTOP pauses")
    parser.add_argument("--stall", type=float, default=120.0, help="fail when no worker reports for this long")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="snapshots also carry sections kept as chains of deltas (maps, bytes, encrypted)",
    )
    parser.add_argument("--chain-max-deltas", type=int, default=3, help="the stores' chain_max_deltas (--incremental)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--log", help="write every worker line to LOG.<backend> (for investigation)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    backends = args.backends.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server()) if "s3" in backends else ""
        for backend in backends:
            r = run_backend(backend, args, rng, Path(tmp), endpoint)
            results.append(r)
            chained = f"chained {r['chained_puts']:5}  " if args.incremental else ""
            print(f"{backend:6} ops {r['ops']:6}  kills {r['kills']:4}  pauses {r['pauses']:3}  "
                  f"acknowledged puts {r['acknowledged_puts']:5}  removals {r['acknowledged_removals']:5}  {chained}"
                  f"lost {r['lost']}  false alarms {r['false_alarms']}  outside touched {r['outside_touched']}  "
                  f"final verify {'ok' if r['final_verify_ok'] else 'PROBLEMS'}  {r['seconds']} s  "
                  f"{'FAILED' if failed(r) else 'survived'}", flush=True)  # fmt: skip
            if failed(r) or r["errors"]:
                print(json.dumps({k: v for k, v in r.items() if k.endswith(("detail", "problems")) or k in (
                    "errors", "resurrected", "stalled", "unexpected_exits")}, indent=2), flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
