"""Shared fixtures and hypothesis strategies."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import strategies as hs

import statetransfer as st

names = hs.text(hs.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
json_scalars = hs.none() | hs.booleans() | hs.integers(-(2**63), 2**63 - 1) | hs.text(max_size=20)
json_values = hs.recursive(
    json_scalars,
    lambda kids: hs.lists(kids, max_size=4) | hs.dictionaries(hs.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)


@hs.composite
def sections(draw, name: str) -> st.StateSection:
    enc = draw(
        hs.none()
        | hs.builds(
            st.EncryptionInfo,
            algorithm=hs.sampled_from(["AES-256-GCM", "ChaCha20-Poly1305"]),
            key_id=names,
            nonce=hs.binary(min_size=12, max_size=12),
        )
    )
    return st.StateSection(
        name=name,
        schema_version=draw(hs.integers(0, 2**32)),
        data=draw(hs.binary(max_size=300)),
        compressed=draw(hs.booleans()),
        encryption=enc,
        metadata=draw(hs.dictionaries(names, hs.text(max_size=10), max_size=3)),
    )


@hs.composite
def snapshots(draw) -> st.StateSnapshot:
    section_names = draw(hs.lists(names, max_size=4, unique=True))
    snap = st.StateSnapshot(
        id=draw(names),
        plugin_id=draw(names),
        plugin_version=draw(hs.sampled_from(["1.0.0", "2.3.4", "not-semver"])),
        schema_version=draw(hs.integers(0, 2**32)),
        timestamp=draw(hs.integers(0, 2**40)),
        sections={n: draw(sections(n)) for n in section_names},
        metadata=st.StateMetadata(
            reason=draw(hs.sampled_from(list(st.StateCreationReason))),
            created_by=draw(names),
            tags=draw(hs.lists(names, max_size=3)),
            expires_at=draw(hs.none() | hs.integers(0, 2**40)),
            custom=draw(hs.dictionaries(hs.text(max_size=8), json_values, max_size=3)),
        ),
        checksum="",
        created_ns=draw(hs.integers(0, 2**62)),
    )
    return seal(snap)


def seal(snapshot: st.StateSnapshot) -> st.StateSnapshot:
    """A copy of ``snapshot`` with its checksum recomputed."""
    return st.seal(snapshot)


def simple_snapshot(**sections: bytes) -> st.StateSnapshot:
    snap = st.StateSnapshot(
        id="snap-1",
        plugin_id="p",
        plugin_version="1.0.0",
        schema_version=1,
        timestamp=1_700_000_000,
        sections={n: st.StateSection(n, 1, d) for n, d in sections.items()},
        metadata=st.StateMetadata(),
    )
    return seal(snap)


def damage(data, raw: bytes, most: int = 4) -> bytes:
    """``raw`` with 1 to ``most`` bytes flipped, inserted or deleted, drawn from hypothesis ``data``."""
    mutated = bytearray(raw)
    for _ in range(data.draw(hs.integers(1, most))):
        pos = data.draw(hs.integers(0, len(mutated) - 1))
        op = data.draw(hs.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            mutated[pos] ^= data.draw(hs.integers(1, 255))
        elif op == "insert":
            mutated[pos:pos] = data.draw(hs.binary(min_size=1, max_size=8))
        else:
            del mutated[pos]
    return bytes(mutated)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A fresh importable module name in tmp_path, and a writer for its source."""
    name = f"plug_{uuid.uuid4().hex[:12]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # users run with __pycache__
    path = tmp_path / f"{name}.py"

    def write(text: str) -> None:
        path.write_text(textwrap.dedent(text))

    yield name, write, path
    sys.modules.pop(name, None)


async def backups_with_newest_damaged(plugin, section: str, root: Path) -> tuple[st.SnapshotInfo, st.SnapshotInfo]:
    """Two backups of ``plugin`` into the ``file://`` store at ``root`` (``section`` set to 1, then 2); the newest's
    manifest then damaged. Returns (older, newest)."""
    store = st.open_store(f"file://{root}")
    setattr(plugin, section, 1)
    older = await st.backup(plugin, store)
    time.sleep(0.01)
    setattr(plugin, section, 2)
    newest = await st.backup(plugin, store)
    path = root / "manifests" / newest.id
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    return older, newest
