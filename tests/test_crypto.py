"""Encryption: keys, wrong/missing keys, moved sections, chunking and rotation."""

from __future__ import annotations

import base64

import msgspec
import pytest

import statetransfer as st
from statetransfer import _crypto as crypto
from statetransfer._sections import pack_section, unpack_section

from .conftest import seal

WHERE = crypto.Binding("s1", "p", "sec", 1)


def _snapshot_with(sections: dict[str, st.StateSection], snapshot_id: str = "s1") -> st.StateSnapshot:
    return seal(st.StateSnapshot(snapshot_id, "p", "1.0.0", 1, 0, sections, st.StateMetadata()))


def _sealed(keyring: st.Keyring, name: str = "sec", snapshot_id: str = "s1", payload: bytes = b"secret" * 50):
    return pack_section(name, 1, payload, snapshot_id=snapshot_id, plugin_id="p", keyring=keyring, encrypt=True)


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_round_trip(algorithm):
    """Encrypted bytes decrypt to the plaintext with the same key and bindings."""
    ring = st.Keyring.generate("k1")
    data, info = crypto.encrypt_data(b"hello", WHERE, keyring=ring, algorithm=algorithm)
    assert info.algorithm == algorithm and info.key_id == "k1" and len(info.nonce) == 12
    assert b"hello" not in data
    assert crypto.decrypt_data(data, info, WHERE, keyring=ring) == b"hello"


def test_wrong_key():
    """A key with the right id but other bytes fails with DecryptionFailed."""
    sec = _sealed(st.Keyring.generate("k1"))
    with pytest.raises(st.DecryptionFailed, match="'k1'"):
        unpack_section(sec, snapshot_id="s1", plugin_id="p", keyring=st.Keyring.generate("k1"))


def test_missing_key():
    """A keyring without the section's key id raises MissingKey carrying the id."""
    sec = _sealed(st.Keyring.generate("k1"))
    with pytest.raises(st.MissingKey, match="'k1'") as info:
        unpack_section(sec, snapshot_id="s1", plugin_id="p", keyring=st.Keyring.generate("other"))
    assert info.value.key_id == "k1"
    with pytest.raises(st.MissingKey) as info:
        unpack_section(sec, snapshot_id="s1", plugin_id="p", keyring=None)
    assert info.value.key_id == "k1"


def test_tampered_ciphertext():
    """One flipped ciphertext bit fails authentication."""
    ring = st.Keyring.generate("k1")
    sec = _sealed(ring)
    data = bytearray(sec.data)
    data[3] ^= 1
    with pytest.raises(st.DecryptionFailed):
        unpack_section(msgspec.structs.replace(sec, data=bytes(data)), snapshot_id="s1", plugin_id="p", keyring=ring)


def test_section_swapped_between_snapshots():
    """A section moved into another snapshot (checksum recomputed) fails to decrypt there."""
    ring = st.Keyring.generate("k1")
    a = _snapshot_with({"sec": _sealed(ring, snapshot_id="A")}, "A")
    b = _snapshot_with({"sec": _sealed(ring, snapshot_id="B", payload=b"other")}, "B")
    forged = _snapshot_with({"sec": a.sections["sec"]}, "B")
    loaded = st.loads(st.dumps(forged))
    assert unpack_section(b.sections["sec"], snapshot_id="B", plugin_id="p", keyring=ring) == b"other"
    with pytest.raises(st.DecryptionFailed, match="moved"):
        unpack_section(loaded.sections["sec"], snapshot_id="B", plugin_id="p", keyring=ring)


def test_renamed_section():
    """A section renamed (name and key changed) fails to decrypt."""
    ring = st.Keyring.generate("k1")
    sec = _sealed(ring, name="sec")
    renamed = msgspec.structs.replace(sec, name="other")
    with pytest.raises(st.DecryptionFailed):
        unpack_section(renamed, snapshot_id="s1", plugin_id="p", keyring=ring)


def test_schema_version_bound():
    """Changing a sealed section's schema version fails to decrypt."""
    ring = st.Keyring.generate("k1")
    sec = msgspec.structs.replace(_sealed(ring), schema_version=2)
    with pytest.raises(st.DecryptionFailed):
        unpack_section(sec, snapshot_id="s1", plugin_id="p", keyring=ring)


def test_chunked_sections(monkeypatch):
    """Sections above the chunk size are sealed as chunks; dropping or swapping a chunk is detected."""
    monkeypatch.setattr(crypto, "CHUNK_SIZE", 100)
    ring = st.Keyring.generate("k1")
    plain = bytes(range(256)) * 2
    data, info = crypto.encrypt_data(plain, WHERE, keyring=ring)
    assert len(data) == len(plain) + 6 * crypto.TAG_BYTES
    assert crypto.decrypt_data(data, info, WHERE, keyring=ring) == plain
    sealed = 100 + crypto.TAG_BYTES
    with pytest.raises(st.DecryptionFailed):
        crypto.decrypt_data(data[: sealed * 2], info, WHERE, keyring=ring)  # truncated at a chunk boundary
    swapped = data[sealed : 2 * sealed] + data[:sealed] + data[2 * sealed :]
    with pytest.raises(st.DecryptionFailed):
        crypto.decrypt_data(swapped, info, WHERE, keyring=ring)


def test_nonces_never_repeat():
    """Each encryption under one key draws a fresh nonce, and chunk nonces within a section differ."""
    ring = st.Keyring.generate("k1")
    nonces = {crypto.encrypt_data(b"x", WHERE, keyring=ring)[1].nonce for _ in range(2000)}
    assert len(nonces) == 2000
    base = b"\x01" * 12
    assert len({crypto._chunk_nonce(base, i) for i in range(1000)}) == 1000


def test_reencrypt_rotates_keys():
    """reencrypt moves every encrypted section to the new key; the old key is no longer needed."""
    ring = st.Keyring.generate("old")
    snap = _snapshot_with({"sec": _sealed(ring), "plain": st.StateSection("plain", 1, b"p")})
    ring.add("new", b"n" * 32)
    rotated = st.reencrypt(snap, ring, "new")
    assert rotated.sections["sec"].encryption.key_id == "new"
    assert rotated.sections["sec"].encryption.nonce != snap.sections["sec"].encryption.nonce
    assert rotated.sections["plain"] == snap.sections["plain"]
    only_new = st.Keyring({"new": b"n" * 32})
    loaded = st.loads(st.dumps(rotated))
    assert unpack_section(loaded.sections["sec"], snapshot_id="s1", plugin_id="p", keyring=only_new) == b"secret" * 50
    with pytest.raises(st.MissingKey):
        st.reencrypt(snap, ring, "absent")


def test_keyring_file_and_env(tmp_path, monkeypatch):
    """A keyring survives to_file/from_file (mode 0600) and loads from the environment."""
    ring = st.Keyring.generate("a")
    ring.add("b", b"b" * 32)
    path = tmp_path / "keys.json"
    ring.to_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert st.Keyring.from_file(path) == ring
    monkeypatch.setenv("STATETRANSFER_KEYRING", str(path))
    assert st.Keyring.from_env() == ring
    inline = "x:" + base64.b64encode(b"x" * 32).decode() + ",y:" + base64.b64encode(b"y" * 32).decode()
    monkeypatch.setenv("STATETRANSFER_KEYRING", inline)
    env_ring = st.Keyring.from_env()
    assert list(env_ring) == ["x", "y"] and env_ring.default_key_id == "x"
    assert "x" * 10 not in repr(env_ring)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("[]", id="not-object"),
        pytest.param('{"format": "statetransfer-keyring/1", "keys": {"a": "!!"}}', id="bad-base64"),
        pytest.param('{"format": "statetransfer-keyring/1", "keys": {"a": "YQ=="}}', id="short-key"),
        pytest.param('{"format": "statetransfer-keyring/1", "keys": {}, "default": "zz"}', id="bad-default"),
    ],
)
def test_bad_keyring_files(text):
    """A malformed keyring is a StateTransferError, never a JSON or base64 error."""
    with pytest.raises(st.StateTransferError):
        st.Keyring.from_json(text)


def test_missing_env():
    """An unset environment variable is a clear error."""
    with pytest.raises(st.StateTransferError, match="NOPE_KEYRING"):
        st.Keyring.from_env("NOPE_KEYRING")


@pytest.mark.parametrize("kdf", ["scrypt", "argon2id"])
def test_passphrase_kdf(kdf):
    """The same passphrase and salt derive the same key; another salt or passphrase do not."""
    salt = b"s" * 16
    a = st.Keyring.from_passphrase("k", "correct horse", salt=salt, kdf=kdf)
    assert a == st.Keyring.from_passphrase("k", "correct horse", salt=salt, kdf=kdf)
    assert a != st.Keyring.from_passphrase("k", "correct horse", salt=b"t" * 16, kdf=kdf)
    assert a != st.Keyring.from_passphrase("k", "wrong horse", salt=salt, kdf=kdf)
    with pytest.raises(st.StateTransferError, match="salt"):
        st.Keyring.from_passphrase("k", "x", salt=b"short", kdf=kdf)
