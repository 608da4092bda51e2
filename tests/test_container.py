"""The container format: round trips, checksums, signatures and hostile bytes."""

from __future__ import annotations

import io
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import statetransfer as st
from statetransfer import _container as container
from statetransfer._container import FORMAT_VERSION, MAGIC

from .conftest import seal, simple_snapshot, snapshots

KEY = b"k" * 32


@given(snapshots())
def test_round_trip(snapshot):
    """loads(dumps(s)) == s for any snapshot."""
    assert st.loads(st.dumps(snapshot)) == snapshot


@given(snapshots(), hs.randoms())
def test_checksum_independent_of_dict_order(snapshot, rnd):
    """Reordering sections, section metadata and custom metadata keeps the checksum."""
    items = list(snapshot.sections.items())
    rnd.shuffle(items)
    shuffled_sections = {}
    for name, sec in items:
        meta = list(sec.metadata.items())
        rnd.shuffle(meta)
        shuffled_sections[name] = msgspec.structs.replace(sec, metadata=dict(meta))
    custom = list(snapshot.metadata.custom.items())
    rnd.shuffle(custom)
    other = msgspec.structs.replace(
        snapshot,
        sections=shuffled_sections,
        metadata=msgspec.structs.replace(snapshot.metadata, custom=dict(custom)),
    )
    assert st.calculate_checksum(other) == st.calculate_checksum(snapshot) == snapshot.checksum


def test_checksum_covers_every_field():
    """Changing any field but checksum changes the checksum."""
    base = simple_snapshot(a=b"1234")
    sec = base.sections["a"]
    variants = [
        msgspec.structs.replace(base, id="other"),
        msgspec.structs.replace(base, plugin_id="q"),
        msgspec.structs.replace(base, plugin_version="1.0.1"),
        msgspec.structs.replace(base, schema_version=2),
        msgspec.structs.replace(base, timestamp=base.timestamp + 1),
        msgspec.structs.replace(base, created_ns=5),
        msgspec.structs.replace(base, metadata=st.StateMetadata(tags=["x"])),
        msgspec.structs.replace(base, metadata=st.StateMetadata(reason=st.StateCreationReason.BACKUP)),
        msgspec.structs.replace(base, metadata=st.StateMetadata(expires_at=1)),
        msgspec.structs.replace(base, metadata=st.StateMetadata(custom={"a": 1})),
        msgspec.structs.replace(base, sections={"a": msgspec.structs.replace(sec, data=b"1235")}),
        msgspec.structs.replace(base, sections={"a": msgspec.structs.replace(sec, compressed=True)}),
        msgspec.structs.replace(base, sections={"a": msgspec.structs.replace(sec, schema_version=3)}),
        msgspec.structs.replace(base, sections={"a": msgspec.structs.replace(sec, metadata={"x": "y"})}),
    ]
    checksums = {st.calculate_checksum(v) for v in variants}
    assert base.checksum not in checksums
    assert len(checksums) == len(variants)
    assert base.checksum.startswith("sha256:")


@settings(max_examples=300)
@given(snapshots(), hs.data())
def test_any_corruption_is_detected(snapshot, data):
    """A flipped, truncated or inserted byte anywhere raises a StateTransferError, nothing else."""
    raw = bytearray(st.dumps(snapshot))
    kind = data.draw(hs.sampled_from(["flip", "truncate", "insert", "delete"]))
    pos = data.draw(hs.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[pos] ^= data.draw(hs.integers(1, 255))
    elif kind == "truncate":
        del raw[pos:]
    elif kind == "insert":
        raw[pos:pos] = data.draw(hs.binary(min_size=1, max_size=8))
    else:
        del raw[pos]
    with pytest.raises(st.StateTransferError):
        st.loads(bytes(raw))


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        pytest.param(lambda b: b[:10], "truncated", id="truncated-prefix"),
        pytest.param(lambda b: b[:-1], "truncated", id="truncated-trailer"),
        pytest.param(lambda b: b"PK\x03\x04" + b[4:], "magic", id="wrong-magic"),
        pytest.param(lambda b: b"", "magic|truncated", id="empty"),
        pytest.param(
            lambda b: b[:8] + bytes([FORMAT_VERSION[0] + 1]) + b[9:], "upgrade statetransfer", id="future-major"
        ),
        pytest.param(lambda b: b[:12] + struct.pack(">I", 2**32 - 1) + b[16:], "header length", id="oversize-header"),
        pytest.param(lambda b: b + b"extra", "truncated or extended", id="appended"),
    ],
)
def test_damaged_framing_names_the_problem(mangle, match):
    """Each kind of damaged framing gives a CorruptSnapshot whose message says what is wrong."""
    raw = st.dumps(simple_snapshot(a=b"payload" * 10))
    with pytest.raises(st.CorruptSnapshot, match=match):
        st.loads(mangle(raw))


def test_oversize_section_length_is_rejected():
    """A section length field claiming 2**63 bytes is refused without allocating it."""

    def claim_huge(header: bytes) -> bytes:
        doc = msgspec.msgpack.decode(header)
        doc["sections"][0]["length"] = 2**63
        return msgspec.msgpack.encode(doc)

    forged = _forge_header(st.dumps(simple_snapshot(a=b"x" * 10)), claim_huge)
    with pytest.raises(st.CorruptSnapshot, match="do not add up"):
        st.loads(forged)


def test_minor_version_is_read():
    """A newer minor format version of the same major is still read."""
    raw = bytearray(st.dumps(simple_snapshot(a=b"x")))
    assert raw[:8] == MAGIC
    raw[9] = FORMAT_VERSION[1] + 1
    import hashlib

    head_len = struct.unpack(">I", raw[12:16])[0]
    digest = hashlib.sha256(raw[: 16 + head_len]).digest()
    raw[-32:] = digest
    assert st.loads(bytes(raw)).sections["a"].data == b"x"


def test_dumps_refuses_wrong_checksum():
    """Writing a snapshot whose checksum is stale fails early instead of producing an unreadable file."""
    snap = simple_snapshot(a=b"1")
    stale = msgspec.structs.replace(snap, sections={"a": st.StateSection("a", 1, b"2")})
    with pytest.raises(st.ChecksumMismatch, match="calculate_checksum"):
        st.dumps(stale)


def test_recomputed_checksum_passes_integrity_but_not_signature():
    """Tampering plus a recomputed checksum loads without a key, but fails signature verification."""
    signed = st.sign(simple_snapshot(a=b"balance=10"), KEY)
    assert st.loads(st.dumps(signed), verify_key=KEY) == signed
    edited = msgspec.structs.replace(signed, sections={"a": st.StateSection("a", 1, b"balance=99")})
    tampered = msgspec.structs.replace(edited, checksum=st.calculate_checksum(edited))  # old signature kept
    raw = st.dumps(tampered)
    assert st.loads(raw).sections["a"].data == b"balance=99"
    with pytest.raises(st.ChecksumMismatch, match="bad signature"):
        st.loads(raw, verify_key=KEY)


def test_unsigned_refused_with_verify_key():
    """With verify_key given, an unsigned snapshot is refused."""
    with pytest.raises(st.ChecksumMismatch, match="not signed"):
        st.loads(st.dumps(simple_snapshot(a=b"x")), verify_key=KEY)


def test_signature_with_other_key_refused():
    """A snapshot signed with one key does not verify with another."""
    raw = st.dumps(st.sign(simple_snapshot(a=b"x"), KEY))
    with pytest.raises(st.ChecksumMismatch):
        st.loads(raw, verify_key=b"o" * 32)


def test_short_signing_key_refused():
    """HMAC keys shorter than 32 bytes are refused."""
    with pytest.raises(st.StateTransferError, match="32 bytes"):
        st.sign(simple_snapshot(a=b"x"), b"short")


def test_dump_and_load_paths_and_files(tmp_path):
    """dump/load accept a path or a binary file object."""
    snap = simple_snapshot(a=b"abc", b=b"")
    path = tmp_path / "s.stsnap"
    st.dump(snap, path)
    assert st.load(path) == snap
    assert st.load(str(path)) == snap
    buf = io.BytesIO()
    st.dump(snap, buf)
    buf.seek(0)
    assert st.load(buf) == snap
    assert path.read_bytes() == buf.getvalue() == st.dumps(snap)


def test_load_missing_file():
    """A missing file is a StateTransferError naming the path."""
    with pytest.raises(st.StateTransferError, match=r"nope\.stsnap"):
        st.load("/nonexistent/nope.stsnap")


def test_section_key_must_match_name():
    """A section stored under a different key than its name is refused."""
    snap = simple_snapshot(a=b"x")
    moved = seal(msgspec.structs.replace(snap, sections={"b": snap.sections["a"]}))
    with pytest.raises(st.StateTransferError, match="keys must match"):
        st.dumps(moved)


def _forge_header(raw: bytes, edit) -> bytes:
    """Re-frame ``raw`` with its header bytes passed through ``edit`` (valid framing, hostile content)."""
    import hashlib

    head_len = struct.unpack(">I", raw[12:16])[0]
    new_header = edit(raw[16 : 16 + head_len])
    body = raw[:12] + struct.pack(">I", len(new_header)) + new_header
    rest = raw[16 + head_len : -container._TRAILER.size]
    total = len(body) + len(rest) + container._TRAILER.size
    return body + rest + container._TRAILER.pack(container.END_MAGIC, total, hashlib.sha256(body).digest())


def test_deeply_nested_header_is_corrupt_not_recursion_error():
    """A header nesting 100,000 levels deep is a CorruptSnapshot (found by probing; was a RecursionError)."""
    raw = st.dumps(simple_snapshot(a=b"x"))
    deep = b"\x91" * 100_000 + b"\xc0"
    forged = _forge_header(raw, lambda h: h.replace(b"\xa6custom\x80", b"\xa6custom\x81\xa1a" + deep))
    with pytest.raises(st.CorruptSnapshot, match="header does not decode"):
        st.loads(forged)


def test_deeply_nested_section_value():
    """A section value nested too deeply to decode is an EncodingError naming the section."""
    from statetransfer import _codecs as codecs
    from statetransfer.errors import EncodingError

    with pytest.raises(EncodingError, match="entries: not valid msgpack"):
        codecs.decode(b"\x91" * 100_000 + b"\xc0", list, "msgpack", where="entries")


def test_large_sections_use_tree_digest():
    """Sections above 8 MiB get a parallel tree digest; round trip works and any flipped byte is caught."""
    import hashlib
    import os

    from statetransfer._checksum import TREE_ABOVE, section_digest

    data = os.urandom(TREE_ABOVE + 12345)
    digest = section_digest(data)
    assert len(digest) == 32 and digest != hashlib.sha256(data).digest()
    assert section_digest(bytearray(data)) == digest == section_digest(memoryview(data))
    snap = simple_snapshot(big=data)
    raw = bytearray(st.dumps(snap))
    assert st.loads(bytes(raw)) == snap
    raw[len(raw) // 2] ^= 0x40
    with pytest.raises(st.ChecksumMismatch, match="'big'"):
        st.loads(bytes(raw))


def test_invalid_utf8_in_header_is_corrupt():
    """A header string with invalid UTF-8 (framing recomputed) is a CorruptSnapshot (was a UnicodeDecodeError)."""
    raw = st.dumps(simple_snapshot(a=b"x"))
    forged = _forge_header(raw, lambda h: h.replace(b"\xa9plugin_id\xa1p", b"\xa9plugin_id\xa1\xfa"))
    assert forged != raw
    with pytest.raises(st.CorruptSnapshot, match="header does not decode"):
        st.loads(forged)


@pytest.mark.parametrize("signature", ["²", "\x00", "hmac-sha256:xyz", "hmac-sha256:" + "A" * 64])
def test_malformed_signature_field_is_corrupt(signature):
    """A signature field that is not 'hmac-sha256:<64 hex>' is refused even without a verify key."""

    def put_signature(header: bytes) -> bytes:
        doc = msgspec.msgpack.decode(header)
        doc["signature"] = signature
        return msgspec.msgpack.encode(doc)

    forged = _forge_header(st.dumps(simple_snapshot(a=b"x")), put_signature)
    with pytest.raises(st.CorruptSnapshot, match="malformed signature"):
        st.loads(forged)
