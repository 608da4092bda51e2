"""Snapshot stores: the registry of backends and ``open_store(url)``."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from types import MappingProxyType
from typing import Any

from ..errors import InvalidStoreURL, MissingDependency, StoreError
from .base import (
    ObjectInfo,
    PruneReport,
    SnapshotInfo,
    SnapshotListing,
    SnapshotStore,
    UnreadableEntry,
    VerifyReport,
    check_id,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ObjectInfo",
    "PruneReport",
    "SnapshotInfo",
    "SnapshotListing",
    "SnapshotStore",
    "UnreadableEntry",
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
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _resolve(scheme: str) -> Any:
    entry = _registry.get(scheme)
    if entry is None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == scheme:
                return ep.load()
        known = sorted({*_registry, *(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))})
        raise InvalidStoreURL(f"unknown store scheme {scheme!r}; known: {known}")
    module_name, _, class_name = entry["class"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = entry.get("err", f"cannot import {module_name}")
        raise MissingDependency(f"{hint} ({exc})") from exc
    return getattr(module, class_name)


def open_store(url: str, *, create: bool = True) -> SnapshotStore:
    """Open the snapshot store at ``url``.

    ``file:///dir`` (or a plain path), ``sqlite:///file.db``,
    ``s3://bucket/prefix?endpoint=...&region=...``, ``memory://name``, or a
    scheme registered by a third party in the ``statetransfer.stores``
    entry-point group (its class implements :meth:`SnapshotStore.from_url`).

    Args:
        url: where the store is.
        create: create the store if there is none. Reading tools pass
            ``False``: a location holding no store then raises
            :class:`StoreNotFound` and nothing is created. Local stores are
            checked at once; an S3 store at its first operation.

    Raises:
        InvalidStoreURL: a malformed URL or an unknown scheme.
        MissingDependency: the backend's optional package is missing (the
            message gives the command to install it).
        StoreNotFound: ``create=False`` and there is no store at ``url``.
        StoreError: the location holds something that is not a store, or
            cannot be opened.
    """
    if not isinstance(url, str) or not url:
        raise InvalidStoreURL(f"store URL must be a non-empty string, got {url!r}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        match = _SCHEME.match(url)
        if match and len(match.group(1)) > 1 and match.group(1).lower() in {*_registry, "file"}:
            name = match.group(1).lower()
            raise InvalidStoreURL(f"store URL {url!r} is missing '//': write {name}:///absolute/path")
        url = "file://" + os.path.abspath(url)
        scheme = "file"
    cls = _resolve(scheme.lower())
    store = cls.from_url(url, create=create)
    if not isinstance(store, SnapshotStore):
        raise StoreError(f"store class for {scheme!r} did not return a SnapshotStore")
    return store
