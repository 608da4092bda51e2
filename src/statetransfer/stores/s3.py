"""``s3://bucket/prefix?endpoint=...&region=...``: any S3-compatible object store, through obstore.

Manifests are written with a conditional PUT (``If-None-Match: *``), so two
writers never overwrite each other's snapshots. Puts and garbage collection
coordinate through lock objects under ``locks/`` (see ``docs/stores.md``),
so any number of tasks, processes and machines may put, delete, prune and
verify on one prefix at once. Credentials come from the usual AWS
environment variables (never from the URL).

obstore runs its I/O on a runtime that does not survive ``fork()``: a process
forked after it used S3 cannot use S3 (:class:`StoreError` says so instead of
hanging); start such workers with the ``spawn`` method.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError
from obstore.store import S3Store as _ObS3Store

from ..errors import InvalidStoreURL, StoreError, StoreNotFound

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig
from ._aws import credentials_in_environment
from .base import ObjectInfo, SnapshotStore

__all__ = ["S3Store"]

T = TypeVar("T")
_CONFIG_KEYS = {"endpoint", "region", "virtual_hosted_style_request", "skip_signature"}
_LOCK_KEYS = {"lock_stale", "lock_timeout"}
_BOOL_KEYS = {"virtual_hosted_style_request", "skip_signature"}
MARKER = b"statetransfer-store/1\n"
#: Smallest lock_stale accepted: lock times in listings have one-second resolution.
MIN_LOCK_STALE = 2.0
_used_in: int | None = None  # pid of the process whose obstore runtime has run I/O
_live: list[S3Store] = []


def _after_fork_in_child() -> None:
    global _used_in  # noqa: PLW0603 - process-wide state by nature
    if _used_in is not None:
        _used_in = -1  # the runtime's threads did not survive the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _drop_clients() -> None:
    """Release obstore clients before the interpreter tears down (avoids aborts at exit)."""
    for store in _live:
        store.__dict__.pop("_store", None)
    _live.clear()


class S3Store(SnapshotStore):
    """A snapshot store under ``prefix`` in an S3 bucket.

    Args:
        bucket: the bucket.
        prefix: the key prefix of the store inside the bucket.
        create: create the store (its ``STORE`` marker) on first use if absent;
            with ``False``, the first operation on an absent store raises
            :class:`StoreNotFound`.
        lock_stale: seconds after which an unrefreshed lock object is dead.
        lock_timeout: seconds to wait for the store's lock.
        config: obstore S3 options (``endpoint``, ``region``, ...).
    """

    scheme = "s3"
    shared_by_machines = True
    verify_dedup_bytes = 1 << 20

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        create: bool = True,
        lock_stale: float = 120.0,
        lock_timeout: float = 600.0,
        **config: Any,
    ) -> None:
        if not lock_stale >= MIN_LOCK_STALE or not lock_timeout > 0:
            msg = (f"lock_stale must be at least {MIN_LOCK_STALE:g} s (S3 times have one-second resolution) "
                   f"and lock_timeout positive; got {lock_stale!r} and {lock_timeout!r}")  # fmt: skip
            raise InvalidStoreURL(msg)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.create = create
        self.lock_stale = lock_stale
        self.lock_timeout = lock_timeout
        self._checked = False
        endpoint = str(config.get("endpoint", ""))
        client_options: ClientConfig = {"allow_http": True} if endpoint.startswith("http://") else {}
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": datetime.timedelta(seconds=30)}
        try:
            self._store = _ObS3Store(
                bucket, prefix=self.prefix or None, client_options=client_options, retry_config=retry, **config
            )
        except (BaseError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot configure S3 store for bucket {bucket!r}: {exc}") from exc
        self._anonymous = not config.get("skip_signature") and not credentials_in_environment()
        _live.append(self)

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> Self:
        parts = urlsplit(url)
        if not parts.netloc:
            raise InvalidStoreURL(f"S3 store URL {url!r} has no bucket; use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _CONFIG_KEYS - _LOCK_KEYS
        if unknown:
            allowed = sorted(_CONFIG_KEYS | _LOCK_KEYS)
            raise InvalidStoreURL(f"S3 store URL {url!r}: unknown options {sorted(unknown)}; allowed {allowed}")
        config: dict[str, Any] = {}
        for key, value in query.items():
            if key in _BOOL_KEYS:
                config[key] = value.lower() in ("1", "true", "yes")
            elif key in _LOCK_KEYS:
                try:
                    config[key] = float(value)
                except ValueError:
                    raise InvalidStoreURL(f"S3 store URL {url!r}: {key} must be a number of seconds") from None
            else:
                config[key] = value
        return cls(parts.netloc, parts.path, create=create, **config)

    # -- the edge: obstore errors become ours ------------------------------------------------------
    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        global _used_in  # noqa: PLW0603 - process-wide state by nature
        if _used_in == -1:
            if hasattr(awaitable, "close"):
                awaitable.close()
            msg = (f"{self!r}: S3 cannot be used in a process forked after S3 was used in its parent; "
                   "start workers with the 'spawn' method, or use S3 only in the children")  # fmt: skip
            raise StoreError(msg)
        _used_in = os.getpid()
        try:
            return await awaitable
        except (NotFoundError, FileNotFoundError):
            raise KeyError(what) from None
        except AlreadyExistsError:
            raise FileExistsError(what) from None
        except (BaseError, OSError) as exc:
            detail = str(exc).splitlines()[0][:300]
            if self._anonymous and ("169.254.169.254" in str(exc) or "credential" in str(exc).lower()):
                detail = ("no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(or AWS_PROFILE), or add skip_signature=true to the URL for a public bucket")  # fmt: skip
            raise StoreError(f"{self!r}: {what}: {detail}") from exc

    async def _ensure(self) -> None:
        """Check on first use that the prefix holds a store (or create its marker)."""
        if self._checked:
            return
        try:
            await self._call(obstore.head_async(self._store, "STORE"), "STORE")
        except KeyError:
            listing = await self._call(obstore.list_with_delimiter_async(self._store, None), "list")
            names = {str(p).rstrip("/") for p in listing["common_prefixes"]} | {
                str(o["path"]) for o in listing["objects"]
            }
            foreign = sorted(names - {"manifests", "blobs", "locks", "damaged", "STORE"})
            if foreign:
                msg = f"{self!r} holds other objects ({', '.join(foreign[:5])}) and is not a store; refusing to use it"
                raise StoreError(msg) from None
            if not self.create and "manifests" not in names:
                raise StoreNotFound(f"no store at {self!r}", location=f"s3://{self.bucket}/{self.prefix}") from None
            if self.create:
                with contextlib.suppress(FileExistsError):
                    await self._call(obstore.put_async(self._store, "STORE", MARKER, mode="create"), "STORE")
        self._checked = True

    # -- the object primitives ---------------------------------------------------------------------
    async def read_object(self, key: str) -> bytes:
        await self._ensure()
        result = await self._call(obstore.get_async(self._store, key), key)
        return bytes(await self._call(result.bytes_async(), key))

    async def write_object(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        await self._ensure()
        put = obstore.put_async(
            self._store, key, data, mode="create" if exclusive else "overwrite", use_multipart=False
        )
        await self._call(put, key)

    async def delete_object(self, key: str) -> None:
        await self._ensure()
        with contextlib.suppress(KeyError):
            await self._call(obstore.delete_async(self._store, key), key)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        await self._ensure()
        out: list[ObjectInfo] = []

        async def collect() -> None:
            async for batch in obstore.list(self._store, prefix.rstrip("/") or None):
                out.extend(_info(meta) for meta in batch)

        await self._call(collect(), f"list {prefix}")
        return [o for o in out if o.key.startswith(prefix)]

    async def stat_object(self, key: str) -> ObjectInfo | None:
        await self._ensure()
        try:
            meta = await self._call(obstore.head_async(self._store, key), key)
        except KeyError:
            return None
        return _info(meta)


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(str(meta["path"]), int(meta["size"]), meta["last_modified"].timestamp())
