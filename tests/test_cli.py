"""The command line through its real entry point: output, --json shapes and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

import statetransfer as st
from statetransfer._cli import main

from .conftest import seal
from .plugins import Cache, Config

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def keyring_file(tmp_path):
    ring = st.Keyring.generate("k1")
    path = tmp_path / "keys.json"
    ring.to_file(path)
    return path, ring


async def export(ring, **entries):
    plugin = Cache(keyring=ring)
    plugin.config = Config(ttl=7)
    plugin.entries = {k: list(v) for k, v in entries.items()}
    plugin.secrets = {"token": "s3cret"}
    return await plugin.export_state(tags=["t1"])


@pytest.fixture
async def snap_file(tmp_path, keyring_file):
    _, ring = keyring_file
    snap = await export(ring, a=[1, 2], b=[3])
    path = tmp_path / "a.stsnap"
    st.dump(snap, path)
    return path, snap


def test_inspect_text_and_json(snap_file):
    """inspect shows header, metadata and the section table; --json has the documented shape."""
    path, snap = snap_file
    code, out, _ = run("inspect", str(path))
    assert code == 0
    assert snap.id in out and "cache 2.0.0" in out and "entries" in out and "AES-256-GCM (k1)" in out
    code, out, _ = run("inspect", str(path), "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["id"] == snap.id and doc["checksum_ok"] is True and doc["signature"] == "unsigned"
    assert doc["metadata"]["tags"] == ["t1"] and doc["metadata"]["reason"] == "export"
    secs = {s["name"]: s for s in doc["sections"]}
    assert secs["secrets"]["encryption"] == {"algorithm": "AES-256-GCM", "key_id": "k1"}
    assert secs["config"]["codec"] == "json" and secs["config"]["stored_size"] == len(snap.sections["config"].data)
    assert doc["size"] == path.stat().st_size


def test_inspect_signature_verified(snap_file, tmp_path):
    """With --verify-key-file a signed snapshot reports 'verified'; a wrong key fails with exit 1."""
    path, snap = snap_file
    key = b"k" * 32
    st.dump(st.sign(snap, key), path)
    (tmp_path / "hmac.key").write_bytes(key)
    (tmp_path / "wrong.key").write_bytes(b"w" * 32)
    code, out, _ = run("inspect", str(path), "--verify-key-file", str(tmp_path / "hmac.key"), "--json")
    assert code == 0 and json.loads(out)["signature"] == "verified"
    code, _, err = run("inspect", str(path), "--verify-key-file", str(tmp_path / "wrong.key"))
    assert code == 1 and "bad signature" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["inspect", "/nonexistent/x.stsnap"], 2, "no such snapshot file", id="missing-file"),
        pytest.param(["list", "ftp://host/x"], 2, "unknown store scheme 'ftp'", id="unknown-scheme"),
        pytest.param(
            ["validate", "FILE", "--plugin", "no_such_mod:Cls"], 2, "cannot import 'no_such_mod'", id="bad-plugin"
        ),
        pytest.param(["inspect", "GARBAGE"], 1, "not a readable snapshot", id="not-a-snapshot"),
        pytest.param(["rekey", "FILE", "--to", "k2"], 2, "needs keys", id="missing-keyring"),
        pytest.param(["list"], 2, "Missing argument", id="usage"),
    ],
)
def test_bad_input_is_one_line(snap_file, tmp_path, args, code, message):
    """Bad input gives one line on stderr (no traceback) and exit 1 or 2 as the contract says."""
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"hello, not a snapshot" * 10)
    args = [str(snap_file[0]) if a == "FILE" else str(garbage) if a == "GARBAGE" else a for a in args]
    result = CliRunner(env={"STATETRANSFER_KEYRING": ""}).invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 1 or "Missing" not in message:
        assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path):
    """--debug lets the exception through (a traceback for developers)."""
    result = CliRunner().invoke(main, ["--debug", "inspect", "/nonexistent/x.stsnap"])
    assert result.exit_code == 1 and isinstance(result.exception, st.StateTransferError)


def test_validate(snap_file, keyring_file, tmp_path):
    """validate prints verdicts with migration paths; exit 1 when invalid (another plugin, missing key)."""
    path, snap = snap_file
    keys, _ = keyring_file
    code, out, _ = run("--keyring", str(keys), "validate", str(path), "--plugin", "tests.plugins:Cache", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["is_valid"] and doc["compatibility_score"] == 1.0
    assert doc["sections"]["entries"]["verdict"] == "as_is"
    code, out, _ = run("validate", str(path), "--plugin", "tests.plugins:Cache", "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["sections"]["secrets"]["is_valid"]
    assert "'k1'" in doc["sections"]["secrets"]["errors"][0]
    old = tmp_path / "other.stsnap"
    other = seal(msgspec.structs.replace(snap, plugin_id="other"))
    st.dump(other, old)
    code, out, _ = run("--keyring", str(keys), "validate", str(old), "--plugin", "tests.plugins:Cache")
    assert code == 1 and "INVALID" in out and "'other'" in out


def test_validate_shows_migration_path(tmp_path):
    """An older snapshot validates with its migration path shown."""
    import asyncio

    from .plugins import CacheNoSecrets, CacheV1

    v1 = CacheV1()
    v1.entries = {"x": 1}
    path = tmp_path / "v1.stsnap"
    st.dump(asyncio.run(v1.export_state()), path)
    code, out, _ = run("validate", str(path), "--plugin", "tests.plugins:CacheNoSecrets")
    assert code == 0 and "after_migration" in out and "1 -> 2" in out
    assert CacheNoSecrets.schema_version == 2


def test_diff(snap_file, keyring_file, tmp_path):
    """diff shows metadata changes and key-level changes of decoded sections, also encrypted ones with a keyring."""
    import asyncio

    path_a, _ = snap_file
    keys, ring = keyring_file
    b = asyncio.run(export(ring, a=[1, 9], c=[4]))
    path_b = tmp_path / "b.stsnap"
    st.dump(b, path_b)
    code, out, _ = run("--keyring", str(keys), "diff", str(path_a), str(path_b), "--json")
    doc = json.loads(out)
    assert code == 0
    changed = {c["name"]: c for c in doc["sections"]["changed"]}
    ops = {(c["op"], c["path"]) for c in changed["entries"]["changes"]}
    assert ops == {("changed", "['a'][1]"), ("removed", "['b']"), ("added", "['c']")}
    assert "secrets" in doc["sections"]["unchanged"] and "config" in doc["sections"]["unchanged"]
    code, out, _ = run("diff", str(path_a), str(path_b))
    assert code == 0 and "~ section entries" in out and "['a'][1]: 2 -> 9" in out


def test_store_commands(snap_file, tmp_path):
    """push, list, pull, prune and verify against a real store; --json outputs parse."""
    path, snap = snap_file
    url = f"file://{tmp_path}/store"
    code, out, _ = run("push", str(path), url, "--json")
    assert code == 0 and json.loads(out)["id"] == snap.id
    code, out, _ = run("list", url, "--json")
    listed = json.loads(out)
    assert code == 0 and [i["id"] for i in listed] == [snap.id] and listed[0]["tags"] == ["t1"]
    assert set(listed[0]) >= {"id", "plugin_id", "plugin_version", "schema_version", "timestamp", "reason", "size"}
    code, out, _ = run("list", url, "--plugin", "nope", "--json")
    assert json.loads(out) == []
    code, out, _ = run("list", url)
    assert code == 0 and snap.id[:8] in out and snap.id not in out and "1 snapshot(s)" in out
    pulled = tmp_path / "pulled.stsnap"
    code, _, _ = run("pull", url, snap.id, "-o", str(pulled))
    assert code == 0 and st.load(pulled) == snap
    code, out, _ = run("inspect", url, snap.id, "--json")
    assert code == 0 and json.loads(out)["id"] == snap.id
    (tmp_path / "hmac.key").write_bytes(b"k" * 32)
    code, _, err = run("inspect", url, snap.id, "--verify-key-file", str(tmp_path / "hmac.key"))
    assert code == 1 and "not signed" in err
    code, out, _ = run("verify", url, "--json")
    assert code == 0 and json.loads(out) == {
        "ok": True,
        "checked": 1,
        "problems": [],
        "blobs_checked": 3,
        "unreferenced_blobs": 0,
        "repaired": [],
        "strays": [],
        "chains_rebuilt": 0,
        "chains_skipped": 0,
    }
    code, out, _ = run("prune", url, "--keep-last", "0", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["removed"] == [snap.id] and json.loads(out)["dry_run"]
    blob = next((tmp_path / "store" / "blobs").rglob("*"))
    while blob.is_dir():
        blob = next(blob.iterdir())
    blob.write_bytes(b"damaged")
    code, out, _ = run("verify", url)
    assert code == 1 and "problem" in out
    code, out, _ = run("prune", url, "--keep-last", "0", "--json")
    assert code == 0 and json.loads(out)["removed"] == [snap.id]
    code, _, err = run("pull", url, "missing-id")
    assert code == 1 and "no snapshot 'missing-id'" in err


def test_keygen_and_rekey(snap_file, keyring_file, tmp_path):
    """keygen adds keys to a 0600 keyring file; rekey moves sections to the new key."""
    path, _ = snap_file
    keys, _ = keyring_file
    code, out, _ = run("keygen", "--key-id", "k2", "--out", str(keys))
    assert code == 0 and "k2" in out
    ring = st.Keyring.from_file(keys)
    assert sorted(ring) == ["k1", "k2"] and ring.default_key_id == "k2"
    assert os.stat(keys).st_mode & 0o777 == 0o600
    code, _, err = run("keygen", "--key-id", "k2", "--out", str(keys))
    assert code == 2 and "already has a key 'k2'" in err
    code, out, _ = run("--keyring", str(keys), "rekey", str(path), "--to", "k2")
    assert code == 0 and "re-encrypted 1 section" in out
    code, out, _ = run("inspect", str(path), "--json")
    assert {s["name"]: s["encryption"] for s in json.loads(out)["sections"]}["secrets"]["key_id"] == "k2"
    code, out, _ = run("keygen")
    assert code == 0 and json.loads(out)["format"] == "statetransfer-keyring/1"


def test_keyring_from_environment(snap_file, keyring_file):
    """Keys come from STATETRANSFER_KEYRING when --keyring is not given."""
    path, _ = snap_file
    keys, _ = keyring_file
    code, _, _ = run("validate", str(path), "--plugin", "tests.plugins:Cache", env={"STATETRANSFER_KEYRING": str(keys)})
    assert code == 0


def test_python_dash_m_and_demo(tmp_path):
    """`python -m statetransfer` works, and `statetransfer demo` exits 0 with every step checked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    help_out = subprocess.run([sys.executable, "-m", "statetransfer", "--help"], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
    assert help_out.returncode == 0 and "demo" in help_out.stdout and "rekey" in help_out.stdout
    proc = subprocess.run([sys.executable, "-m", "statetransfer", "demo", "--store", f"sqlite://{tmp_path}/d.db"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and "0 failed" in proc.stdout
    assert proc.stdout.count("✓") == 6
    assert re.search(r"in [\d.]+ ms \(export [\d.]+ ms, import [\d.]+ ms\)", proc.stdout)  # timings carry units
    assert proc.stderr == ""  # piped: no progress output


def test_diff_counts_every_change_and_says_what_it_left_out(tmp_path):
    """diff counts changes per operation, lists the first --limit in key order, and says how many it omitted."""
    import asyncio

    from .plugins import CacheV1

    a, b = CacheV1(), CacheV1()
    a.entries = {f"k{i:03d}": 1 for i in range(300)}
    b.entries = {f"k{i:03d}": 2 if i < 100 else 1 for i in range(250)} | {f"n{i:03d}": 1 for i in range(150)}
    paths = []
    for name, plugin in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.stsnap"))
        st.dump(asyncio.run(plugin.export_state()), paths[-1])
    code, out, _ = run("diff", *paths, "--limit", "10", "--json")
    entry = next(c for c in json.loads(out)["sections"]["changed"] if c["name"] == "entries")
    assert code == 0
    assert entry["counts"] == {"added": 150, "removed": 50, "changed": 100} and entry["omitted"] == 290
    assert [c["path"] for c in entry["changes"]] == [f"['k{i:03d}']" for i in range(10)]
    code, out, _ = run("diff", *paths, "--limit", "0", "--json")
    entry = next(c for c in json.loads(out)["sections"]["changed"] if c["name"] == "entries")
    assert len(entry["changes"]) == 300 and entry["omitted"] == 0
    code, out, _ = run("diff", *paths, "--limit", "5")
    assert "150 added, 50 removed, 100 changed" in out and "295 more change(s) not shown" in out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outputs = {
        subprocess.run([sys.executable, "-m", "statetransfer", "diff", *paths, "--json"], capture_output=True,
                       text=True, env={**env, "PYTHONHASHSEED": seed}, timeout=60, check=True).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(outputs) == 1
