"""The ``statetransfer`` console script: runs the CLI, then ends the process safely if S3 was used."""

from __future__ import annotations

import os
import sys

from ._cli import main as cli_main


def main() -> None:
    """Run the command line; exit with its code.

    obstore's I/O runtime keeps worker threads that may still be winding down
    connections when the interpreter finalizes, which occasionally aborts the
    process (exit 134) after a command that succeeded. When the command used
    S3, the process ends with ``os._exit`` once every output is flushed, so
    the exit code is always the command's own.
    """
    try:
        cli_main()
        code: int = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    s3 = sys.modules.get("statetransfer.stores.s3")
    if s3 is not None and getattr(s3, "_used_in", None) is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                code = code or 1
        os._exit(code)
    sys.exit(code)
