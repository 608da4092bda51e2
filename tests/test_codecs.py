"""Value codecs decode with the declared type and name the failing field path."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

import statetransfer as st
from statetransfer import _codecs as codecs
from statetransfer.errors import EncodingError


class Item(msgspec.Struct):
    name: str
    tags: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "tp", "codec", "message"),
    [
        pytest.param(
            {"a": [1, 2, "x"]}, dict[str, list[int]], "msgpack", 'v["a"][2]: expected int, got str', id="dict-list"
        ),
        pytest.param(
            {"k": {"name": "n", "tags": [1]}},
            dict[str, Item],
            "msgpack",
            'v["k"].tags[0]: expected str, got int',
            id="struct",
        ),
        pytest.param([{"x": 1, "y": "2"}], list[Point], "json", "v[0].y: expected int, got str", id="dataclass-json"),
        pytest.param({1: "a"}, dict[int, int], "msgpack", "v[1]: expected int, got str", id="int-keys"),
    ],
)
def test_type_mismatch_names_path(value, tp, codec, message):
    """A mismatch deep inside a value names the exact field path."""
    with pytest.raises(EncodingError) as info:
        codecs.decode(codecs.encode(value, codec), tp, codec, where="v")
    assert str(info.value) == message


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_round_trip(codec):
    """Typed values survive encode/decode."""
    value = {"a": Item("n", ["t"])}
    assert codecs.decode(codecs.encode(value, codec), dict[str, Item], codec) == value


def test_raw_codec():
    """The raw codec stores bytes as they are and refuses other values."""
    assert codecs.decode(codecs.encode(b"\x00\x01", "raw"), bytes, "raw") == b"\x00\x01"
    with pytest.raises(EncodingError, match="raw codec stores bytes"):
        codecs.encode("text", "raw")


def test_garbage_bytes():
    """Bytes that are not msgpack/JSON at all are an EncodingError."""
    with pytest.raises(EncodingError, match="not valid json"):
        codecs.decode(b"{", dict[str, int], "json")
    with pytest.raises(EncodingError, match="not valid msgpack"):
        codecs.decode(b"\xc1", dict[str, int], "msgpack")


def test_unencodable_value():
    """A value msgspec cannot encode is an EncodingError naming the section."""
    with pytest.raises(EncodingError, match="sec: cannot encode"):
        codecs.encode({"a": object()}, "msgpack", where="sec")


def _drain(gen):
    """All pieces of an iter_pieces generator, and its slice table."""
    pieces = []
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as done:
            return pieces, done.value


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_sliced_encoding_round_trip(kind):
    """A large dict/list is encoded in slices into one valid msgpack value; slice-wise decode gives it back."""
    value = {f"k{i}": [i] for i in range(1000)} if kind == "dict" else [[i, str(i)] for i in range(1000)]
    tp = dict[str, list[int]] if kind == "dict" else list[tuple[int, str]]
    pieces, table = _drain(codecs.iter_pieces(value, "msgpack", slice_items=100))
    payload = b"".join(pieces)
    assert len(pieces) == 11 and table.count(";") == 9  # the header, then 10 slices of 100
    assert msgspec.msgpack.decode(payload) == msgspec.msgpack.decode(codecs.encode(value))
    decoded = codecs.decode(bytes(payload), tp, slices=table)
    assert decoded == (value if kind == "dict" else [tuple(v) for v in value])
    for algorithm in ("zstd", "lz4", "none"):  # compression streams over the pieces without joining them
        assert st.decompress(st.compress(pieces, algorithm), algorithm) == payload


@pytest.mark.parametrize("grow", [True, False])
def test_resized_between_slices(grow):
    """A dict that changes size between slices raises Resized (the caller then encodes it whole)."""
    value = {i: i for i in range(1000)}
    gen = codecs.iter_pieces(value, "msgpack", slice_items=100)
    next(gen)
    next(gen)
    if grow:
        value[5000] = 1
    else:
        del value[999]
    with pytest.raises(codecs.Resized):
        _drain(gen)


def test_small_values_are_not_sliced():
    """Small values and non-msgpack codecs encode in one step, without a slice table."""
    pieces, table = _drain(codecs.iter_pieces({"a": 1}, "msgpack", slice_items=100))
    assert table is None and pieces == [codecs.encode({"a": 1})]
    _, table = _drain(codecs.iter_pieces(list(range(1000)), "json", slice_items=10))
    assert table is None


@pytest.mark.parametrize("table", ["x", "5:10;abc", "5:10:3", "999999:1", "3:1"])
def test_hostile_slice_table(table):
    """A malformed or out-of-range slice table is an EncodingError, never an IndexError or ValueError."""
    pieces, _ = _drain(codecs.iter_pieces(list(range(500)), "msgpack", slice_items=100))
    with pytest.raises(EncodingError):
        codecs.decode(b"".join(pieces), list[int], slices=table)


def test_slice_type_error_names_path():
    """A type mismatch inside a sliced payload still names the field path."""
    value = {f"k{i}": i for i in range(300)}
    value["k250"] = "oops"
    pieces, table = _drain(codecs.iter_pieces(value, "msgpack", slice_items=100))
    with pytest.raises(EncodingError, match=r'v\["k250"\]: expected int, got str'):
        codecs.decode(b"".join(pieces), dict[str, int], slices=table, where="v")


def test_gc_pause_restores_state():
    """Pausing the collector for a large decode restores its previous state, nested or not."""
    import gc

    assert gc.isenabled()
    with codecs.gc_paused():
        with codecs.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with codecs.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
