"""The public API is typed: mypy --strict accepts the README's plugin and infers its section types (not Any)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "/dev/null", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_readme_plugin_types_check():
    """Section attributes, results and store listings have their declared types under mypy --strict."""
    proc = _mypy(HERE / "typecheck" / "readme_plugin.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_any_section_type_is_caught(tmp_path):
    """The check can fail: a section whose type mypy cannot see (Any) does not pass assert_type."""
    source = (HERE / "typecheck" / "readme_plugin.py").read_text()
    broken = source.replace(
        "st.Section(dict[str, str], encrypt=True, default=dict)", "st.Section(_any(), default=dict)"
    )
    broken = broken.replace("class Config(", "def _any() -> Any: ...\n\n\nclass Config(").replace(
        "from typing import assert_type", "from typing import Any, assert_type"
    )
    path = tmp_path / "broken.py"
    path.write_text(broken)
    proc = _mypy(path)
    assert proc.returncode == 1
    assert 'Expression is of type "Any", not "dict[str, str]"' in proc.stdout
