"""The one error tree of statetransfer; every failure a user can see is a node of it.

::

    StateTransferError
    ├── CorruptSnapshot              bad framing, truncation, unknown format version
    │   └── ChecksumMismatch         content does not match its checksum or signature
    ├── DecryptionFailed             wrong key, tampered ciphertext, moved/renamed section
    ├── MissingKey                   the keyring has no key with the id a section needs
    ├── DecompressionLimitExceeded   a section expands beyond its recorded size or max_size
    ├── EncodingError                a value cannot be encoded / decoded as its declared type
    ├── ValidationFailed             an import refused because validation failed
    ├── MigrationError               a migration chain is ill-formed or a step raised
    ├── ImportFailed                 an atomic import failed; live state untouched
    ├── PluginError                  a plugin could not be loaded, reloaded or found
    └── StoreError                   a snapshot store failed or was given a bad id
        └── SnapshotNotFound         (also a KeyError)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import FailedSection, StateValidation

__all__ = [
    "ChecksumMismatch",
    "CorruptSnapshot",
    "DecompressionLimitExceeded",
    "DecryptionFailed",
    "EncodingError",
    "ImportFailed",
    "MigrationError",
    "MissingKey",
    "PluginError",
    "SnapshotNotFound",
    "StateTransferError",
    "StoreError",
    "ValidationFailed",
]


class StateTransferError(Exception):
    """Root of every error statetransfer raises on purpose."""


class CorruptSnapshot(StateTransferError):
    """The bytes are not a readable snapshot: framing, truncation, format version."""


class ChecksumMismatch(CorruptSnapshot):
    """The snapshot's content does not match its checksum (or its signature)."""


class DecryptionFailed(StateTransferError):
    """Authenticated decryption failed: wrong key, tampering, or a moved section."""


class MissingKey(StateTransferError):
    """The keyring lacks the key a section was encrypted with."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class DecompressionLimitExceeded(StateTransferError):
    """Decompressed output would exceed the recorded size or ``max_size``."""


class EncodingError(StateTransferError):
    """A value could not be encoded or decoded as its declared type."""


class ValidationFailed(StateTransferError):
    """A snapshot was refused because its validation failed."""

    def __init__(self, message: str, *, validation: StateValidation) -> None:
        super().__init__(message)
        self.validation = validation


class MigrationError(StateTransferError):
    """A migration chain is ill-formed, incomplete, or one of its steps raised."""


class ImportFailed(StateTransferError):
    """An atomic import failed; the plugin's live state is unchanged."""

    def __init__(self, message: str, *, failed_sections: list[FailedSection] | None = None) -> None:
        super().__init__(message)
        self.failed_sections = list(failed_sections or [])


class PluginError(StateTransferError):
    """A plugin could not be imported, instantiated, found or reloaded."""


class StoreError(StateTransferError):
    """A snapshot store operation failed, or was given an unsafe id or URL."""


class SnapshotNotFound(StoreError, KeyError):
    """No snapshot with the requested id exists in the store."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""
