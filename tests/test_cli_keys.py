"""Key files, signing and key rotation on the command line (issue 14 items 3 and 4)."""

from __future__ import annotations

import json
import os

import pytest

import statetransfer as st

from .test_cli import keyring_file, run, snap_file

__all__ = ["keyring_file", "snap_file"]  # fixtures used here


def signature_of(path) -> str:
    code, out, _ = run("inspect", str(path), "--json")
    assert code == 0
    return json.loads(out)["signature"]


def test_keygen_sign_and_verify(tmp_path, snap_file):
    """keygen --signing makes a 0600 key file; sign uses it; inspect --verify-key-file and st.load accept it."""
    path, snap = snap_file
    key = tmp_path / "signing.key"
    code, out, _ = run("keygen", "--signing", "--out", str(key))
    assert code == 0 and "signing key" in out
    assert os.stat(key).st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    code, _, err = run("keygen", "--signing", "--out", str(key))
    assert code == 2 and "--force" in err
    code, out, _ = run("sign", str(path), "--key-file", str(key))
    assert code == 0 and snap.id in out
    assert st.load(path, verify_key=key.read_bytes()).id == snap.id
    code, out, _ = run("inspect", str(path), "--verify-key-file", str(key), "--json")
    assert code == 0 and json.loads(out)["signature"] == "verified"
    other = tmp_path / "other.key"
    assert run("keygen", "--signing", "--out", str(other))[0] == 0
    code, _, err = run("inspect", str(path), "--verify-key-file", str(other))
    assert code == 1 and "bad signature" in err


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"k" * 32 + b"\n", id="trailing-newline"),
        pytest.param(b"QUFB" * 12, id="looks-like-base64"),
        pytest.param(bytes(range(40)), id="binary"),
    ],
)
def test_key_file_is_the_key_byte_for_byte(tmp_path, snap_file, key):
    """A key file holds the key exactly: any key st.loads(verify_key=) accepts verifies through the file."""
    path, snap = snap_file
    st.dump(st.sign(snap, key), path)
    assert st.load(path, verify_key=key).id == snap.id
    (tmp_path / "k.key").write_bytes(key)
    code, out, err = run("inspect", str(path), "--verify-key-file", str(tmp_path / "k.key"), "--json")
    assert code == 0, err
    assert json.loads(out)["signature"] == "verified"


def test_short_key_file_is_a_usage_error(tmp_path, snap_file):
    """A key file too short to be a signing key is refused with how to make one (exit 2)."""
    (tmp_path / "short.key").write_bytes(b"tiny")
    code, _, err = run("sign", str(snap_file[0]), "--key-file", str(tmp_path / "short.key"))
    assert code == 2 and "keygen --signing" in err


def test_rekey_never_drops_a_signature_silently(tmp_path, snap_file, keyring_file):
    """rekey on a signed snapshot refuses without a decision; --sign-key-file re-signs; --drop-signature says so."""
    path, snap = snap_file
    keys, _ = keyring_file
    assert run("keygen", "--key-id", "k2", "--out", str(keys))[0] == 0
    key = tmp_path / "signing.key"
    assert run("keygen", "--signing", "--out", str(key))[0] == 0
    assert run("sign", str(path), "--key-file", str(key))[0] == 0
    before = path.read_bytes()
    code, _, err = run("--keyring", str(keys), "rekey", str(path), "--to", "k2")
    assert code == 2 and "signed" in err and "--sign-key-file" in err
    assert path.read_bytes() == before
    code, out, _ = run("--keyring", str(keys), "rekey", str(path), "--to", "k2", "--sign-key-file", str(key))
    assert code == 0 and "re-encrypted 1 section" in out and "(signed)" in out
    assert st.load(path, verify_key=key.read_bytes()).sections["secrets"].encryption.key_id == "k2"
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"w" * 32)
    code, _, err = run("--keyring", str(keys), "rekey", str(path), "--to", "k1", "--sign-key-file", str(wrong))
    assert code == 1 and "bad signature" in err
    out_file = tmp_path / "unsigned.stsnap"
    code, out, _ = run(
        "--keyring", str(keys), "rekey", str(path), "--to", "k1", "--drop-signature", "-o", str(out_file)
    )
    assert code == 0 and "signature dropped" in out
    assert signature_of(out_file) == "unsigned" and signature_of(path) == "signed (not verified)"


def test_rekey_with_nothing_encrypted_keeps_the_snapshot(tmp_path, keyring_file):
    """A signed snapshot with no encrypted section is left byte for byte as it was, signature included."""
    from statetransfer.testing import make_snapshot

    keys, _ = keyring_file
    path = tmp_path / "plain.stsnap"
    st.dump(st.sign(make_snapshot("plain-1"), b"s" * 32), path)
    before = path.read_bytes()
    code, out, _ = run("--keyring", str(keys), "rekey", str(path), "--to", "k1")
    assert code == 0 and "nothing to re-encrypt" in out
    assert path.read_bytes() == before
