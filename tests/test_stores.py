"""Every backend passes the shared StoreContract; plus open_store and backend-specific behaviour."""

from __future__ import annotations

import os
import socket
import urllib.request

import pytest

import statetransfer as st
from statetransfer.stores.file import FileStore
from statetransfer.stores.memory import MemoryStore
from statetransfer.stores.sqlite import SQLiteStore
from statetransfer.testing import StoreContract


class TestMemoryStore(StoreContract):
    async def make_store(self, tmp_path):
        return MemoryStore()


class TestFileStore(StoreContract):
    async def make_store(self, tmp_path):
        return st.open_store(f"file://{tmp_path}/store")


class TestSQLiteStore(StoreContract):
    async def make_store(self, tmp_path):
        return st.open_store(f"sqlite://{tmp_path}/store.db")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port, stopped at the end of the session."""
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    endpoint = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/snapshots", method="PUT"), timeout=10).close()
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class TestS3Store(StoreContract):
    @pytest.fixture(autouse=True)
    def _endpoint(self, s3_endpoint):
        self.endpoint = s3_endpoint

    async def make_store(self, tmp_path):
        prefix = f"t{abs(hash(str(tmp_path)))}"
        return st.open_store(f"s3://snapshots/{prefix}?endpoint={self.endpoint}&region=us-east-1")


def test_open_store_schemes(tmp_path):
    """open_store picks the backend by scheme; a plain path is a directory store."""
    assert isinstance(st.open_store(str(tmp_path / "plain")), FileStore)
    assert isinstance(st.open_store(f"file://{tmp_path}/f"), FileStore)
    assert isinstance(st.open_store(f"sqlite://{tmp_path}/x.db"), SQLiteStore)
    assert st.open_store("memory://shared") is st.open_store("memory://shared")


def test_open_store_unknown_scheme():
    """An unknown scheme is a StoreError listing the known ones."""
    with pytest.raises(st.StoreError, match=r"unknown store scheme 'ftp'.*file"):
        st.open_store("ftp://host/x")


def test_open_store_missing_dependency(monkeypatch):
    """A backend whose optional dependency is missing says how to install it."""
    import sys

    monkeypatch.setitem(sys.modules, "obstore", None)
    monkeypatch.delitem(sys.modules, "statetransfer.stores.s3", raising=False)
    with pytest.raises(st.StoreError, match=r"pip install 'statetransfer\[s3\]'"):
        st.open_store("s3://bucket/prefix")


def test_s3_url_options():
    """Unknown S3 URL options are refused instead of silently ignored."""
    with pytest.raises(st.StoreError, match="unknown options"):
        st.open_store("s3://bucket/p?secret_access_key=oops")


def test_s3_lock_settings_are_checked():
    """A lock_stale too small for S3's one-second timestamps is refused as a bad URL."""
    with pytest.raises(st.InvalidStoreURL, match="at least 2"):
        st.open_store("s3://bucket/p?lock_stale=0.5&endpoint=http://127.0.0.1:1")
    with pytest.raises(st.InvalidStoreURL, match="lock_timeout"):
        st.open_store("s3://bucket/p?lock_timeout=0&endpoint=http://127.0.0.1:1")


def test_registry_is_read_only():
    """The backend registry is a read-only view."""
    from statetransfer.stores import registry

    assert {"file", "sqlite", "s3", "memory"} <= set(registry)
    with pytest.raises(TypeError):
        registry["x"] = {}  # type: ignore[index]


def test_file_store_refuses_foreign_directory(tmp_path):
    """A directory marked as another store format is refused."""
    (tmp_path / "STORE").write_text("something else\n")
    with pytest.raises(st.StoreError, match="another format"):
        st.open_store(f"file://{tmp_path}")


async def test_manifest_flip_in_ignored_key_is_detected():
    """A byte flip in a part of a manifest the decoder would ignore is still caught by the manifest digest."""
    from statetransfer.testing import make_snapshot

    store = MemoryStore()
    await store.put(make_snapshot("m1"))
    manifest = bytearray(await store.read_object("manifests/m1"))
    pos = manifest.find(b"custom")
    manifest[pos] ^= 0x9C  # 'c' -> a byte that makes the key unknown (and dropped) to a typed decoder
    await store.write_object("manifests/m1", bytes(manifest))
    with pytest.raises(st.ChecksumMismatch, match="digest mismatch"):
        await store.get("m1")
    report = await store.verify()
    assert not report.ok and "'m1'" in report.problems[0]
