"""Value codecs: a section's live value <-> bytes, decoded with its declared type."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import math
import re
import struct
import threading
import typing
from collections.abc import Generator, Iterator
from functools import lru_cache
from typing import Any

import msgspec

from .errors import EncodingError, InvalidArgument

__all__ = ["CODECS", "SLICE_ITEMS", "Pieces", "Resized", "convert", "decode", "decode_untyped", "encode", "iter_pieces"]

CODECS = ("msgpack", "json", "raw")
#: Items per slice when a large dict or list is encoded piecewise (see :func:`iter_pieces`).
SLICE_ITEMS = 65_536
#: Only values with at least this many slices' worth of items are sliced: below that (about 18 MB)
#: encoding in one step is faster than slicing, and stalls the event loop for under ~25 ms.
SLICE_MIN_SLICES = 4
#: Payloads at least this large are decoded with the cyclic GC paused (decoding builds no cycles).
_GC_PAUSE_ABOVE = 1 << 20
_MAP32 = struct.Struct(">BI")
Pieces = list[bytes | memoryview]
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_MSG_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise InvalidArgument(f"unknown codec {codec!r}; expected one of {CODECS}")


@lru_cache(maxsize=256)
def _decoder(codec: str, tp: Any) -> Any:
    if codec == "json":
        return msgspec.json.Decoder(tp)
    return msgspec.msgpack.Decoder(tp)


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while decoding a large payload.

    Decoding allocates millions of acyclic objects; each allocation burst
    would otherwise trigger collections that re-scan the whole heap (more
    than half the decode time on 200,000 records). Nested and concurrent
    users share one pause; the collector's previous state is restored when
    the last one leaves.
    """
    global _gc_users, _gc_was_enabled  # noqa: PLW0603 - process-wide by nature
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


class Resized(Exception):
    """A sliced dict or list changed size between slices: encode it again, in one step."""


def iter_pieces(
    value: Any, codec: str = "msgpack", *, where: str = "value", slice_items: int | None = None
) -> Generator[bytes | memoryview, None, str | None]:
    """Yield ``value``'s encoding piece by piece; return the slice table (None when not sliced).

    Large dicts and lists are encoded slice by slice: a caller that awaits
    between pieces keeps its event loop responsive, and can compress each
    piece while the next one is encoded. The pieces concatenate to one valid
    msgpack map/array (a 32-bit length header, then the items); the slice
    table (``"offset:count;..."``) lets :func:`decode` decode slice by slice.
    Other codecs and small values come as one piece.

    Raises:
        Resized: the dict or list changed size between slices (a change made
            without the state lock); the caller encodes it again in one step.
    """
    slice_items = slice_items or SLICE_ITEMS
    is_map = isinstance(value, dict)
    if codec != "msgpack" or not (is_map or isinstance(value, list)) or len(value) < SLICE_MIN_SLICES * slice_items:
        yield encode(value, codec, where=where)
        return None
    with gc_paused():  # slices are fresh containers: without this, each one can trigger a full-heap collection
        return (yield from _encode_slices(value, is_map, codec, where, slice_items))


def _encode_slices(
    value: Any, is_map: bool, codec: str, where: str, slice_items: int
) -> Generator[bytes | memoryview, None, str]:
    total = len(value)
    yield _MAP32.pack(0xDF if is_map else 0xDD, total)
    table: list[str] = []
    count = 0
    offset = _MAP32.size
    items = iter(value.items()) if is_map else None
    for start in range(0, total, slice_items):
        if items is not None:
            try:  # a flat [k1, v1, k2, v2, ...] list encodes to exactly a map's body, and is cheaper than a dict
                part: Any = list(itertools.chain.from_iterable(itertools.islice(items, slice_items)))
            except RuntimeError:
                raise Resized(where) from None
            n = len(part) // 2
        else:
            part = value[start : start + slice_items]
            n = len(part)
        piece = encode(part, codec, where=where)
        body = memoryview(piece)[_header_size(piece[0]) :]
        table.append(f"{offset}:{n}")
        offset += len(body)
        count += n
        yield body
    if count != total or len(value) != total:
        raise Resized(where)
    return ";".join(table)


def _header_size(first: int) -> int:
    """Bytes of a msgpack map/array header starting with byte ``first``."""
    if 0x80 <= first <= 0x9F:
        return 1
    return {0xDC: 3, 0xDE: 3, 0xDD: 5, 0xDF: 5}[first]


def _parse_slices(table: str, size: int, where: str) -> list[tuple[int, int, int]]:
    """[(start, end, count)] from a slice table, checked against the payload size."""
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in table.split(";")]
    except ValueError:
        raise EncodingError(f"{where}: malformed slice table", path=where) from None
    out = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise EncodingError(f"{where}: malformed slice table", path=where)
        start, count = pair
        end = pairs[i + 1][0] if i + 1 < len(pairs) else size
        if not _MAP32.size <= start <= end <= size or count < 0:
            raise EncodingError(f"{where}: slice table does not fit the payload", path=where)
        out.append((start, end, count))
    return out


def encode(value: Any, codec: str = "msgpack", *, where: str = "value") -> bytes:
    """Encode ``value`` with ``codec`` (``"msgpack"``, ``"json"`` or ``"raw"`` for bytes)."""
    _check_codec(codec)
    if codec == "raw":
        if not isinstance(value, bytes | bytearray | memoryview):
            raise EncodingError(f"{where}: the raw codec stores bytes, got {type(value).__name__}", path=where)
        return bytes(value)
    try:
        return (_json_encoder if codec == "json" else _msgpack_encoder).encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise EncodingError(f"{where}: cannot encode as {codec}: {exc}", path=where) from exc


def _leaf_message(exc: msgspec.ValidationError) -> str:
    match = _MSG_AT.match(str(exc))
    what = match.group("what") if match else str(exc)
    what = what.replace("`", "")
    return what[:1].lower() + what[1:]


def _key_text(key: Any) -> str:
    return json.dumps(key) if isinstance(key, str) else repr(key)


def _children(value: Any, tp: Any) -> list[tuple[str, Any, Any]]:
    """(path piece, child value, child type) for the containers we can walk into."""
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _children(value, args[0])
    if isinstance(origin, type) and issubclass(origin, dict) and isinstance(value, dict) and len(args) == 2:
        return [(f"[{_key_text(k)}]", v, args[1]) for k, v in value.items()]
    if isinstance(origin, type) and issubclass(origin, list | set | frozenset) and isinstance(value, list) and args:
        return [(f"[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list) and args:
        types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return [(f"[{i}]", v, t) for i, (v, t) in enumerate(zip(value, types, strict=False))]
    if isinstance(tp, type) and isinstance(value, dict):
        hints: dict[str, Any] = {}
        if issubclass(tp, msgspec.Struct):
            hints = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
        elif dataclasses.is_dataclass(tp):
            resolved = typing.get_type_hints(tp)
            hints = {f.name: resolved[f.name] for f in dataclasses.fields(tp)}
        return [(f".{k}", value[k], t) for k, t in hints.items() if k in value]
    return []


def _locate(value: Any, tp: Any, path: str) -> str:
    """The path of the first part of ``value`` that does not convert to ``tp``."""
    for piece, child, child_tp in _children(value, tp):
        try:
            msgspec.convert(child, child_tp)
        except msgspec.ValidationError:
            return _locate(child, child_tp, path + piece)
    return path


def convert(value: Any, tp: Any, *, where: str = "value", codec: str = "msgpack") -> Any:
    """Convert an untyped (decoded or migrated) value to ``tp``, naming the failing field."""
    if codec == "raw":
        if not isinstance(value, bytes | bytearray):
            raise EncodingError(f"{where}: expected bytes, got {type(value).__name__}", path=where)
        return bytes(value)
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        path = _locate(value, tp, where)
        raise EncodingError(f"{path}: {_leaf_message(exc)}", path=path) from exc


def decode_untyped(data: bytes | memoryview, codec: str = "msgpack", *, where: str = "value") -> Any:
    """Decode bytes to builtins (dict, list, str, ...) without a target type."""
    _check_codec(codec)
    if codec == "raw":
        return bytes(data)
    try:
        return (msgspec.json if codec == "json" else msgspec.msgpack).decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise EncodingError(f"{where}: not valid {codec} data: {exc}", path=where) from exc


def _decode_slices(data: bytes | memoryview, tp: Any, table: str, where: str) -> Any:
    """Decode a sliced msgpack map/array one slice at a time (the GIL is released between slices)."""
    view = memoryview(data)
    if len(view) < _MAP32.size or view[0] not in (0xDF, 0xDD):
        raise EncodingError(f"{where}: sliced payload lacks its 32-bit header", path=where)
    is_map = view[0] == 0xDF
    decoder = _decoder("msgpack", tp)
    result: Any = {} if is_map else []
    for start, end, count in _parse_slices(table, len(view), where):
        piece = _MAP32.pack(view[0], count) + view[start:end]
        part = decoder.decode(piece)
        if is_map:
            result.update(part)
        else:
            result.extend(part)
    return result


def decode(
    data: bytes | memoryview, tp: Any, codec: str = "msgpack", *, where: str = "value", slices: str | None = None
) -> Any:
    """Decode bytes as ``tp``; a mismatch names the field path (``entries["a"][2]: expected int, got str``).

    ``slices`` is the table :func:`iter_pieces` returned; with a dict or list
    type it lets large payloads decode slice by slice.
    """
    _check_codec(codec)
    if codec == "raw":
        return bytes(data)
    origin = typing.get_origin(tp) or tp
    sliceable = slices and codec == "msgpack" and origin in (dict, list)
    pause = gc_paused() if len(data) >= _GC_PAUSE_ABOVE else contextlib.nullcontext()
    try:
        with pause:
            if sliceable:
                return _decode_slices(data, tp, slices or "", where)
            return _decoder(codec, tp).decode(data)
    except msgspec.ValidationError:
        return convert(decode_untyped(data, codec, where=where), tp, where=where, codec=codec)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise EncodingError(f"{where}: not valid {codec} data: {exc}", path=where) from exc
    except TypeError as exc:  # an unsupported declared type
        raise EncodingError(f"{where}: type {tp!r} is not supported by msgspec: {exc}", path=where) from exc


def check_decodable(
    data: bytes | memoryview, tp: Any, codec: str, *, where: str = "value", slices: str | None = None
) -> None:
    """Refuse an encoding that ``tp`` cannot decode again, so no snapshot is written that its own code cannot import.

    Raises:
        EncodingError: naming the field path (``entries["a"].hits: expected int, got str``).
    """
    if codec != "raw":
        decode(data, tp, codec, where=where, slices=slices)


def check_finite(value: Any, codec: str, *, where: str = "value") -> None:
    """Refuse NaN and infinities in a JSON-codec value: JSON would store them as ``null`` (wrong data).

    Raises:
        EncodingError: naming the path of the first non-finite float.
    """
    if codec != "json":
        return
    try:
        plain = msgspec.msgpack.decode(_msgpack_encoder.encode(value))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError, msgspec.DecodeError):
        return  # encode() reports values that cannot be encoded at all
    path = _nonfinite_path(plain, where)
    if path is not None:
        raise EncodingError(f"{path}: NaN or infinity cannot be stored by the json codec (use msgpack)", path=path)


def _nonfinite_path(value: Any, path: str) -> str | None:
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}[{_key_text(k)}]") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None
