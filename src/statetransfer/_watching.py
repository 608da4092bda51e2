"""Watching plugin source files and reloading the plugins whose files changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from .errors import PluginError

__all__ = ["watch_sources"]

log = logging.getLogger("statetransfer._host")


async def watch_sources(
    sources: Callable[[], Mapping[str, set[Path]]],
    reload: Callable[[str], Awaitable[object]],
    *,
    debounce_ms: int,
    stop_event: asyncio.Event | None,
) -> None:
    """Call ``reload(plugin_id)`` whenever one of that plugin's source files changes.

    Args:
        sources: plugin id -> its source files, asked again after every change
            (plugins come and go).
        reload: what to call; a plugin unloaded meanwhile is skipped.
        debounce_ms: changes within this many milliseconds make one reload.
        stop_event: stop watching when set (else run until cancelled).

    Raises:
        PluginError: no plugin has a source file to watch.
    """
    import watchfiles  # noqa: PLC0415 - only hosts that watch need it

    dirs = sorted({str(path.parent) for files in sources().values() for path in files})
    if not dirs:
        raise PluginError("no loaded plugin has a source file to watch")
    log.info("watching %s for plugin source changes", dirs)
    async for changes in watchfiles.awatch(*dirs, debounce=debounce_ms, stop_event=stop_event):
        changed = {Path(path).resolve() for _, path in changes}
        for plugin_id, files in sources().items():
            if changed & files:
                with contextlib.suppress(PluginError):  # unloaded meanwhile
                    await reload(plugin_id)
