"""Packing an encoded section payload into a stored StateSection and back (compress, encrypt)."""

from __future__ import annotations

import msgspec

from .codecs import Pieces
from .compression import compress, declared_size, decompress
from .crypto import AES_256_GCM, SEALED_IN, Binding, Keyring, decrypt_data, encrypt_data
from .errors import CorruptSnapshot, DecompressionLimitExceeded, MissingKey
from .model import StateSection

__all__ = ["COMPRESS_MIN_SIZE", "SEALED_IN", "SECTION_MAX_SIZE", "pack_section", "reseal_section", "unpack_section"]

#: Largest decoded section accepted by default (4 GiB). Compressed sections must declare their
#: size in the frame, so a larger claim is refused before anything is allocated.
SECTION_MAX_SIZE = 4 << 30
#: Payloads smaller than this are not worth compressing.
COMPRESS_MIN_SIZE = 256


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
    """Compress (if it shrinks) then encrypt ``payload`` into a :class:`StateSection`.

    ``payload`` is the encoded value, or pieces of it (:func:`codecs.iter_encode`)
    that are streamed through the compressor without being joined.
    ``metadata`` records ``original_size`` and, when compressed, ``compression``.
    """
    meta = dict(metadata or {})
    size = len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)
    meta["original_size"] = str(size)
    data: bytes | None = None
    compressed = False
    if compression and compression != "none" and size >= COMPRESS_MIN_SIZE:
        packed = compress(payload, compression, level=level)
        if len(packed) < size:
            data, compressed = packed, True
            meta["compression"] = compression
    if data is None:
        data = payload if isinstance(payload, bytes) else b"".join(payload)
    encryption = None
    if encrypt:
        if keyring is None:
            raise MissingKey(f"section {name!r} is declared encrypted but the plugin has no keyring", key_id="")
        binding = Binding(snapshot_id, plugin_id, name, schema_version)
        data, encryption = encrypt_data(data, binding, keyring=keyring, key_id=key_id, algorithm=algorithm)
    return StateSection(name, schema_version, data, compressed, encryption, meta)


def unpack_section(
    section: StateSection,
    *,
    snapshot_id: str,
    plugin_id: str,
    keyring: Keyring | None = None,
    max_size: int = SECTION_MAX_SIZE,
) -> bytes:
    """Decrypt then decompress a stored section back to its encoded payload.

    Raises:
        MissingKey / DecryptionFailed: the section is encrypted and cannot be opened.
        DecompressionLimitExceeded: it expands beyond ``original_size`` or ``max_size``.
        CorruptSnapshot: the recorded sizes or algorithms are malformed.
    """
    data = section.data
    if section.encryption is not None:
        if keyring is None:
            key_id = section.encryption.key_id
            raise MissingKey(
                f"section {section.name!r} is encrypted with key {key_id!r}; no keyring given", key_id=key_id
            )
        bound = section.metadata.get(SEALED_IN, snapshot_id)
        binding = Binding(bound, plugin_id, section.name, section.schema_version)
        data = decrypt_data(data, section.encryption, binding, keyring=keyring)
    name = section.name
    limit = max_size
    recorded = section.metadata.get("original_size")
    if recorded is not None:
        if not (recorded.isascii() and recorded.isdigit()) or len(recorded) > 20:
            raise CorruptSnapshot(f"section {name!r}: original_size {recorded!r} is not a byte count")
        if int(recorded) > max_size:
            msg = f"section {name!r} records {recorded} bytes, above the limit of {max_size} bytes"
            raise DecompressionLimitExceeded(msg)
        limit = int(recorded)
    algorithm = section.metadata.get("compression", "zstd") if section.compressed else "none"
    if section.compressed:
        # Checked before anything is allocated: a frame must declare its size, and it must be the recorded one.
        declared = declared_size(data, algorithm)
        if declared is None:
            raise CorruptSnapshot(f"section {name!r}: {algorithm} frame does not declare its content size")
        if declared > limit:
            msg = f"section {name!r}: {algorithm} frame declares {declared} bytes, above the limit of {limit} bytes"
            raise DecompressionLimitExceeded(msg)
    out = decompress(data, algorithm, max_size=limit)
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
        old = Binding(section.metadata.get(SEALED_IN, from_snapshot), plugin_id, section.name, section.schema_version)
        plain = decrypt_data(section.data, enc, old, keyring=keyring)
        new = old._replace(snapshot_id=to_snapshot)
        data, info = encrypt_data(plain, new, keyring=keyring, key_id=enc.key_id, algorithm=enc.algorithm)
        meta = {k: v for k, v in section.metadata.items() if k != SEALED_IN}
        return msgspec.structs.replace(section, data=data, encryption=info, metadata=meta)
    meta = dict(section.metadata)
    meta.setdefault(SEALED_IN, from_snapshot)
    return msgspec.structs.replace(section, metadata=meta)
