"""The benchmark suite runs and writes valid JSON (its timings are never asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_emits_json(tmp_path):
    """benchmarks/run.py --quick writes every ratio to results-quick.json, leaving the committed full results alone."""
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench, ignore=shutil.ignore_patterns("__pycache__", "results-quick.json"))
    committed = (ROOT / "benchmarks" / "results.json").read_bytes()
    out = bench / "results-quick.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(bench / "run.py"), "--quick"], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (bench / "results.json").read_bytes() == committed
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert set(doc["ratios"]) == {
        "export_vs_pickle", "export_vs_msgspec", "import_vs_pickle", "import_vs_msgspec", "size_vs_gzip_pickle",
        "peak_memory_vs_msgpack", "scaling_max_deviation", "store_vs_file",
    }  # fmt: skip
    assert all(isinstance(v, float) and v > 0 for v in doc["ratios"].values())
    assert doc["reload_1mb"]["p50"] > 0 and doc["stall_ms"] > 0
    assert "export+dumps vs pickle.dumps" in proc.stdout


def test_incremental_benchmark_runs(tmp_path):
    """benchmarks/incremental.py at tiny sizes: every case restores exactly and reports its stored bytes."""
    out = tmp_path / "incremental.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["--map-mb", "2", "--bytes-mb", "3", "--rounds", "2", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "incremental.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text())
    assert [c["case"].split(",")[0] for c in cases] == ["map 2 MB", "map 2 MB", "bytes 3 MB"]
    assert all(0 < c["incremental_stored_bytes"] < c["full_stored_bytes"] for c in cases)


def test_recovery_benchmark_runs(tmp_path):
    """benchmarks/recovery.py --quick checkpoints, kills and restarts a service, and prints its medians."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "export + write" in proc.stdout and "serving restored state" in proc.stdout
