"""``s3://bucket/prefix?endpoint=...&region=...``: any S3-compatible object store, through obstore.

Manifests are written with a conditional PUT (``If-None-Match: *``), so two
writers never overwrite each other's snapshots. Credentials come from the
usual AWS environment variables (never from the URL).

Garbage collection (``delete``/``prune``) lists blobs and manifests and
removes unreferenced blobs; as with restic's ``prune``, run it while no other
machine is putting into the same prefix.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError
from obstore.store import S3Store as _ObS3Store

from ..errors import StoreError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig
from .base import SnapshotStore

__all__ = ["S3Store"]

T = TypeVar("T")
_CONFIG_KEYS = {"endpoint", "region", "virtual_hosted_style_request", "skip_signature"}


class S3Store(SnapshotStore):
    """A snapshot store under ``prefix`` in an S3 bucket."""

    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "", **config: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint = str(config.get("endpoint", ""))
        client_options: ClientConfig = {"allow_http": True} if endpoint.startswith("http://") else {}
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": datetime.timedelta(seconds=30)}
        try:
            self._store = _ObS3Store(
                bucket, prefix=self.prefix or None, client_options=client_options, retry_config=retry, **config
            )
        except (BaseError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot configure S3 store for bucket {bucket!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        parts = urlsplit(url)
        if not parts.netloc:
            raise StoreError(f"S3 store URL {url!r} has no bucket; use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _CONFIG_KEYS
        if unknown:
            raise StoreError(f"S3 store URL {url!r}: unknown options {sorted(unknown)}; allowed {sorted(_CONFIG_KEYS)}")
        config: dict[str, Any] = {
            k: (v.lower() in ("1", "true", "yes") if k in ("virtual_hosted_style_request", "skip_signature") else v)
            for k, v in query.items()
        }
        return cls(parts.netloc, parts.path, **config)

    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        try:
            return await awaitable
        except (NotFoundError, FileNotFoundError):
            raise KeyError(what) from None
        except AlreadyExistsError:
            raise
        except (BaseError, OSError) as exc:
            raise StoreError(f"{self!r}: {what}: {str(exc).splitlines()[0][:300]}") from exc

    @staticmethod
    def _blob(digest: str) -> str:
        return f"blobs/{digest[:2]}/{digest}"

    async def _list(self, prefix: str) -> list[str]:
        names: list[str] = []

        async def collect() -> None:
            async for batch in obstore.list(self._store, prefix):
                names.extend(str(meta["path"]) for meta in batch)

        await self._call(collect(), f"list {prefix}")
        return names

    async def _put_blob(self, digest: str, data: bytes) -> None:
        with contextlib.suppress(AlreadyExistsError):  # content-addressed: the same bytes are already there
            await self._call(obstore.put_async(self._store, self._blob(digest), data, mode="create"), digest)

    async def _get_blob(self, digest: str) -> bytes:
        result = await self._call(obstore.get_async(self._store, self._blob(digest)), digest)
        return bytes(await self._call(result.bytes_async(), digest))

    async def _has_blob(self, digest: str) -> bool:
        try:
            await self._call(obstore.head_async(self._store, self._blob(digest)), digest)
        except KeyError:
            return False
        return True

    async def _delete_blob(self, digest: str) -> None:
        await self._call(obstore.delete_async(self._store, self._blob(digest)), digest)

    async def _list_blobs(self) -> set[str]:
        return {name.rsplit("/", 1)[-1] for name in await self._list("blobs")}

    async def _put_manifest(self, snapshot_id: str, data: bytes) -> None:
        try:
            await self._call(
                obstore.put_async(self._store, f"manifests/{snapshot_id}", data, mode="create"), snapshot_id
            )
        except AlreadyExistsError:
            raise StoreError(f"snapshot {snapshot_id!r} already exists in {self!r}") from None

    async def _get_manifest(self, snapshot_id: str) -> bytes:
        result = await self._call(obstore.get_async(self._store, f"manifests/{snapshot_id}"), snapshot_id)
        return bytes(await self._call(result.bytes_async(), snapshot_id))

    async def _list_manifests(self) -> list[tuple[str, bytes]]:
        out = []
        for name in await self._list("manifests"):
            snapshot_id = name.rsplit("/", 1)[-1]
            try:
                out.append((snapshot_id, await self._get_manifest(snapshot_id)))
            except KeyError:
                continue  # deleted while listing
        return out

    async def _delete_manifest(self, snapshot_id: str) -> None:
        await self._call(obstore.delete_async(self._store, f"manifests/{snapshot_id}"), snapshot_id)
