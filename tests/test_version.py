"""The version number has one source: the package metadata built from pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

import statetransfer as st
from statetransfer._cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_number():
    """__version__ and `statetransfer --version` show pyproject's version; no module assigns it a literal."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert st.__version__ == importlib.metadata.version("statetransfer") == declared
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and declared in result.stdout
    literal = re.compile(r"""__version__\s*=\s*["']""")
    assert not [p for p in (ROOT / "src").rglob("*.py") if literal.search(p.read_text())]


def test_changelog_has_the_current_version():
    """CHANGELOG.md keeps an Unreleased section and a section for the current version."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text and f"## [{st.__version__}]" in text
