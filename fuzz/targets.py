"""What a reader does with untrusted bytes, as one function per input kind, and the seed snapshots.

Shared by the atheris harness (``fuzz_loads.py``), the mutation campaign
(``mutate.py``) and the hypothesis tests in the normal test suite. A target
either returns (the input was accepted) or raises ``StateTransferError``;
anything else escaping is a defect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import warnings
from collections.abc import Iterator

import msgspec

import statetransfer as st
from statetransfer import _codecs as codecs
from statetransfer import _crypto as crypto
from statetransfer import _sections as sections
from statetransfer._checksum import section_digest
from statetransfer._sections import unpack_section
from statetransfer.stores._manifest import CHAINED_MAGIC, parse_chained
from statetransfer.stores.base import blob_key
from statetransfer.stores.memory import MemoryStore

KEYRING = st.Keyring({"fuzz": b"\x01" * 32, "other": b"\x02" * 32})
SIGN_KEY = b"fuzz-signing-key-of-32-bytes!!!!"
MAX_SECTION = 64 << 20
STORE_ID = "fuzz-seed"


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


def check_stored(objects: dict[str, bytes], snapshot_id: str = STORE_ID) -> st.StateSnapshot:
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
    """Store contents (key -> bytes) holding ``fuzz-seed`` with every section kept as a chain.

    ``chains``: one delta per chain: a map chain (``cache``, zstd), a sealed map
    chain (``secrets``, AES-GCM), a bytes chain (``blob``, lz4) and a chain that
    is only its base (``config``). ``long-chains``: three deltas per chain
    (``config`` too), multi-frame compression and sliced encoding, ``secrets``
    sealed with ChaCha20-Poly1305.
    """
    out = {"chains": asyncio.run(_chained_store(1, "AES-256-GCM"))}
    with _small_slices():
        out["long-chains"] = asyncio.run(_chained_store(3, "ChaCha20-Poly1305"))
    return out


async def _chained_store(deltas: int, algorithm: str) -> dict[str, bytes]:
    """A store after ``deltas + 1`` puts of a changing plugin, the last as ``fuzz-seed``, the others' manifests gone."""
    plugin = _plugin(200)
    plugin.blob = bytes(range(256)) * 400
    plugin.secrets = {f"secret-{i}": f"value {i}" * 4 for i in range(200)}
    store = MemoryStore()
    store.incremental_min_bytes = 1
    store.chain_max_ratio = 100.0  # keep every delta, however large beside the small bases
    ids = ["fuzz-base", *(f"fuzz-{n}" for n in range(1, deltas)), STORE_ID]
    for n, snapshot_id in enumerate(ids):
        if n:
            plugin.cache[f"user:{6 + n}"] = Entry("changed", 0.5, n, [])
            plugin.cache[f"user:new{n}"] = Entry("added", 1.5, 2, ["x"])
            del plugin.cache[f"user:{3 + 20 * (n - 1)}"]
            plugin.secrets[f"secret-{4 + n}"] = "rotated"
            plugin.blob = plugin.blob[: 9000 * n - 4000] + b"inserted" + plugin.blob[9000 * n - 4000 :]
            if deltas > 1:
                plugin.config = {**plugin.config, f"round{n}": n}
        snap = await plugin.export_state()
        if algorithm != "AES-256-GCM":
            snap = _reseal(snap, "secrets", algorithm)
        await store.put(_renamed(snap, snapshot_id), keyring=KEYRING)
    objects = {o.key: await store.read_object(o.key) for o in await store.list_objects("")}
    for snapshot_id in ids[:-1]:
        del objects[f"manifests/{snapshot_id}"]
    return objects


# -- a store as one input: the manifest, then the objects its chains list ---------------------------
_RECORD = struct.Struct(">I")


def pack_store(objects: dict[str, bytes]) -> bytes:
    """One byte string holding a store's ``fuzz-seed``: records (4-byte length, bytes), the manifest first.

    Then every object its chains list, chain by chain, base first (an object
    listed twice comes twice), then any other blob.
    """
    manifest = objects[f"manifests/{STORE_ID}"]
    _, chains = parse_chained(manifest, STORE_ID)
    listed = [blob_key(obj.digest.hex()) for ref in chains.values() for obj in ref.objects]
    rest = sorted(key for key in objects if key.startswith("blobs/") and key not in listed)
    return b"".join(_RECORD.pack(len(data)) + data for data in [manifest, *(objects[k] for k in [*listed, *rest])])


def unpack_store(data: bytes, *, reframe: bool = False) -> dict[str, bytes]:
    """The store objects a :func:`pack_store` input holds, every blob under the key of its own digest.

    With ``reframe``, the manifest's chains are made to list the objects that
    follow it, in order (digest and length recomputed, then the manifest's
    digest), so damage inside an object reaches the chain decoders instead of
    stopping at a digest check.
    """
    records = []
    pos = 0
    while pos < len(data):
        (length,) = _RECORD.unpack(data[pos : pos + 4].ljust(4, b"\0"))
        records.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    if not records:
        return {}
    manifest, blobs = records[0], records[1:]
    if reframe:
        manifest = reframe_manifest(manifest, blobs)
    out = {f"manifests/{STORE_ID}": manifest}
    for blob in blobs:
        out[blob_key(section_digest(blob).hex())] = blob
    return out


def reframe_manifest(manifest: bytes, objects: list[bytes]) -> bytes:
    """``manifest`` with its chains listing ``objects`` in order (as far as both go), its digest recomputed."""
    body = manifest[len(CHAINED_MAGIC) + 32 :]
    if manifest.startswith(CHAINED_MAGIC) and len(body) >= _RECORD.size:
        (length,) = _RECORD.unpack_from(body)
        head = body[: _RECORD.size + length]
        with contextlib.suppress(Exception):  # chains this harness cannot line up are left as they are
            chains = msgspec.msgpack.decode(body[len(head) :])
            todo = iter(objects)
            for ref in chains.values() if isinstance(chains, dict) else ():
                listing = ref[1] if isinstance(ref, list) and len(ref) > 1 and isinstance(ref[1], list) else []
                for i, obj in enumerate(listing):
                    data = next(todo, None)
                    if data is not None:
                        listing[i] = [section_digest(data), len(data)] if isinstance(obj, list) else obj
            body = head + msgspec.msgpack.encode(chains)
    return manifest[: len(CHAINED_MAGIC)] + hashlib.sha256(body).digest() + body


def check_store(data: bytes, *, reframe: bool = False) -> st.StateSnapshot:
    """:func:`check_stored` of a :func:`pack_store` input."""
    return check_stored(unpack_store(data, reframe=reframe))
