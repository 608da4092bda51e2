"""Errors, exit codes and the small things a new user trips on (issue 14 items 5, 6, 9, 12)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from click.testing import CliRunner

import statetransfer as st
from statetransfer._cli import UsageProblem, exit_code, main
from statetransfer.errors import (
    InvalidArgument,
    InvalidStoreURL,
    MissingDependency,
    PluginError,
    StoreNotFound,
    WriteFailed,
)

from .test_cli import keyring_file, run, snap_file

__all__ = ["keyring_file", "snap_file"]  # fixtures used here

NO_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--keyring", "MALFORMED", "rekey", "FILE", "--to", "k1"], id="malformed-keyring"),
        pytest.param(["--keyring", "SHORTKEY", "rekey", "FILE", "--to", "k1"], id="keyring-short-key"),
        pytest.param(["demo", "--store", "memory://"], id="demo-memory-store"),
        pytest.param(["demo", "--store", "ftp://host/x"], id="demo-bad-url"),
    ],
)
def test_no_tracebacks(tmp_path, snap_file, args):
    """Each of these is one line on stderr and exit 2; the demo refuses its store before running any step."""
    (tmp_path / "malformed.json").write_text('{"format": "statetransfer-keyring/1", "keys": [1')
    (tmp_path / "short.json").write_text('{"format": "statetransfer-keyring/1", "keys": {"k1": "AAAA"}}')
    subs = {
        "FILE": str(snap_file[0]),
        "MALFORMED": str(tmp_path / "malformed.json"),
        "SHORTKEY": str(tmp_path / "short.json"),
    }
    code, out, err = run(*[subs.get(a, a) for a in args])
    assert code == 2, out + err
    assert one_line(err), err
    assert "✓" not in out and "load v1" not in out


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--keyring", "/nonexistent/keys.json", "rekey", "FILE", "--to", "k1"], {}, id="missing-keyring"),
        pytest.param(["list", ""], {}, id="empty-url"),
        pytest.param(["list", "s3://"], NO_AWS_CREDENTIALS, id="s3-no-bucket"),
        pytest.param(["list", "file://host/x"], {}, id="file-url-with-host"),
        pytest.param(["list", "ftp://host/x"], {}, id="unknown-scheme"),
        pytest.param(["keygen", "--key-id", ""], {}, id="empty-key-id"),
        pytest.param(["keygen", "--key-id", "my key"], {}, id="key-id-with-space"),
        pytest.param(["keygen", "--key-id", "a/b"], {}, id="key-id-with-slash"),
        pytest.param(["inspect", "/nonexistent/x.stsnap"], {}, id="missing-snapshot-file"),
        pytest.param(["validate", "FILE", "--plugin", "no_such_module:Cls"], {}, id="plugin-does-not-import"),
        pytest.param(["list"], {}, id="missing-argument"),
        pytest.param(["list", "x", "--no-such-option"], {}, id="unknown-option"),
    ],
)
def test_usage_errors_exit_2(snap_file, args, env):
    """Usage errors (arguments, and files, keyrings, URLs, plugins named that cannot be used) exit 2."""
    code, out, err = run(*[str(snap_file[0]) if a == "FILE" else a for a in args], env=env)
    assert code == 2, out + err
    assert "Traceback" not in err and err.strip()


def test_operational_errors_exit_1(tmp_path, snap_file):
    """Failures of an operation (damaged data, a file that cannot be written) exit 1, in one line."""
    code, _, err = run("keygen", "--out", "/missing/dir/k.json")
    assert code == 1 and "cannot write '/missing/dir/k.json'" in err and one_line(err)
    damaged = tmp_path / "damaged.stsnap"
    data = bytearray(snap_file[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    code, _, err = run("inspect", str(damaged))
    assert code == 1 and one_line(err)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(UsageProblem("x"), 2, id="usage-problem"),
        pytest.param(PluginError("x"), 2, id="plugin-error"),
        pytest.param(StoreNotFound("x", location="/x"), 2, id="store-not-found"),
        pytest.param(InvalidStoreURL("x"), 2, id="invalid-store-url"),
        pytest.param(MissingDependency("x"), 2, id="missing-dependency"),
        pytest.param(InvalidArgument("x"), 2, id="invalid-argument"),
        pytest.param(WriteFailed("x", path="/x"), 1, id="write-failed"),
        pytest.param(st.StoreError("x"), 1, id="store-error"),
        pytest.param(st.SnapshotNotFound("x"), 1, id="snapshot-not-found"),
        pytest.param(st.ChecksumMismatch("x"), 1, id="checksum-mismatch"),
        pytest.param(st.DecryptionFailed("x"), 1, id="decryption-failed"),
        pytest.param(OSError(5, "I/O error"), 1, id="os-error"),
    ],
)
def test_exit_code_follows_the_error_type(error, code):
    """The exit code is decided by the error's type alone, whatever its message says."""
    assert exit_code(error) == code


def test_exit_code_ignores_the_message():
    """A message that reads like a usage error does not change the code of an operational error type."""
    assert exit_code(st.StoreError("unknown store scheme 'x'; pip install y")) == 1
    assert exit_code(UsageProblem("checksum mismatch")) == 2


def test_global_options_after_the_subcommand(snap_file, keyring_file):
    """--keyring and --debug work after the subcommand as well as before it."""
    path, _ = snap_file
    keys, _ = keyring_file
    code, out, err = run("validate", str(path), "--plugin", "tests.plugins:Cache", "--keyring", str(keys), "--json")
    assert code == 0, err
    assert json.loads(out)["is_valid"]
    result = CliRunner().invoke(main, ["inspect", "/nonexistent/x.stsnap", "--debug"])
    assert isinstance(result.exception, UsageProblem)


def test_inspect_two_files_is_a_usage_error(snap_file, tmp_path):
    """`inspect a b` with two files says to name one snapshot (or use diff), exit 2."""
    other = tmp_path / "b.stsnap"
    other.write_bytes(snap_file[0].read_bytes())
    code, _, err = run("inspect", str(snap_file[0]), str(other))
    assert code == 2 and "is a file" in err and "diff" in err and one_line(err)


def test_plugin_given_as_a_file_path(tmp_path, snap_file, monkeypatch):
    """`--plugin path/file.py:Cls` is a clear one-line usage error or works; never a TypeError."""
    (tmp_path / "myplugin.py").write_text("import statetransfer as st\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run("validate", str(snap_file[0]), "--plugin", "./myplugin.py:Cls")
    assert code == 2 and one_line(err)
    assert "TypeError" not in err


def test_truncation_message_shows_real_lengths(tmp_path, snap_file):
    """A truncated file's message names its real size, never a length read from garbage."""
    data = snap_file[0].read_bytes()
    cut = tmp_path / "cut.stsnap"
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run("inspect", str(cut))
    assert code == 1 and "truncated" in err and f"{len(data) // 2} bytes" in err
    assert all(int(n) <= len(data) for n in re.findall(r"\d+", err))


def test_pull_does_not_overwrite(tmp_path, snap_file):
    """pull -o refuses an existing file (exit 2, file unchanged) unless --force."""
    url = f"file://{tmp_path}/store"
    assert run("push", str(snap_file[0]), url)[0] == 0
    target = tmp_path / "mine.txt"
    target.write_text("precious")
    code, _, err = run("pull", url, snap_file[1].id, "-o", str(target))
    assert code == 2 and "--force" in err and target.read_text() == "precious"
    code, _, _ = run("pull", url, snap_file[1].id, "-o", str(target), "--force")
    assert code == 0 and st.load(target) == snap_file[1]


def test_json_scores_are_rounded(tmp_path):
    """validate --json prints the score without float noise (0.608, not 0.6080000000000001)."""
    from .plugins import Cache, CacheV1

    v1 = CacheV1()
    v1.entries = {"x": 1}
    snap = asyncio.run(v1.export_state())
    path = tmp_path / "v1.stsnap"
    st.dump(snap, path)
    code, out, _ = run("validate", str(path), "--plugin", "tests.plugins:Cache", "--json")
    raw = re.search(r'"compatibility_score":([0-9.e-]+)', out)
    assert code == 0 and raw is not None
    assert raw.group(1) == repr(round(float(raw.group(1)), 6)) and len(raw.group(1)) <= 8
    exact = asyncio.run(Cache().validate_state(snap)).compatibility_score
    assert float(raw.group(1)) == pytest.approx(exact)


def test_expiry_is_shown_as_a_date(tmp_path):
    """An expired snapshot's validation error names the date, not raw Unix seconds."""
    from .plugins import CacheV1

    plugin = CacheV1()
    plugin.entries = {"x": 1}
    snap = asyncio.run(plugin.export_state(expires_at=1_700_000_000))
    path = tmp_path / "old.stsnap"
    st.dump(snap, path)
    code, out, _ = run("validate", str(path), "--plugin", "tests.plugins:CacheV1")
    assert code == 1 and "2023-11-14 22:13:20 UTC" in out and "1700000000" not in out
