"""Differences between two snapshots: metadata, sections, and key-level changes of decoded values."""

from __future__ import annotations

from typing import Any

import msgspec

from . import codecs
from .crypto import Keyring
from .errors import StateTransferError
from .model import StateSnapshot
from .sections import unpack_section

__all__ = ["diff_snapshots", "diff_values"]

_META_FIELDS = ("plugin_id", "plugin_version", "schema_version", "timestamp")


def _path(parent: str, key: Any) -> str:
    return f"{parent}[{key!r}]"


def diff_values(a: Any, b: Any, path: str = "", limit: int = 200) -> list[dict[str, Any]]:
    """Key-level changes from ``a`` to ``b`` (decoded builtins), at most ``limit`` entries.

    Each change is ``{"op": "added" | "removed" | "changed", "path": ..., "a": ..., "b": ...}``.
    """
    out: list[dict[str, Any]] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in x.keys() - y.keys():
                out.append({"op": "removed", "path": _path(where, key), "a": x[key], "b": None})
            for key in y.keys() - x.keys():
                out.append({"op": "added", "path": _path(where, key), "a": None, "b": y[key]})
            for key in x.keys() & y.keys():
                walk(x[key], y[key], _path(where, key))
        elif isinstance(x, list) and isinstance(y, list):
            for i in range(min(len(x), len(y))):
                walk(x[i], y[i], f"{where}[{i}]")
            for i in range(len(y), len(x)):
                out.append({"op": "removed", "path": f"{where}[{i}]", "a": x[i], "b": None})
            for i in range(len(x), len(y)):
                out.append({"op": "added", "path": f"{where}[{i}]", "a": None, "b": y[i]})
        elif x != y or type(x) is not type(y):
            out.append({"op": "changed", "path": where or "$", "a": x, "b": y})

    walk(a, b, path)
    return sorted(out[:limit], key=lambda c: c["path"])


def _decoded(snapshot: StateSnapshot, name: str, keyring: Keyring | None) -> Any:
    section = snapshot.sections[name]
    codec = section.metadata.get("codec", "msgpack")
    if codec not in ("msgpack", "json"):
        raise StateTransferError(f"section {name!r} uses codec {codec!r}: compared by bytes only")
    payload = unpack_section(section, snapshot_id=snapshot.id, plugin_id=snapshot.plugin_id, keyring=keyring)
    return codecs.decode_untyped(payload, codec, where=name)


def diff_snapshots(a: StateSnapshot, b: StateSnapshot, *, keyring: Keyring | None = None) -> dict[str, Any]:
    """A JSON-ready description of what changed from snapshot ``a`` to ``b``, without the plugin's code."""
    metadata = [
        {"field": f, "a": getattr(a, f), "b": getattr(b, f)} for f in _META_FIELDS if getattr(a, f) != getattr(b, f)
    ]
    meta_a, meta_b = msgspec.to_builtins(a.metadata), msgspec.to_builtins(b.metadata)
    metadata += [{"field": f"metadata.{k}", "a": meta_a[k], "b": meta_b[k]} for k in meta_a if meta_a[k] != meta_b[k]]
    changed = []
    unchanged = []
    for name in sorted(a.sections.keys() & b.sections.keys()):
        sa, sb = a.sections[name], b.sections[name]
        entry: dict[str, Any] = {"name": name}
        if sa.schema_version != sb.schema_version:
            entry["schema_version"] = {"a": sa.schema_version, "b": sb.schema_version}
        try:
            va, vb = _decoded(a, name, keyring), _decoded(b, name, keyring)
        except StateTransferError as exc:
            if sa.data == sb.data and sa.schema_version == sb.schema_version:
                unchanged.append(name)
                continue
            entry.update(decoded=False, note=str(exc), changes=[])
            changed.append(entry)
            continue
        changes = diff_values(va, vb)
        if not changes and "schema_version" not in entry:
            unchanged.append(name)
            continue
        entry.update(decoded=True, changes=changes)
        changed.append(entry)
    return {
        "a": a.id,
        "b": b.id,
        "metadata": metadata,
        "sections": {
            "added": sorted(b.sections.keys() - a.sections.keys()),
            "removed": sorted(a.sections.keys() - b.sections.keys()),
            "changed": changed,
            "unchanged": unchanged,
        },
    }
