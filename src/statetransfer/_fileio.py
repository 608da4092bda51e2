"""Atomic writes of user files: the previous file survives any failure, a reader never sees a torn one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable

from .errors import WriteFailed

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0666 less the process umask (what ``open()`` would give a new file)."""
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *, mode: int | None = None) -> None:
    """Replace the file at ``path`` with ``data``, atomically and durably.

    The bytes go to a new temporary file in the same directory (created with
    ``mode``, never following a symlink), which is fsynced, renamed over
    ``path`` and followed by an fsync of the directory. On any failure the
    temporary file is removed and the previous content of ``path`` is left as
    it was. With ``mode`` the new file has exactly that mode, whatever mode an
    existing file had (keyrings stay 0600); without it, an existing file's
    mode is kept and a new file gets the default (0666 less the umask).

    Args:
        path: the file to write. A symlink at ``path`` is replaced, not followed.
        data: the content, as one bytes object or an iterable of pieces (streamed).
        mode: permission bits of the new file (see above).

    Raises:
        WriteFailed: the file could not be written (full disk, missing directory,
            permissions); ``path`` is unchanged.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    if mode is None:
        with contextlib.suppress(OSError):
            st = os.lstat(target)
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WriteFailed(f"cannot write {target!r}: {exc.strerror or exc}", path=target) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _default_mode() if mode is None else mode)
            for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(directory)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise WriteFailed(f"cannot write {target!r}: {exc.strerror or exc}", path=target) from exc
        raise
