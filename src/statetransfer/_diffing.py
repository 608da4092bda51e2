"""Differences between two snapshots: metadata, sections, and key-level changes of decoded values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from . import _codecs as codecs
from ._crypto import Keyring
from ._model import StateSnapshot
from ._sections import framing, unpack_section
from .errors import StateTransferError

__all__ = ["diff_snapshots", "diff_values"]

_META_FIELDS = ("plugin_id", "plugin_version", "schema_version", "timestamp")
_OPS = ("added", "removed", "changed")


def _path(parent: str, key: Any) -> str:
    return f"{parent}[{key!r}]"


def _ordered(keys: Iterable[Any]) -> list[Any]:
    """Keys in a stable order: their natural order, or by type and repr when they do not compare."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda k: (type(k).__name__, repr(k)))


def diff_values(a: Any, b: Any, path: str = "", limit: int | None = None) -> dict[str, Any]:
    """Key-level changes from ``a`` to ``b`` (decoded builtins), in key order.

    Every change is counted; the first ``limit`` (all when ``None``) are
    listed, each ``{"op": "added" | "removed" | "changed", "path", "a", "b"}``.

    Returns:
        ``{"changes": [...], "counts": {"added": n, "removed": n, "changed": n}, "omitted": n}``,
        where ``omitted`` is how many changes were counted but not listed.
    """
    changes: list[dict[str, Any]] = []
    counts = dict.fromkeys(_OPS, 0)

    def note(op: str, where: str, x: Any, y: Any) -> None:
        counts[op] += 1
        if limit is None or len(changes) < limit:
            changes.append({"op": op, "path": where or "$", "a": x, "b": y})

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in _ordered(x.keys() | y.keys()):
                if key not in y:
                    note("removed", _path(where, key), x[key], None)
                elif key not in x:
                    note("added", _path(where, key), None, y[key])
                else:
                    walk(x[key], y[key], _path(where, key))
        elif isinstance(x, list) and isinstance(y, list):
            for i in range(min(len(x), len(y))):
                walk(x[i], y[i], f"{where}[{i}]")
            for i in range(len(y), len(x)):
                note("removed", f"{where}[{i}]", x[i], None)
            for i in range(len(x), len(y)):
                note("added", f"{where}[{i}]", None, y[i])
        elif x != y or type(x) is not type(y):
            note("changed", where, x, y)

    walk(a, b, path)
    return {"changes": changes, "counts": counts, "omitted": sum(counts.values()) - len(changes)}


def _decoded(snapshot: StateSnapshot, name: str, keyring: Keyring | None) -> Any:
    section = snapshot.sections[name]
    codec = framing(section).codec
    if codec not in ("msgpack", "json"):
        raise StateTransferError(f"section {name!r} uses codec {codec!r}: compared by bytes only")
    payload = unpack_section(section, snapshot_id=snapshot.id, plugin_id=snapshot.plugin_id, keyring=keyring)
    return codecs.decode_untyped(payload, codec, where=name)


def diff_snapshots(
    a: StateSnapshot, b: StateSnapshot, *, keyring: Keyring | None = None, limit: int | None = None
) -> dict[str, Any]:
    """A JSON-ready description of what changed from snapshot ``a`` to ``b``, without the plugin's code.

    Each changed section lists at most ``limit`` changes (all when ``None``)
    in key order, with ``counts`` per operation and how many were ``omitted``.
    """
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
            entry.update(decoded=False, note=str(exc), changes=[], counts=dict.fromkeys(_OPS, 0), omitted=0)
            changed.append(entry)
            continue
        found = diff_values(va, vb, limit=limit)
        if not any(found["counts"].values()) and "schema_version" not in entry:
            unchanged.append(name)
            continue
        entry.update(decoded=True, **found)
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
