"""Value codecs: a section's live value <-> bytes, decoded with its declared type."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from functools import lru_cache
from typing import Any

import msgspec

from .errors import EncodingError

__all__ = ["CODECS", "convert", "decode", "decode_untyped", "encode"]

CODECS = ("msgpack", "json", "raw")
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_MSG_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise EncodingError(f"unknown codec {codec!r}; expected one of {CODECS}")


@lru_cache(maxsize=256)
def _decoder(codec: str, tp: Any) -> Any:
    if codec == "json":
        return msgspec.json.Decoder(tp)
    return msgspec.msgpack.Decoder(tp)


def encode(value: Any, codec: str = "msgpack", *, where: str = "value") -> bytes:
    """Encode ``value`` with ``codec`` (``"msgpack"``, ``"json"`` or ``"raw"`` for bytes)."""
    _check_codec(codec)
    if codec == "raw":
        if not isinstance(value, bytes | bytearray | memoryview):
            raise EncodingError(f"{where}: the raw codec stores bytes, got {type(value).__name__}")
        return bytes(value)
    try:
        return (_json_encoder if codec == "json" else _msgpack_encoder).encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise EncodingError(f"{where}: cannot encode as {codec}: {exc}") from exc


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
            raise EncodingError(f"{where}: expected bytes, got {type(value).__name__}")
        return bytes(value)
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        path = _locate(value, tp, where)
        raise EncodingError(f"{path}: {_leaf_message(exc)}") from exc


def decode_untyped(data: bytes | memoryview, codec: str = "msgpack", *, where: str = "value") -> Any:
    """Decode bytes to builtins (dict, list, str, ...) without a target type."""
    _check_codec(codec)
    if codec == "raw":
        return bytes(data)
    try:
        return (msgspec.json if codec == "json" else msgspec.msgpack).decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise EncodingError(f"{where}: not valid {codec} data: {exc}") from exc


def decode(data: bytes | memoryview, tp: Any, codec: str = "msgpack", *, where: str = "value") -> Any:
    """Decode bytes as ``tp``; a mismatch names the field path (``entries["a"][2]: expected int, got str``)."""
    _check_codec(codec)
    if codec == "raw":
        return bytes(data)
    try:
        return _decoder(codec, tp).decode(data)
    except msgspec.ValidationError:
        return convert(decode_untyped(data, codec, where=where), tp, where=where, codec=codec)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise EncodingError(f"{where}: not valid {codec} data: {exc}") from exc
    except TypeError as exc:  # an unsupported declared type
        raise EncodingError(f"{where}: type {tp!r} is not supported by msgspec: {exc}") from exc
