"""The command line and stores: reading never creates, short ids, S3 credentials, progress (items 1, 7, 8, 10, 13)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import statetransfer as st
from statetransfer.testing import make_snapshot

from .test_cli import keyring_file, run, snap_file
from .test_stores import s3_endpoint

__all__ = ["keyring_file", "s3_endpoint", "snap_file"]  # fixtures used here

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store_url(tmp_path, snap_file):
    """A file store holding the one snapshot of ``snap_file``."""
    url = f"file://{tmp_path}/store"
    code, _, err = run("push", str(snap_file[0]), url)
    assert code == 0, err
    return url


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list", "{url}"], id="list"),
        pytest.param(["verify", "{url}"], id="verify"),
        pytest.param(["prune", "{url}", "--keep-last", "1"], id="prune"),
        pytest.param(["inspect", "{url}", "some-id"], id="inspect"),
        pytest.param(["pull", "{url}", "some-id", "-o", "{tmp}/out.stsnap"], id="pull"),
        pytest.param(["diff", "--store", "{url}", "a", "b"], id="diff"),
    ],
)
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file://{tmp}/tpyo", id="file"),
        pytest.param("sqlite://{tmp}/nonexistent-dir/x.db", id="sqlite"),
        pytest.param("{tmp}/empty-dir", id="existing-empty-directory"),
    ],
)
def test_reading_commands_never_create_a_store(tmp_path, args, url):
    """Reading commands on a location that holds no store fail with "no store" (exit 2) and create nothing."""
    (tmp_path / "empty-dir").mkdir()
    before = tree(tmp_path)
    url = url.format(tmp=tmp_path)
    code, out, err = run(*[a.format(url=url, tmp=tmp_path) for a in args])
    assert code == 2, out + err
    assert "no store" in err.lower() and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ["list", "verify", "push"])
def test_a_directory_that_is_not_a_store_is_left_alone(tmp_path, snap_file, command):
    """A directory holding other files is never turned into a store, by reading or writing commands (exit 1)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    args = [str(snap_file[0]), str(tmp_path / "docs")] if command == "push" else [str(tmp_path / "docs")]
    code, out, err = run(command, *args)
    assert code == 1 and "not a statetransfer store" in err and "pushed" not in out
    assert tree(tmp_path / "docs") == ["notes.txt"]


def test_file_url_with_one_slash_creates_nothing(tmp_path, monkeypatch):
    """`list file:/x` (one slash) is a malformed URL (exit 2): no ./file:/x directory appears."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run("list", "file:/x")
    assert code == 2 and "file:///" in err
    assert list(tmp_path.iterdir()) == []


def test_push_creates_the_store(tmp_path, snap_file):
    """A writing command creates the store where there is none; reading it afterwards works."""
    url = f"sqlite://{tmp_path}/backups.db"
    code, out, _ = run("push", str(snap_file[0]), url)
    assert code == 0 and "pushed" in out
    code, out, _ = run("list", url, "--json")
    assert code == 0 and [i["id"] for i in json.loads(out)] == [snap_file[1].id]


@pytest.mark.parametrize(
    "args", [["push", "FILE", "memory://x"], ["list", "memory://x"], ["demo", "--store", "memory://"]]
)
def test_memory_store_is_refused(snap_file, args):
    """memory:// cannot outlive the command: refused up front (exit 2), never a success that loses the data."""
    args = [str(snap_file[0]) if a == "FILE" else a for a in args]
    code, out, err = run(*args)
    assert code == 2
    assert "memory://" in err and "one process" in err
    assert "pushed" not in out and "✓" not in out


def _store_with(tmp_path, *ids):
    url = f"file://{tmp_path}/many"
    for i, snapshot_id in enumerate(ids):
        path = tmp_path / f"{i}.stsnap"
        st.dump(make_snapshot(snapshot_id, "inventory-service", tags=["nightly", "eu-west"]), path)
        code, _, err = run("push", str(path), url)
        assert code == 0, err
    return url


def test_list_fits_80_columns_and_ids_are_short(tmp_path):
    """Piped, list prints plain columns under 80 characters with short ids; --wide shows the full ids."""
    ids = [
        "3f2c1a7e-0b6d-4c2e-9a51-7d8e9f0a1b2c",
        "3f2c1a7e-9999-4c2e-9a51-7d8e9f0a1b2c",
        "a9b8c7d6-1111-2222-3333-444455556666",
    ]
    url = _store_with(tmp_path, *ids)
    code, out, _ = run("list", url)
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert not set("┃│━─┏") & set(out)
    assert "3f2c1a7e-0" in out and "3f2c1a7e-9" in out and ids[0] not in out  # unique prefixes, shortest common length
    code, out, _ = run("list", url, "--wide")
    assert code == 0 and all(i in out for i in ids) and "nightly,eu-west" in out


def test_unique_prefixes_are_accepted_as_ids(tmp_path):
    """pull and inspect take a unique prefix of an id; an ambiguous one fails naming the matches."""
    ids = ["3f2c1a7e-0b6d", "3f2c1a7e-9999", "a9b8c7d6-1111"]
    url = _store_with(tmp_path, *ids)
    code, out, _ = run("inspect", url, "a9b8", "--json")
    assert code == 0 and json.loads(out)["id"] == "a9b8c7d6-1111"
    target = tmp_path / "pulled.stsnap"
    code, out, _ = run("pull", url, "3f2c1a7e-0", "-o", str(target))
    assert code == 0 and st.load(target).id == "3f2c1a7e-0b6d"
    code, _, err = run("pull", url, "3f2c", "-o", str(tmp_path / "x.stsnap"))
    assert code == 1 and "ambiguous" in err and "3f2c1a7e-0b6d" in err and "3f2c1a7e-9999" in err
    code, _, err = run("pull", url, "zzz", "-o", str(tmp_path / "x.stsnap"))
    assert code == 1 and "no snapshot 'zzz'" in err


def test_s3_without_credentials_says_how_to_give_them(snap_file):
    """With no AWS credentials, an s3:// command says so and how to fix it (exit 2), before any request is sent."""
    env = {name: "" for name in os.environ if name.startswith("AWS_")}  # read now: fixtures may have set some
    env |= dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"), "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    url = "s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=us-east-1"
    for args in (["list", url], ["push", str(snap_file[0]), url]):
        code, out, err = run(*args, env=env)
        assert code == 2, err
        assert "no S3 credentials found" in err and "AWS_ACCESS_KEY_ID" in err and "AWS_SECRET_ACCESS_KEY" in err
        assert "169.254" not in err and out == ""


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_s3_store_through_the_command_line(s3_endpoint, snap_file):
    """With credentials (a local S3 server), reading an empty prefix says "no store"; push creates it; list shows it."""
    url = f"s3://snapshots/cli-{snap_file[1].id[:8]}?endpoint={s3_endpoint}&region=us-east-1"
    code, _, err = run("list", url)
    assert code == 2 and "no store" in err.lower()
    code, out, err = run("push", str(snap_file[0]), url)
    assert code == 0, err
    code, out, _ = run("list", url, "--json")
    assert code == 0 and [i["id"] for i in json.loads(out)] == [snap_file[1].id]


def _on_a_terminal(*args: str, stream: str = "stderr", timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI with ``stream`` on an 80-column pseudo-terminal; returns (exit code, other stream, terminal text)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "80", "TERM": "xterm"}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: follower}
    proc = subprocess.Popen([sys.executable, "-m", "statetransfer", *args], env=env, **streams)
    os.close(follower)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    other = proc.communicate(timeout=timeout)[0 if stream == "stderr" else 1].decode()
    os.close(leader)
    return proc.returncode, other, ANSI.sub("", seen.decode(errors="replace"))


def test_progress_on_a_terminal_only(tmp_path, snap_file):
    """On a terminal push and verify show progress (amounts done of total); piped they print nothing on stderr."""
    url = f"file://{tmp_path}/progress-store"
    code, out, shown = _on_a_terminal("push", str(snap_file[0]), url)
    assert code == 0 and "pushed" in out
    size = snap_file[0].stat().st_size
    assert "reading a.stsnap" in shown and f"/{size} bytes" in shown and "pushing" in shown
    code, out, shown = _on_a_terminal("verify", url)
    assert code == 0 and "verifying" in shown and "snapshots" in shown
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    piped = subprocess.run([sys.executable, "-m", "statetransfer", "verify", url], capture_output=True, text=True,
                           env=env, timeout=60)  # fmt: skip
    assert piped.returncode == 0 and piped.stderr == "" and "checked 1 snapshot(s)" in piped.stdout


def test_list_on_an_80_column_terminal(tmp_path):
    """On an 80-column terminal the list table fits, ids shortened."""
    snapshot_id = "3f2c1a7e-0b6d-4c2e-9a51-7d8e9f0a1b2c"
    url = _store_with(tmp_path, snapshot_id)
    code, _, shown = _on_a_terminal("list", url, stream="stdout")
    assert code == 0 and "3f2c1a7e" in shown and snapshot_id not in shown and "inventory-service" in shown
    assert all(len(line.rstrip()) <= 80 for line in shown.splitlines()), shown


def test_unreadable_entries_are_reported(tmp_path, store_url, snap_file):
    """A damaged manifest is named on stderr by list and prune (which keep working), and by verify (exit 1)."""
    manifest = next((tmp_path / "store").rglob(f"manifests/{snap_file[1].id}"))
    manifest.write_bytes(b"garbage")
    for args in (["list", store_url], ["prune", store_url, "--dry-run"]):
        code, _, err = run(*args)
        assert code == 0 and "unreadable store entry" in err and snap_file[1].id in err
    code, out, _ = run("verify", store_url)
    assert code == 1 and "problem" in out


def test_demo_size_shows_progress_on_a_terminal():
    """`demo --size N` counts the SKUs it adds on a terminal, and still checks every step."""
    code, out, shown = _on_a_terminal("demo", "--size", "50000", timeout=120)
    assert code == 0 and "all checks passed" in out and "50000 SKUs" in out
    assert "adding stock" in shown and "/50000 SKUs" in shown
