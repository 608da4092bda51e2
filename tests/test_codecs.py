"""Value codecs decode with the declared type and name the failing field path."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from statetransfer import codecs
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
