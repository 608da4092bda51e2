"""The data model of a state snapshot and of import/validation results."""

from __future__ import annotations

import datetime
import enum
import time
import uuid
from typing import Any, Literal

import msgspec

__all__ = [
    "EncryptionInfo",
    "FailedSection",
    "PluginMetadata",
    "SectionValidation",
    "StateCreationReason",
    "StateImportResult",
    "StateMetadata",
    "StateSection",
    "StateSnapshot",
    "StateValidation",
    "new_snapshot_id",
    "now",
]


class StateCreationReason(enum.Enum):
    """Why a snapshot was made; stored by value (e.g. ``"hot_reload"``)."""

    HOT_RELOAD = "hot_reload"
    EXPORT = "export"
    MIGRATION = "migration"
    BACKUP = "backup"
    VERSION_UPGRADE = "version_upgrade"
    CHECKPOINT = "checkpoint"
    DEBUG = "debug"


class EncryptionInfo(msgspec.Struct, frozen=True):
    """How a section's stored bytes were encrypted.

    ``nonce`` is the nonce of the first chunk; see ``docs/format.md`` for how
    the nonces of later chunks are derived.
    """

    algorithm: str
    key_id: str
    nonce: bytes


class StateSection(msgspec.Struct):
    """One named part of a plugin's state, as stored.

    ``data`` holds the stored bytes: encoded, then compressed (when
    ``compressed``; the algorithm is in ``metadata["compression"]``), then
    encrypted (when ``encryption`` is set).
    """

    name: str
    schema_version: int
    data: bytes
    compressed: bool = False
    encryption: EncryptionInfo | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class StateMetadata(msgspec.Struct):
    """Who made a snapshot, why, and until when it should be kept."""

    reason: StateCreationReason = StateCreationReason.EXPORT
    created_by: str = "statetransfer"
    tags: list[str] = msgspec.field(default_factory=list)
    expires_at: int | None = None
    custom: dict[str, Any] = msgspec.field(default_factory=dict)


class StateSnapshot(msgspec.Struct):
    """A complete, self-describing export of one plugin's state.

    ``created_ns`` (nanoseconds since the epoch) orders snapshots made within
    the same second; ``signature`` is set by :func:`statetransfer.sign` and
    authenticates ``checksum``.
    """

    id: str
    plugin_id: str
    plugin_version: str
    schema_version: int
    timestamp: int
    sections: dict[str, StateSection]
    metadata: StateMetadata
    checksum: str = ""
    created_ns: int = 0
    signature: str | None = None


class FailedSection(msgspec.Struct, kw_only=True):
    """A section that could not be imported, and why."""

    name: str
    error: str


class StateImportResult(msgspec.Struct, kw_only=True):
    """What an import applied, what it could not, and how long it took."""

    imported_sections: list[str] = msgspec.field(default_factory=list)
    failed_sections: list[FailedSection] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    duration: datetime.timedelta = datetime.timedelta(0)
    #: The snapshot imported (set by :func:`statetransfer.restore` and the host).
    snapshot_id: str | None = None


#: What import would do with a section: take it as it is, migrate it, refuse it, or keep it aside (no such section).
Verdict = Literal["as_is", "after_migration", "incompatible", "unknown"]


class SectionValidation(msgspec.Struct, kw_only=True):
    """The verdict on one section of a snapshot.

    ``verdict`` is ``"as_is"``, ``"after_migration"``, ``"incompatible"`` or
    ``"unknown"``; ``migration_path`` lists the schema versions walked
    (``[1, 2, 3]`` for 1 → 3), empty when as is.
    """

    is_valid: bool = True
    errors: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    verdict: Verdict = "as_is"
    migration_path: list[int] = msgspec.field(default_factory=list)


class StateValidation(msgspec.Struct, kw_only=True):
    """The verdict on a whole snapshot for one plugin."""

    is_valid: bool
    schema_compatible: bool
    version_compatible: bool
    section_validations: dict[str, SectionValidation] = msgspec.field(default_factory=dict)
    compatibility_score: float = 1.0
    errors: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


class PluginMetadata(msgspec.Struct, frozen=True):
    """Identity of a plugin: ``id`` (stable key) and semantic ``version``."""

    id: str
    version: str
    name: str = ""
    description: str = ""
    author: str = ""


def new_snapshot_id() -> str:
    """A fresh random snapshot id (UUID4, canonical text form)."""
    return str(uuid.uuid4())


def now() -> tuple[int, int]:
    """The current time as (Unix seconds, nanoseconds since the epoch)."""
    ns = time.time_ns()
    return ns // 1_000_000_000, ns
