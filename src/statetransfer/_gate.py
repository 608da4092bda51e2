"""The call gate of one plugin: admits calls, pauses new ones, and waits for those in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from .errors import PluginError

__all__ = ["CallGate"]


class CallGate:
    """Counts the calls in flight to one plugin and holds new callers while paused.

    Args:
        name: the plugin id, for error messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        #: calls admitted so far (a change counter: no call admitted, no change made through the gate)
        self.admitted = 0
        self.closed = False
        self._paused_at: float | None = None
        self._idle = asyncio.Event()
        self._resumed = asyncio.Event()
        self._idle.set()
        self._resumed.set()

    @property
    def paused(self) -> bool:
        """Whether new callers are held."""
        return self._paused_at is not None

    def pause(self) -> None:
        """Hold new callers (calls in flight go on) until :meth:`resume` or :meth:`close`."""
        if self._paused_at is None:
            self._paused_at = time.perf_counter()
            self._resumed.clear()

    def resume(self) -> float:
        """Let held callers in; returns the seconds the gate was paused (0.0 if it was not)."""
        paused_at, self._paused_at = self._paused_at, None
        self._resumed.set()
        return 0.0 if paused_at is None else time.perf_counter() - paused_at

    def close(self) -> None:
        """Refuse every later caller (held ones are woken to get the error)."""
        self.closed = True
        self.resume()

    async def quiesce(self, timeout: float) -> None:
        """Wait until no call is in flight.

        Raises:
            PluginError: calls were still running after ``timeout`` seconds.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            msg = f"quiesce timeout: {self.in_flight} calls still in flight after {timeout}s"
            raise PluginError(msg) from None

    @contextlib.asynccontextmanager
    async def enter(self, acquire_timeout: float) -> AsyncIterator[None]:
        """Count one call in flight for the body; waits first while the gate is paused.

        Raises:
            PluginError: the gate stayed paused for ``acquire_timeout`` seconds, or was closed.
        """
        while self.paused and not self.closed:
            try:
                await asyncio.wait_for(self._resumed.wait(), acquire_timeout)
            except TimeoutError:
                msg = f"plugin {self.name!r} is reloading; gave up after waiting {acquire_timeout}s"
                raise PluginError(msg) from None
        if self.closed:
            raise PluginError(f"plugin {self.name!r} was unloaded")
        self.in_flight += 1
        self.admitted += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
