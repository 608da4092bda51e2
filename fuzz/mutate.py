"""Mutation campaign: damage snapshots and manifests of every kind; count what the library does.

Run: ``python fuzz/mutate.py [--count 100000] [--seed 1] [--json FILE]``.

Every mutated input is fed to the reader (``targets.check_snapshot`` /
``check_manifest``) and classified:

- detected:   a ``StateTransferError`` subclass was raised (the goal),
- equivalent: accepted, and decodes to exactly the original snapshot
              (a structure-aware mutation that re-encoded the same values),
- accepted:   accepted with different content (a defect),
- other:      any other exception escaped (a defect).

Mutation kinds: byte flips, truncations, insertions, deletions (raw bytes);
length-field overflows and re-framed header edits, which recompute the
framing digests so the damage reaches the header decoder and the checksum.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statetransfer as st
from fuzz.targets import check_manifest, check_snapshot, seed_manifests, seed_snapshots
from statetransfer import _container as container

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    result = campaign(args.count, args.seed)
    total = result["by_kind"]["total"]  # type: ignore[index]
    print(f"mutations tried: {sum(total.values())} in {result['seconds']:.1f} s")
    for kind, c in sorted(result["by_kind"].items()):  # type: ignore[attr-defined]
        print(f"  {kind:24} " + "  ".join(f"{k} {v}" for k, v in sorted(c.items())))
    for outcome, lines in result["examples"].items():  # type: ignore[attr-defined]
        print(f"{outcome}:")
        for line in lines:
            print(f"  {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not total.get("other") and not total.get("accepted") else 1


if __name__ == "__main__":
    raise SystemExit(main())
