"""statetransfer: export, import, migrate, hot-reload and back up plugin state safely."""

from importlib.metadata import version as _version

from .backup import backup, restore
from .checksum import calculate_checksum, sign
from .compression import compress, decompress
from .container import dump, dumps, load, loads
from .crypto import Keyring, reencrypt
from .errors import (
    ChecksumMismatch,
    CorruptSnapshot,
    DecompressionLimitExceeded,
    DecryptionFailed,
    ImportFailed,
    MigrationError,
    MissingKey,
    SnapshotNotFound,
    StateTransferError,
    StoreError,
    ValidationFailed,
)
from .host import PluginHost, ReloadResult
from .migrations import migration
from .model import (
    EncryptionInfo,
    FailedSection,
    PluginMetadata,
    SectionValidation,
    StateCreationReason,
    StateImportResult,
    StateMetadata,
    StateSection,
    StateSnapshot,
    StateValidation,
)
from .plugin import Plugin, StateTransferable
from .stateful import Section, StatefulPlugin, transfer_state
from .stores import SnapshotInfo, SnapshotStore, VerifyReport, open_store

__version__ = _version("statetransfer")  # the one source of the number is pyproject.toml

__all__ = [
    "ChecksumMismatch",
    "CorruptSnapshot",
    "DecompressionLimitExceeded",
    "DecryptionFailed",
    "EncryptionInfo",
    "FailedSection",
    "ImportFailed",
    "Keyring",
    "MigrationError",
    "MissingKey",
    "Plugin",
    "PluginHost",
    "PluginMetadata",
    "ReloadResult",
    "Section",
    "SectionValidation",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotStore",
    "StateCreationReason",
    "StateImportResult",
    "StateMetadata",
    "StateSection",
    "StateSnapshot",
    "StateTransferError",
    "StateTransferable",
    "StateValidation",
    "StatefulPlugin",
    "StoreError",
    "ValidationFailed",
    "VerifyReport",
    "backup",
    "calculate_checksum",
    "compress",
    "decompress",
    "dump",
    "dumps",
    "load",
    "loads",
    "migration",
    "open_store",
    "reencrypt",
    "restore",
    "sign",
    "transfer_state",
]
