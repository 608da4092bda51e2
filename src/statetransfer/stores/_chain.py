"""Incremental sections in stores: a base and a chain of deltas that rebuild a section's bytes exactly.

A chain starts from the stored bytes of a section (its base, the blob a
whole section would be). Each later backup of the same plugin and section
adds a delta against the previous *plaintext* (the section opened and
decompressed): copies of byte ranges of the previous plaintext, and literal
bytes. For maps (msgpack dicts) the ranges are found by lining entries up
by key; for anything else by content-defined chunking (FastCDC). A get
rebuilds the plaintext, compresses it frame by frame and seals it with the
nonce the manifest records, which gives back the exported bytes exactly: the
section digest, the snapshot checksum and any signature are checked against
the original header. A put writes a delta only after checking that this
rebuild reproduces the section's bytes. The format is in ``docs/format.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pyfastcdc import FastCDC

from .._codecs import gc_paused
from .._compression import compress, declared_size, decompress
from .._crypto import Binding, Keyring, decrypt_data, encrypt_data, seal_exact
from .._model import EncryptionInfo, StateSection
from .._sections import (
    SECTION_MAX_SIZE,
    DeferredCheck,
    Plaintext,
    framing,
    keep_plaintext,
    kept_plaintext,
    unpack_section,
)
from .._workers import pool
from ..errors import CorruptSnapshot, MissingKey, StateTransferError

__all__ = [
    "BYTES_DELTA",
    "MAP_DELTA",
    "ChainBase",
    "ChainObject",
    "ChainRef",
    "ChainState",
    "Plan",
    "apply_chain",
    "check_plaintext",
    "diff",
    "is_exact",
    "open_base",
    "open_object",
    "plan_section",
    "rebuild_section",
    "seal_object",
    "state_of",
]

OBJECT_MAGIC = b"STCO"
OBJECT_VERSION = 1
MAP_DELTA, BYTES_DELTA = 1, 2
_KIND_OF = {MAP_DELTA: "map", BYTES_DELTA: "bytes"}
_PREFIX = struct.Struct(">4sBBH")  # magic, version, object type, envelope length
#: FastCDC chunk sizes for byte deltas: a contiguous change costs about two average chunks beyond itself.
CDC_MIN, CDC_AVG, CDC_MAX = 16 << 10, 64 << 10, 256 << 10
_DIGEST = 16
#: Compression levels a chain may record (zstd's range; lz4 takes a part of it).
LEVELS = (-(1 << 17), 22)
_BINDING_DOMAIN = "statetransfer/chain/v1"
_enc = msgspec.msgpack.Encoder()
_raw_map = msgspec.msgpack.Decoder(dict[Any, msgspec.Raw])


class ChainObject(msgspec.Struct, array_like=True, frozen=True):
    """One stored object of a chain: its blob digest and length."""

    digest: bytes
    length: int


class ChainBase(msgspec.Struct, array_like=True, frozen=True):
    """How to open a chain's base, the stored bytes of the section in the backup that started the chain."""

    #: The snapshot id those bytes are sealed for (their AEAD binding).
    sealed_in: str
    schema_version: int
    compressed: bool
    encryption: EncryptionInfo | None
    metadata: dict[str, str]


class ChainRef(msgspec.Struct, array_like=True, frozen=True):
    """How a manifest's section is kept as a chain: kind, objects (base first), compression frames, sealing key."""

    kind: str  # "map" | "bytes"
    objects: list[ChainObject]
    #: Plaintext size of each compression frame of the section; empty when the section is stored uncompressed.
    frames: list[int]
    #: The key the chain's objects are sealed with (None: not sealed).
    key_id: str | None
    base: ChainBase
    #: Plaintext piece sizes of each frame, when a frame was compressed from more than one piece (else empty).
    pieces: list[list[int]] = []
    #: The compression level the section was compressed with (None: the library's default).
    level: int | None = None


class _Delta(msgspec.Struct, array_like=True):
    ops: list[int]  # pairs: (source offset in the previous plaintext, length); source -1 takes literal bytes
    literal: bytes


_delta = msgspec.msgpack.Decoder(_Delta)
_envelope = msgspec.msgpack.Decoder(tuple[str, str, bytes] | None)


# -- objects -----------------------------------------------------------------------------------------
def _binding(plugin_id: str, section: str, kind: int) -> Binding:
    return Binding(_BINDING_DOMAIN, plugin_id, section, kind)


def seal_object(
    kind: int, body: bytes, *, plugin_id: str, section: str, keyring: Keyring | None, key_id: str | None, algorithm: str
) -> bytes:
    """A chain object: prefix, envelope (the encryption parameters, or nil), then the zstd frame of ``body``, sealed."""
    payload = compress(body, "zstd")
    envelope: Any = None
    if key_id is not None:
        assert keyring is not None
        payload, info = encrypt_data(payload, _binding(plugin_id, section, kind), keyring=keyring, key_id=key_id,
                                     algorithm=algorithm)  # fmt: skip
        envelope = [info.algorithm, info.key_id, info.nonce]
    env = _enc.encode(envelope)
    return _PREFIX.pack(OBJECT_MAGIC, OBJECT_VERSION, kind, len(env)) + env + payload


def open_object(data: bytes, *, plugin_id: str, section: str, keyring: Keyring | None) -> tuple[int, bytes]:
    """(object type, body) of a chain object.

    Raises:
        CorruptSnapshot: malformed object.
        MissingKey / DecryptionFailed: a sealed object that cannot be opened.
    """
    if len(data) < _PREFIX.size:
        raise CorruptSnapshot(f"chain object of section {section!r} is truncated")
    magic, version, kind, env_len = _PREFIX.unpack_from(data)
    if magic != OBJECT_MAGIC or version != OBJECT_VERSION or kind not in _KIND_OF:
        raise CorruptSnapshot(f"chain object of section {section!r} has a wrong prefix")
    start = _PREFIX.size + env_len
    try:
        envelope = _envelope.decode(data[_PREFIX.size : start])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(f"chain object of section {section!r}: bad envelope ({exc})") from None
    payload: bytes | memoryview = memoryview(data)[start:]
    if envelope is not None:
        algorithm, key_id, nonce = envelope
        if keyring is None or key_id not in keyring:
            raise MissingKey(f"section {section!r} is stored incrementally, sealed with key {key_id!r}", key_id=key_id)
        info = EncryptionInfo(algorithm, key_id, nonce)
        payload = decrypt_data(payload, info, _binding(plugin_id, section, kind), keyring=keyring)
    return kind, decompress(payload, "zstd", max_size=SECTION_MAX_SIZE)


# -- the layout of a map's plaintext -----------------------------------------------------------------
def _map_header_size(first: int) -> int | None:
    if 0x80 <= first <= 0x8F:
        return 1
    return {0xDE: 3, 0xDF: 5}.get(first)


def map_layout(plain: bytes) -> tuple[list[bytes], list[int]] | None:
    """(key encodings, entry offsets) of a msgpack map: entry ``i`` is ``plain[offsets[i]:offsets[i + 1]]``.

    Only a guide for lining up entries: a delta copies a range of the
    previous plaintext only after comparing its bytes, so a layout that is
    wrong costs space, never correctness. None when ``plain`` is not a map.
    """
    size = _map_header_size(plain[0]) if plain else None
    if size is None:
        return None
    try:
        with gc_paused():
            decoded = _raw_map.decode(plain)
            keys = list(map(_enc.encode, decoded))
            lengths = map(operator.add, map(len, keys), map(len, decoded.values()))
            offsets = list(itertools.accumulate(lengths, initial=size))
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, RecursionError, UnicodeDecodeError):
        return None
    return (keys, offsets) if offsets[-1] == len(plain) else None


# -- what a put remembers about the previous plaintext -----------------------------------------------
@dataclass
class ChainState:
    """The plaintext a chain rebuilds, as the next put compares against it (in memory only, never stored)."""

    kind: str
    #: The plaintext itself (maps compare entries against it).
    plain: bytes = b""
    #: maps: key encodings and entry offsets (see :func:`map_layout`), found when first needed.
    keys: list[bytes] | None = None
    offsets: list[int] = field(default_factory=list)
    #: bytes: content-defined chunk digest -> (offset, length) in the plaintext.
    chunks: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    #: The plaintext's length.
    size: int = 0
    #: bytes: a digest of the chunk digests in order (equal for an unchanged plaintext).
    fingerprint: bytes = b""
    #: maps diffed against a previous plaintext: (start, end) of each entry not copied from it.
    fresh: list[tuple[int, int]] | None = None
    #: The token of the type check the plaintext passed (see :class:`~statetransfer._sections.DeferredCheck`).
    checked_as: object = None
    _positions: dict[bytes, int] | None = None

    def layout(self) -> bool:
        """Find the map layout if not known yet; False when the plaintext is not a map."""
        if self.keys is None:
            found = map_layout(self.plain)
            if found is None:
                return False
            self.keys, self.offsets = found
        return True

    def positions(self) -> dict[bytes, int]:
        """Key encoding -> entry index."""
        if self._positions is None:
            self._positions = dict(zip(self.keys or (), itertools.count()))
        return self._positions


def _chunks(plain: bytes) -> list[tuple[bytes, int, int]]:
    """(digest, offset, length) of each content-defined chunk of ``plain``."""
    view = memoryview(plain)
    if len(plain) <= CDC_MIN:
        cuts = [(0, len(plain))] if plain else []
    else:
        cdc = FastCDC(avg_size=CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)
        cuts = [(c.offset, c.length) for c in cdc.cut_buf(plain)]
    return [(hashlib.blake2b(view[o : o + n], digest_size=_DIGEST).digest(), o, n) for o, n in cuts]


def kind_of(plain: bytes, codec: str | None) -> str:
    """``"map"`` for what looks like a msgpack map, else ``"bytes"``."""
    return "map" if codec == "msgpack" and plain and _map_header_size(plain[0]) is not None else "bytes"


def state_of(kind: str, plain: bytes) -> ChainState:
    """The :class:`ChainState` of a rebuilt plaintext."""
    return diff(kind, plain, None)[0]


def diff(kind: str, plain: bytes, prev: ChainState | None) -> tuple[ChainState, bytes | None]:
    """The state of ``plain``, and the body of the delta from ``prev`` to it.

    The body is None without ``prev``, or when ``prev`` (or ``plain``) is not
    the map the chain's kind says: the put then starts a new chain. It is
    empty when ``plain`` is the previous plaintext unchanged.
    """
    if kind == "map":
        if prev is None or not prev.layout():
            return ChainState(kind, plain, size=len(plain)), None
        walked = _map_delta(prev, plain)
        if walked is None:
            return ChainState(kind, plain, size=len(plain)), None
        body, keys, offsets, fresh = walked
        return ChainState(kind, plain, keys, offsets, size=len(plain), fresh=fresh), body
    table = _chunks(plain)
    fingerprint = hashlib.blake2b(b"".join(d for d, _, _ in table), digest_size=_DIGEST).digest()
    chunks: dict[bytes, tuple[int, int]] = {}
    for digest, offset, length in table:
        chunks.setdefault(digest, (offset, length))
    state = ChainState(kind, plain=b"", chunks=chunks, size=len(plain), fingerprint=fingerprint)
    if prev is None:
        return state, None
    if prev.fingerprint == fingerprint and prev.size == len(plain):
        return state, b""  # unchanged
    ops = _Ops(plain)
    for digest, offset, length in table:
        found = prev.chunks.get(digest)
        if found is None:
            ops.literal(offset, length)
        else:
            ops.copy(found[0], length)
    return state, ops.body(prev.size)


# -- deltas: copies from the previous plaintext, and literal bytes -------------------------------------
class _Ops:
    """Builds a delta body: ``[ops, literal]``, merging neighbouring copies and literals."""

    def __init__(self, plain: bytes) -> None:
        self.view = memoryview(plain)
        self.ops: list[int] = []
        self.parts: list[memoryview] = []
        self._lit_end = -1

    def copy(self, source: int, length: int) -> None:
        if length <= 0:
            return
        ops = self.ops
        if ops and ops[-2] >= 0 and ops[-2] + ops[-1] == source:
            ops[-1] += length
        else:
            ops += [source, length]

    def literal(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        ops = self.ops
        if ops and ops[-2] == -1 and self._lit_end == offset:
            ops[-1] += length
            self.parts[-1] = self.view[offset - len(self.parts[-1]) : offset + length]
        else:
            ops += [-1, length]
            self.parts.append(self.view[offset : offset + length])
        self._lit_end = offset + length

    def body(self, previous: int) -> bytes:
        """The encoded delta; empty when it would rebuild the ``previous`` bytes unchanged."""
        if len(self.view) == previous and self.ops in ([0, previous], []):
            return b""
        return _enc.encode(_Delta(self.ops, b"".join(self.parts)))


#: Entries compared at once: blocks grow while equal, and halve to find the entry that differs.
_BLOCK, _MAX_BLOCK = 16, 1024
_MAP16, _MAP32 = b"\xde", b"\xdf"
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3,
          0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}  # fmt: skip
_SIZED = {0xC4: (1, 2), 0xC5: (2, 3), 0xC6: (4, 5), 0xD9: (1, 2), 0xDA: (2, 3), 0xDB: (4, 5),
          0xC7: (1, 3), 0xC8: (2, 4), 0xC9: (4, 6)}  # fmt: skip  # (length bytes, bytes before the data)
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # (count bytes, items per count)


def _skip(buf: bytes, pos: int) -> int:
    """The end of the msgpack value at ``pos``. Raises IndexError or ValueError when malformed."""
    pending = 1
    while pending:
        pending -= 1
        b = buf[pos]
        if b <= 0x7F or b >= 0xE0:
            pos += 1
        elif b <= 0x8F:
            pending += 2 * (b & 0x0F)
            pos += 1
        elif b <= 0x9F:
            pending += b & 0x0F
            pos += 1
        elif b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            width, skip = _SIZED[b]
            pos += skip + int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
        elif b in _COUNTED:
            width, per = _COUNTED[b]
            pending += per * int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            raise ValueError(f"invalid msgpack byte {b:#x}")
    if pos > len(buf):
        raise IndexError("msgpack value runs past the end")
    return pos


def _map_delta(prev: ChainState, cur: bytes) -> tuple[bytes, list[bytes], list[int], list[tuple[int, int]]] | None:
    """The delta from the map ``prev`` to the map ``cur``, ``cur``'s layout and the (start, end) of each entry
    it does not copy; None if ``cur`` is not a map.

    Walks the new plaintext along the previous entries, comparing blocks of
    entries as bytes (doubling while equal, halved down to the first entry
    that differs). A differing entry is parsed (its key and value): the same
    key changed, a key after removed ones, or a new or moved entry (literal). Only bytes found equal
    are copied, so the delta always rebuilds ``cur`` exactly.
    """
    assert prev.keys is not None
    old, o_off, o_keys = prev.plain, prev.offsets, prev.keys
    cur = cur if isinstance(cur, bytes) else bytes(cur)
    n_old, end = len(o_keys), len(cur)
    head = _map_header_size(cur[0]) if cur else None
    if head is None:
        return None
    ops = _Ops(cur)
    if cur[:head] == old[: o_off[0]]:
        ops.copy(0, head)  # the same entry count
    else:
        ops.literal(0, head)
    keys: list[bytes] = []
    offsets: list[int] = []
    fresh: list[tuple[int, int]] = []
    cursor, j, block = head, 0, _BLOCK
    old_view = memoryview(old)  # blocks are compared in place: startswith takes a view, nothing is copied
    try:
        while j < n_old and cursor < end:
            e = j + block if j + block < n_old else n_old
            start, stop = o_off[j], o_off[e]
            if cur.startswith(old_view[start:stop], cursor):
                ops.copy(start, stop - start)
                shift = cursor - start
                keys += o_keys[j:e]
                offsets += o_off[j:e] if shift == 0 else map(shift.__add__, o_off[j:e])
                cursor, j, block = cursor + stop - start, e, block * 2 if block < _MAX_BLOCK else _MAX_BLOCK
                continue
            if e - j > 1:  # narrow down to the first entry that differs
                block = (e - j) // 2
                continue
            block = _BLOCK
            key_end = _skip(cur, cursor)
            value_end = _skip(cur, key_end)
            key = cur[cursor:key_end]
            if key != o_keys[j]:
                later = prev.positions().get(key, -1)
                if later > j:  # entries j .. later-1 were removed
                    j = later
                    continue
            else:
                j += 1  # the same key, another value
            ops.literal(cursor, value_end - cursor)  # a changed, new or moved entry
            keys.append(key)
            offsets.append(cursor)
            fresh.append((cursor, value_end))
            cursor = value_end
        while cursor < end:  # entries added at the end
            key_end = _skip(cur, cursor)
            value_end = _skip(cur, key_end)
            ops.literal(cursor, value_end - cursor)
            keys.append(cur[cursor:key_end])
            offsets.append(cursor)
            fresh.append((cursor, value_end))
            cursor = value_end
    except (IndexError, ValueError):
        return None
    offsets.append(end)
    return ops.body(prev.size), keys, offsets, fresh


def apply_chain(
    kind: str, base: bytes, deltas: Sequence[tuple[int, bytes]], *, section: str, built: int | None = None
) -> bytes | memoryview:
    """The plaintext a chain rebuilds from its base's plaintext and its opened deltas (oldest first).

    Every delta is checked whole before anything is allocated: each copy
    within the plaintext before it, literal bytes used exactly, at most the
    section size limit built, and for the last exactly ``built`` bytes (the
    plaintext size the manifest records, when known). Each delta is then
    written into one of two buffers in turn (a fresh 100 MB buffer costs more
    in page faults than the copy itself).

    Raises:
        CorruptSnapshot: a delta of the wrong type, or one that does not fit.
    """
    delta_type = MAP_DELTA if kind == "map" else BYTES_DELTA
    if any(t != delta_type for t, _ in deltas):
        raise CorruptSnapshot(f"section {section!r}: a delta of a {kind} chain is not a {kind} delta")
    try:
        decoded = [_delta.decode(body) for _, body in deltas]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSnapshot(f"section {section!r}: malformed delta ({exc})") from None
    sizes, before = [], len(base)
    for delta in decoded:
        sizes.append(before := _check_delta(delta, before, section))
    if built is not None and sizes and sizes[-1] != built:
        msg = f"section {section!r}: its chain builds {sizes[-1]} bytes, the manifest records {built}"
        raise CorruptSnapshot(msg)
    plain: bytes | memoryview = base
    buffers = [bytearray(max(sizes, default=0)) for _ in range(min(2, len(decoded)))]
    for i, (delta, length) in enumerate(zip(decoded, sizes, strict=True)):
        out = memoryview(buffers[i % 2])[:length]
        _apply(plain, delta, out)
        plain = out
    return plain


def _check_delta(delta: _Delta, before: int, section: str) -> int:
    """The size ``delta`` builds from a plaintext of ``before`` bytes. Raises CorruptSnapshot if it does not fit."""
    ops = delta.ops
    if len(ops) % 2:
        raise CorruptSnapshot(f"section {section!r}: a delta has a malformed operation list")
    sources, lengths = ops[::2], ops[1::2]
    if (sources and min(sources) < -1) or (lengths and min(lengths) < 0):
        raise CorruptSnapshot(f"section {section!r}: a delta has a malformed operation list")
    copies = [s >= 0 for s in sources]
    ends = map(operator.add, itertools.compress(sources, copies), itertools.compress(lengths, copies))
    if max(ends, default=0) > before:
        raise CorruptSnapshot(f"section {section!r}: a delta reaches outside the previous plaintext")
    literal = sum(itertools.compress(lengths, (not c for c in copies)))
    if literal != len(delta.literal):
        raise CorruptSnapshot(f"section {section!r}: a delta's literal bytes do not add up")
    built = sum(lengths)
    if built > SECTION_MAX_SIZE:
        raise CorruptSnapshot(f"section {section!r}: a delta builds more than {SECTION_MAX_SIZE} bytes")
    return built


def _apply(prev: bytes | memoryview, delta: _Delta, out: memoryview) -> None:
    """Write into ``out`` what ``delta`` (checked by :func:`_check_delta`) builds from ``prev``."""
    ops = delta.ops
    view, lit = memoryview(prev), memoryview(delta.literal)
    used = pos = 0
    for source, length in zip(ops[::2], ops[1::2], strict=True):
        if source == -1:
            out[pos : pos + length] = lit[used : used + length]
            used += length
        else:
            out[pos : pos + length] = view[source : source + length]
        pos += length


# -- from stored section to plaintext and back -------------------------------------------------------
def _frame_sizes(section: StateSection, opened: bytes) -> list[int] | None:
    """Plaintext size of each compression frame of ``opened`` (the section's bytes, unsealed); None if undeclared."""
    if not section.compressed:
        return []
    layout = framing(section)
    algorithm = layout.compression
    lengths = list(layout.frames) if layout.frames else [len(opened)]
    if sum(lengths) != len(opened):
        return None
    sizes = []
    start = 0
    view = memoryview(opened)
    for length in lengths:
        size = declared_size(view[start : start + length], algorithm)
        if size is None:
            return None
        sizes.append(size)
        start += length
    return sizes


def _sealed_in(section: StateSection, snapshot_id: str, plugin_id: str) -> Binding:
    return Binding(framing(section).sealed_in or snapshot_id, plugin_id, section.name, section.schema_version)


def _compress_frames(
    section: StateSection, plain: bytes | memoryview, frames: list[int], pieces: list[list[int]], level: int | None
) -> bytes:
    """The plaintext compressed frame by frame as the section was (itself when not compressed).

    Each frame is compressed by the same call as when the section was made:
    from the same pieces (``pieces``, when recorded) at the same ``level``.
    """
    if not section.compressed:
        return bytes(plain)
    algorithm = framing(section).compression
    if sum(frames) != len(plain) or (pieces and [sum(p) for p in pieces] != frames):
        raise CorruptSnapshot(f"section {section.name!r}: frame sizes do not add up to the plaintext")
    view, jobs, start = memoryview(plain), [], 0
    for i, size in enumerate(frames):
        cuts = pieces[i] if pieces else [size]
        frame = []
        for length in cuts:
            frame.append(view[start : start + length])
            start += length
        jobs.append(frame)
    if len(jobs) == 1:
        return compress(jobs[0], algorithm, level=level)
    # frames are independent: compressed side by side on every core (each exactly as alone)
    return b"".join(pool().map(lambda frame: compress(frame, algorithm, level=level), jobs))


def rebuild_section(
    section: StateSection,
    plain: bytes | memoryview,
    ref: ChainRef,
    *,
    snapshot_id: str,
    plugin_id: str,
    keyring: Keyring | None,
) -> bytes:
    """The stored bytes of ``section`` (whose ``data`` is ignored) from its plaintext: compress by frames, seal.

    Within :func:`~statetransfer._sections.keeping_plaintext` (a restore),
    the bytes remember ``plain``, so that importing them decodes it directly.
    """
    data = _compress_frames(section, plain, ref.frames, ref.pieces, ref.level)
    enc = section.encryption
    if enc is not None:
        if keyring is None or enc.key_id not in keyring:
            raise MissingKey(
                f"section {section.name!r} is stored incrementally: key {enc.key_id!r} is needed", key_id=enc.key_id
            )
        data = seal_exact(data, enc, _sealed_in(section, snapshot_id, plugin_id), keyring=keyring)
    keep_plaintext(Plaintext(data, plain, [], None))
    return data


@dataclass
class Plan:
    """A section a put may keep incrementally: its plaintext, and how to rebuild its bytes from it."""

    section: StateSection
    kind: str
    plain: bytes
    #: The section's stored bytes, opened when sealed (compressed frames, or the plaintext).
    opened: bytes
    frames: list[int]
    key_id: str | None
    algorithm: str
    #: How to open this section's bytes when they become a chain's base.
    base: ChainBase
    #: Piece sizes per frame and level, as the section was compressed (see :class:`ChainRef`).
    pieces: list[list[int]] = field(default_factory=list)
    level: int | None = None
    #: The bytes were made from ``plain`` in this process by the call a rebuild repeats: no check needed.
    made_here: bool = False
    #: The export's type check, left to this put (a backup).
    check: DeferredCheck | None = None


def plan_section(section: StateSection, *, snapshot_id: str, plugin_id: str, keyring: Keyring | None) -> Plan | None:
    """The plaintext of a section and how it was packed, or None when it cannot be opened (kept whole).

    A section just exported in a :func:`~statetransfer._sections.keeping_plaintext`
    block (a backup) brings its plaintext and how each frame was compressed;
    any other is opened.
    """
    enc = section.encryption
    if enc is not None and (keyring is None or enc.key_id not in keyring):
        return None
    layout = framing(section)
    base = ChainBase(layout.sealed_in or snapshot_id, section.schema_version, section.compressed, enc,
                          section.metadata)  # fmt: skip
    key_id, algorithm = (None, "") if enc is None else (enc.key_id, enc.algorithm)
    known = kept_plaintext(section)
    if known is not None and (not section.compressed or len(known.pieces) == len(layout.frames or (0,))):
        joined = known.joined()
        plain = joined if isinstance(joined, bytes) else bytes(joined)
        frames = [sum(p) for p in known.pieces]
        pieces = known.pieces if any(len(p) > 1 for p in known.pieces) else []
        return Plan(section, kind_of(plain, layout.codec), plain, b"", frames, key_id, algorithm, base,
                    pieces, known.level, made_here=True, check=known.check)  # fmt: skip
    try:
        opened = section.data
        if enc is not None:
            assert keyring is not None
            opened = decrypt_data(opened, enc, _sealed_in(section, snapshot_id, plugin_id), keyring=keyring)
        frames_or_none = _frame_sizes(section, opened)
        if frames_or_none is None:
            return None
        unsealed = msgspec.structs.replace(section, data=opened, encryption=None)
        opened_plain = bytes(unpack_section(unsealed, snapshot_id=snapshot_id, plugin_id=plugin_id))
    except (StateTransferError, ValueError):
        return None
    kind = kind_of(opened_plain, layout.codec)
    return Plan(section, kind, opened_plain, opened, frames_or_none, key_id, algorithm, base)


def check_plaintext(check: DeferredCheck, plain: bytes, prev: ChainState | None, state: ChainState) -> None:
    """Run an export's deferred type check: on the entries ``state`` did not copy from ``prev``, when ``prev``
    passed the same check (and the type lets map entries be checked alone); else on the whole plaintext.

    Raises:
        EncodingError: the plaintext does not decode as the section's declared type.
    """
    if check.entries is None or prev is None or prev.checked_as != check.token or state.fresh is None:
        check.whole(plain)
    else:
        count, view = len(state.fresh), memoryview(plain)
        head = bytes([0x80 | count]) if count < 16 else _MAP16 + count.to_bytes(2) if count < 1 << 16 else (
            _MAP32 + count.to_bytes(4))  # fmt: skip
        check.entries(b"".join([head, *(view[start:end] for start, end in state.fresh)]))
    state.checked_as = check.token


def is_exact(plan: Plan) -> bool:
    """Whether compressing the plaintext again gives back the section's bytes (opened, when sealed) exactly.

    A delta is written only then: a get rebuilds the bytes the same way. A
    section made in this process (``made_here``) passes without compressing
    again: its frames were made by the very calls a rebuild repeats (same
    pieces, level and compressor), and compression is deterministic. Sealing
    needs no check: the section's bytes opened with its key, nonce and
    binding, and sealing is a function of those and the opened bytes, so
    sealing the same bytes again gives the same ciphertext (a get still
    checks the section digest).
    """
    if plan.made_here:
        return True
    try:
        return _compress_frames(plan.section, plan.plain, plan.frames, plan.pieces, plan.level) == plan.opened
    except (StateTransferError, ValueError):
        return False


def open_base(ref: ChainRef, data: bytes, *, plugin_id: str, section: str, keyring: Keyring | None) -> bytes:
    """The plaintext of a chain's base object (the stored bytes of a section)."""
    b = ref.base
    stored = StateSection(section, b.schema_version, data, b.compressed, b.encryption, b.metadata)
    return bytes(unpack_section(stored, snapshot_id=b.sealed_in, plugin_id=plugin_id, keyring=keyring))


def check_chain_objects(ref: ChainRef, section: str) -> None:
    """Raise :class:`CorruptSnapshot` for a chain reference that cannot be one this module wrote."""
    if (
        ref.kind not in ("map", "bytes")
        or not ref.objects
        or any(len(o.digest) != 32 or o.length < 0 for o in ref.objects)
        or any(size < 0 for size in ref.frames)
        or (ref.pieces and len(ref.pieces) != len(ref.frames))
        or any(size < 0 for frame in ref.pieces for size in frame)
        or not (ref.level is None or LEVELS[0] <= ref.level <= LEVELS[1])
    ):
        raise CorruptSnapshot(f"section {section!r}: malformed chain reference")
