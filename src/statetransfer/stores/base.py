"""The snapshot store contract: a small set of blob/manifest primitives, and everything built on them.

A snapshot is stored as a *manifest* (its container header: metadata plus,
per section, length and SHA-256) and one content-addressed *blob* per
section. Identical sections are stored once; deleting a snapshot removes only
blobs no remaining manifest references. Backends implement the primitives
(``_put_blob``, ``_get_blob``, ...); the shared logic here does the rest.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec

from ..checksum import section_digest, verify_checksum, verify_signature
from ..container import SnapshotHeader, assemble, build_header, decode_header, header_bytes
from ..errors import ChecksumMismatch, CorruptSnapshot, SnapshotNotFound, StateTransferError, StoreError
from ..model import StateCreationReason, StateSection, StateSnapshot

__all__ = ["PruneReport", "SnapshotInfo", "SnapshotStore", "VerifyReport", "check_id"]

MANIFEST_MAGIC = b"STMF\x02\n"
#: Snapshots with at least this many bytes of sections are hashed in a worker thread.
_THREAD_ABOVE = 1 << 20
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")


def check_id(value: str, what: str = "snapshot id") -> str:
    """Return ``value`` if it is safe as a file or object name; :class:`StoreError` otherwise.

    Allowed: letters, digits and ``. _ : @ + -``, starting with a letter or
    digit, at most 200 characters, never ``..`` (no path traversal, no NUL).
    """
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        msg = f"unsafe {what} {value!r}: use letters, digits and . _ : @ + - (no '/', '..', NUL; max 200)"
        raise StoreError(msg)
    return value


class SnapshotInfo(msgspec.Struct, frozen=True):
    """What :meth:`SnapshotStore.list` tells about a snapshot without reading its data."""

    id: str
    plugin_id: str
    plugin_version: str
    schema_version: int
    timestamp: int
    reason: StateCreationReason
    tags: list[str]
    expires_at: int | None
    size: int
    created_ns: int = 0


class VerifyReport(msgspec.Struct):
    """The result of :meth:`SnapshotStore.verify`: ``ok`` when ``problems`` is empty."""

    ok: bool
    checked: int
    problems: list[str]
    blobs_checked: int = 0
    unreferenced_blobs: int = 0


class PruneReport(msgspec.Struct):
    """What :meth:`SnapshotStore.prune` removed (or would remove, with ``dry_run``) and kept."""

    removed: list[str]
    kept: list[str]
    dry_run: bool
    blobs_removed: int = 0


def _order_key(info: SnapshotInfo) -> tuple[int, str]:
    return (info.created_ns or info.timestamp * 1_000_000_000, info.id)


class SnapshotStore(abc.ABC):
    """Where snapshots are kept: backups, checkpoints, state moving between machines.

    Subclasses implement the ``_``-prefixed primitives; blobs are keyed by
    the hex SHA-256 of their bytes, manifests by snapshot id.
    """

    #: URL scheme of the backend (``file``, ``sqlite``, ``s3``, ``memory``).
    scheme: str = ""

    # -- primitives (the backend contract) ---------------------------------------------------------
    @abc.abstractmethod
    async def _put_blob(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` atomically (idempotent)."""

    @abc.abstractmethod
    async def _get_blob(self, digest: str) -> bytes:
        """The blob's bytes; raise ``KeyError`` if absent."""

    @abc.abstractmethod
    async def _has_blob(self, digest: str) -> bool:
        """Whether the blob exists."""

    @abc.abstractmethod
    async def _delete_blob(self, digest: str) -> None:
        """Remove a blob (no error if absent)."""

    @abc.abstractmethod
    async def _list_blobs(self) -> set[str]:
        """Digests of every stored blob."""

    @abc.abstractmethod
    async def _put_manifest(self, snapshot_id: str, data: bytes) -> None:
        """Store a manifest atomically; raise :class:`StoreError` if the id exists (never overwrite)."""

    @abc.abstractmethod
    async def _get_manifest(self, snapshot_id: str) -> bytes:
        """The manifest's bytes; raise ``KeyError`` if absent."""

    @abc.abstractmethod
    async def _list_manifests(self) -> list[tuple[str, bytes]]:
        """(snapshot id, manifest bytes) for every stored snapshot."""

    @abc.abstractmethod
    async def _delete_manifest(self, snapshot_id: str) -> None:
        """Remove a manifest (no error if absent)."""

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Held by delete/prune (blob garbage collection); puts hold :meth:`_shared`."""
        yield

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[None]:
        """Held by put, so garbage collection never removes a blob a put is about to reference."""
        yield

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections and files."""

    async def __aenter__(self) -> SnapshotStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the public API ----------------------------------------------------------------------------
    async def put(self, snapshot: StateSnapshot) -> SnapshotInfo:
        """Store ``snapshot``; only sections not already stored are written.

        Raises:
            StoreError: unsafe ids, or a snapshot with this id already exists.
            ChecksumMismatch: the snapshot's checksum is wrong.
        """
        check_id(snapshot.id)
        check_id(snapshot.plugin_id, "plugin id")
        large = sum(len(s.data) for s in snapshot.sections.values()) >= _THREAD_ABOVE
        parsed = await asyncio.to_thread(build_header, snapshot) if large else build_header(snapshot)
        manifest = _manifest_bytes(parsed)
        payloads = [sec.data for sec in snapshot.sections.values()]
        async with self._shared():
            for sh, payload in zip(parsed.sections, payloads, strict=True):
                digest = sh.digest.hex()
                if not await self._has_blob(digest):
                    await self._put_blob(digest, payload)
            await self._put_manifest(snapshot.id, manifest)
        return _info(parsed, len(manifest))

    async def get(self, snapshot_id: str, *, verify_key: bytes | None = None) -> StateSnapshot:
        """The snapshot with ``snapshot_id``, every section verified.

        Args:
            snapshot_id: which snapshot.
            verify_key: when given, the snapshot must carry a valid HMAC
                signature by this key (checked before any blob is read).

        Raises:
            SnapshotNotFound: no such snapshot.
            ChecksumMismatch: a stored section or the manifest is damaged, or the signature is bad/missing.
        """
        header = await self._header(snapshot_id)
        if verify_key is not None:
            _verify_manifest(header, verify_key)
        payloads = []
        for sh in header.sections:
            try:
                payloads.append(await self._get_blob(sh.digest.hex()))
            except KeyError:
                msg = f"snapshot {snapshot_id!r} is damaged: blob of section {sh.name!r} is missing"
                raise ChecksumMismatch(msg) from None
        if sum(map(len, payloads)) >= _THREAD_ABOVE:
            return await asyncio.to_thread(assemble, header, payloads, verify_key=verify_key)
        return assemble(header, payloads, verify_key=verify_key)

    async def info(self, snapshot_id: str) -> SnapshotInfo:
        """What :meth:`list` says about one snapshot."""
        manifest = await self._manifest(snapshot_id)
        return _info(_parse_manifest(manifest, snapshot_id), len(manifest))

    async def list(self, plugin_id: str | None = None, tags: Iterable[str] | None = None) -> list[SnapshotInfo]:
        """Snapshots (newest first), optionally of one plugin and carrying all ``tags``. Reads manifests only."""
        wanted = set(tags or ())
        infos = []
        for snapshot_id, manifest in await self._list_manifests():
            try:
                info = _info(_parse_manifest(manifest, snapshot_id), len(manifest))
            except CorruptSnapshot:
                continue  # verify() reports it; listing stays usable
            if plugin_id is not None and info.plugin_id != plugin_id:
                continue
            if not wanted <= set(info.tags):
                continue
            infos.append(info)
        infos.sort(key=_order_key, reverse=True)
        return infos

    async def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot, and the blobs no other snapshot uses.

        Raises:
            SnapshotNotFound: no such snapshot.
        """
        async with self._exclusive():
            await self._manifest(snapshot_id)
            await self._delete_manifest(snapshot_id)
            await self._collect_garbage()

    async def prune(
        self,
        keep_last: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        dry_run: bool = False,
    ) -> PruneReport:
        """Apply retention per plugin and remove expired snapshots.

        Expired snapshots (``expires_at`` in the past) are always removed. When
        any keep rule is given, a snapshot survives only if one rule keeps it:
        the ``keep_last`` newest; the newest of each of the ``keep_daily`` most
        recent days (UTC); the newest of each of the ``keep_weekly`` most
        recent ISO weeks. With no rule, only expired snapshots go.
        """
        for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily), ("keep_weekly", keep_weekly)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise StoreError(f"{name} must be a non-negative int, got {value!r}")
        async with self._exclusive():
            infos = await self.list()
            now = time.time()
            rules = keep_last is not None or keep_daily is not None or keep_weekly is not None
            by_plugin: dict[str, list[SnapshotInfo]] = {}
            for info in infos:
                by_plugin.setdefault(info.plugin_id, []).append(info)
            keep: set[str] = set()
            for group in by_plugin.values():  # newest first already
                live = [i for i in group if i.expires_at is None or i.expires_at >= now]
                if not rules:
                    keep.update(i.id for i in live)
                    continue
                keep.update(i.id for i in live[: keep_last or 0])
                keep.update(_newest_per_period(live, keep_daily or 0, _day))
                keep.update(_newest_per_period(live, keep_weekly or 0, _week))
            removed = [i.id for i in infos if i.id not in keep]
            kept = [i.id for i in infos if i.id in keep]
            blobs_removed = 0
            if not dry_run and removed:
                for snapshot_id in removed:
                    await self._delete_manifest(snapshot_id)
                blobs_removed = await self._collect_garbage()
            return PruneReport(removed, kept, dry_run, blobs_removed)

    async def verify(
        self, read_data: bool = True, *, progress: Callable[[int, int], None] | None = None
    ) -> VerifyReport:
        """Check every manifest's checksum and that its blobs exist; with ``read_data``, re-hash every blob.

        Problems are reported, never raised. ``progress(done, total)`` is
        called after each snapshot checked.
        """
        problems: list[str] = []
        checked = 0
        try:
            manifests = await self._list_manifests()
            blobs = await self._list_blobs()
        except StateTransferError as exc:
            return VerifyReport(False, 0, [f"cannot list the store: {exc}"])
        referenced: set[str] = set()
        hashed: dict[str, bool] = {}
        for snapshot_id, manifest in manifests:
            checked += 1
            if progress is not None:
                progress(checked - 1, len(manifests))
            try:
                header = _parse_manifest(manifest, snapshot_id)
                _verify_manifest(header)
            except StateTransferError as exc:
                problems.append(f"snapshot {snapshot_id!r}: manifest damaged: {exc}")
                continue
            for sh in header.sections:
                digest = sh.digest.hex()
                referenced.add(digest)
                if digest not in blobs:
                    problems.append(f"snapshot {snapshot_id!r}: blob {digest[:16]} of section {sh.name!r} is missing")
                    continue
                if read_data and digest not in hashed:
                    hashed[digest] = await self._blob_intact(digest, sh.length)
                if read_data and not hashed[digest]:
                    problems.append(f"snapshot {snapshot_id!r}: blob {digest[:16]} of section {sh.name!r} is damaged")
        if progress is not None:
            progress(checked, len(manifests))
        return VerifyReport(not problems, checked, problems, len(hashed), len(blobs - referenced))

    # -- helpers -----------------------------------------------------------------------------------
    async def _blob_intact(self, digest: str, length: int) -> bool:
        try:
            data = await self._get_blob(digest)
        except (KeyError, StateTransferError):
            return False
        if len(data) >= _THREAD_ABOVE:
            return len(data) == length and await asyncio.to_thread(section_digest, data) == bytes.fromhex(digest)
        return len(data) == length and section_digest(data) == bytes.fromhex(digest)

    async def _manifest(self, snapshot_id: str) -> bytes:
        check_id(snapshot_id)
        try:
            return await self._get_manifest(snapshot_id)
        except KeyError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self!r}") from None

    async def _header(self, snapshot_id: str) -> SnapshotHeader:
        return _parse_manifest(await self._manifest(snapshot_id), snapshot_id)

    async def _collect_garbage(self) -> int:
        """Delete blobs no manifest references; returns how many. Callers hold :meth:`_exclusive`."""
        referenced: set[str] = set()
        for snapshot_id, manifest in await self._list_manifests():
            try:
                header = _parse_manifest(manifest, snapshot_id)
            except CorruptSnapshot:
                return 0  # cannot tell what a damaged manifest references: delete nothing
            referenced.update(sh.digest.hex() for sh in header.sections)
        orphans = await self._list_blobs() - referenced
        for digest in orphans:
            await self._delete_blob(digest)
        return len(orphans)


def _manifest_bytes(header: SnapshotHeader) -> bytes:
    """A manifest: magic, SHA-256 of the header bytes, the header (the container's, without section data)."""
    body = header_bytes(header)
    return MANIFEST_MAGIC + hashlib.sha256(body).digest() + body


def _parse_manifest(data: bytes, snapshot_id: str) -> SnapshotHeader:
    if not data.startswith(MANIFEST_MAGIC):
        raise CorruptSnapshot(f"manifest of {snapshot_id!r} has wrong magic bytes")
    start = len(MANIFEST_MAGIC) + 32
    view = memoryview(data)
    if len(data) < start or not hmac.compare_digest(hashlib.sha256(view[start:]).digest(), view[start - 32 : start]):
        raise ChecksumMismatch(f"manifest of {snapshot_id!r} is damaged (digest mismatch)")
    header = decode_header(view[start:])
    if header.id != snapshot_id:
        raise CorruptSnapshot(f"manifest stored as {snapshot_id!r} describes snapshot {header.id!r}")
    return header


def _verify_manifest(header: SnapshotHeader, verify_key: bytes | None = None) -> None:
    """Check a manifest's checksum (and signature, given the key) from its section digests, without reading blobs."""
    sections = {
        sh.name: StateSection(sh.name, sh.schema_version, b"", sh.compressed, sh.encryption, sh.metadata)
        for sh in header.sections
    }
    skeleton = StateSnapshot(
        header.id, header.plugin_id, header.plugin_version, header.schema_version,
        header.timestamp, sections, header.metadata, header.checksum, header.created_ns, header.signature,
    )  # fmt: skip
    digests = {sh.name: sh.digest for sh in header.sections}
    lengths = {sh.name: sh.length for sh in header.sections}
    verify_checksum(skeleton, digests=digests, lengths=lengths)
    if verify_key is not None:
        verify_signature(skeleton, verify_key, digests=digests, lengths=lengths)


def _info(header: SnapshotHeader, manifest_size: int) -> SnapshotInfo:
    meta = header.metadata
    size = manifest_size + sum(sh.length for sh in header.sections)
    return SnapshotInfo(header.id, header.plugin_id, header.plugin_version, header.schema_version,
                        header.timestamp, meta.reason, list(meta.tags), meta.expires_at, size,
                        header.created_ns)  # fmt: skip


def _day(info: SnapshotInfo) -> Any:
    return datetime.datetime.fromtimestamp(info.timestamp, datetime.UTC).date()


def _week(info: SnapshotInfo) -> Any:
    return datetime.datetime.fromtimestamp(info.timestamp, datetime.UTC).isocalendar()[:2]


def _newest_per_period(infos: list[SnapshotInfo], count: int, period: Any) -> list[str]:
    kept: list[str] = []
    seen: set[Any] = set()
    for info in infos:  # newest first
        if len(seen) >= count:
            break
        key = period(info)
        if key not in seen:
            seen.add(key)
            kept.append(info.id)
    return kept
