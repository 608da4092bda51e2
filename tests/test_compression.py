"""Compression: round trips, algorithm choice, and bombs that fail fast."""

from __future__ import annotations

import tracemalloc

import lz4.frame
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as hs

import statetransfer as st
from statetransfer._sections import pack_section, unpack_section


@pytest.mark.parametrize("algorithm", ["zstd", "lz4", "none"])
@given(data=hs.binary(max_size=5000))
def test_round_trip(algorithm, data):
    """decompress(compress(x)) == x for every algorithm."""
    assert st.decompress(st.compress(data, algorithm), algorithm) == data


def test_unknown_algorithm():
    """An unknown algorithm name is a StateTransferError naming the choices."""
    with pytest.raises(st.StateTransferError, match="brotli"):
        st.compress(b"x", "brotli")


def _peak_traced_mb(func) -> float:
    """Peak Python heap growth (MiB) while ``func`` runs; decompressed output is Python bytes, so it is traced."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        func()
        return (tracemalloc.get_traced_memory()[1] - base) / (1 << 20)
    finally:
        tracemalloc.stop()


def _expect_limit(bomb: bytes, algorithm: str) -> None:
    with pytest.raises(st.DecompressionLimitExceeded):
        st.decompress(bomb, algorithm, max_size=1 << 20)


@pytest.mark.parametrize("algorithm", ["zstd", "lz4"])
def test_memory_measure_sees_a_real_decompression(algorithm):
    """The measure the bomb tests rely on does see 64 MiB of output (so their bound can fail)."""
    data = st.compress(b"\0" * (64 << 20), algorithm)
    assert _peak_traced_mb(lambda: st.decompress(data, algorithm, max_size=128 << 20)) >= 60


@pytest.mark.parametrize(
    ("algorithm", "make"),
    [
        pytest.param("zstd", lambda: zstandard.ZstdCompressor().compress(b"\0" * (256 << 20)), id="zstd-declared"),
        pytest.param(
            "zstd",
            lambda: zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (256 << 20)),
            id="zstd-undeclared",
        ),
        pytest.param("lz4", lambda: lz4.frame.compress(b"\0" * (256 << 20)), id="lz4-declared"),
        pytest.param("lz4", lambda: lz4.frame.compress(b"\0" * (256 << 20), store_size=False), id="lz4-undeclared"),
    ],
)
def test_bomb_fails_fast(algorithm, make):
    """A small input that would expand to 256 MiB fails with a 1 MiB limit, without growing memory by that much."""
    bomb = make()
    assert len(bomb) < 2 << 20
    assert _peak_traced_mb(lambda: _expect_limit(bomb, algorithm)) < 16


def test_forged_10_gib_frame_header():
    """A 1 KiB zstd input declaring 10 GiB of output is refused before anything is decompressed."""
    cobj = zstandard.ZstdCompressor().compressobj(size=10 << 30)
    out = cobj.compress(b"\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(out) < 1024
    assert zstandard.frame_content_size(out) == 10 << 30

    def attempt() -> None:
        with pytest.raises(st.DecompressionLimitExceeded, match="declares"):
            st.decompress(out, "zstd")

    assert _peak_traced_mb(attempt) < 16


def test_section_bomb_bounded_by_recorded_size():
    """A section whose compressed data expands beyond its recorded original_size is refused."""
    sec = pack_section("s", 1, b"a" * 100_000, snapshot_id="x", plugin_id="p")
    assert sec.compressed
    lying = st.StateSection("s", 1, sec.data, True, None, {**sec.metadata, "original_size": "10"})
    with pytest.raises(st.DecompressionLimitExceeded):
        unpack_section(lying, snapshot_id="x", plugin_id="p")


@pytest.mark.parametrize("bad", ["-1", "abc", "9" * 30])
def test_malformed_original_size(bad):
    """A malformed original_size is a CorruptSnapshot, not a ValueError."""
    sec = st.StateSection("s", 1, b"x", False, None, {"original_size": bad})
    with pytest.raises(st.CorruptSnapshot):
        unpack_section(sec, snapshot_id="x", plugin_id="p")


def test_incompressible_stored_raw():
    """A section that compression would not shrink is stored raw with compressed=False."""
    import os

    noise = os.urandom(10_000)
    sec = pack_section("s", 1, noise, snapshot_id="x", plugin_id="p", compression="zstd")
    assert sec.compressed is False
    assert "compression" not in sec.metadata
    assert sec.data == noise
    text = pack_section("s", 1, b"hello " * 1000, snapshot_id="x", plugin_id="p", compression="lz4")
    assert text.compressed and text.metadata["compression"] == "lz4"
    assert unpack_section(text, snapshot_id="x", plugin_id="p") == b"hello " * 1000


@pytest.mark.parametrize("algorithm", ["zstd", "lz4"])
def test_garbage_is_corrupt(algorithm):
    """Garbage input is a CorruptSnapshot, never the library's own error type."""
    with pytest.raises(st.CorruptSnapshot):
        st.decompress(b"\x00garbage-bytes" * 3, algorithm)


def _section(data: bytes, algorithm: str, original_size: str) -> st.StateSection:
    meta = {"original_size": original_size, "compression": algorithm}
    return st.StateSection("s", 1, data, True, None, meta)


@pytest.mark.parametrize("algorithm", ["zstd", "lz4"])
def test_section_frame_must_declare_recorded_size(algorithm):
    """A section frame that declares no size, or another size than recorded, is refused before decompressing."""
    payload = b"z" * 50_000
    undeclared = (
        zstandard.ZstdCompressor(write_content_size=False).compress(payload)
        if algorithm == "zstd"
        else lz4.frame.compress(payload, store_size=False)
    )
    with pytest.raises(st.CorruptSnapshot, match="does not declare"):
        unpack_section(_section(undeclared, algorithm, "50000"), snapshot_id="x", plugin_id="p")
    honest = st.compress(payload, algorithm)
    with pytest.raises(st.DecompressionLimitExceeded, match="declare 50000 bytes"):
        unpack_section(_section(honest, algorithm, "49999"), snapshot_id="x", plugin_id="p")
    assert unpack_section(_section(honest, algorithm, "50000"), snapshot_id="x", plugin_id="p") == payload


def test_section_recording_10_gib_fails_fast():
    """A 1 KiB section recording 10 GiB (and a frame declaring it) fails before allocating anything."""
    cobj = zstandard.ZstdCompressor().compressobj(size=10 << 30)
    bomb = cobj.compress(b"\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def attempt() -> None:
        with pytest.raises(st.DecompressionLimitExceeded, match="above the limit"):
            unpack_section(_section(bomb, "zstd", str(10 << 30)), snapshot_id="x", plugin_id="p")

    assert _peak_traced_mb(attempt) < 16


def test_non_ascii_digits_in_original_size():
    """original_size made of non-ASCII digits ('²') is a CorruptSnapshot, not a ValueError."""
    with pytest.raises(st.CorruptSnapshot, match="not a byte count"):
        unpack_section(st.StateSection("s", 1, b"x", False, None, {"original_size": "²"}), snapshot_id="x",
                       plugin_id="p")  # fmt: skip


def test_truncated_lz4_is_corrupt():
    """An lz4 frame cut short is a CorruptSnapshot (also when output arrives in pieces)."""
    data = lz4.frame.compress(bytes(range(256)) * 100_000, store_size=False)
    with pytest.raises(st.CorruptSnapshot, match="truncated"):
        st.decompress(data[: len(data) // 2], "lz4", max_size=64 << 20)
    assert st.decompress(data, "lz4", max_size=64 << 20) == bytes(range(256)) * 100_000


@pytest.mark.parametrize("algorithm", ["zstd", "lz4"])
def test_multi_frame_sections(algorithm, monkeypatch):
    """A section packed in several frames records their lengths, round-trips, and refuses a lying frame table."""
    import os

    from statetransfer import _sections as sections

    monkeypatch.setattr(sections, "FRAME_MIN", 1000)
    pieces = [bytes([i]) * 3000 + os.urandom(100) for i in range(5)]
    sec = pack_section("s", 1, pieces, snapshot_id="x", plugin_id="p", compression=algorithm)
    assert sec.compressed and sec.metadata["frames"].count(",") == 4
    assert unpack_section(sec, snapshot_id="x", plugin_id="p") == b"".join(pieces)
    lengths = [int(n) for n in sec.metadata["frames"].split(",")]
    for table in [",".join(map(str, [lengths[0] + 1, *lengths[1:]])), "abc", "²", ""]:
        bad = st.StateSection("s", 1, sec.data, True, None, {**sec.metadata, "frames": table})
        with pytest.raises(st.CorruptSnapshot):
            unpack_section(bad, snapshot_id="x", plugin_id="p")
    shifted = ",".join(map(str, [lengths[0] - 3, lengths[1] + 3, *lengths[2:]]))
    bad = st.StateSection("s", 1, sec.data, True, None, {**sec.metadata, "frames": shifted})
    with pytest.raises(st.StateTransferError):
        unpack_section(bad, snapshot_id="x", plugin_id="p")
