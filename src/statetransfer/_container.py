"""The snapshot container: a versioned, framed binary file format (see docs/format.md)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterator, Sequence
from typing import IO, Any

import msgspec

from ._checksum import section_digest, verify_checksum, verify_signature
from ._fileio import write_atomic
from ._model import EncryptionInfo, StateMetadata, StateSection, StateSnapshot
from .errors import ChecksumMismatch, CorruptSnapshot, StateTransferError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SectionHeader",
    "SnapshotHeader",
    "assemble",
    "build_header",
    "decode_header",
    "dump",
    "dumps",
    "encode_header",
    "header_bytes",
    "iter_chunks",
    "load",
    "loads",
]

MAGIC = b"\x89STSNAP\n"
END_MAGIC = b"\nSTSEND\x89"
FORMAT_VERSION = (1, 0)
_PREFIX = struct.Struct(">8sBBHI")  # magic, major, minor, flags, header length
_TRAILER = struct.Struct(">8sQ32s")  # end magic, total length, sha256(prefix + header)
MAX_HEADER = 64 << 20
_SIGNATURE = re.compile(r"\Ahmac-sha256:[0-9a-f]{64}\Z")


class SectionHeader(msgspec.Struct, forbid_unknown_fields=False):
    """A section as the header describes it: everything but its bytes."""

    name: str
    schema_version: int
    length: int
    digest: bytes
    compressed: bool
    encryption: EncryptionInfo | None
    metadata: dict[str, str]


class SnapshotHeader(msgspec.Struct, forbid_unknown_fields=False):
    """A snapshot without its section bytes: the container header, and a store's manifest."""

    id: str
    plugin_id: str
    plugin_version: str
    schema_version: int
    timestamp: int
    created_ns: int
    metadata: StateMetadata
    checksum: str
    signature: str | None
    sections: list[SectionHeader]


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(SnapshotHeader)


def build_header(snapshot: StateSnapshot) -> SnapshotHeader:
    """Describe ``snapshot`` without its section bytes (each section hashed once).

    Raises:
        ChecksumMismatch: ``snapshot.checksum`` does not match its content.
    """
    digests: dict[str, bytes] = {}
    headers = []
    for name, sec in snapshot.sections.items():
        if name != sec.name:
            raise StateTransferError(f"section stored under {name!r} is named {sec.name!r}: keys must match names")
        digests[name] = section_digest(sec.data)
        headers.append(
            SectionHeader(name, sec.schema_version, len(sec.data), digests[name], sec.compressed,
                          sec.encryption, sec.metadata)
        )  # fmt: skip
    try:
        verify_checksum(snapshot, digests=digests)
    except ChecksumMismatch as exc:
        msg = f"refusing to write a snapshot whose checksum is wrong ({exc}); set it with calculate_checksum()"
        raise ChecksumMismatch(msg) from None
    return SnapshotHeader(snapshot.id, snapshot.plugin_id, snapshot.plugin_version, snapshot.schema_version,
                          snapshot.timestamp, snapshot.created_ns, snapshot.metadata, snapshot.checksum,
                          snapshot.signature, headers)  # fmt: skip


def header_bytes(header: SnapshotHeader) -> bytes:
    """The msgpack encoding of a header (at most 64 MiB)."""
    data = _encoder.encode(header)
    if len(data) > MAX_HEADER:
        raise StateTransferError(f"snapshot header is {len(data)} bytes, above the {MAX_HEADER} limit")
    return data


def encode_header(snapshot: StateSnapshot) -> tuple[bytes, list[bytes]]:
    """The msgpack header of ``snapshot`` and its section payloads (not copied), in header order."""
    return header_bytes(build_header(snapshot)), [sec.data for sec in snapshot.sections.values()]


def decode_header(data: bytes | memoryview) -> SnapshotHeader:
    """Decode a header written by :func:`encode_header`; :class:`CorruptSnapshot` if malformed."""
    try:
        header = _header_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
        raise _corrupt(f"header does not decode: {exc}") from exc
    names = [s.name for s in header.sections]
    if len(set(names)) != len(names):
        raise _corrupt("a section name appears twice")
    if any(s.length < 0 for s in header.sections):
        raise _corrupt("negative section length")
    if header.signature is not None and not _SIGNATURE.match(header.signature):
        raise _corrupt(f"malformed signature {header.signature[:80]!r}")
    return header


def assemble(
    header: SnapshotHeader, payloads: Sequence[bytes | memoryview], *, verify_key: bytes | None = None
) -> StateSnapshot:
    """Join a header with its section payloads, verifying every section hash and the checksum.

    Raises:
        ChecksumMismatch: a payload, the checksum or (with ``verify_key``) the signature does not match.
    """
    sections: dict[str, StateSection] = {}
    digests: dict[str, bytes] = {}
    for sh, payload in zip(header.sections, payloads, strict=True):
        digest = section_digest(payload)
        if len(payload) != sh.length or not hmac.compare_digest(digest, sh.digest):
            raise ChecksumMismatch(f"section {sh.name!r} of snapshot {header.id!r} is damaged (digest mismatch)")
        digests[sh.name] = digest
        data = payload if isinstance(payload, bytes) else bytes(payload)
        sections[sh.name] = StateSection(sh.name, sh.schema_version, data, sh.compressed, sh.encryption, sh.metadata)
    snapshot = StateSnapshot(header.id, header.plugin_id, header.plugin_version, header.schema_version,
                             header.timestamp, sections, header.metadata, header.checksum,
                             header.created_ns, header.signature)  # fmt: skip
    verify_checksum(snapshot, digests=digests)
    if verify_key is not None:
        verify_signature(snapshot, verify_key, digests=digests)
    return snapshot


def _frame(snapshot: StateSnapshot) -> tuple[bytes, list[bytes], bytes]:
    """Return (prefix + header, section payloads, trailer) without copying payloads."""
    header, payloads = encode_header(snapshot)
    head = _PREFIX.pack(MAGIC, *FORMAT_VERSION, 0, len(header)) + header
    total = len(head) + sum(map(len, payloads)) + _TRAILER.size
    return head, payloads, _TRAILER.pack(END_MAGIC, total, hashlib.sha256(head).digest())


def iter_chunks(snapshot: StateSnapshot) -> Iterator[bytes]:
    """The container bytes of ``snapshot`` as a sequence of pieces (no whole copy)."""
    head, payloads, trailer = _frame(snapshot)
    yield head
    yield from payloads
    yield trailer


def dumps(snapshot: StateSnapshot) -> bytes:
    """Encode ``snapshot`` in the container format.

    Raises:
        ChecksumMismatch: ``snapshot.checksum`` does not match its content.
    """
    return b"".join(iter_chunks(snapshot))


def dump(snapshot: StateSnapshot, file: str | os.PathLike[str] | IO[bytes]) -> None:
    """Write ``snapshot`` to a path or a binary file object, streaming section data.

    A path is written atomically: an existing file there is replaced only once
    the new one is complete and durable, and survives any failure.

    Raises:
        WriteFailed: the path could not be written (the previous file is intact).
    """
    if isinstance(file, str | os.PathLike):
        write_atomic(file, iter_chunks(snapshot))
        return
    for piece in iter_chunks(snapshot):
        file.write(piece)


def _corrupt(msg: str) -> CorruptSnapshot:
    return CorruptSnapshot(f"not a readable snapshot: {msg}")


def loads(data: bytes | bytearray | memoryview, *, verify_key: bytes | None = None) -> StateSnapshot:
    """Decode container bytes into a :class:`StateSnapshot`, verifying integrity.

    Args:
        data: bytes produced by :func:`dumps`.
        verify_key: when given, the snapshot must carry a valid signature by it.

    Raises:
        CorruptSnapshot: wrong magic, unknown format version, bad framing, truncation.
        ChecksumMismatch: a section or the checksum does not match, or the signature is bad/missing.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < _PREFIX.size + _TRAILER.size:
        if bytes(view[: len(MAGIC)]) != MAGIC[: min(size, len(MAGIC))]:
            raise _corrupt("wrong magic bytes")
        raise _corrupt(f"truncated ({size} bytes)")
    magic, major, minor, flags, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise _corrupt("wrong magic bytes (is this a statetransfer snapshot?)")
    if major != FORMAT_VERSION[0]:
        msg = f"format version {major}.{minor} is not supported by this reader (reads {FORMAT_VERSION[0]}.x)"
        raise CorruptSnapshot(msg + ("; upgrade statetransfer" if major > FORMAT_VERSION[0] else ""))
    if flags != 0:
        raise _corrupt(f"unknown flags {flags:#06x}")
    end_magic, total, head_digest = _TRAILER.unpack_from(view, size - _TRAILER.size)
    if end_magic != END_MAGIC:
        raise _corrupt(f"truncated or extended: no trailer at the end of its {size} bytes")
    if total != size:
        raise _corrupt(f"truncated or extended: the trailer records {total} bytes, the data has {size}")
    body_end = size - _TRAILER.size
    if header_len > MAX_HEADER or _PREFIX.size + header_len > body_end:
        raise _corrupt(f"header length {header_len} does not fit in {size} bytes")
    head_end = _PREFIX.size + header_len
    if not hmac.compare_digest(hashlib.sha256(view[:head_end]).digest(), head_digest):
        raise ChecksumMismatch("snapshot header is damaged: header digest does not match")
    header = decode_header(view[_PREFIX.size : head_end])
    if sum(s.length for s in header.sections) != body_end - head_end:
        raise _corrupt("section lengths do not add up to the file size")
    payloads = []
    offset = head_end
    for sh in header.sections:
        payloads.append(view[offset : offset + sh.length])
        offset += sh.length
    return assemble(header, payloads, verify_key=verify_key)


def load(file: str | os.PathLike[str] | IO[bytes], *, verify_key: bytes | None = None) -> StateSnapshot:
    """Read a snapshot from a path or a binary file object (see :func:`loads`)."""
    try:
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as fh:
                data: Any = fh.read()
        else:
            data = file.read()
    except OSError as exc:
        raise StateTransferError(f"cannot read snapshot {getattr(file, 'name', file)!r}: {exc}") from exc
    return loads(data, verify_key=verify_key)
