"""Section compression (zstd, lz4) with decompression bounded against bombs."""

from __future__ import annotations

from collections.abc import Sequence

import lz4.frame
import zstandard

from .errors import CorruptSnapshot, DecompressionLimitExceeded, InvalidArgument

__all__ = ["ALGORITHMS", "DEFAULT_MAX_SIZE", "compress", "declared_size", "decompress"]

ALGORITHMS = ("zstd", "lz4", "none")
#: Output bound of :func:`decompress` when the caller gives none (64 MiB): a bomb without a
#: declared size fails after at most this much output. Pass ``max_size`` for larger data.
DEFAULT_MAX_SIZE = 64 << 20
#: zstd level when none is given: level 1 compresses the benchmark workload (benchmarks/workload.py) to a smaller
#: size than level 3 at half the time; hot reload latency depends on it.
ZSTD_LEVEL = 1
_THREADED_ABOVE = 8 << 20
_READ_CHUNK = 16 << 20


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        msg = f"unknown compression algorithm {algorithm!r}; expected one of {ALGORITHMS}"
        raise InvalidArgument(msg)


Buffer = bytes | bytearray | memoryview


def compress(data: Buffer | Sequence[Buffer], algorithm: str = "zstd", *, level: int | None = None) -> bytes:
    """Compress ``data`` (bytes, or a list of pieces to compress as one) with ``algorithm``.

    ``algorithm`` is ``"zstd"``, ``"lz4"`` or ``"none"``. zstd frames record
    their content size, so :func:`decompress` can refuse a bomb before
    allocating. Large inputs use zstd's worker threads; pieces are fed to the
    compressor one by one, never joined (peak memory about twice the output).
    """
    _check_algorithm(algorithm)
    pieces: Sequence[Buffer] = data if isinstance(data, list | tuple) else [data]  # type: ignore[list-item]
    size = sum(len(p) for p in pieces)
    if algorithm == "none":
        return b"".join(pieces)
    if algorithm == "lz4":
        lz4ctx = lz4.frame.LZ4FrameCompressor(compression_level=level or 0)
        return b"".join([lz4ctx.begin(source_size=size), *(lz4ctx.compress(p) for p in pieces), lz4ctx.flush()])
    threads = -1 if size >= _THREADED_ABOVE else 0
    cctx = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=threads, write_content_size=True)
    if len(pieces) == 1 and size < _THREADED_ABOVE:
        return cctx.compress(pieces[0])
    # compressobj releases the GIL while it works (stream_writer held it for a whole 100 MB section),
    # and its output is built piecewise: peak memory is about twice the output, never the input-sized bound.
    cobj = cctx.compressobj(size=size)
    parts = [cobj.compress(piece) for piece in pieces]
    parts.append(cobj.flush())
    return b"".join(parts)


def declared_size(data: bytes | memoryview, algorithm: str) -> int | None:
    """The content size a zstd or lz4 frame declares in its header (None when it declares none).

    Raises:
        CorruptSnapshot: the data does not start with a valid frame header.
    """
    _check_algorithm(algorithm)
    if algorithm == "none":
        return len(data)
    try:
        if algorithm == "zstd":
            size = zstandard.frame_content_size(data)
            return None if size < 0 else int(size)
        info = lz4.frame.get_frame_info(data)
    except (zstandard.ZstdError, RuntimeError, ValueError) as exc:
        raise CorruptSnapshot(f"{algorithm} data has no valid frame header: {exc}") from exc
    size = int(info.get("content_size", 0))
    return size or None


def _lz4_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Decompress an lz4 frame in pieces, failing as soon as the output passes ``limit`` (never joined then)."""
    lz4ctx = lz4.frame.LZ4FrameDecompressor()
    parts: list[bytes] = []
    total = 0
    chunk: bytes = lz4ctx.decompress(data, max_length=min(_READ_CHUNK, limit + 1))
    while True:
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise DecompressionLimitExceeded(f"lz4 data expands beyond the limit of {limit} bytes")
        if lz4ctx.eof:
            break
        if lz4ctx.needs_input:
            raise CorruptSnapshot("lz4 data is truncated")
        chunk = lz4ctx.decompress(b"", max_length=min(_READ_CHUNK, limit + 1 - total))
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _bounded_read(reader: zstandard.ZstdDecompressionReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = reader.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            msg = f"zstd data expands beyond the limit of {limit} bytes"
            raise DecompressionLimitExceeded(msg)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def decompress(data: bytes | memoryview, algorithm: str = "zstd", max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Decompress ``data``; never produce more than ``max_size`` bytes.

    Raises:
        DecompressionLimitExceeded: the output would exceed ``max_size``
            (checked against the declared size first, so a bomb fails fast).
        CorruptSnapshot: the input is not valid ``algorithm`` data.
    """
    _check_algorithm(algorithm)
    if max_size < 0:
        raise InvalidArgument(f"max_size must be >= 0, got {max_size!r}")
    if algorithm == "none":
        if len(data) > max_size:
            raise DecompressionLimitExceeded(f"{len(data)} bytes exceed the limit of {max_size} bytes")
        return bytes(data)
    try:
        if algorithm == "zstd":
            declared = zstandard.frame_content_size(data)
            if declared > max_size:
                msg = f"zstd frame declares {declared} bytes, above the limit of {max_size} bytes"
                raise DecompressionLimitExceeded(msg)
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(data, read_across_frames=True) as reader:
                out = _bounded_read(reader, max_size)
            if declared >= 0:
                complete = len(out) == declared
            else:  # no declared size: the output is known to be bounded, so check the frame end
                obj = dctx.decompressobj()
                obj.decompress(data)
                complete = obj.eof
            if not complete:
                raise CorruptSnapshot("zstd data is truncated")
            return out
        declared_lz4 = declared_size(data, "lz4")
        if declared_lz4 is not None and declared_lz4 > max_size:
            msg = f"lz4 frame declares {declared_lz4} bytes, above the limit of {max_size} bytes"
            raise DecompressionLimitExceeded(msg)
        return _lz4_bounded(data, max_size)
    except (zstandard.ZstdError, RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        msg = f"{algorithm} data is corrupt: {exc}"
        raise CorruptSnapshot(msg) from exc
