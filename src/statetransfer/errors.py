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
    ├── InvalidArgument              a call was given a bad argument (also a ValueError)
    ├── StoreError                   a snapshot store failed or was given a bad id
    │   ├── SnapshotNotFound         (also a KeyError)
    │   ├── StoreNotFound            no store at the location (opened with create=False)
    │   ├── StoreLocked              another process holds the store's lock past the timeout
    │   ├── InvalidStoreURL          a malformed URL or unknown scheme (also a ValueError)
    │   └── MissingDependency        a backend's optional package is not installed (also an ImportError)
    └── WriteFailed                  a user file could not be written (also an OSError)

Warnings: StoreWarning (a UserWarning) reports store entries that could not be read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._model import FailedSection, StateValidation

__all__ = [
    "ChecksumMismatch",
    "CorruptSnapshot",
    "DecompressionLimitExceeded",
    "DecryptionFailed",
    "EncodingError",
    "ImportFailed",
    "InvalidArgument",
    "InvalidStoreURL",
    "MigrationError",
    "MissingDependency",
    "MissingKey",
    "PluginError",
    "SnapshotNotFound",
    "StateTransferError",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StoreWarning",
    "ValidationFailed",
    "WriteFailed",
]


class StateTransferError(Exception):
    """Root of every error statetransfer raises on purpose."""


class CorruptSnapshot(StateTransferError):
    """The bytes are not a readable snapshot: framing, truncation, format version.

    Attributes:
        snapshot_id: the snapshot concerned, when known.
        section: the section concerned, when known.
    """

    def __init__(self, message: str, *, snapshot_id: str | None = None, section: str | None = None) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id
        self.section = section


class ChecksumMismatch(CorruptSnapshot):
    """The snapshot's content does not match its checksum (or its signature)."""


class DecryptionFailed(StateTransferError):
    """Authenticated decryption failed: wrong key, tampering, or a moved section.

    Attributes:
        section: the section that could not be opened, when known.
        key_id: the key it was sealed with, when known.
        snapshot_id: the snapshot, when known.
    """

    def __init__(
        self, message: str, *, section: str | None = None, key_id: str | None = None, snapshot_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.section = section
        self.key_id = key_id
        self.snapshot_id = snapshot_id


class MissingKey(StateTransferError):
    """The keyring lacks the key a section was encrypted with."""

    def __init__(self, message: str, *, key_id: str, section: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.section = section


class DecompressionLimitExceeded(StateTransferError):
    """Decompressed output would exceed the recorded size or ``max_size``.

    Attributes:
        section: the section concerned, when known.
    """

    def __init__(self, message: str, *, section: str | None = None) -> None:
        super().__init__(message)
        self.section = section


class EncodingError(StateTransferError, ValueError):
    """A value could not be encoded or decoded as its declared type (also a ValueError).

    Attributes:
        path: where in the value, e.g. ``entries["a"][2]``, when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ValidationFailed(StateTransferError):
    """A snapshot was refused because its validation failed."""

    def __init__(self, message: str, *, validation: StateValidation, snapshot_id: str | None = None) -> None:
        super().__init__(message)
        self.validation = validation
        self.snapshot_id = snapshot_id


class MigrationError(StateTransferError):
    """A migration chain is ill-formed, incomplete, or one of its steps raised.

    Attributes:
        section: the section whose chain failed, when known.
    """

    def __init__(self, message: str, *, section: str | None = None) -> None:
        super().__init__(message)
        self.section = section


class ImportFailed(StateTransferError):
    """An atomic import failed; the plugin's live state is unchanged."""

    def __init__(
        self, message: str, *, failed_sections: list[FailedSection] | None = None, snapshot_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.failed_sections = list(failed_sections or [])
        self.snapshot_id = snapshot_id


class PluginError(StateTransferError):
    """A plugin could not be imported, instantiated, found or reloaded.

    Attributes:
        plugin_id: the plugin concerned, when known.
    """

    def __init__(self, message: str, *, plugin_id: str | None = None) -> None:
        super().__init__(message)
        self.plugin_id = plugin_id


class InvalidArgument(StateTransferError, ValueError):
    """A function was called with an argument it cannot accept (a usage error)."""


class StoreError(StateTransferError):
    """A snapshot store operation failed, or was given an unsafe id or URL.

    Attributes:
        snapshot_id: the snapshot concerned, when there is one.
    """

    def __init__(self, message: str, *, snapshot_id: str | None = None) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id


class StoreNotFound(StoreError):
    """No store exists at the location, and it was opened with ``create=False`` (nothing was created).

    Attributes:
        location: the path or URL that holds no store.
    """

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location


class InvalidStoreURL(StoreError, InvalidArgument):
    """A store URL is malformed or names an unknown scheme (a usage error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingDependency(StoreError, ImportError):
    """A backend needs an optional package that is not installed; the message says how to install it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreLocked(StoreError):
    """The store's lock stayed held by another process or task for longer than the lock timeout."""


class WriteFailed(StateTransferError, OSError):
    """A user file (snapshot, keyring) could not be written; the previous file, if any, is intact.

    Attributes:
        path: the file that was being written.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # OSError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class StoreWarning(UserWarning):
    """A store holds entries that could not be read (damaged manifests, stray files); they were skipped."""


class SnapshotNotFound(StoreError, KeyError):
    """No snapshot with the requested id exists in the store."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""
