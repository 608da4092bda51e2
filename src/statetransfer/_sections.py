"""Packing an encoded section payload into a stored StateSection and back (compress, encrypt)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar
from typing import NamedTuple

import msgspec

from ._codecs import Pieces
from ._compression import compress, declared_size, decompress
from ._crypto import AES_256_GCM, SEALED_IN, Binding, Keyring, decrypt_data, encrypt_data, reseal
from ._model import StateSection
from ._workers import pool
from .errors import CorruptSnapshot, DecompressionLimitExceeded, MissingKey

__all__ = [
    "COMPRESS_MIN_SIZE",
    "DeferredCheck",
    "SectionFraming",
    "framing",
    "FRAME_MIN",
    "Plaintext",
    "SEALED_IN",
    "SECTION_MAX_SIZE",
    "SectionPacker",
    "checks_deferred",
    "keep_plaintext",
    "keeping_plaintext",
    "kept_plaintext",
    "pack_section",
    "reseal_section",
    "unpack_section",
]

#: Largest decoded section accepted by default (4 GiB). Compressed sections must declare their
#: size in the frame, so a larger claim is refused before anything is allocated.
SECTION_MAX_SIZE = 4 << 30
#: Encoded pieces are compressed in frames of at least this many bytes, while encoding goes on.
FRAME_MIN = 1 << 20
#: Payloads smaller than this are not worth compressing.
COMPRESS_MIN_SIZE = 256


class SectionFraming(msgspec.Struct, frozen=True, kw_only=True):
    """How a stored section is framed, as its metadata records it under the format's reserved keys.

    The file format keeps these as strings in :attr:`StateSection.metadata`
    (``codec``, ``compression``, ``original_size``, ``frames``, ``slices``,
    ``sealed_in``; see ``docs/format.md``); :func:`framing` is their one
    parser, so no reader handles the raw strings itself.
    """

    #: How the value was encoded: ``msgpack``, ``json`` or ``raw`` (another string from a newer writer).
    codec: str = "msgpack"
    #: ``zstd`` or ``lz4`` when the section is compressed, else ``none``.
    compression: str = "none"
    #: The size of the encoded payload before compression, when recorded.
    original_size: int | None = None
    #: Compressed frame lengths of a multi-frame section.
    frames: tuple[int, ...] | None = None
    #: The slice table of a sliced msgpack map or array.
    slices: str | None = None
    #: The snapshot an encrypted section carried over unchanged is bound to.
    sealed_in: str | None = None


class DeferredCheck(NamedTuple):
    """An export's type check of one section, left to the store a backup puts it into.

    The store runs it before it writes anything: on the whole plaintext, or
    (a map continuing a chain whose previous plaintext passed the check for
    the same ``token``) on only the entries that changed.
    """

    #: Checks the whole plaintext. Raises EncodingError.
    whole: Callable[[bytes | memoryview], None]
    #: Checks a msgpack map of some of the entries, when the declared type is a dict (entries decode alone).
    entries: Callable[[bytes], None] | None
    #: What the plaintext is checked against: equal tokens, the same declared type and codec.
    token: object


class Plaintext(NamedTuple):
    """The encoded payload (plaintext) a section's stored bytes were made from, known without opening them."""

    #: The stored bytes (the entry is for this very object).
    data: bytes
    #: The plaintext, whole or in the pieces it was encoded in.
    plain: bytes | memoryview | Pieces
    #: Plaintext piece sizes of each compression frame, as compressed (empty when stored uncompressed).
    pieces: list[list[int]]
    #: The compression level given to the compressor (None: its default).
    level: int | None
    #: The export's type check, when it was left to the store (see :func:`keeping_plaintext`).
    check: DeferredCheck | None = None

    def joined(self) -> bytes | memoryview:
        """The plaintext in one buffer."""
        plain = self.plain
        if isinstance(plain, list):
            return plain[0] if len(plain) == 1 else b"".join(plain)
        return plain


class _Keeping(NamedTuple):
    entries: dict[int, Plaintext]
    defer_checks: bool


_kept: ContextVar[_Keeping | None] = ContextVar("statetransfer_kept_plaintext", default=None)


@contextlib.contextmanager
def keeping_plaintext(*, defer_checks: bool = False) -> Iterator[None]:
    """Within this block, sections packed (or rebuilt by a store) remember the plaintext they came from.

    A backup exports then puts: the store's incremental put compares the
    plaintext instead of opening the bytes just made, and with
    ``defer_checks`` the export leaves its type check (see
    ``StatefulPlugin.verify_exports``) to the put, which checks only the
    entries that changed when it can. A restore gets then imports: the
    import decodes the plaintext a store rebuilt instead of decompressing it
    again. Memory is held until the block ends.
    """
    token = _kept.set(_Keeping({}, defer_checks))
    try:
        yield
    finally:
        _kept.reset(token)


def checks_deferred() -> bool:
    """Whether an export in this block leaves its type checks to the store (:func:`keeping_plaintext`)."""
    kept = _kept.get()
    return kept is not None and kept.defer_checks


def keep_plaintext(entry: Plaintext) -> None:
    """Remember ``entry`` while a :func:`keeping_plaintext` block is active (else do nothing)."""
    kept = _kept.get()
    if kept is not None:
        kept.entries[id(entry.data)] = entry


def kept_plaintext(section: StateSection) -> Plaintext | None:
    """The remembered plaintext of ``section``'s stored bytes, if this block made or rebuilt them."""
    kept = _kept.get()
    entry = None if kept is None else kept.entries.get(id(section.data))
    return entry if entry is not None and entry.data is section.data else None


def _byte_count(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 20


def framing(section: StateSection) -> SectionFraming:
    """The parsed framing of ``section``.

    Raises:
        CorruptSnapshot: ``original_size`` or the frame table is not made of byte counts.
    """
    meta = section.metadata
    recorded = meta.get("original_size")
    if recorded is not None and not _byte_count(recorded):
        raise CorruptSnapshot(f"section {section.name!r}: original_size {recorded!r} is not a byte count")
    table = meta.get("frames")
    frames = None
    if table is not None:
        parts = table.split(",")
        if not all(_byte_count(p) for p in parts):
            raise CorruptSnapshot(f"section {section.name!r}: malformed frame table")
        frames = tuple(int(p) for p in parts)
    return SectionFraming(
        codec=meta.get("codec", "msgpack"),
        compression=meta.get("compression", "zstd") if section.compressed else "none",
        original_size=None if recorded is None else int(recorded),
        frames=frames,
        slices=meta.get("slices"),
        sealed_in=meta.get(SEALED_IN),
    )


class SectionPacker:
    """Builds a stored section from encoded pieces as they arrive.

    Pieces are grouped into frames of at least :data:`FRAME_MIN` bytes and
    compressed in worker threads while the caller encodes the next pieces, so
    a large section's encoding and compression overlap. Each frame is a
    complete zstd/lz4 frame declaring its size; a multi-frame section lists
    the compressed frame lengths in ``metadata["frames"]``. The section is
    stored raw when compression does not shrink it.
    """

    def __init__(
        self,
        name: str,
        schema_version: int,
        *,
        snapshot_id: str,
        plugin_id: str,
        compression: str | None = "zstd",
        level: int | None = None,
        keyring: Keyring | None = None,
        encrypt: bool = False,
        key_id: str | None = None,
        algorithm: str = AES_256_GCM,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if encrypt and keyring is None:
            raise MissingKey(
                f"section {name!r} is declared encrypted but the plugin has no keyring", key_id="", section=name
            )
        self.name = name
        self.schema_version = schema_version
        self.binding = Binding(snapshot_id, plugin_id, name, schema_version)
        self.compression = compression if compression and compression != "none" else None
        self.level = level
        self.keyring = keyring
        self.encrypt = encrypt
        self.key_id = key_id
        self.algorithm = algorithm
        self.metadata = dict(metadata or {})
        self.reset()

    def reset(self) -> None:
        """Forget every piece added so far (frames already started finish unused)."""
        self.size = 0
        self._raw: Pieces = []
        self._pending: Pieces = []
        self._pending_size = 0
        self._frames: list[Future[bytes]] = []
        self._frame_pieces: list[list[int]] = []
        self.deferred_check: DeferredCheck | None = None

    def add(self, piece: bytes | memoryview) -> None:
        """Append the next piece of the encoded value."""
        self._raw.append(piece)
        self.size += len(piece)
        if self.compression is None:
            return
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size >= FRAME_MIN:
            self._frames.append(pool().submit(compress, self._take_pending(), self.compression, level=self.level))

    def _take_pending(self) -> Pieces:
        pieces, self._pending, self._pending_size = self._pending, [], 0
        self._frame_pieces.append([len(p) for p in pieces])
        return pieces

    def finish(self) -> StateSection:
        """The stored section: compressed (when it shrinks), then encrypted. Blocks until frames are done."""
        meta = dict(self.metadata)
        meta["original_size"] = str(self.size)
        data: bytes | None = None
        compressed = False
        if self.compression is not None and self.size >= COMPRESS_MIN_SIZE:
            frames = [f.result() for f in self._frames]
            if self._pending:
                frames.append(compress(self._take_pending(), self.compression, level=self.level))
            if sum(map(len, frames)) < self.size:
                data, compressed = (frames[0] if len(frames) == 1 else b"".join(frames)), True
                meta["compression"] = self.compression
                if len(frames) > 1:
                    meta["frames"] = ",".join(str(len(f)) for f in frames)
        if data is None:
            data = b"".join(self._raw)
        raw, self._raw = self._raw, []
        encryption = None
        if self.encrypt:
            assert self.keyring is not None
            data, encryption = encrypt_data(data, self.binding, keyring=self.keyring, key_id=self.key_id,
                                            algorithm=self.algorithm)  # fmt: skip
        keep_plaintext(Plaintext(data, raw, self._frame_pieces if compressed else [], self.level, self.deferred_check))
        return StateSection(self.name, self.schema_version, data, compressed, encryption, meta)


def pack_section(
    name: str,
    schema_version: int,
    payload: bytes | Pieces,
    *,
    snapshot_id: str,
    plugin_id: str,
    compression: str | None = "zstd",
    level: int | None = None,
    keyring: Keyring | None = None,
    encrypt: bool = False,
    key_id: str | None = None,
    algorithm: str = AES_256_GCM,
    metadata: dict[str, str] | None = None,
) -> StateSection:
    """Compress (if it shrinks) then encrypt an encoded ``payload`` (bytes, or its pieces) into a section.

    ``metadata`` records ``original_size`` and, when compressed, ``compression``.
    """
    packer = SectionPacker(
        name, schema_version, snapshot_id=snapshot_id, plugin_id=plugin_id, compression=compression, level=level,
        keyring=keyring, encrypt=encrypt, key_id=key_id, algorithm=algorithm, metadata=metadata,
    )  # fmt: skip
    for piece in [payload] if isinstance(payload, bytes) else payload:
        packer.add(piece)
    return packer.finish()


def _frame_lengths(section: StateSection, frames: tuple[int, ...] | None, data_size: int) -> list[int] | None:
    if frames is None:
        return None
    if sum(frames) != data_size:
        raise CorruptSnapshot(f"section {section.name!r}: frame table does not add up to the stored size")
    return list(frames)


def unpack_section(
    section: StateSection,
    *,
    snapshot_id: str,
    plugin_id: str,
    keyring: Keyring | None = None,
    max_size: int = SECTION_MAX_SIZE,
) -> bytes | memoryview:
    """Decrypt then decompress a stored section back to its encoded payload.

    A memoryview only for a section whose plaintext this block remembers (see :func:`keeping_plaintext`).

    Raises:
        MissingKey / DecryptionFailed: the section is encrypted and cannot be opened.
        DecompressionLimitExceeded: it expands beyond ``original_size`` or ``max_size``.
        CorruptSnapshot: the recorded sizes or algorithms are malformed.
    """
    data = section.data
    layout = framing(section)
    known = kept_plaintext(section)
    enc = section.encryption
    if known is not None and (enc is None or (keyring is not None and enc.key_id in keyring)):
        plain = known.joined()  # these bytes were made from it in this block: nothing to open
        if len(plain) <= max_size and layout.original_size in (None, len(plain)):
            return plain
    if section.encryption is not None:
        if keyring is None:
            key_id = section.encryption.key_id
            raise MissingKey(
                f"section {section.name!r} is encrypted with key {key_id!r}; no keyring given",
                key_id=key_id,
                section=section.name,
            )
        bound = layout.sealed_in or snapshot_id
        binding = Binding(bound, plugin_id, section.name, section.schema_version)
        data = decrypt_data(data, section.encryption, binding, keyring=keyring)
    name = section.name
    limit = max_size
    recorded = layout.original_size
    if recorded is not None:
        if recorded > max_size:
            msg = f"section {name!r} records {recorded} bytes, above the limit of {max_size} bytes"
            raise DecompressionLimitExceeded(msg, section=name)
        limit = recorded
    algorithm = layout.compression
    if not section.compressed:
        out = decompress(data, algorithm, max_size=limit)
    else:
        view = memoryview(data)
        lengths = _frame_lengths(section, layout.frames, len(view)) or [len(view)]
        frames, start = [], 0
        for length in lengths:
            frames.append(view[start : start + length])
            start += length
        # Checked before anything is allocated: every frame declares its size, and they add up to the record.
        declared = []
        for frame in frames:
            size = declared_size(frame, algorithm)
            if size is None:
                raise CorruptSnapshot(f"section {name!r}: {algorithm} frame does not declare its content size")
            declared.append(size)
        if sum(declared) > limit:
            msg = f"section {name!r}: {algorithm} frames declare {sum(declared)} bytes, above the limit of {limit}"
            raise DecompressionLimitExceeded(msg, section=name)
        if len(frames) > 1:  # frames are independent: decompress them on every core (the codecs release the GIL)
            parts = list(pool().map(lambda f, size: decompress(f, algorithm, max_size=size), frames, declared))
        else:
            parts = [decompress(frames[0], algorithm, max_size=declared[0])]
        out = parts[0] if len(parts) == 1 else b"".join(parts)
    if recorded is not None and len(out) != int(recorded):
        raise CorruptSnapshot(f"section {section.name!r}: {len(out)} bytes after decompression, recorded {recorded}")
    return out


def reseal_section(
    section: StateSection, *, from_snapshot: str, to_snapshot: str, plugin_id: str, keyring: Keyring | None
) -> StateSection:
    """Carry a stored section into another snapshot unchanged in content.

    Unencrypted sections are reused as they are. Encrypted ones are re-sealed
    under the new snapshot id when the key is at hand; otherwise their bytes
    are kept and ``metadata["sealed_in"]`` names the snapshot they are bound to.
    """
    enc = section.encryption
    if enc is None:
        return section
    if keyring is not None and enc.key_id in keyring:
        return reseal(section, plugin_id=plugin_id, from_snapshot=from_snapshot, to_snapshot=to_snapshot,
                      keyring=keyring, key_id=enc.key_id)  # fmt: skip
    meta = dict(section.metadata)
    meta.setdefault(SEALED_IN, from_snapshot)
    return msgspec.structs.replace(section, metadata=meta)
