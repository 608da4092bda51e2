"""statetransfer: export, import, migrate, hot-reload and back up plugin state safely."""

from importlib.metadata import version as _version

from .backup import backup, restore
from .checksum import calculate_checksum, seal, sign
from .compression import compress, decompress
from .container import dump, dumps, load, loads
from .crypto import Keyring, reencrypt
from .errors import (
    ChecksumMismatch,
    CorruptSnapshot,
    DecompressionLimitExceeded,
    DecryptionFailed,
    EncodingError,
    ImportFailed,
    InvalidArgument,
    InvalidStoreURL,
    MigrationError,
    MissingDependency,
    MissingKey,
    PluginError,
    SnapshotNotFound,
    StateTransferError,
    StoreError,
    StoreLocked,
    StoreNotFound,
    StoreWarning,
    ValidationFailed,
    WriteFailed,
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
from .stores import (
    ObjectInfo,
    PruneReport,
    SnapshotInfo,
    SnapshotListing,
    SnapshotStore,
    UnreadableEntry,
    VerifyReport,
    open_store,
)

__version__ = _version("statetransfer")  # the one source of the number is pyproject.toml

__all__ = [
    "ChecksumMismatch",
    "CorruptSnapshot",
    "DecompressionLimitExceeded",
    "DecryptionFailed",
    "EncodingError",
    "EncryptionInfo",
    "FailedSection",
    "ImportFailed",
    "InvalidArgument",
    "InvalidStoreURL",
    "Keyring",
    "MigrationError",
    "MissingDependency",
    "MissingKey",
    "ObjectInfo",
    "Plugin",
    "PluginError",
    "PluginHost",
    "PluginMetadata",
    "PruneReport",
    "ReloadResult",
    "Section",
    "SectionValidation",
    "SnapshotInfo",
    "SnapshotListing",
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
    "StoreLocked",
    "StoreNotFound",
    "StoreWarning",
    "UnreadableEntry",
    "ValidationFailed",
    "VerifyReport",
    "WriteFailed",
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
    "seal",
    "sign",
    "transfer_state",
]
