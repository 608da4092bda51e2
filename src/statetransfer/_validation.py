"""Snapshot-level validation rules and the compatibility score.

The compatibility score is a product of factors, each in [0, 1], so a new
problem can only lower it (never raise it):

=====================================  =======
plugin id differs                       0 (the whole score)
checksum wrong                          x 0.0
snapshot expired                        x 0.5
snapshot schema newer than the plugin   x 0.5
semantic-version major differs          x 0.8
plugin version unparsable               x 0.8
per section, as is                      x 1.0
per section, after migration            x 0.95 per step walked
per section, unknown to the plugin      x 0.9
per declared section absent             x 0.8
per section invalid / incompatible      x 0.5
=====================================  =======

It is 1.0 exactly when every section is usable as is and nothing else is off.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable, Mapping

from ._checksum import verify_checksum
from ._model import PluginMetadata, SectionValidation, StateSnapshot, StateValidation
from .errors import StateTransferError

__all__ = ["FACTORS", "parse_semver", "section_factor", "validate_snapshot"]

FACTORS = {
    "checksum": 0.0,
    "expired": 0.5,
    "schema_newer": 0.5,
    "major_differs": 0.8,
    "version_unparsable": 0.8,
    "migration_step": 0.95,
    "unknown": 0.9,
    "missing": 0.8,
    "invalid": 0.5,
}
_SEMVER = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


def parse_semver(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a semantic version string, or None if unparsable."""
    match = _SEMVER.match(version.strip()) if isinstance(version, str) else None
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def section_factor(sv: SectionValidation) -> float:
    """The score factor of one section's verdict."""
    if not sv.is_valid or sv.verdict == "incompatible":
        return FACTORS["invalid"]
    if sv.verdict == "unknown":
        return FACTORS["unknown"]
    if sv.verdict == "after_migration":
        return float(FACTORS["migration_step"] ** max(1, len(sv.migration_path) - 1))
    return 1.0


def validate_snapshot(
    snapshot: StateSnapshot,
    metadata: PluginMetadata,
    schema_version: int,
    section_validations: Mapping[str, SectionValidation],
    *,
    missing_sections: Iterable[str] = (),
    allow_newer_schema: bool = False,
) -> StateValidation:
    """Combine snapshot-level rules with per-section verdicts into a :class:`StateValidation`.

    Args:
        snapshot: the snapshot under validation.
        metadata: the validating plugin's metadata.
        schema_version: the plugin's state schema version.
        section_validations: the plugin's verdict on each section of the snapshot.
        missing_sections: sections the plugin declares that the snapshot lacks (a warning each).
        allow_newer_schema: accept a newer snapshot schema when every section has a path down.
    """
    if snapshot.plugin_id != metadata.id:
        msg = f"snapshot is for plugin {snapshot.plugin_id!r}, not {metadata.id!r}"
        return StateValidation(
            is_valid=False, schema_compatible=False, version_compatible=False,
            section_validations=dict(section_validations), compatibility_score=0.0, errors=[msg],
        )  # fmt: skip
    errors: list[str] = []
    warnings: list[str] = []
    score = 1.0
    try:
        verify_checksum(snapshot)
    except StateTransferError as exc:
        errors.append(str(exc))
        score *= FACTORS["checksum"]
    expires = snapshot.metadata.expires_at
    if expires is not None and expires < time.time():
        when = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        errors.append(f"snapshot expired at {when}")
        score *= FACTORS["expired"]
    schema_compatible = snapshot.schema_version <= schema_version
    if not schema_compatible:
        score *= FACTORS["schema_newer"]
        msg = f"snapshot schema version {snapshot.schema_version} is newer than the plugin's {schema_version}"
        if allow_newer_schema:
            warnings.append(msg + "; brought down by downgrade migrations")
        else:
            errors.append(msg)
    ours, theirs = parse_semver(metadata.version), parse_semver(snapshot.plugin_version)
    if ours is None or theirs is None:
        bad = metadata.version if ours is None else snapshot.plugin_version
        warnings.append(f"plugin version {bad!r} is not a semantic version; cannot compare")
        version_compatible = False
        score *= FACTORS["version_unparsable"]
    else:
        version_compatible = ours[0] == theirs[0]
        if not version_compatible:
            warnings.append(f"snapshot made by {snapshot.plugin_version}, plugin is {metadata.version} (major differs)")
            score *= FACTORS["major_differs"]
    sections_ok = True
    for sv in section_validations.values():
        score *= section_factor(sv)
        if not sv.is_valid:
            sections_ok = False
    for name in missing_sections:
        warnings.append(f"section {name!r} is not in the snapshot; it keeps its current value")
        score *= FACTORS["missing"]
    is_valid = not errors and sections_ok
    return StateValidation(
        is_valid=is_valid, schema_compatible=schema_compatible, version_compatible=version_compatible,
        section_validations=dict(section_validations), compatibility_score=max(0.0, min(1.0, score)),
        errors=errors, warnings=warnings,
    )  # fmt: skip
