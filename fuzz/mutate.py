"""Mutation campaigns: damage snapshots, manifests and incremental stores; count what the library does.

Run: ``python fuzz/mutate.py [--count 100000] [--seed 1] [--json FILE]`` (snapshots and manifests),
``python fuzz/mutate.py --chains [--count 100000] [--workers N] [--max-memory MIB]`` (stores keeping
sections as chains: chain objects and ``STMF\\x03`` manifests, see "Chains" below).

Every mutated input is fed to the reader (``targets.check_snapshot`` /
``check_manifest`` / ``check_stored``) and classified:

- detected:   a ``StateTransferError`` subclass was raised (the goal),
- equivalent: accepted, and decodes to exactly the original snapshot
              (a structure-aware mutation that re-encoded the same values),
- accepted:   accepted with different content (a defect),
- other:      any other exception escaped (a defect).

Mutation kinds: byte flips, truncations, insertions, deletions (raw bytes);
length-field overflows and re-framed header edits, which recompute the
framing digests so the damage reaches the header decoder and the checksum.

Chains: the seed stores of ``targets.seed_stores()`` (map, sealed map and
bytes chains; one and three deltas) are damaged object by object or in their
manifest, and read back with ``store.get``. Raw kinds (flip, truncate, insert,
delete) leave every digest as it was; the ``reframed-*``, ``prefix-*``,
``envelope-*``, ``delta-*``, ``chain-*`` and ``manifest-*`` kinds recompute
the chain object's digest and length in the manifest, and the manifest's
digest, so the damage reaches the object prefix and envelope, decryption,
decompression, the delta decoder (a delta body is opened, edited and sealed
again with the chain's key), the chain references, and the rebuild; only the
section digests and the snapshot checksum in the header are left for the
reader to check. Mutations run in worker processes whose address space is
capped (``--max-memory``), so a mutation that makes the reader allocate
gigabytes shows up as a ``MemoryError`` (other) instead of swapping the machine.
Mutation ``N`` of seed ``S`` is reproducible: ``--replay N --seed S --out FILE``
writes the damaged store (JSON, key -> base64) and prints its outcome.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statetransfer as st
from fuzz.targets import (
    KEYRING,
    STORE_ID,
    check_manifest,
    check_snapshot,
    check_stored,
    seed_manifests,
    seed_snapshots,
    seed_stores,
)
from statetransfer import _container as container
from statetransfer._checksum import section_digest
from statetransfer.stores import _chain
from statetransfer.stores._manifest import CHAINED_MAGIC
from statetransfer.stores.base import blob_key

MANIFEST_BODY = 6 + 32  # magic, then the SHA-256 of the body
HOSTILE_INTS = [-1, 0, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, -(2**63)]
HOSTILE_VALUES: list[object] = [*HOSTILE_INTS, "", "²", "../x", "\x00", "9" * 40, None, [], {}, b"\xff" * 3, 1.5e308]


def reframe(raw: bytes, header: bytes) -> bytes:
    """Container bytes with a replaced header and correct framing (lengths, digest, trailer)."""
    head_len = struct.unpack(">I", raw[12:16])[0]
    body = raw[:12] + struct.pack(">I", len(header)) + header
    rest = raw[16 + head_len : -container._TRAILER.size]
    total = len(body) + len(rest) + container._TRAILER.size
    return body + rest + container._TRAILER.pack(container.END_MAGIC, total, hashlib.sha256(body).digest())


def header_of(raw: bytes) -> bytes:
    head_len = struct.unpack(">I", raw[12:16])[0]
    return raw[16 : 16 + head_len]


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 4, 8])):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _insert(rng: random.Random, data: bytes) -> bytes:
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + rng.randbytes(rng.randrange(1, 16)) + data[pos:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    pos = rng.randrange(len(data))
    return data[:pos] + data[pos + rng.randrange(1, 16) :]


def spots(doc: object) -> list[tuple[Any, Any]]:
    """Every (container, key) inside a decoded msgpack document: the places a field can be replaced."""
    found: list[tuple[Any, Any]] = []

    def visit(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                found.append((node, k))
                visit(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                found.append((node, i))
                visit(v)

    visit(doc)
    return found


def _walk(doc: object, rng: random.Random) -> tuple[Any, Any] | None:
    """A random (container, key) inside a decoded msgpack document."""
    found = spots(doc)
    return rng.choice(found) if found else None


def _header_field(rng: random.Random, raw: bytes) -> bytes:
    doc = msgspec.msgpack.decode(header_of(raw))
    spot = _walk(doc, rng)
    if spot is not None:
        parent, key = spot
        parent[key] = rng.choice(HOSTILE_VALUES)  # type: ignore[index]
    return reframe(raw, msgspec.msgpack.encode(doc))


def _length_overflow(rng: random.Random, raw: bytes) -> bytes:
    if rng.random() < 0.3:  # the raw 32-bit header length field, framing left as is
        return raw[:12] + struct.pack(">I", rng.choice([0, 1, 2**31, 2**32 - 1])) + raw[16:]
    doc = msgspec.msgpack.decode(header_of(raw))
    if doc["sections"]:
        rng.choice(doc["sections"])["length"] = rng.choice([*HOSTILE_INTS, 2**40])
    return reframe(raw, msgspec.msgpack.encode(doc))


def _header_bytes(rng: random.Random, raw: bytes) -> bytes:
    return reframe(raw, _flip(rng, header_of(raw)))


RAW_KINDS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip,
    "truncate": _truncate,
    "insert": _insert,
    "delete": _delete,
}
STRUCTURED_KINDS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "length-overflow": _length_overflow,
    "reframed-header-flip": _header_bytes,
    "reframed-header-field": _header_field,
}


def classify(run: Callable[[], object], original: object | None) -> tuple[str, str]:
    try:
        result = run()
    except st.StateTransferError:
        return "detected", ""
    except Exception as exc:  # a defect: report it with where it came from
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "other", f"{type(exc).__name__}: {exc} at {where.filename}:{where.lineno}"
    if original is not None and result == original:
        return "equivalent", ""
    return "accepted", ""


def campaign(count: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    snapshots = seed_snapshots()
    manifests = seed_manifests()
    originals = {name: st.loads(data) for name, (data, _) in snapshots.items()}
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    kinds = {**RAW_KINDS, **STRUCTURED_KINDS}
    started = time.perf_counter()
    for i in range(count):
        kind = rng.choice(list(kinds))
        if rng.random() < 0.8:
            name = rng.choice(list(snapshots))
            data, signed = snapshots[name]
            mutated = kinds[kind](rng, data)
            if mutated == data:
                continue
            outcome, detail = classify(lambda m=mutated, s=signed: check_snapshot(m, signed=s), originals[name])
            target = f"snapshot/{name}"
        else:
            name = rng.choice(list(manifests))
            data = manifests[name]
            if kind in STRUCTURED_KINDS:  # edit the msgpack body and recompute the manifest digest
                body = msgspec.msgpack.encode(_mutate_doc(rng, msgspec.msgpack.decode(data[MANIFEST_BODY:])))
                mutated = data[:6] + hashlib.sha256(body).digest() + body
            else:
                mutated = kinds[kind](rng, data)
            if mutated == data:
                continue
            signed = snapshots[name][1]
            outcome, detail = classify(lambda m=mutated, s=signed: check_manifest(m, signed=s), None)
            if outcome == "accepted" and _same_manifest(mutated, data):
                outcome = "equivalent"
            target = f"manifest/{name}"
        counts[kind][outcome] += 1
        counts["total"][outcome] += 1
        if outcome in ("other", "accepted") and len(examples[outcome]) < 20:
            examples[outcome].append(f"{target} {kind} #{i}: {detail}")
        if (i + 1) % 10_000 == 0:
            print(f"  {i + 1} mutations, {dict(counts['total'])}, {time.perf_counter() - started:.1f} s", flush=True)
    return {
        "count": count,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "by_kind": {k: dict(v) for k, v in counts.items()},
        "examples": dict(examples),
    }


def _mutate_doc(rng: random.Random, doc: object) -> object:
    spot = _walk(doc, rng)
    if spot is not None:
        parent, key = spot
        parent[key] = rng.choice(HOSTILE_VALUES)  # type: ignore[index]
    return doc


def _same_manifest(a: bytes, b: bytes) -> bool:
    """Whether two manifests parse to the same header (an unknown key dropped, say)."""
    try:
        return bool(container.decode_header(a[MANIFEST_BODY:]) == container.decode_header(b[MANIFEST_BODY:]))
    except st.StateTransferError:
        return False


# -- chains: stores keeping sections incrementally ----------------------------------------------------
#: Integers for delta operations and length fields: boundaries of the 4 GiB section limit, msgpack's int range.
CHAIN_INTS = [-2, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]
_PREFIX = struct.Struct(">4sBBH")  # the STCO prefix: magic, version, object type, envelope length
_H = struct.Struct(">I")


@dataclass
class Link:
    """One object of a seed store's chain, opened."""

    section: str
    index: int  # 0: the base
    data: bytes
    kind: int  # the chain's delta type (MAP_DELTA / BYTES_DELTA)
    envelope: Any  # decoded envelope of a delta: None, or [algorithm, key_id, nonce]
    body: bytes  # a delta's body, opened ([ops, literal]); b"" for a base
    prev_size: int  # size of the plaintext a delta applies to


@dataclass
class SeedStore:
    """A seed store and what the mutators need of it."""

    name: str
    objects: dict[str, bytes]
    header: bytes  # the manifest's header bytes
    chains: dict[str, Any]  # the manifest's chains, decoded untyped (name -> [kind, objects, frames, key_id, base])
    links: list[Link]
    plugin_id: str
    original: bytes  # st.dumps of the snapshot the store reads back as


def seal_manifest(header: bytes, chains: object, *, length: int | None = None) -> bytes:
    """An ``STMF\x03`` manifest of ``header`` and ``chains`` (msgpack-encoded unless bytes), digest computed."""
    tail = chains if isinstance(chains, bytes) else msgspec.msgpack.encode(chains)
    body = _H.pack(len(header) if length is None else length) + header + tail
    return CHAINED_MAGIC + hashlib.sha256(body).digest() + body


def _split_manifest(manifest: bytes) -> tuple[bytes, bytes]:
    body = manifest[len(CHAINED_MAGIC) + 32 :]
    (length,) = _H.unpack_from(body)
    return body[4 : 4 + length], body[4 + length :]


def load_seed_stores() -> list[SeedStore]:
    out = []
    for name, objects in seed_stores().items():
        manifest = objects[f"manifests/{STORE_ID}"]
        header, tail = _split_manifest(manifest)
        chains = msgspec.msgpack.decode(tail)
        assert seal_manifest(header, chains) == manifest  # untyped decoding re-encodes exactly
        original = check_stored(objects)
        links = []
        for section, ref in chains.items():
            kind = _chain.MAP_DELTA if ref[0] == "map" else _chain.BYTES_DELTA
            opened: list[tuple[int, bytes]] = []
            for index, (digest, _) in enumerate(ref[1]):
                data = objects[blob_key(digest.hex())]
                envelope, body = None, b""
                if index:
                    (env_len,) = struct.unpack_from(">H", data, 6)
                    envelope = msgspec.msgpack.decode(data[8 : 8 + env_len])
                    opened.append(_chain.open_object(data, plugin_id=original.plugin_id, section=section,
                                                     keyring=KEYRING))  # fmt: skip
                    body = opened[-1][1]
                prev = b"" if not index else _plain_before(objects, ref, section, original.plugin_id, opened[:-1])
                links.append(Link(section, index, data, kind, envelope, body, len(prev)))
        out.append(SeedStore(name, objects, header, chains, links, original.plugin_id, st.dumps(original)))
    return out


def _plain_before(objects: dict[str, bytes], ref: list[Any], section: str, plugin_id: str,
                  deltas: list[tuple[int, bytes]]) -> bytes:  # fmt: skip
    typed = msgspec.convert(ref, _chain.ChainRef)
    base = objects[blob_key(typed.objects[0].digest.hex())]
    plain = _chain.open_base(typed, base, plugin_id=plugin_id, section=section, keyring=KEYRING)
    return bytes(_chain.apply_chain(typed.kind, plain, deltas, section=section))


def replace_object(store: SeedStore, link: Link, data: bytes) -> dict[str, bytes]:
    """The store with ``link``'s object replaced by ``data``, its digest and length recomputed in the manifest."""
    chains = msgspec.msgpack.decode(msgspec.msgpack.encode(store.chains))
    digest = section_digest(data)
    chains[link.section][1][link.index] = [digest, len(data)]
    objects = dict(store.objects)
    objects[blob_key(digest.hex())] = data
    objects[f"manifests/{STORE_ID}"] = seal_manifest(store.header, chains)
    return objects


def _with_manifest(store: SeedStore, manifest: bytes) -> dict[str, bytes]:
    return {**store.objects, f"manifests/{STORE_ID}": manifest}


def _reseal(store: SeedStore, link: Link, body: bytes, kind: int | None = None) -> bytes:
    """A delta object of ``body``, sealed as ``link`` was (same key and algorithm, a fresh nonce)."""
    key_id, algorithm = (None, "") if link.envelope is None else (link.envelope[1], link.envelope[0])
    return _chain.seal_object(link.kind if kind is None else kind, body, plugin_id=store.plugin_id,
                              section=link.section, keyring=KEYRING, key_id=key_id, algorithm=algorithm)  # fmt: skip


def _deltas(store: SeedStore) -> list[Link]:
    return [link for link in store.links if link.index]


# Mutators: (rng, store) -> the damaged store's objects, or None when the kind does not apply.
def _raw(fn: Callable[[random.Random, bytes], bytes]) -> Callable[[random.Random, SeedStore], dict[str, bytes]]:
    """Raw damage to one object (kept under its key, as bit rot would) or to the manifest; no digest recomputed."""

    def mutate(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
        if rng.random() < 0.3:
            key = f"manifests/{STORE_ID}"
        else:
            link = rng.choice(store.links)
            key = blob_key(section_digest(link.data).hex())
        return {**store.objects, key: fn(rng, store.objects[key])}

    return mutate


def _reframed(fn: Callable[[random.Random, bytes], bytes]) -> Callable[[random.Random, SeedStore], dict[str, bytes]]:
    """Raw damage to one chain object (base or delta), its digest and length recomputed in the manifest."""

    def mutate(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
        link = rng.choice(store.links)
        return replace_object(store, link, fn(rng, link.data))

    return mutate


def _splice(rng: random.Random, data: bytes) -> bytes:
    return _insert(rng, data) if rng.random() < 0.5 else _delete(rng, data)


def _prefix(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The STCO prefix: envelope length overflows, wrong version, wrong or swapped object type."""
    link = rng.choice(_deltas(store))
    data = bytearray(link.data)
    env_len = struct.unpack_from(">H", data, 6)[0]
    what = rng.random()
    if what < 0.6:
        choices = [0, 1, 2, env_len - 1, env_len + 1, len(data) - 8, len(data) - 7, len(data), 0x7FFF, 0xFFFF]
        struct.pack_into(">H", data, 6, rng.choice([c for c in choices if 0 <= c <= 0xFFFF]))
    elif what < 0.75:
        data[4] = rng.choice([0, 2, 255])
    elif what < 0.95:
        data[5] = rng.choice([0, 3 - link.kind, 3, 255])
    else:
        data[:4] = rng.choice([b"STCP", b"STMF", b"\0\0\0\0"])
    return replace_object(store, link, bytes(data))


def _envelope(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The envelope: hostile algorithm, key id or nonce; a sealed object said to be plain, a plain one sealed."""
    link = rng.choice(_deltas(store))
    env_len = struct.unpack_from(">H", link.data, 6)[0]
    payload = link.data[8 + env_len :]
    alg, key_id, nonce = link.envelope or ["AES-256-GCM", "fuzz", rng.randbytes(12)]
    options: list[Any] = [
        None,
        [alg, key_id, nonce],
        ["ChaCha20-Poly1305" if alg == "AES-256-GCM" else "AES-256-GCM", key_id, nonce],
        [alg, "other", nonce],
        [alg, "missing", nonce],
        [alg, key_id, nonce[:11]],
        [alg, key_id, nonce + b"\0"],
        [alg, key_id, b""],
        [alg, key_id, bytes(12)],
        [alg, key_id],
        [alg, key_id, nonce, 1],
        [rng.choice(HOSTILE_VALUES) for _ in range(3)],
        rng.choice(HOSTILE_VALUES),
    ]
    envelope = rng.choice(options)
    if isinstance(envelope, list) and envelope and rng.random() < 0.3:
        envelope[rng.randrange(len(envelope))] = rng.choice(HOSTILE_VALUES)
    env = msgspec.msgpack.encode(envelope)
    data = link.data[:6] + struct.pack(">H", len(env)) + env + payload
    return replace_object(store, link, data)


def _ops(rng: random.Random, store: SeedStore) -> dict[str, bytes] | None:
    """The delta's operation list: hostile offsets and lengths, odd lists, literal runs past the literal bytes."""
    link = rng.choice(_deltas(store))
    ops, literal = msgspec.msgpack.decode(link.body)
    near = [link.prev_size - 1, link.prev_size, link.prev_size + 1, len(literal), len(literal) + 1]
    what = rng.random()
    if what < 0.5 and ops:
        ops[rng.randrange(len(ops))] = rng.choice(CHAIN_INTS + near)
    elif what < 0.65:
        ops += [rng.choice([-1, 0, link.prev_size, 2**32 - 1]), rng.choice([*CHAIN_INTS, 1, len(literal)])]
    elif what < 0.75:
        if rng.random() < 0.5 and ops:
            del ops[rng.randrange(len(ops))]
        else:
            ops.append(rng.choice(CHAIN_INTS))
    elif what < 0.9:  # the same total size, but a literal run longer than the literal bytes left
        copies = [i for i in range(0, len(ops), 2) if ops[i] >= 0 and ops[i + 1] > 1]
        if not copies:
            return None
        i = rng.choice(copies)
        taken = rng.randrange(1, ops[i + 1])
        ops[i + 1] -= taken
        ops += [-1, taken]
    else:  # one pair's length moved to another (same total size)
        if len(ops) < 4:
            return None
        i, j = rng.sample(range(1, len(ops), 2), 2)
        moved = rng.randrange(1, max(2, ops[i] + 1))
        ops[i] -= moved
        ops[j] += moved
    return replace_object(store, link, _reseal(store, link, msgspec.msgpack.encode([ops, literal])))


def _body(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The delta body: hostile fields, literal bytes changed, msgpack damage, another delta's body or type."""
    link = rng.choice(_deltas(store))
    kind = None
    what = rng.random()
    if what < 0.3:
        doc = msgspec.msgpack.decode(link.body)
        body = msgspec.msgpack.encode(_mutate_doc(rng, doc) if rng.random() < 0.8 else rng.choice(HOSTILE_VALUES))
    elif what < 0.5:
        ops, literal = msgspec.msgpack.decode(link.body)
        literal = rng.choice([_flip, _truncate, _insert, _delete])(rng, literal) if literal else b"x"
        body = msgspec.msgpack.encode([ops, literal])
    elif what < 0.7:
        body = rng.choice([_flip, _truncate, _insert, _delete])(rng, link.body)
    elif what < 0.85:
        body = rng.choice(_deltas(store)).body  # another delta's body (maybe of another section)
    elif what < 0.95:
        body, kind = link.body, 3 - link.kind  # a map delta sealed as a bytes delta, or the reverse
    else:
        body = rng.choice([b"", b"\x90", b"\x92\x90\xc4\x00", b"\xc0"])
    return replace_object(store, link, _reseal(store, link, body, kind))


def _chain_edit(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The chains in the manifest: objects dropped, repeated, reordered or borrowed; kind, frames, key, base."""
    chains = msgspec.msgpack.decode(msgspec.msgpack.encode(store.chains))
    name = rng.choice(list(chains))
    ref = chains[name]
    objs, frames = ref[1], ref[2]
    what = rng.randrange(12)
    if what == 0 and len(objs) > 1:
        del objs[rng.randrange(1, len(objs))]
    elif what == 1:
        i = rng.randrange(len(objs))
        objs.insert(i, objs[i])
    elif what == 2 and len(objs) > 1:
        i, j = rng.sample(range(len(objs)), 2)
        objs[i], objs[j] = objs[j], objs[i]
    elif what == 3:
        other = chains[rng.choice(list(chains))][1]
        objs[rng.randrange(len(objs))] = rng.choice(other)
    elif what == 4:
        ref[0] = {"map": "bytes", "bytes": "map"}[ref[0]]
    elif what == 5:
        if frames and rng.random() < 0.7:
            i = rng.randrange(len(frames))
            step = rng.choice([-1, 1, frames[i]])
            frames[i] -= step
            if i + 1 < len(frames):  # moved into the next frame: the same total
                frames[i + 1] += step
            elif rng.random() < 0.5:  # split off as a frame of its own
                frames.append(step)
        else:
            ref[2] = rng.choice([[], [0], [2**32], [1] * 64, [sum(frames) or 1], frames[::-1]])
    elif what == 6:
        ref[3] = rng.choice([None, "fuzz", "other", "missing", ""])
    elif what == 7:
        ref[4][0] = rng.choice([STORE_ID, "fuzz-base", "fuzz-1", "other", ""])
    elif what == 8:
        base = ref[4]
        i = rng.randrange(1, 5)
        if i == 1:
            base[1] += rng.choice([-1, 1])
        elif i == 2:
            base[2] = not base[2]
        elif i == 3:
            sealed = [r[4][3] for r in chains.values() if r[4][3] is not None]
            base[3] = rng.choice([None, *sealed])
        else:
            meta = base[4]
            key = rng.choice(["codec", "compression", "original_size", "frames", "slices", "sealed_in"])
            value = rng.choice(["msgpack", "json", "raw", "zstd", "lz4", "none", "1", "0", "9" * 40, "1,2", "0:1"])
            if key in meta and rng.random() < 0.3:
                del meta[key]
            else:
                meta[key] = value
    elif what == 9:
        del chains[name]
    elif what == 10:
        del objs[1:]
    else:
        chains[rng.choice(["cache", "nope", ""])] = ref
    return _with_manifest(store, seal_manifest(store.header, chains))


def _chain_field(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """A field anywhere in the chains set to a hostile value (or a hostile integer)."""
    chains = msgspec.msgpack.decode(msgspec.msgpack.encode(store.chains))
    parent, key = rng.choice(spots(chains))
    parent[key] = rng.choice(HOSTILE_VALUES if rng.random() < 0.6 else CHAIN_INTS)
    return _with_manifest(store, seal_manifest(store.header, chains))


def _manifest_length(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The header length field of the ``STMF\x03`` body, digest recomputed."""
    n = len(store.header)
    length = rng.choice([0, 1, n - 1, n + 1, n + 4, 2**31, 2**32 - 1, rng.randrange(2**32)])
    return _with_manifest(store, seal_manifest(store.header, store.chains, length=length))


def _manifest_header(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """The container header inside the manifest: a hostile field or flipped bytes, length and digest recomputed."""
    if rng.random() < 0.5:
        header = msgspec.msgpack.encode(_mutate_doc(rng, msgspec.msgpack.decode(store.header)))
    else:
        header = _flip(rng, store.header)
    return _with_manifest(store, seal_manifest(header, store.chains))


def _section_field(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """A header field a chain's rebuild uses (compression, encryption, frames, length, digest) set to a hostile value.

    The manifest's header length and digest are recomputed; the snapshot checksum is not (it covers these fields).
    """
    header = msgspec.msgpack.decode(store.header)
    sec = rng.choice(header["sections"])
    enc = sec["encryption"] or {"algorithm": "AES-256-GCM", "key_id": "fuzz", "nonce": bytes(12)}
    field = rng.choice(["encryption", "algorithm", "key_id", "nonce", "compressed", "metadata", "length", "digest"])
    if field == "encryption":
        sec["encryption"] = None if sec["encryption"] else enc
    elif field in ("algorithm", "key_id", "nonce"):
        choices: dict[str, list[Any]] = {
            "algorithm": ["AES-256-GCM", "ChaCha20-Poly1305", "", "ROT13", 1],
            "key_id": ["fuzz", "other", "missing", "", None],
            "nonce": [b"", b"\xff" * 3, b"\xff" * 7, b"\xff" * 8, b"\xff" * 11, b"\xff" * 13, bytes(16), b"\xff" * 129],
        }
        sec["encryption"] = {**enc, field: rng.choice(choices[field])}
    elif field == "compressed":
        sec["compressed"] = not sec["compressed"]
    elif field == "metadata":
        key = rng.choice(["compression", "original_size", "frames", "codec", "sealed_in", "slices"])
        values = ["zstd", "lz4", "none", "gzip", "0", "1", "4294967296", "1,2", ",", "9" * 40, "fuzz-base", "²"]
        sec["metadata"][key] = rng.choice(values)
    elif field == "length":
        sec["length"] = rng.choice([*CHAIN_INTS, sec["length"] + 1, sec["length"] - 1])
    else:
        sec["digest"] = rng.choice([bytes(32), b"\xff" * 31, b"", rng.randbytes(32)])
    return _with_manifest(store, seal_manifest(msgspec.msgpack.encode(header), store.chains))


def _manifest_body(rng: random.Random, store: SeedStore) -> dict[str, bytes]:
    """Raw damage anywhere after the manifest's digest (header length, header, chains), digest recomputed."""
    manifest = store.objects[f"manifests/{STORE_ID}"]
    start = len(CHAINED_MAGIC) + 32
    body = rng.choice([_flip, _truncate, _insert, _delete])(rng, manifest[start:])
    return _with_manifest(store, CHAINED_MAGIC + hashlib.sha256(body).digest() + body)


CHAIN_KINDS: dict[str, Callable[[random.Random, SeedStore], dict[str, bytes] | None]] = {
    "flip": _raw(_flip),
    "truncate": _raw(_truncate),
    "insert": _raw(_insert),
    "delete": _raw(_delete),
    "reframed-flip": _reframed(_flip),
    "reframed-truncate": _reframed(_truncate),
    "reframed-splice": _reframed(_splice),
    "prefix-overflow": _prefix,
    "envelope-field": _envelope,
    "delta-ops-overflow": _ops,
    "delta-body": _body,
    "chain-edit": _chain_edit,
    "chain-field": _chain_field,
    "manifest-length-overflow": _manifest_length,
    "manifest-header": _manifest_header,
    "manifest-section-field": _section_field,
    "manifest-body": _manifest_body,
}


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} in {frame.name} ({Path(frame.filename).name}:{frame.lineno})"


def _reason(exc: st.StateTransferError) -> str:
    """What detected a mutation: the error type and its message without names and numbers (for grouping)."""
    text = re.sub(r"^snapshot '[^']*' is damaged: ", "", str(exc).split(" (")[0])
    text = re.sub(r"(decode|corrupt|failed): .*", r"\1", text)
    text = re.sub(r"'[^']*'|\b[0-9a-f]{16}\b|\b[0-9a-f]{64}\b|-?\d+", "_", text)
    return f"{type(exc).__name__}: {text[:80]}"


def judge_store(store: SeedStore, objects: dict[str, bytes]) -> tuple[str, str]:
    """(outcome, detail) of reading back a damaged store: what detected it, or the defect's signature."""
    try:
        result = st.dumps(check_stored(objects))
    except st.StateTransferError as exc:
        return "detected", _reason(exc)
    except Exception as exc:  # a defect: report where it came from
        return "other", f"{_where(exc)}: {str(exc)[:120]}"
    return ("equivalent", "") if result == store.original else ("accepted", "")


def chain_mutation(stores: list[SeedStore], seed: int, number: int) -> tuple[str, str, dict[str, bytes] | None]:
    """(kind, seed store name, damaged objects or None when unchanged) of mutation ``number``."""
    rng = random.Random(f"{seed}:{number}")
    store = rng.choice(stores)
    kind = rng.choice(list(CHAIN_KINDS))
    objects = CHAIN_KINDS[kind](rng, store)
    return kind, store.name, None if objects is None or objects == store.objects else objects


_STORES: list[SeedStore] = []


def _cap_memory(max_memory: int | None) -> None:
    if max_memory:
        limit = max_memory << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _init_worker(max_memory: int | None) -> None:
    _STORES[:] = load_seed_stores()
    _cap_memory(max_memory)


def _run_chunk(job: tuple[int, int, int]) -> dict[str, Any]:
    seed, start, stop = job
    stores = _STORES or load_seed_stores()
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    defects: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    skipped, slowest = 0, (0.0, -1, "")
    for number in range(start, stop):
        kind, name, objects = chain_mutation(stores, seed, number)
        if objects is None:
            skipped += 1
            continue
        store = next(s for s in stores if s.name == name)
        began = time.perf_counter()
        outcome, signature = judge_store(store, objects)
        took = time.perf_counter() - began
        slowest = max(slowest, (took, number, kind))
        counts[kind][outcome] += 1
        counts["total"][outcome] += 1
        counts[f"store/{name}"][outcome] += 1
        if outcome == "detected":
            reasons[signature] += 1
        elif signature:
            defects[signature.split(": ")[0]] += 1
        if outcome in ("other", "accepted") and len(examples[outcome]) < 20:
            examples[outcome].append(f"#{number} {name} {kind}: {signature}")
    return {"counts": counts, "examples": examples, "defects": defects, "reasons": reasons, "skipped": skipped,
            "slowest": slowest}  # fmt: skip


def chain_campaign(count: int, seed: int, *, workers: int = 2, max_memory: int | None = 1024,
                   chunk: int = 250, progress: bool = True) -> dict[str, object]:  # fmt: skip
    """Mutations ``0 .. count-1`` of the chain seed stores, in ``workers`` processes capped at ``max_memory`` MiB."""
    started = time.perf_counter()
    jobs = [(seed, start, min(start + chunk, count)) for start in range(0, count, chunk)]
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    defects: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    skipped, slowest, done = 0, (0.0, -1, ""), 0
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(max_memory,)) as pool:
        for part in pool.imap_unordered(_run_chunk, jobs):
            for kind, c in part["counts"].items():
                counts[kind].update(c)
            for outcome, lines in part["examples"].items():
                examples[outcome] = sorted(examples[outcome] + lines, key=lambda x: int(x[1:].split()[0]))[:20]
            defects.update(part["defects"])
            reasons.update(part["reasons"])
            skipped += part["skipped"]
            slowest = max(slowest, tuple(part["slowest"]))  # type: ignore[arg-type]
            done += 1
            if progress and done % max(1, len(jobs) // 20) == 0:
                elapsed = time.perf_counter() - started
                print(f"  {done}/{len(jobs)} chunks, {dict(counts['total'])}, {elapsed:.1f} s", flush=True)
    return {
        "count": count,
        "seed": seed,
        "workers": workers,
        "max_memory_mib": max_memory,
        "seconds": time.perf_counter() - started,
        "skipped_unchanged": skipped,
        "slowest": {"seconds": slowest[0], "mutation": slowest[1], "kind": slowest[2]},
        "by_kind": {k: dict(v) for k, v in counts.items()},
        "defects": dict(defects),
        "detected_by": dict(reasons.most_common()),
        "examples": dict(examples),
    }


def replay(seed: int, number: int, out: str | None) -> int:
    """Rebuild mutation ``number`` of the chain campaign, judge it here, and optionally write the damaged store."""
    stores = load_seed_stores()
    kind, name, objects = chain_mutation(stores, seed, number)
    if objects is None:
        print(f"mutation {number}: {kind} on {name} changed nothing")
        return 0
    if out:
        Path(out).write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in objects.items()}, indent=1))
        print(f"wrote {out}: read it back with fuzz.targets.check_stored({{k: b64decode(v) ...}})")
    store = next(s for s in stores if s.name == name)
    outcome, signature = judge_store(store, objects)
    print(f"mutation {number} ({kind} on {name}): {outcome} {signature}")
    return 0 if outcome in ("detected", "equivalent") else 1


def _print(result: dict[str, Any]) -> None:
    total = result["by_kind"]["total"]
    print(f"mutations tried: {sum(total.values())} in {result['seconds']:.1f} s")
    for kind, c in sorted(result["by_kind"].items()):
        print(f"  {kind:26} " + "  ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if "detected_by" in result:
        print("detected by (most frequent):")
        for reason, n in list(result["detected_by"].items())[:25]:
            print(f"  {n:7}  {reason}")
    for signature, n in sorted(result.get("defects", {}).items()):
        print(f"defect x{n}: {signature}")
    for outcome, lines in result["examples"].items():
        print(f"{outcome}:")
        for line in lines:
            print(f"  {line}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--chains", action="store_true", help="damage stores keeping sections as chains")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="--chains: worker processes")
    parser.add_argument("--max-memory", type=int, default=1024, help="--chains: MiB per worker (0: no cap)")
    parser.add_argument("--replay", type=int, metavar="N", help="--chains: rebuild and judge mutation N only")
    parser.add_argument("--out", help="--replay: write the damaged store here (JSON, key -> base64)")
    args = parser.parse_args()
    if args.replay is not None:
        _cap_memory(args.max_memory)
        return replay(args.seed, args.replay, args.out)
    if args.chains:
        result = chain_campaign(args.count, args.seed, workers=args.workers, max_memory=args.max_memory)
    else:
        result = campaign(args.count, args.seed)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    total = result["by_kind"]["total"]  # type: ignore[index]
    return 0 if not total.get("other") and not total.get("accepted") else 1


if __name__ == "__main__":
    raise SystemExit(main())
