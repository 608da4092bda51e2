"""Snapshot stores: the registry of backends and ``open_store(url)``."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from types import MappingProxyType
from typing import Any

from ..errors import StoreError
from .base import PruneReport, SnapshotInfo, SnapshotStore, VerifyReport, check_id

__all__ = [
    "ENTRY_POINT_GROUP",
    "PruneReport",
    "SnapshotInfo",
    "SnapshotStore",
    "VerifyReport",
    "check_id",
    "open_store",
    "registry",
]

ENTRY_POINT_GROUP = "statetransfer.stores"

_registry: dict[str, dict[str, str]] = {
    "file": {"class": "statetransfer.stores.file:FileStore"},
    "sqlite": {"class": "statetransfer.stores.sqlite:SQLiteStore"},
    "memory": {"class": "statetransfer.stores.memory:MemoryStore"},
    "s3": {
        "class": "statetransfer.stores.s3:S3Store",
        "err": "s3:// stores need obstore: pip install 'statetransfer[s3]'",
    },
}
#: Read-only view of the built-in backends: scheme -> {"class": "module:Class", "err": install hint}.
registry = MappingProxyType(_registry)


def _resolve(scheme: str) -> Any:
    entry = _registry.get(scheme)
    if entry is None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == scheme:
                return ep.load()
        known = sorted({*_registry, *(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))})
        raise StoreError(f"unknown store scheme {scheme!r}; known: {known}")
    module_name, _, class_name = entry["class"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = entry.get("err", f"cannot import {module_name}")
        raise StoreError(f"{hint} ({exc})") from exc
    return getattr(module, class_name)


def open_store(url: str) -> SnapshotStore:
    """Open the snapshot store at ``url``.

    ``file:///dir`` (or a plain path), ``sqlite:///file.db``,
    ``s3://bucket/prefix?endpoint=...&region=...``, ``memory://name``, or a
    scheme registered by a third party in the ``statetransfer.stores``
    entry-point group (its class needs a ``from_url(url)`` classmethod).

    Raises:
        StoreError: unknown scheme, a missing optional dependency (with the
            command to install it), or a store that cannot be opened.
    """
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty string, got {url!r}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        url = "file://" + os.path.abspath(url)
        scheme = "file"
    cls = _resolve(scheme.lower())
    store = cls.from_url(url)
    if not isinstance(store, SnapshotStore):
        raise StoreError(f"store class for {scheme!r} did not return a SnapshotStore")
    return store
