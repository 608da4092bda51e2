"""What a reader does with untrusted bytes, as one function per input kind, and the seed snapshots.

Shared by the atheris harness (``fuzz_loads.py``), the mutation campaign
(``mutate.py``) and the hypothesis tests in the normal test suite. A target
either returns (the input was accepted) or raises ``StateTransferError``;
anything else escaping is a defect.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Iterator

import msgspec

import statetransfer as st
from statetransfer import _codecs as codecs
from statetransfer import _crypto as crypto
from statetransfer import _sections as sections
from statetransfer._sections import unpack_section
from statetransfer.stores.memory import MemoryStore

KEYRING = st.Keyring({"fuzz": b"\x01" * 32, "other": b"\x02" * 32})
SIGN_KEY = b"fuzz-signing-key-of-32-bytes!!!!"
MAX_SECTION = 64 << 20


class Entry(msgspec.Struct):
    name: str
    score: float
    hits: int
    tags: list[str]


class FuzzPlugin(st.StatefulPlugin):
    """A plugin whose sections match the seeds, so import exercises typed decoding and migrations."""

    metadata = st.PluginMetadata(id="fuzz", version="2.0.0")
    config = st.Section(dict[str, int], codec="json", default=dict)
    cache = st.Section(dict[str, Entry], version=2, compress=True, default=dict)
    secrets = st.Section(dict[str, str], encrypt=True, default=dict)
    blob = st.Section(bytes, codec="raw", compress="lz4", default=bytes)

    @cache.migration(from_version=1)
    def _v1(old: dict[str, list[object]]) -> dict[str, object]:
        return {k: {"name": v[0], "score": v[1], "hits": v[2], "tags": v[3]} for k, v in old.items()}


def check_snapshot(data: bytes, *, signed: bool = False) -> st.StateSnapshot:
    """loads, open and decode every section, then a full plugin import (atomic)."""
    snap = st.loads(data, verify_key=SIGN_KEY if signed else None)
    for sec in snap.sections.values():
        payload = unpack_section(sec, snapshot_id=snap.id, plugin_id=snap.plugin_id, keyring=KEYRING,
                                 max_size=MAX_SECTION)  # fmt: skip
        codec = sec.metadata.get("codec", "msgpack")
        if codec in ("msgpack", "json"):
            codecs.decode_untyped(payload, codec, where=sec.name)
    plugin = FuzzPlugin(keyring=KEYRING)
    with contextlib.suppress(st.ValidationFailed, st.ImportFailed):
        asyncio.run(plugin.import_state(snap))
    return snap


def check_manifest(data: bytes, snapshot_id: str = "fuzz-seed", *, signed: bool = False) -> None:
    """What a store does with a manifest it reads back: list, verify, and ``get(..., verify_key=...)``.

    Only the manifest is planted (through the public object contract), so a
    ``get`` that gets past the manifest and its signature stops at the first
    missing blob; that outcome counts as the manifest being accepted.
    """

    async def run() -> None:
        store = MemoryStore()
        await store.write_object(f"manifests/{snapshot_id}", data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", st.StoreWarning)
            listing = await store.list()
        if listing.unreadable:
            raise st.CorruptSnapshot(listing.unreadable[0].reason)
        report = await store.verify(read_data=False)
        damaged = [p for p in report.problems if "manifest damaged" in p]
        if damaged:
            raise st.CorruptSnapshot(damaged[0])
        try:
            await store.get(snapshot_id, verify_key=SIGN_KEY if signed else None)
        except st.ChecksumMismatch as exc:
            if "is missing" not in str(exc):
                raise

    asyncio.run(run())


@contextlib.contextmanager
def _small_slices() -> Iterator[None]:
    """Make sliced encoding and multi-frame compression kick in on a small seed (both tables travel in metadata).

    Encryption chunks are not shrunk the same way: their 16 MiB size is fixed
    by the format, so a seed sealed with smaller chunks would not be a valid snapshot.
    """
    saved = (codecs.SLICE_ITEMS, codecs.SLICE_MIN_SLICES, sections.FRAME_MIN)
    codecs.SLICE_ITEMS, codecs.SLICE_MIN_SLICES, sections.FRAME_MIN = 8, 2, 64
    try:
        yield
    finally:
        codecs.SLICE_ITEMS, codecs.SLICE_MIN_SLICES, sections.FRAME_MIN = saved


def _plugin(entries: int) -> FuzzPlugin:
    plugin = FuzzPlugin(keyring=KEYRING)
    plugin.config = {"ttl": 60, "limit": 1000}
    plugin.cache = {f"user:{i}": Entry(f"n{i}", i / 3, i, ["a", "b"][: i % 3]) for i in range(entries)}
    plugin.secrets = {"token": "s3cret", "db": "postgres://u:p@h/db"}
    plugin.blob = bytes(range(256)) * 4
    return plugin


def _reseal(snap: st.StateSnapshot, name: str, algorithm: str) -> st.StateSnapshot:
    """Re-encrypt one section with ``algorithm`` (seeds cover both AEADs)."""
    sec = snap.sections[name]
    assert sec.encryption is not None
    binding = crypto.Binding(snap.id, snap.plugin_id, sec.name, sec.schema_version)
    plain = crypto.decrypt_data(sec.data, sec.encryption, binding, keyring=KEYRING)
    data, info = crypto.encrypt_data(plain, binding, keyring=KEYRING, algorithm=algorithm)
    return _with(snap, msgspec.structs.replace(sec, data=data, encryption=info))


def _with(snap: st.StateSnapshot, *sections: st.StateSection, drop: tuple[str, ...] = ()) -> st.StateSnapshot:
    merged = {n: s for n, s in snap.sections.items() if n not in drop} | {s.name: s for s in sections}
    out = msgspec.structs.replace(snap, sections=merged)
    return st.seal(out)


def seed_snapshots() -> dict[str, tuple[bytes, bool]]:
    """Seed inputs by kind: name -> (container bytes, signed?)."""

    async def build() -> dict[str, tuple[bytes, bool]]:
        base = await _plugin(30).export_state(tags=["seed"])
        with _small_slices():
            sliced = await _plugin(40).export_state()
        payload = msgspec.msgpack.encode(_plugin(30).cache)
        raw_cache = st.StateSection("cache", 2, payload, False, None,
                                    {"codec": "msgpack", "original_size": str(len(payload))})  # fmt: skip
        old = msgspec.msgpack.encode({f"u{i}": [f"n{i}", 0.5, i, ["t"]] for i in range(20)})
        v1 = st.StateSection("cache", 1, old, False, None, {"codec": "msgpack", "original_size": str(len(old))})
        return {
            "compressed+aes": (st.dumps(base), False),
            "chacha": (st.dumps(_reseal(base, "secrets", "ChaCha20-Poly1305")), False),
            "signed": (st.dumps(st.sign(base, SIGN_KEY)), True),
            "uncompressed": (st.dumps(_with(base, raw_cache, drop=("secrets",))), False),
            "sliced+frames": (st.dumps(sliced), False),
            "needs-migration": (st.dumps(_with(base, v1)), False),
        }

    return asyncio.run(build())


def seed_manifests() -> dict[str, bytes]:
    """Seed manifests as a store writes them."""
    snapshots = {name: st.loads(data) for name, (data, _) in seed_snapshots().items()}

    async def build() -> dict[str, bytes]:
        out = {}
        for name, snap in snapshots.items():
            store = st.open_store("memory://")
            renamed = _with(msgspec.structs.replace(snap, id="fuzz-seed"))
            if snap.signature:
                renamed = st.sign(renamed, SIGN_KEY)
            await store.put(renamed)
            out[name] = await store.read_object("manifests/fuzz-seed")
        return out

    return asyncio.run(build())


def check_stored(objects: dict[str, bytes], snapshot_id: str = "fuzz-seed") -> st.StateSnapshot:
    """What a store does reading a snapshot back from its objects (manifest, blobs, chains of incremental sections)."""

    async def read() -> st.StateSnapshot:
        store = MemoryStore()
        for key, data in objects.items():
            await store.write_object(key, data)
        return await store.get(snapshot_id, keyring=KEYRING)

    return asyncio.run(read())


def _renamed(snap: st.StateSnapshot, new_id: str) -> st.StateSnapshot:
    """``snap`` under another id, its sealed sections sealed again for it."""
    resealed = [
        sections.reseal_section(
            sec, from_snapshot=snap.id, to_snapshot=new_id, plugin_id=snap.plugin_id, keyring=KEYRING
        )
        for sec in snap.sections.values()
    ]
    return _with(msgspec.structs.replace(snap, id=new_id), *resealed)


def seed_stores() -> dict[str, dict[str, bytes]]:
    """Store contents (key -> bytes) holding ``fuzz-seed`` kept incrementally: map, sealed map and bytes chains."""

    async def build() -> dict[str, dict[str, bytes]]:
        plugin = _plugin(200)
        plugin.blob = bytes(range(256)) * 400
        plugin.secrets = {f"secret-{i}": f"value {i}" * 4 for i in range(200)}
        store = MemoryStore()
        store.incremental_min_bytes = 1
        await store.put(_renamed(await plugin.export_state(), "fuzz-base"), keyring=KEYRING)
        plugin.cache["user:7"] = Entry("changed", 0.5, 1, [])
        plugin.cache["user:new"] = Entry("added", 1.5, 2, ["x"])
        del plugin.cache["user:3"]
        plugin.secrets["secret-5"] = "rotated"
        plugin.blob = plugin.blob[:5000] + b"inserted" + plugin.blob[5000:]
        await store.put(_renamed(await plugin.export_state(), "fuzz-seed"), keyring=KEYRING)
        objects = {o.key: await store.read_object(o.key) for o in await store.list_objects("")}
        del objects["manifests/fuzz-base"]
        return {"chains": objects}

    return asyncio.run(build())
