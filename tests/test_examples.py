"""The examples run and behave as their docstrings describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import statetransfer as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from handwritten_plugin import HandwrittenPlugin, Metrics  # noqa: E402


@pytest.mark.parametrize("script", ["handwritten_plugin.py", "declarative_plugin.py"])
def test_example_runs(script):
    """Each example exits 0 and reports its imported sections."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "imported ['cache', 'config', 'metrics']" in proc.stdout


def test_hot_reload_example():
    """The hot-reload example serves calls through three watched edits without a failed call."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hot_reload_service.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "calls failed:  0" in proc.stdout
    assert "reloads done:  3 of 3" in proc.stdout


def test_move_state_example():
    """State backed up in one process is restored in another through a store."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "move_state.py")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "restored ['orders', 'sessions']: 2000 sessions, 1234 orders" in proc.stdout


async def test_handwritten_round_trip():
    """The hand-written plugin's export imports into a fresh instance with equal state."""
    src = HandwrittenPlugin()
    src.state.cache = {"a": "b"}
    src.state.metrics = Metrics(3, 4)
    dst = HandwrittenPlugin()
    result = await dst.import_state(st.loads(st.dumps(await src.export_state())))
    assert dst.state == src.state
    assert sorted(result.imported_sections) == ["cache", "config", "metrics"]


def _with(snapshot, section):
    snap = msgspec.structs.replace(snapshot, sections={**snapshot.sections, section.name: section})
    return st.seal(snap)


async def test_handwritten_reference_rules():
    """A too-new config is invalid; bad metrics warn; unknown sections warn."""
    plugin = HandwrittenPlugin()
    snap = await plugin.export_state()
    too_new = _with(snap, st.StateSection("config", 2, b"{}"))
    v = await plugin.validate_state(too_new)
    assert not v.is_valid and v.section_validations["config"].errors == ["Config schema too new"]
    bad_metrics = _with(_with(snap, st.StateSection("metrics", 1, b"not json")), st.StateSection("extra", 1, b""))
    result = await plugin.import_state(bad_metrics)
    assert "Metrics import failed, using defaults" in result.warnings
    assert "Unknown section: extra" in result.warnings
    uncompressed = _with(snap, st.StateSection("cache", 1, msgspec.msgpack.encode({"a": "b"})))
    v = await plugin.validate_state(uncompressed)
    assert v.section_validations["cache"].warnings == ["Cache should be compressed"]
    other = msgspec.structs.replace(snap, plugin_id="x")
    with pytest.raises(st.ValidationFailed):
        await plugin.import_state(other)
