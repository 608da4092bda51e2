"""The documentation: the site builds strictly, and every Python block of the README and docs runs as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "SECURITY.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
#: Runs one document's blocks in order in one namespace, as a reader pasting them one after another would.
RUNNER = """
import json, sys, traceback
document, blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for line, code in blocks:
    try:
        exec(compile(code, f"{document}, block at line {line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"{document}: the Python block at line {line} failed")
"""


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of every fenced ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)], ids=lambda d: str(d.relative_to(ROOT)))
def test_python_blocks_run(document, tmp_path):
    """Each document's Python blocks run in order, in a fresh directory, without error."""
    blocks = python_blocks(document)
    for line, code in blocks:
        assert not re.search(r"^await |^\w+ = await ", code, re.MULTILINE), f"top-level await at line {line}"
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([str(document.relative_to(ROOT)), blocks]))
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("STATETRANSFER_KEYRING", None)
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(spec)], cwd=work, capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_guide_has_runnable_code():
    """The README, the getting-started page and every guide hold Python blocks (so the test above covers them)."""
    pages = [ROOT / "README.md", ROOT / "docs" / "getting-started.md", *(ROOT / "docs" / "guides").glob("*.md")]
    assert len(pages) >= 8
    assert all(python_blocks(page) for page in pages), [p.name for p in pages if not python_blocks(p)]


def test_docs_build_strictly(tmp_path):
    """`mkdocs build --strict` succeeds, and the API reference is generated from the docstrings."""
    proc = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("statetransfer.PluginHost", "statetransfer.restore", "statetransfer.testing.check_plugin"):
        assert f'id="{name}"' in api
    assert "Hot reload in a service" in (tmp_path / "site" / "index.html").read_text()


def test_a_broken_reference_fails_the_build(tmp_path):
    """The build is strict for real: a link to a missing page, or an unknown API name, fails it."""
    for n, broken in enumerate(["[gone](no-such-page.md)", "::: statetransfer.no_such_name"]):
        copy = tmp_path / f"copy{n}"
        shutil.copytree(ROOT / "docs", copy / "docs")
        for name in ("mkdocs.yml", "README.md", "SECURITY.md", "CHANGELOG.md"):
            shutil.copy(ROOT / name, copy / name)
        shutil.copytree(ROOT / "src", copy / "src")
        with (copy / "docs" / "getting-started.md").open("a") as fh:
            fh.write(f"\n\n{broken}\n")
        proc = mkdocs_build(copy / "mkdocs.yml", copy / "site")
        assert proc.returncode != 0, broken
