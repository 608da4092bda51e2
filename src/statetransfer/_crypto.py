"""Keys and authenticated encryption of section bytes (AES-256-GCM, ChaCha20-Poly1305)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._checksum import seal
from ._fileio import write_atomic
from ._model import EncryptionInfo, StateSection, StateSnapshot
from .errors import DecryptionFailed, InvalidArgument, MissingKey, StateTransferError

__all__ = [
    "AES_256_GCM",
    "Binding",
    "CHACHA20_POLY1305",
    "CHUNK_SIZE",
    "KEYRING_ENV",
    "Keyring",
    "decrypt_data",
    "encrypt_data",
    "keyring_of",
    "reencrypt",
    "reseal",
    "seal_exact",
]

AES_256_GCM = "AES-256-GCM"
CHACHA20_POLY1305 = "ChaCha20-Poly1305"
_CIPHERS = (AES_256_GCM, CHACHA20_POLY1305)
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: Plaintext bytes per AEAD call; larger sections are sealed as a chunk sequence.
CHUNK_SIZE = 16 << 20
KEYRING_ENV = "STATETRANSFER_KEYRING"
KEYRING_FORMAT = "statetransfer-keyring/1"
#: Section metadata key naming the snapshot an encrypted section was sealed in,
#: set only when a section is carried unchanged into a later snapshot without its key.
SEALED_IN = "sealed_in"
_SALT_MIN = 16
_ad_encoder = msgspec.msgpack.Encoder()


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise StateTransferError(f"{what} is not valid base64") from exc


class Keyring:
    """Maps key ids to 32-byte secret keys; one of them is the default for encryption.

    Keep a copy of the keyring file somewhere other than the machine whose
    backups it protects: without it, encrypted sections cannot be read.
    """

    def __init__(self, keys: Mapping[str, bytes] | None = None, *, default_key_id: str | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._default: str | None = None
        for key_id, key in (keys or {}).items():
            self.add(key_id, key)
        if default_key_id is not None:
            self.default_key_id = default_key_id

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(key_ids={sorted(self._keys)!r}, default_key_id={self._default!r})"

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keyring):
            return NotImplemented
        return self._keys == other._keys and self._default == other._default

    __hash__ = None  # type: ignore[assignment]

    @property
    def default_key_id(self) -> str | None:
        """The key id new encryptions use (the first key added unless set)."""
        return self._default

    @default_key_id.setter
    def default_key_id(self, key_id: str) -> None:
        if key_id not in self._keys:
            raise MissingKey(f"no key {key_id!r} in the keyring to make the default", key_id=key_id)
        self._default = key_id

    def add(self, key_id: str, key: bytes) -> None:
        """Add ``key`` (exactly 32 bytes) under ``key_id``."""
        if not isinstance(key_id, str) or not key_id or any(c in key_id for c in ":,\x00\n"):
            raise InvalidArgument(f"invalid key id {key_id!r}: a non-empty string without ':', ',' or newlines")
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise InvalidArgument(f"key {key_id!r} must be exactly {KEY_BYTES} bytes")
        self._keys[key_id] = bytes(key)
        if self._default is None:
            self._default = key_id

    def get(self, key_id: str) -> bytes:
        """The key with ``key_id``; :class:`MissingKey` if absent."""
        try:
            return self._keys[key_id]
        except KeyError:
            msg = f"no key {key_id!r} in the keyring (it has {sorted(self._keys)!r})"
            raise MissingKey(msg, key_id=key_id) from None

    @classmethod
    def generate(cls, key_id: str = "default") -> Keyring:
        """A keyring holding one fresh random key."""
        return cls({key_id: secrets.token_bytes(KEY_BYTES)})

    @classmethod
    def from_passphrase(cls, key_id: str, passphrase: str, *, salt: bytes, kdf: str = "scrypt") -> Keyring:
        """Derive a key from a passphrase with scrypt (n=2**15, r=8, p=1) or Argon2id.

        The same passphrase and ``salt`` (at least 16 bytes; store it beside
        the backups, it is not secret) always give the same key.

        Raises:
            InvalidArgument: a passphrase that is not a str, a salt that is not
                bytes or is shorter than 16 bytes, or an unknown ``kdf``.
        """
        given: tuple[object, object] = (passphrase, salt)  # callers without type checking pass anything
        if not isinstance(given[0], str):
            msg = f"passphrase must be a str, got {type(passphrase).__name__} (decode bytes first)"
            raise InvalidArgument(msg)
        if not isinstance(given[1], bytes | bytearray):
            msg = f"salt must be bytes, got {type(salt).__name__} (e.g. os.urandom(16), stored beside the backups)"
            raise InvalidArgument(msg)
        if len(salt) < _SALT_MIN:
            raise InvalidArgument(f"salt must be at least {_SALT_MIN} bytes")
        secret = passphrase.encode("utf-8")
        if kdf == "scrypt":
            key = Scrypt(salt=salt, length=KEY_BYTES, n=2**15, r=8, p=1).derive(secret)
        elif kdf == "argon2id":
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # noqa: PLC0415 - optional in old releases

            key = Argon2id(salt=salt, length=KEY_BYTES, iterations=3, lanes=4, memory_cost=64 * 1024).derive(secret)
        else:
            raise InvalidArgument(f"unknown kdf {kdf!r}; expected 'scrypt' or 'argon2id'")
        return cls({key_id: key})

    def to_json(self) -> str:
        """The keyring file text (JSON, base64 keys). Keep it secret."""
        keys = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self._keys.items())}
        return json.dumps({"format": KEYRING_FORMAT, "default": self._default, "keys": keys}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        """Parse keyring file text written by :meth:`to_json`."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateTransferError(f"keyring is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != KEYRING_FORMAT or not isinstance(doc.get("keys"), dict):
            raise StateTransferError(f"not a keyring: expected a JSON object with format {KEYRING_FORMAT!r}")
        ring = cls()
        for key_id, value in doc["keys"].items():
            if not isinstance(value, str):
                raise StateTransferError(f"keyring entry {key_id!r} is not a base64 string")
            ring.add(key_id, _b64decode(value, f"keyring entry {key_id!r}"))
        default = doc.get("default")
        if default is not None:
            if not isinstance(default, str):
                raise StateTransferError("keyring 'default' must be a key id")
            ring.default_key_id = default
        return ring

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring to ``path`` atomically, readable by the owner only (0600).

        The previous file survives any failure (a full disk never loses keys),
        and the file is 0600 even if it existed with another mode.

        Raises:
            WriteFailed: the file could not be written; the previous one is intact.
        """
        write_atomic(path, self.to_json().encode("utf-8"), mode=0o600)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a keyring file written by :meth:`to_file`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateTransferError(f"cannot read keyring file {os.fspath(path)!r}: {exc}") from exc
        return cls.from_json(text)

    @classmethod
    def from_env(cls, name: str = KEYRING_ENV) -> Keyring:
        """Read a keyring from environment variable ``name``.

        The value is either the path of a keyring file, or inline entries
        ``key_id:base64key[,key_id:base64key...]`` (the first is the default).
        """
        value = os.environ.get(name)
        if not value:
            raise StateTransferError(f"environment variable {name!r} is not set")
        if ":" not in value or os.path.exists(value):
            return cls.from_file(value)
        ring = cls()
        for entry in value.split(","):
            key_id, sep, b64 = entry.strip().partition(":")
            if not sep:
                raise StateTransferError(f"{name}: entry {key_id!r} is not 'key_id:base64key'")
            ring.add(key_id, _b64decode(b64, f"{name} entry {key_id!r}"))
        return ring


def keyring_of(plugin: object) -> Keyring | None:
    """The keyring a plugin carries (its ``keyring`` attribute), if any."""
    keyring = getattr(plugin, "keyring", None)
    return keyring if isinstance(keyring, Keyring) else None


class Binding(NamedTuple):
    """What a sealed section is bound to (its AEAD associated data)."""

    snapshot_id: str
    plugin_id: str
    section: str
    schema_version: int


def _associated_data(info: EncryptionInfo, binding: Binding, index: int, final: bool) -> bytes:
    return _ad_encoder.encode(["statetransfer/section/v1", *binding, info.algorithm, info.key_id, index, final])


def _chunk_nonce(nonce: bytes, index: int) -> bytes:
    counter = int.from_bytes(nonce[8:], "big") ^ index
    return nonce[:8] + counter.to_bytes(4, "big")


def _cipher(info: EncryptionInfo, keyring: Keyring) -> AESGCM | ChaCha20Poly1305:
    if info.algorithm == AES_256_GCM:
        return AESGCM(keyring.get(info.key_id))
    if info.algorithm == CHACHA20_POLY1305:
        return ChaCha20Poly1305(keyring.get(info.key_id))
    raise DecryptionFailed(f"unknown encryption algorithm {info.algorithm!r}; expected one of {sorted(_CIPHERS)}")


def encrypt_data(
    plaintext: bytes | bytearray | memoryview,
    binding: Binding,
    *,
    keyring: Keyring,
    key_id: str | None = None,
    algorithm: str = AES_256_GCM,
) -> tuple[bytes, EncryptionInfo]:
    """Seal ``plaintext`` for one section; returns (stored bytes, :class:`EncryptionInfo`).

    The associated data binds snapshot id, plugin id, section name and schema
    version, so a section moved to another snapshot or renamed fails to
    decrypt. Sections above :data:`CHUNK_SIZE` are sealed in chunks whose
    index and final flag are bound too (no reordering or truncation).
    """
    key_id = key_id or keyring.default_key_id
    if key_id is None:
        raise MissingKey(
            f"section {binding.section!r} asks for encryption but the keyring is empty",
            key_id="",
            section=binding.section,
        )
    if algorithm not in _CIPHERS:
        raise InvalidArgument(f"unknown encryption algorithm {algorithm!r}; expected one of {sorted(_CIPHERS)}")
    info = EncryptionInfo(algorithm=algorithm, key_id=key_id, nonce=secrets.token_bytes(NONCE_BYTES))
    return seal_exact(plaintext, info, binding, keyring=keyring), info


def _check_nonce(info: EncryptionInfo, binding: Binding) -> None:
    """Raise :class:`DecryptionFailed` for a recorded nonce of the wrong length (before any cipher sees it)."""
    if len(info.nonce) != NONCE_BYTES:
        section = binding.section
        msg = f"section {section!r}: nonce must be {NONCE_BYTES} bytes, got {len(info.nonce)}"
        raise DecryptionFailed(msg, section=section, key_id=info.key_id, snapshot_id=binding.snapshot_id)


def seal_exact(
    plaintext: bytes | bytearray | memoryview, info: EncryptionInfo, binding: Binding, *, keyring: Keyring
) -> bytes:
    """Seal ``plaintext`` with the algorithm, key and nonce ``info`` records: the bytes :func:`encrypt_data` gave.

    Only for rebuilding bytes already sealed once with ``info`` (a store
    restoring an incremental section): the same plaintext under the same
    nonce gives the same ciphertext, so no nonce is used for two messages.

    Raises:
        MissingKey: the keyring lacks ``info.key_id``.
        DecryptionFailed: the recorded nonce is malformed.
    """
    _check_nonce(info, binding)
    aead = _cipher(info, keyring)
    view = memoryview(plaintext)
    count = max(1, -(-len(view) // CHUNK_SIZE))
    parts = []
    for i in range(count):
        chunk = view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        ad = _associated_data(info, binding, i, i == count - 1)
        parts.append(aead.encrypt(_chunk_nonce(info.nonce, i), chunk, ad))
    return parts[0] if count == 1 else b"".join(parts)


def decrypt_data(
    data: bytes | memoryview,
    info: EncryptionInfo,
    binding: Binding,
    *,
    keyring: Keyring,
) -> bytes:
    """Open bytes sealed by :func:`encrypt_data`.

    Raises:
        MissingKey: the keyring lacks ``info.key_id``.
        DecryptionFailed: wrong key, tampered bytes, or a moved/renamed section.
    """
    section = binding.section
    _check_nonce(info, binding)
    aead = _cipher(info, keyring)
    view = memoryview(data)
    sealed = CHUNK_SIZE + TAG_BYTES
    count = max(1, -(-len(view) // sealed))
    parts = []
    try:
        for i in range(count):
            chunk = view[i * sealed : (i + 1) * sealed]
            ad = _associated_data(info, binding, i, i == count - 1)
            parts.append(aead.decrypt(_chunk_nonce(info.nonce, i), chunk, ad))
    except InvalidTag:
        msg = (
            f"section {section!r} of snapshot {binding.snapshot_id!r} failed to decrypt with key {info.key_id!r}: "
            "wrong key, tampered data, or the section was renamed or moved from another snapshot"
        )
        raise DecryptionFailed(msg, section=section, key_id=info.key_id, snapshot_id=binding.snapshot_id) from None
    except ValueError as exc:  # e.g. a chunk shorter than the tag
        msg = f"section {section!r}: malformed ciphertext ({exc})"
        raise DecryptionFailed(msg, section=section, key_id=info.key_id, snapshot_id=binding.snapshot_id) from exc
    return parts[0] if count == 1 else b"".join(parts)


def reseal(
    section: StateSection, *, plugin_id: str, from_snapshot: str, to_snapshot: str, keyring: Keyring, key_id: str
) -> StateSection:
    """Re-encrypt an encrypted section for ``to_snapshot`` under ``key_id`` (fresh nonce).

    The section is opened with the binding it was sealed under
    (``metadata["sealed_in"]`` when present, else ``from_snapshot``); the
    result is bound to ``to_snapshot`` and carries no ``sealed_in``.
    """
    enc = section.encryption
    assert enc is not None
    old = Binding(section.metadata.get(SEALED_IN, from_snapshot), plugin_id, section.name, section.schema_version)
    plain = decrypt_data(section.data, enc, old, keyring=keyring)
    new = old._replace(snapshot_id=to_snapshot)
    data, info = encrypt_data(plain, new, keyring=keyring, key_id=key_id, algorithm=enc.algorithm)
    meta = {k: v for k, v in section.metadata.items() if k != SEALED_IN}
    return msgspec.structs.replace(section, data=data, encryption=info, metadata=meta)


def reencrypt(snapshot: StateSnapshot, keyring: Keyring, new_key_id: str) -> StateSnapshot:
    """Rotate keys: re-seal every encrypted section under ``new_key_id``.

    Plugin state is never decoded; the result has fresh nonces and checksum.
    A signature does not survive (it would no longer match): sign again.
    """
    keyring.get(new_key_id)
    sections: dict[str, StateSection] = {}
    for name, sec in snapshot.sections.items():
        sections[name] = sec if sec.encryption is None else reseal(
            sec, plugin_id=snapshot.plugin_id, from_snapshot=snapshot.id, to_snapshot=snapshot.id,
            keyring=keyring, key_id=new_key_id,
        )  # fmt: skip
    return seal(snapshot, sections=sections)
