"""The snapshot store: a small object-store contract for backends, and the snapshot logic built on it.

A snapshot is stored as a *manifest* (its container header: metadata plus,
per section, length and digest) under ``manifests/<id>``, and one
content-addressed *blob* per distinct section under ``blobs/<xx>/<digest>``.
Backends implement five object primitives and ``from_url``; everything else
(dedup, verification, garbage collection, retention, locking) is here, so
every backend gives the same guarantees. The locking protocol and the
argument why garbage collection never removes a blob an acknowledged
snapshot references are in ``docs/stores.md``.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import re
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

import msgspec

from .._checksum import section_digest
from .._container import SectionHeader, SnapshotHeader, assemble, build_header, decode_header
from .._crypto import Keyring
from .._model import StateSection, StateSnapshot
from .._sections import DeferredCheck, Plaintext, kept_plaintext
from ..errors import (
    ChecksumMismatch,
    CorruptSnapshot,
    MissingKey,
    SnapshotNotFound,
    StateTransferError,
    StoreError,
    StoreLocked,
    StoreWarning,
)
from ._chain import (
    BYTES_DELTA,
    MAP_DELTA,
    ChainObject,
    ChainRef,
    ChainState,
    Plan,
    apply_chain,
    check_plaintext,
    diff,
    is_exact,
    open_base,
    open_object,
    plan_section,
    rebuild_section,
    seal_object,
    state_of,
)
from ._locking import Held, ObjectLock, RWLock
from ._manifest import (
    CHAINED_MAGIC,
    SnapshotInfo,
    info_from_header,
    manifest_bytes,
    parse_chained,
    verify_manifest,
)
from ._retention import check_rules, order_key, plan_prune

__all__ = [
    "ObjectInfo",
    "PruneReport",
    "SnapshotInfo",
    "SnapshotListing",
    "SnapshotStore",
    "UnreadableEntry",
    "VerifyReport",
    "check_id",
]

MANIFESTS = "manifests/"
BLOBS = "blobs/"
DAMAGED = "damaged/"
#: Snapshots with at least this many bytes of sections are hashed in a worker thread.
_THREAD_ABOVE = 1 << 20
#: Manifests read at once when listing a remote store.
_READ_CONCURRENCY = 16
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")
_T = TypeVar("_T")
_BLOB_KEY = re.compile(r"^blobs/([0-9a-f]{2})/([0-9a-f]{64})$")


def check_id(value: str, what: str = "snapshot id") -> str:
    """Return ``value`` if it is safe as a file or object name; :class:`StoreError` otherwise.

    Allowed: letters, digits and ``. _ : @ + -``, starting with a letter or
    digit, at most 200 characters, never ``..`` (no path traversal, no NUL).
    """
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        msg = f"unsafe {what} {value!r}: use letters, digits and . _ : @ + - (no '/', '..', NUL; max 200)"
        raise StoreError(msg)
    return value


def _is_safe_id(value: str) -> bool:
    return bool(_SAFE_ID.match(value)) and ".." not in value


def blob_key(digest: str) -> str:
    """The object key of the blob with hex ``digest``."""
    return f"{BLOBS}{digest[:2]}/{digest}"


class ObjectInfo(msgspec.Struct, frozen=True):
    """One entry a backend lists: its key, size, last-modified time (the storage's clock, seconds)."""

    key: str
    size: int
    mtime: float = 0.0
    #: False for anything that is not a plain object or regular file (directories, FIFOs, symlinks):
    #: the store reports such entries and never reads, follows or deletes them.
    regular: bool = True


class UnreadableEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A store entry that could not be read: a damaged manifest, or a stray file the store did not write."""

    key: str
    reason: str
    snapshot_id: str | None = None
    plugin_id: str | None = None
    mtime: float = 0.0


class SnapshotListing(list[SnapshotInfo]):
    """What :meth:`SnapshotStore.list` returns: the snapshots, newest first, and what could not be read.

    Attributes:
        unreadable: damaged manifests and stray entries that were skipped.
    """

    def __init__(self, infos: Iterable[SnapshotInfo] = (), unreadable: Iterable[UnreadableEntry] = ()) -> None:
        super().__init__(infos)
        self.unreadable = list(unreadable)


class VerifyReport(msgspec.Struct, kw_only=True):
    """The result of :meth:`SnapshotStore.verify`: ``ok`` when ``problems`` is empty."""

    ok: bool
    checked: int
    problems: list[str]
    blobs_checked: int = 0
    unreferenced_blobs: int = 0
    #: What ``repair=True`` did (blobs rewritten from a source, damaged entries quarantined).
    repaired: list[str] = msgspec.field(default_factory=list)
    #: Entries the store did not write (skipped, never touched).
    strays: list[str] = msgspec.field(default_factory=list)
    #: Incremental sections rebuilt from their chains and found equal to their digest (with ``read_data``).
    chains_rebuilt: int = 0
    #: Encrypted incremental sections not rebuilt: the store has no key for them (``store.keyring``).
    chains_skipped: int = 0


class PruneReport(msgspec.Struct, kw_only=True):
    """What :meth:`SnapshotStore.prune` removed (or would remove, with ``dry_run``) and kept."""

    removed: list[str]
    kept: list[str]
    dry_run: bool
    blobs_removed: int = 0
    #: Manifests that could not be read. While any exists, no blob is freed (what it references is unknown).
    unreadable: list[UnreadableEntry] = msgspec.field(default_factory=list)


class _Manifests(msgspec.Struct):
    headers: list[tuple[ObjectInfo, SnapshotHeader, int]]
    unreadable: list[UnreadableEntry]
    #: snapshot id -> section name -> chain, for manifests with incremental sections.
    chains: dict[str, dict[str, ChainRef]] = msgspec.field(default_factory=dict)


@dataclass
class _Remembered:
    """What a store remembers of the last chain it wrote for a plugin's section (in memory, per store object)."""

    snapshot_id: str
    ref: ChainRef
    state: ChainState


@dataclass
class _Chained:
    """An incremental section of a put in progress: its plan, chain, and the objects it writes."""

    name: str
    plan: Plan
    ref: ChainRef
    state: ChainState
    new: dict[str, bytes]


class SnapshotStore(abc.ABC):
    """Where snapshots are kept: backups, checkpoints, state moving between machines.

    A backend implements :meth:`from_url` and five object primitives
    (:meth:`read_object`, :meth:`write_object`, :meth:`delete_object`,
    :meth:`list_objects`, :meth:`stat_object`) over keys such as
    ``manifests/<id>``; a local backend also overrides :meth:`_process_lock`.
    ``statetransfer.testing.StoreContract`` is the test suite every backend passes.
    """

    #: URL scheme of the backend (``file``, ``sqlite``, ``s3``, ``memory``).
    scheme: ClassVar[str] = ""
    #: True when processes on other machines share the storage: locking then uses lock objects.
    shared_by_machines: ClassVar[bool] = False
    #: On a dedup hit, blobs up to this size are re-read and re-hashed; larger ones are length-checked.
    verify_dedup_bytes: ClassVar[int] = 1 << 20
    #: Seconds to wait for the store's lock before :class:`StoreLocked`.
    lock_timeout: float = 600.0
    #: Seconds after which a lock object nobody refreshed is dead (``shared_by_machines`` backends).
    lock_stale: float = 120.0
    #: Keep large sections incrementally: a base and deltas (docs/format.md, "Incremental sections in stores").
    incremental: bool = True
    #: Sections whose stored bytes are fewer than this are kept whole.
    incremental_min_bytes: int = 1 << 20
    #: A chain holds at most this many deltas: the next backup of the section writes a new base.
    chain_max_deltas: int = 8
    #: A new base is written instead of a delta that would bring the chain's deltas past this fraction of its base.
    chain_max_ratio: float = 0.5
    #: Keys with which encrypted sections are kept incrementally; without them they are kept whole.
    keyring: Keyring | None = None

    # -- the backend contract ----------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, *, create: bool = True) -> Self:
        """Open the store at ``url``.

        With ``create=False``, a location holding no store raises
        :class:`StoreNotFound` and nothing is created. A location holding
        something that is not a store (a non-empty directory, another
        database) is refused with :class:`StoreError` either way.
        """

    @abc.abstractmethod
    async def read_object(self, key: str) -> bytes:
        """The bytes stored under ``key``; ``KeyError`` if absent."""

    @abc.abstractmethod
    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` under ``key`` atomically (a reader sees the old bytes or the new, never a mix).

        With ``exclusive``, raise ``FileExistsError`` if ``key`` exists (never overwrite).
        """

    @abc.abstractmethod
    async def delete_object(self, key: str) -> None:
        """Remove ``key`` (no error if absent). Never removes anything but a plain object of that key."""

    @abc.abstractmethod
    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every entry whose key starts with ``prefix`` (a directory prefix ending in ``/``)."""

    @abc.abstractmethod
    async def stat_object(self, key: str) -> ObjectInfo | None:
        """What :meth:`list_objects` would say about ``key``, or ``None`` if absent."""

    def _process_lock(self, exclusive: bool) -> contextlib.AbstractAsyncContextManager[Held | None]:
        """The lock between processes: lock objects when shared by machines, else none (one process)."""
        if self.shared_by_machines:
            return ObjectLock(self, stale=self.lock_stale, timeout=self.lock_timeout).hold(exclusive)
        return contextlib.nullcontext(None)

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections and files."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the public API ----------------------------------------------------------------------------
    async def put(self, snapshot: StateSnapshot, *, keyring: Keyring | None = None) -> SnapshotInfo:
        """Store ``snapshot``; only sections not already stored are written.

        A section whose blob already exists is checked first (its length
        always, its content when small): a damaged blob is rewritten from
        the bytes in hand, so an acknowledged put is always readable.

        Large sections are kept incrementally (only what changed since the
        previous backup of the plugin's section), when the store can rebuild
        their bytes exactly; encrypted ones only with the key, from
        ``keyring`` or :attr:`keyring`. See docs/format.md.

        Raises:
            StoreError: unsafe ids, or a snapshot with this id already exists.
            ChecksumMismatch: the snapshot's checksum is wrong.
            EncodingError: (a backup) a section does not decode as its declared type; nothing was written.
            StoreLocked: garbage collection held the store longer than ``lock_timeout``.
        """
        check_id(snapshot.id)
        check_id(snapshot.plugin_id, "plugin id")
        keyring = keyring or self.keyring
        large = sum(len(s.data) for s in snapshot.sections.values()) >= _THREAD_ABOVE
        parsed = await asyncio.to_thread(build_header, snapshot) if large else build_header(snapshot)
        chained = await self._plan_chains(snapshot, parsed, keyring)
        for name, sec in snapshot.sections.items():  # type checks a backup's export left to us, not run yet
            known = kept_plaintext(sec)
            item = chained.get(name)
            if known is not None and known.check is not None and (item is None or item.state.checked_as is None):
                await _offload(len(sec.data), _check_whole, known.check, known)
        blobs = {
            sh.digest.hex(): sec.data
            for sh, sec in zip(parsed.sections, snapshot.sections.values(), strict=True)
            if sh.name not in chained
        }

        async def secure() -> bool:
            """Every blob and chain object in place; True when a chain had to start afresh (manifest changes)."""
            for digest, payload in blobs.items():
                await self._ensure_blob(digest, payload)
            changed = False
            for item in chained.values():
                changed |= await self._secure_chain(item)
            return changed

        async with self._hold(exclusive=False) as lease:
            await secure()
            if lease is not None and not lease.fresh():  # slow put: a collector may have judged our lock dead
                await lease.reacquire()  # ... and may still be deleting: wait until it is done
                await secure()
            manifest = manifest_bytes(parsed, {name: item.ref for name, item in chained.items()})
            try:
                await self.write_object(MANIFESTS + snapshot.id, manifest, exclusive=True)
            except FileExistsError:
                msg = f"snapshot {snapshot.id!r} already exists in {self!r}"
                raise StoreError(msg, snapshot_id=snapshot.id) from None
            # See docs/stores.md, "slow holders": judged dead meanwhile, a collector that listed the manifests
            # before ours landed may be deleting our blobs. Wait for it to finish, then write them again (a chain
            # whose shared objects went meanwhile starts afresh, and the manifest says so).
            if lease is not None and (not lease.fresh() or not await lease.still_present()):
                await lease.reacquire()
                if await secure():
                    manifest = manifest_bytes(parsed, {name: item.ref for name, item in chained.items()})
                    await self.write_object(MANIFESTS + snapshot.id, manifest)
        memory = self._chain_memory()
        for name, item in chained.items():
            memory[snapshot.plugin_id, name] = _Remembered(snapshot.id, item.ref, item.state)
        return info_from_header(parsed, len(manifest))

    async def get(
        self, snapshot_id: str, *, verify_key: bytes | None = None, keyring: Keyring | None = None
    ) -> StateSnapshot:
        """The snapshot with ``snapshot_id``, every section verified.

        Args:
            snapshot_id: which snapshot.
            verify_key: when given, the snapshot must carry a valid HMAC
                signature by this key (checked before any blob is read).
            keyring: keys for encrypted sections kept incrementally (default
                :attr:`keyring`): their bytes are sealed again as they were exported.

        Raises:
            SnapshotNotFound: no such snapshot (or it was deleted while being read).
            ChecksumMismatch: a stored section or the manifest is damaged, or the signature is bad/missing.
            MissingKey: an encrypted section kept incrementally, and no key for it.
        """
        keyring = keyring or self.keyring
        header, chains = self._parse_chained(await self._manifest(snapshot_id), snapshot_id)
        if verify_key is not None:
            verify_manifest(header, verify_key)
        payloads = []
        for sh in header.sections:
            ref = chains.get(sh.name)
            try:
                if ref is None:
                    payloads.append(await self.read_object(blob_key(sh.digest.hex())))
                else:
                    payloads.append(await self._rebuild(header, sh, ref, keyring))
            except KeyError:
                await self._manifest(snapshot_id)  # SnapshotNotFound if it was deleted meanwhile
                what = "blob" if ref is None else "a chain object"
                msg = f"snapshot {snapshot_id!r} is damaged: {what} of section {sh.name!r} is missing"
                raise ChecksumMismatch(msg) from None
        if sum(map(len, payloads)) >= _THREAD_ABOVE:
            return await asyncio.to_thread(assemble, header, payloads, verify_key=verify_key)
        return assemble(header, payloads, verify_key=verify_key)

    async def info(self, snapshot_id: str) -> SnapshotInfo:
        """What :meth:`list` says about one snapshot."""
        manifest = await self._manifest(snapshot_id)
        return info_from_header(self._parse(manifest, snapshot_id), len(manifest))

    async def section_digests(self, snapshot_id: str) -> dict[str, str]:
        """Section name → hex section digest: the blob holding it, what dedup and verification key on.

        An incremental section has no blob of its own (its chain's objects are listed in the manifest).
        """
        header = await self._header(snapshot_id)
        return {sh.name: sh.digest.hex() for sh in header.sections}

    async def resolve(self, id_or_prefix: str) -> str:
        """The id of the one snapshot whose id is ``id_or_prefix`` or starts with it.

        Raises:
            SnapshotNotFound: no snapshot matches, or the prefix is ambiguous (the message lists candidates).
        """
        if _is_safe_id(id_or_prefix) and await self.stat_object(MANIFESTS + id_or_prefix) is not None:
            return id_or_prefix
        names = [o.key[len(MANIFESTS) :] for o in await self.list_objects(MANIFESTS) if o.regular]
        matches = sorted(n for n in names if n.startswith(id_or_prefix) and _is_safe_id(n))
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SnapshotNotFound(f"no snapshot {id_or_prefix!r} in {self!r}", snapshot_id=id_or_prefix)
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        msg = f"snapshot id prefix {id_or_prefix!r} is ambiguous in {self!r}: {len(matches)} match ({shown})"
        raise SnapshotNotFound(msg, snapshot_id=id_or_prefix)

    async def list(self, plugin_id: str | None = None, tags: Iterable[str] | None = None) -> SnapshotListing:
        """Snapshots (newest first), optionally of one plugin and carrying all ``tags``. Reads manifests only.

        Manifests that cannot be read are skipped, listed in the result's
        ``unreadable`` attribute and reported with a :class:`StoreWarning`.
        """
        wanted = set(tags or ())
        found = await self._read_manifests()
        infos = [
            info_from_header(header, size)
            for _, header, size in found.headers
            if (plugin_id is None or header.plugin_id == plugin_id) and wanted <= set(header.metadata.tags)
        ]
        infos.sort(key=order_key, reverse=True)
        unreadable = [u for u in found.unreadable if plugin_id is None or u.plugin_id in (None, plugin_id)]
        _warn_unreadable(self, unreadable)
        return SnapshotListing(infos, unreadable)

    async def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot, and the blobs no other snapshot uses.

        Raises:
            SnapshotNotFound: no such snapshot.
            StoreLocked: puts kept the store busy longer than ``lock_timeout``.
        """
        check_id(snapshot_id)
        async with self._hold(exclusive=True) as lease:
            await self._manifest(snapshot_id)
            await self.delete_object(MANIFESTS + snapshot_id)
            _, unreadable = await self._collect_garbage(lease)
        _warn_unreadable(self, unreadable)

    async def prune(
        self,
        keep_last: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        dry_run: bool = False,
        *,
        group_by: Sequence[str] = ("plugin_id", "reason"),
    ) -> PruneReport:
        """Apply retention per group of snapshots, and remove expired snapshots.

        Expired snapshots (``expires_at`` in the past) are always removed. When
        any keep rule is given, a snapshot survives only if one rule keeps it,
        within its group (by default the same plugin *and* reason, so hot-reload
        checkpoints never push out backups): the ``keep_last`` newest; the newest
        of each of the ``keep_daily`` most recent days (UTC); the newest of each
        of the ``keep_weekly`` most recent ISO weeks. With no rule, only expired
        snapshots go. Unreadable manifests are reported (and, while any exists,
        no blob is freed, since what it references is unknown).

        Raises:
            InvalidArgument: a negative count or an unknown ``group_by`` field.
            StoreLocked: puts kept the store busy longer than ``lock_timeout``.
        """
        check_rules(keep_last, keep_daily, keep_weekly, group_by)
        lock = contextlib.nullcontext(None) if dry_run else self._hold(exclusive=True)
        async with lock as lease:
            found = await self._read_manifests()
            infos = [info_from_header(header, size) for _, header, size in found.headers]
            removed, kept = plan_prune(
                infos, keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
                group_by=group_by, now=time.time(),
            )  # fmt: skip
            blobs_removed = 0
            if not dry_run and removed:
                for snapshot_id in removed:
                    await self.delete_object(MANIFESTS + snapshot_id)
                blobs_removed, _ = await self._collect_garbage(lease)
        unreadable = [u for u in found.unreadable if u.snapshot_id is not None]
        _warn_unreadable(self, unreadable)
        return PruneReport(
            removed=removed, kept=kept, dry_run=dry_run, blobs_removed=blobs_removed, unreadable=unreadable
        )

    async def verify(
        self,
        read_data: bool = True,
        *,
        progress: Callable[[int, int], None] | None = None,
        repair: bool = False,
        source: SnapshotStore | None = None,
    ) -> VerifyReport:
        """Check every manifest and that its blobs exist; with ``read_data``, re-hash every blob.

        Problems are reported, never raised. Runs beside puts and prunes
        without locking them out: a snapshot deleted while being checked is
        not a problem, so a healthy store is never reported damaged.

        Args:
            read_data: re-read and re-hash every referenced blob.
            progress: called as ``progress(done, total)`` after each snapshot.
            repair: heal what can be healed. Missing or damaged blobs are
                copied from ``source`` when it holds them intact; damaged
                blobs it cannot restore and unreadable manifests are moved to
                ``damaged/`` (so a later put of the same content writes the
                blob afresh, and garbage collection is no longer blocked).
            source: another store (a replica) to take intact blobs from.
        """
        problems: list[str] = []
        repaired: list[str] = []
        try:
            found = await self._read_manifests()
            blob_entries = await self.list_objects(BLOBS)
        except StateTransferError as exc:
            return VerifyReport(ok=False, checked=0, problems=[f"cannot list the store: {exc}"])
        blobs, strays = _split_blobs(blob_entries)
        strays += [u.key for u in found.unreadable if u.snapshot_id is None]
        for entry in found.unreadable:
            if entry.snapshot_id is None or await self.stat_object(entry.key) is None:
                continue  # a stray, or deleted since listing
            problems.append(f"snapshot {entry.snapshot_id!r}: manifest damaged: {entry.reason}")
            if repair:
                await self._quarantine(entry.key)
                repaired.append(f"moved damaged manifest {entry.snapshot_id!r} to {DAMAGED}")
        referenced: set[str] = set()
        state: dict[str, str] = {}  # digest -> "ok" | "missing" | "damaged"
        rebuilt = {"rebuilt": 0, "skipped": 0}
        total = len(found.headers) + sum(1 for u in found.unreadable if u.snapshot_id is not None)
        for done, (obj, header, _) in enumerate(found.headers, 1):
            try:
                verify_manifest(header)
            except StateTransferError as exc:
                problems.append(f"snapshot {header.id!r}: manifest damaged: {exc}")
            for name, digest, length, chained in _stored_parts(header, found.chains.get(header.id, {})):
                referenced.add(digest)
                if digest not in state:
                    state[digest] = await self._blob_state(digest, length, digest in blobs, read_data)
                if state[digest] == "ok":
                    continue
                if await self.stat_object(obj.key) is None:
                    continue  # the snapshot was deleted while we checked it: not a problem
                if repair and state[digest] != "repaired":
                    state[digest] = await self._repair_blob(digest, state[digest], source, repaired)
                if state[digest] != "repaired":
                    what = f"chain object {digest[:16]}" if chained else f"blob {digest[:16]}"
                    problems.append(f"snapshot {header.id!r}: {what} of section {name!r} is {state[digest]}")
            if read_data:
                for outcome in await self._rebuild_chains(header, found.chains.get(header.id, {}), state):
                    if outcome in ("rebuilt", "skipped"):
                        rebuilt[outcome] += 1
                    elif await self.stat_object(obj.key) is not None:  # else deleted meanwhile: not a problem
                        problems.append(f"snapshot {header.id!r}: {outcome}")
            if progress is not None:
                progress(done, total)
        checked = len(found.headers)
        hashed = sum(1 for s in state.values() if s != "missing") if read_data else 0
        return VerifyReport(
            ok=not problems, checked=checked, problems=problems, blobs_checked=hashed,
            unreferenced_blobs=len(blobs - referenced), repaired=repaired, strays=sorted(set(strays)),
            chains_rebuilt=rebuilt["rebuilt"], chains_skipped=rebuilt["skipped"],
        )  # fmt: skip

    async def _rebuild_chains(
        self, header: SnapshotHeader, chains: dict[str, ChainRef], state: dict[str, str]
    ) -> builtins.list[str]:
        """Rebuild each incremental section of a snapshot whose objects are all intact, as a get would.

        One outcome per section: ``"rebuilt"`` (its bytes match the header's
        digest), ``"skipped"`` (encrypted, and no key), or a problem.
        """
        outcomes = []
        for sh in header.sections:
            ref = chains.get(sh.name)
            if ref is None or (len(ref.objects) == 1 and ref.objects[0].digest == sh.digest):
                continue  # a whole section, or a chain's base: its blob was hashed above
            if any(state.get(o.digest.hex()) not in ("ok", "repaired") for o in ref.objects):
                continue  # the damaged object is reported already
            try:
                data = await self._rebuild(header, sh, ref, self.keyring)
            except MissingKey:
                outcomes.append("skipped")
                continue
            except KeyError:
                outcomes.append(f"a chain object of section {sh.name!r} is missing")
                continue
            except StateTransferError as exc:
                outcomes.append(f"section {sh.name!r} does not rebuild from its chain: {exc}")
                continue
            digest = await _offload(len(data), section_digest, data)
            if len(data) != sh.length or digest != sh.digest:
                outcomes.append(
                    f"section {sh.name!r} rebuilds to other bytes than were stored (a compressor that no longer "
                    "reproduces its output? see docs/stores.md)"
                )
            else:
                outcomes.append("rebuilt")
        return outcomes

    # -- incremental sections ----------------------------------------------------------------------
    def _chain_memory(self) -> dict[tuple[str, str], _Remembered]:
        memory: dict[tuple[str, str], _Remembered] | None = self.__dict__.get("_st_chains")
        if memory is None:
            memory = self.__dict__["_st_chains"] = {}
        return memory

    async def _plan_chains(
        self, snapshot: StateSnapshot, header: SnapshotHeader, keyring: Keyring | None
    ) -> dict[str, _Chained]:
        """The sections of ``snapshot`` kept incrementally, each with its chain and the objects to write."""
        out: dict[str, _Chained] = {}
        if not self.incremental:
            return out
        found: list[_Manifests] = []  # read once per put, when some section's last chain is not remembered
        for sh, sec in zip(header.sections, snapshot.sections.values(), strict=True):
            name = sh.name
            if len(sec.data) < max(self.incremental_min_bytes, 1):
                continue
            plan = await _offload(len(sec.data), plan_section, sec, snapshot_id=snapshot.id,
                                  plugin_id=snapshot.plugin_id, keyring=keyring)  # fmt: skip
            if plan is None:
                continue
            parent = await self._parent(snapshot.plugin_id, name, plan, keyring, found)
            if parent is not None and len(parent[0].objects) - 1 >= self.chain_max_deltas:
                parent = None
            exact = None  # checked beside the diff (compression runs while the diff holds the GIL)
            if parent is not None and not plan.made_here:
                exact = asyncio.ensure_future(_offload(len(sec.data), is_exact, plan))
            try:
                state, body = await _offload(len(plan.plain), diff, plan.kind, plan.plain,
                                             None if parent is None else parent[1])  # fmt: skip
            finally:
                rebuilds = plan.made_here if exact is None else await exact
            if plan.check is not None:  # the export left its type check to us: what changed, when that is known
                await _offload(len(plan.plain), check_plaintext, plan.check, plan.plain,
                               None if parent is None else parent[1], state)  # fmt: skip
            if parent is not None and body == b"" and rebuilds:  # unchanged: the previous chain as it is
                ref = ChainRef(plan.kind, parent[0].objects, plan.frames, plan.key_id, parent[0].base, plan.pieces,
                               plan.level)  # fmt: skip
                out[name] = _Chained(name, plan, ref, state, {})
                continue
            if parent is not None and body and rebuilds:
                kind = MAP_DELTA if plan.kind == "map" else BYTES_DELTA
                obj = await _offload(len(body), self._seal, kind, body, plan, plugin_id=snapshot.plugin_id,
                                     section=name, keyring=keyring)  # fmt: skip
                objects = parent[0].objects
                small = sum(o.length for o in objects[1:]) + len(obj) <= self.chain_max_ratio * objects[0].length
                if small:
                    digest = section_digest(obj)
                    ref = ChainRef(plan.kind, [*objects, ChainObject(digest, len(obj))], plan.frames, plan.key_id,
                                   parent[0].base, plan.pieces, plan.level)  # fmt: skip
                    out[name] = _Chained(name, plan, ref, state, {digest.hex(): obj})
                    continue
            out[name] = self._fresh_chain(name, plan, state, sh.digest)
        return out

    @staticmethod
    def _seal(kind: int, body: bytes, plan: Plan, *, plugin_id: str, section: str, keyring: Keyring | None) -> bytes:
        return seal_object(kind, body, plugin_id=plugin_id, section=section, keyring=keyring, key_id=plan.key_id,
                           algorithm=plan.algorithm)  # fmt: skip

    @staticmethod
    def _fresh_chain(name: str, plan: Plan, state: ChainState, digest: bytes) -> _Chained:
        """A chain of one object, its base: the section's stored bytes, the blob a whole section would be."""
        data = plan.section.data
        ref = ChainRef(plan.kind, [ChainObject(digest, len(data))], plan.frames, plan.key_id, plan.base, plan.pieces,
                       plan.level)  # fmt: skip
        return _Chained(name, plan, ref, state, {digest.hex(): data})

    async def _parent(
        self, plugin_id: str, name: str, plan: Plan, keyring: Keyring | None, found: builtins.list[_Manifests]
    ) -> tuple[ChainRef, ChainState] | None:
        """The chain of the newest snapshot of this plugin keeping section ``name`` the same way, and its state.

        The state is remembered from this store object's last put of the
        section; otherwise the plaintext is rebuilt from the store once.
        """

        def fits(ref: ChainRef | None) -> bool:
            return ref is not None and ref.kind == plan.kind and ref.key_id == plan.key_id

        memory = self._chain_memory()
        hit = memory.get((plugin_id, name))
        if hit is not None and fits(hit.ref) and await self.stat_object(MANIFESTS + hit.snapshot_id) is not None:
            return hit.ref, hit.state
        if not found:
            found.append(await self._read_manifests())
        manifests = found[0]
        candidates = [
            (order_key(info_from_header(header, size)), header.id, manifests.chains[header.id][name])
            for _, header, size in manifests.headers
            if header.plugin_id == plugin_id and fits(manifests.chains.get(header.id, {}).get(name))
        ]
        if not candidates:
            return None
        _, snapshot_id, ref = max(candidates, key=lambda c: c[0])
        try:
            plain = bytes(await self._chain_plain(ref, plugin_id, name, keyring))
            state = await _offload(len(plain), state_of, ref.kind, plain)
        except (StateTransferError, KeyError):
            return None  # damaged or gone: this put starts a new chain
        memory[plugin_id, name] = _Remembered(snapshot_id, ref, state)
        return ref, state

    async def _secure_chain(self, item: _Chained) -> bool:
        """Write the chain's new objects and check the ones it shares; True when it had to start afresh.

        Shared objects are checked as dedup hits are (length, and content when
        small); one missing or damaged makes the put write a base instead.
        """
        for digest, data in item.new.items():
            await self._ensure_blob(digest, data)
        for obj in item.ref.objects:
            digest = obj.digest.hex()
            if digest not in item.new and not await self._trusted(digest, obj.length):
                fresh = self._fresh_chain(item.name, item.plan, item.state, section_digest(item.plan.section.data))
                item.ref, item.new = fresh.ref, fresh.new
                for key, data in item.new.items():
                    await self._ensure_blob(key, data)
                return True
        return False

    async def _chain_object(self, obj: ChainObject, name: str) -> bytes:
        data = await self.read_object(blob_key(obj.digest.hex()))
        if len(data) != obj.length or await _offload(len(data), section_digest, data) != obj.digest:
            raise ChecksumMismatch(f"chain object {obj.digest.hex()[:16]} of section {name!r} is damaged")
        return data

    async def _chain_plain(
        self, ref: ChainRef, plugin_id: str, name: str, keyring: Keyring | None
    ) -> bytes | memoryview:
        """The plaintext a chain rebuilds, every object checked against its digest.

        Raises:
            KeyError: an object is missing.
            ChecksumMismatch: an object is damaged.
        """
        data = await self._chain_object(ref.objects[0], name)
        base = await _offload(len(data), open_base, ref, data, plugin_id=plugin_id, section=name, keyring=keyring)
        deltas = []
        for obj in ref.objects[1:]:
            data = await self._chain_object(obj, name)
            deltas.append(await _offload(len(data), open_object, data, plugin_id=plugin_id, section=name,
                                         keyring=keyring))  # fmt: skip
        built = sum(ref.frames) if ref.frames else None  # a compressed section's plaintext size
        return await _offload(len(base), apply_chain, ref.kind, base, deltas, section=name, built=built)

    async def _rebuild(
        self, header: SnapshotHeader, sh: SectionHeader, ref: ChainRef, keyring: Keyring | None
    ) -> bytes:
        """The stored bytes of an incremental section, as exported (checked against its digest by the caller)."""
        if len(ref.objects) == 1 and ref.objects[0].digest == sh.digest:
            return await self.read_object(blob_key(sh.digest.hex()))  # the base is the section itself
        try:
            plain = await self._chain_plain(ref, header.plugin_id, sh.name, keyring)
        except CorruptSnapshot as exc:
            raise ChecksumMismatch(f"snapshot {header.id!r} is damaged: {exc}") from None
        section = StateSection(sh.name, sh.schema_version, b"", sh.compressed, sh.encryption, sh.metadata)
        return await _offload(len(plain), rebuild_section, section, plain, ref, snapshot_id=header.id,
                              plugin_id=header.plugin_id, keyring=keyring)  # fmt: skip

    async def _trusted(self, digest: str, length: int) -> bool:
        """Whether blob ``digest`` may be reused: present, ``length`` bytes, and content-checked when small."""
        existing = await self.stat_object(blob_key(digest))
        trusted = existing is not None and existing.regular and existing.size == length
        if trusted and length <= self.verify_dedup_bytes:
            trusted = await self._blob_state(digest, length, True, True) == "ok"
        return trusted

    # -- helpers -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _hold(self, exclusive: bool) -> AsyncIterator[Held | None]:
        """The store's lock: shared for puts, exclusive for garbage collection; in-process, then between processes."""
        rw = self.__dict__.get("_st_rwlock")
        if rw is None:
            rw = self.__dict__["_st_rwlock"] = RWLock()
        async with rw.exclusive() if exclusive else rw.shared(), self._process_lock(exclusive) as lease:
            yield lease

    async def _ensure_blob(self, digest: str, payload: bytes) -> None:
        """Make sure the blob ``digest`` holds ``payload``: write it if absent or known bad."""
        if not await self._trusted(digest, len(payload)):
            await self.write_object(blob_key(digest), payload)

    async def _blob_state(self, digest: str, length: int, listed: bool, read_data: bool) -> str:
        if not read_data:
            return "ok" if listed or await self.stat_object(blob_key(digest)) is not None else "missing"
        try:
            data = await self.read_object(blob_key(digest))
        except KeyError:
            return "missing"
        except StoreError:
            return "damaged"
        if len(data) != length:
            return "damaged"
        actual = await asyncio.to_thread(section_digest, data) if length >= _THREAD_ABOVE else section_digest(data)
        return "ok" if actual.hex() == digest else "damaged"

    async def _repair_blob(
        self, digest: str, status: str, source: SnapshotStore | None, done: builtins.list[str]
    ) -> str:
        async with self._hold(exclusive=False):
            if source is not None:
                try:
                    data = await source.read_object(blob_key(digest))
                except (KeyError, StoreError):
                    data = None
                if data is not None and section_digest(data).hex() == digest:
                    await self.write_object(blob_key(digest), data)
                    done.append(f"rewrote {status} blob {digest[:16]} from {source!r}")
                    return "repaired"
            if status == "damaged":
                await self._quarantine(blob_key(digest))
                done.append(f"moved damaged blob {digest[:16]} to {DAMAGED} (a put of the same content rewrites it)")
        return status

    async def _quarantine(self, key: str) -> None:
        try:
            data = await self.read_object(key)
        except KeyError:
            return
        await self.write_object(DAMAGED + key.replace("/", "_"), data)
        await self.delete_object(key)

    async def _manifest(self, snapshot_id: str) -> bytes:
        check_id(snapshot_id)
        try:
            return await self.read_object(MANIFESTS + snapshot_id)
        except KeyError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self!r}", snapshot_id=snapshot_id) from None

    @staticmethod
    def _parse(manifest: bytes, snapshot_id: str) -> SnapshotHeader:
        return SnapshotStore._parse_chained(manifest, snapshot_id)[0]

    @staticmethod
    def _parse_chained(manifest: bytes, snapshot_id: str) -> tuple[SnapshotHeader, dict[str, ChainRef]]:
        try:
            return parse_chained(manifest, snapshot_id)
        except CorruptSnapshot as exc:
            exc.snapshot_id = exc.snapshot_id or snapshot_id
            raise

    async def _header(self, snapshot_id: str) -> SnapshotHeader:
        return self._parse(await self._manifest(snapshot_id), snapshot_id)

    async def _read_manifests(self) -> _Manifests:
        """Every manifest, parsed; damaged ones and strays as :class:`UnreadableEntry`. Lock-free."""
        entries = await self.list_objects(MANIFESTS)
        headers: list[tuple[ObjectInfo, SnapshotHeader, int]] = []
        unreadable: list[UnreadableEntry] = []
        chains: dict[str, dict[str, ChainRef]] = {}
        limit = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(obj: ObjectInfo) -> None:
            name = obj.key[len(MANIFESTS) :]
            if not obj.regular or not _is_safe_id(name):
                unreadable.append(
                    UnreadableEntry(key=obj.key, reason="not written by this store (skipped)", mtime=obj.mtime)
                )
                return
            async with limit:
                try:
                    data = await self.read_object(obj.key)
                except KeyError:
                    return  # deleted since listing
            try:
                header, chained = parse_chained(data, name)
            except CorruptSnapshot as exc:
                unreadable.append(
                    UnreadableEntry(
                        key=obj.key, reason=str(exc), snapshot_id=name, plugin_id=_peek_plugin_id(data), mtime=obj.mtime
                    )
                )
                return
            headers.append((obj, header, len(data)))
            if chained:
                chains[name] = chained

        await asyncio.gather(*(read(obj) for obj in entries))
        headers.sort(key=lambda item: item[0].key)
        unreadable.sort(key=lambda u: u.key)
        return _Manifests(headers, unreadable, chains)

    async def _collect_garbage(self, lease: Held | None) -> tuple[int, builtins.list[UnreadableEntry]]:
        """Delete blobs no manifest references; returns how many, and the unreadable manifests that stopped it.

        Callers hold the exclusive lock, so no put is between writing its
        blobs and its manifest. While any manifest is unreadable nothing is
        deleted: what it references is unknown.
        """
        found = await self._read_manifests()
        damaged = [u for u in found.unreadable if u.snapshot_id is not None]
        if damaged:
            return 0, damaged
        referenced = _referenced(found)
        blobs, _ = _split_blobs(await self.list_objects(BLOBS))
        orphans = sorted(blobs - referenced)
        for digest in orphans:
            if lease is not None and not lease.fresh():
                msg = f"{self!r}: garbage collection stopped: its lock could not be refreshed in time"
                raise StoreLocked(msg)
            await self.delete_object(blob_key(digest))
        return len(orphans), []


async def _offload(size: int, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """``fn(*args, **kwargs)``, in a worker thread when it handles ``size`` bytes or more (the loop stays free)."""
    if size >= _THREAD_ABOVE:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _check_whole(check: DeferredCheck, known: Plaintext) -> None:
    """Run an export's deferred type check on its whole plaintext (joined here, off the event loop)."""
    check.whole(known.joined())


def _stored_parts(header: SnapshotHeader, chains: dict[str, ChainRef]) -> builtins.list[tuple[str, str, int, bool]]:
    """(section name, blob digest, length, is a chain object) of every blob a manifest needs."""
    out = []
    for sh in header.sections:
        ref = chains.get(sh.name)
        if ref is None:
            out.append((sh.name, sh.digest.hex(), sh.length, False))
        else:
            out += [(sh.name, obj.digest.hex(), obj.length, True) for obj in ref.objects]
    return out


def _referenced(found: _Manifests) -> set[str]:
    """Every blob the readable manifests need (chain objects count: a kept snapshot keeps its chain's base)."""
    return {
        part[1] for _, header, _ in found.headers for part in _stored_parts(header, found.chains.get(header.id, {}))
    }


def _split_blobs(entries: builtins.list[ObjectInfo]) -> tuple[set[str], builtins.list[str]]:
    """Blob digests, and keys under ``blobs/`` the store did not write (never deleted)."""
    digests: set[str] = set()
    strays: list[str] = []
    for obj in entries:
        match = _BLOB_KEY.match(obj.key)
        if obj.regular and match and match.group(2).startswith(match.group(1)):
            digests.add(match.group(2))
        else:
            strays.append(obj.key)
    return digests, strays


def _peek_plugin_id(data: bytes) -> str | None:
    """The plugin id a damaged manifest seems to name, if its header still decodes (best effort)."""
    with contextlib.suppress(Exception):
        return decode_header(memoryview(data)[42 if data.startswith(CHAINED_MAGIC) else 38 :]).plugin_id
    return None


def _warn_unreadable(store: SnapshotStore, unreadable: Sequence[UnreadableEntry]) -> None:
    if not unreadable:
        return
    names = ", ".join(repr(u.snapshot_id or u.key) for u in unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
    msg = f"{store!r}: {len(unreadable)} entries could not be read and were skipped: {names}"
    warnings.warn(StoreWarning(msg), stacklevel=3)
