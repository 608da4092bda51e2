"""The manifest: how a stored snapshot's header is kept apart from its section blobs."""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgspec

from .._checksum import verify_checksum, verify_signature
from .._container import SnapshotHeader, build_header, decode_header, header_bytes
from .._model import StateCreationReason, StateSection, StateSnapshot
from ..errors import ChecksumMismatch, CorruptSnapshot
from ._chain import ChainRef, check_chain_objects

__all__ = [
    "CHAINED_MAGIC",
    "MANIFEST_MAGIC",
    "SnapshotInfo",
    "build_header",
    "info_from_header",
    "manifest_bytes",
    "parse_chained",
    "parse_manifest",
    "verify_manifest",
]

MANIFEST_MAGIC = b"STMF\x02\n"
#: A manifest with incremental sections: the header, then the chain of each such section.
CHAINED_MAGIC = b"STMF\x03\n"
_HEADER_LEN = struct.Struct(">I")
_chains_decoder = msgspec.msgpack.Decoder(dict[str, ChainRef])


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
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


def manifest_bytes(header: SnapshotHeader, chains: dict[str, ChainRef] | None = None) -> bytes:
    """A manifest: magic, SHA-256 of the body, the body.

    Without chains the body is the header (the container's, without section
    data). With chains (incremental sections) the magic is :data:`CHAINED_MAGIC`
    and the body is the header's length (4 bytes, big-endian), the header,
    then the msgpack map of section name to :class:`ChainRef`.
    """
    body = header_bytes(header)
    if not chains:
        return MANIFEST_MAGIC + hashlib.sha256(body).digest() + body
    body = _HEADER_LEN.pack(len(body)) + body + msgspec.msgpack.encode(chains)
    return CHAINED_MAGIC + hashlib.sha256(body).digest() + body


def parse_manifest(data: bytes, snapshot_id: str) -> SnapshotHeader:
    """The header a manifest holds, checked against its digest and the id it is stored under.

    Raises:
        CorruptSnapshot: wrong magic, undecodable header, or a header of another snapshot.
        ChecksumMismatch: the header bytes do not match the manifest's digest.
    """
    return parse_chained(data, snapshot_id)[0]


def parse_chained(data: bytes, snapshot_id: str) -> tuple[SnapshotHeader, dict[str, ChainRef]]:
    """The header a manifest holds and the chains of its incremental sections (empty for a plain manifest).

    Raises:
        CorruptSnapshot: wrong magic, undecodable header or chains, or a header of another snapshot.
        ChecksumMismatch: the body does not match the manifest's digest.
    """
    chained = data.startswith(CHAINED_MAGIC)
    if not chained and not data.startswith(MANIFEST_MAGIC):
        raise CorruptSnapshot(f"manifest of {snapshot_id!r} has wrong magic bytes")
    start = len(MANIFEST_MAGIC) + 32
    view = memoryview(data)
    if len(data) < start or not hmac.compare_digest(hashlib.sha256(view[start:]).digest(), view[start - 32 : start]):
        raise ChecksumMismatch(f"manifest of {snapshot_id!r} is damaged (digest mismatch)")
    chains: dict[str, ChainRef] = {}
    body = view[start:]
    if chained:
        if len(body) < _HEADER_LEN.size:
            raise CorruptSnapshot(f"manifest of {snapshot_id!r} is truncated")
        (length,) = _HEADER_LEN.unpack_from(body)
        end = _HEADER_LEN.size + length
        try:
            chains = _chains_decoder.decode(body[end:])
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
            raise CorruptSnapshot(f"manifest of {snapshot_id!r}: chains do not decode: {exc}") from exc
        body = body[_HEADER_LEN.size : end]
    header = decode_header(body)
    if header.id != snapshot_id:
        raise CorruptSnapshot(f"manifest stored as {snapshot_id!r} describes snapshot {header.id!r}")
    names = {sh.name for sh in header.sections}
    for name, ref in chains.items():
        if name not in names:
            raise CorruptSnapshot(f"manifest of {snapshot_id!r} chains a section it does not have: {name!r}")
        check_chain_objects(ref, name)
    return header, chains


def verify_manifest(header: SnapshotHeader, verify_key: bytes | None = None) -> None:
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


def info_from_header(header: SnapshotHeader, manifest_size: int) -> SnapshotInfo:
    """The :class:`SnapshotInfo` of a parsed manifest of ``manifest_size`` bytes."""
    meta = header.metadata
    size = manifest_size + sum(sh.length for sh in header.sections)
    return SnapshotInfo(
        id=header.id, plugin_id=header.plugin_id, plugin_version=header.plugin_version,
        schema_version=header.schema_version, timestamp=header.timestamp, reason=meta.reason,
        tags=list(meta.tags), expires_at=meta.expires_at, size=size, created_ns=header.created_ns,
    )  # fmt: skip
