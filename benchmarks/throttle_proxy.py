"""A TCP proxy on 127.0.0.1 that limits bandwidth and adds latency: a local S3 server made to look remote.

Run: ``python benchmarks/throttle_proxy.py --target http://127.0.0.1:PORT --mbps 50 [--rtt-ms 20]
[--connect-rtt-ms 20]``; it prints its own endpoint (``http://127.0.0.1:PORT``) on one line, then
forwards every byte unchanged until its stdin closes. :func:`throttled` runs it so from a benchmark.

* **Bandwidth:** one token bucket per direction, shared by all connections:
  ``--up-mbps`` caps what clients send (uploads, S3 PUTs), ``--down-mbps``
  what they receive (downloads, GETs); ``--mbps`` sets both. 1 MB = 10^6
  bytes. The bucket lets at most 10 ms of traffic (at least 64 KiB) through
  at once, so a transfer of a second is within a percent or two of the rate.
* **Latency:** ``--rtt-ms`` delays each direction by half a round trip,
  so each request/response exchange costs one RTT more; ``--connect-rtt-ms``
  (default: ``--rtt-ms``) holds the first bytes to the server that long
  after the accept, the handshake of a new connection. In-flight data is not
  limited by the delay (no TCP window is simulated), only queued. A server
  that closes every connection after one response (moto's werkzeug server
  sends ``Connection: close``) makes each request a new connection: with
  ``--connect-rtt-ms 0`` it costs one RTT, as on a kept-alive connection.
* A connection closed or reset by either side is closed on the other (a
  half-close is passed on as one); :attr:`Proxy.open` counts live connections,
  and :meth:`Proxy.aclose` closes them all.

The proxy runs in its own process so that the benchmark's CPU work (export,
compression; 2 cores) does not hold up the forwarding through the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

CHUNK = 1 << 17
MB = 1_000_000


class Bucket:
    """A token bucket kept as virtual time: :meth:`take` returns once ``n`` more bytes fit the rate."""

    def __init__(self, mbps: float | None) -> None:
        self.rate = (mbps or 0) * MB  # bytes per second; 0: unlimited
        self.slack = max(0.01, (64 << 10) / self.rate) if self.rate else 0.0  # the burst, in seconds of traffic
        self.free_at = 0.0  # when the bytes taken so far have all gone through

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.free_at = max(self.free_at, now - self.slack) + n / self.rate
        if self.free_at > now:
            await asyncio.sleep(self.free_at - now)


class Proxy:
    """Forwards connections to ``host:port`` through one :class:`Bucket` per direction, ``rtt`` seconds of delay.

    ``connect_rtt`` (default ``rtt``): seconds after the accept before the first bytes reach the server.
    """

    def __init__(
        self,
        host: str,
        port: int,
        up_mbps: float | None,
        down_mbps: float | None,
        rtt: float = 0.0,
        *,
        connect_rtt: float | None = None,
    ) -> None:
        self.host, self.port, self.rtt = host, port, rtt
        self.connect_rtt = rtt if connect_rtt is None else connect_rtt
        self.up, self.down = Bucket(up_mbps), Bucket(down_mbps)
        self.server: asyncio.Server | None = None
        self.endpoint = ""  # http://127.0.0.1:PORT once listening
        self.served = 0  # connections accepted so far
        self.sent = {"up": 0, "down": 0}  # bytes forwarded each way
        self._live: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._live)

    async def listen(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port, backlog=512)
        self.endpoint = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def aclose(self) -> None:
        """Stop listening and close every open connection (both sides)."""
        if self.server is not None:
            self.server.close()
        for task in list(self._live):
            task.cancel()
        await asyncio.gather(*self._live, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        accepted = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        self.served += 1
        server_w = None
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(client_r, server_w, self.up, "up", accepted + self.connect_rtt))
                tg.create_task(self._pump(server_r, client_w, self.down, "down", 0.0))
        except* (OSError, EOFError):
            pass  # a reset or refused connection: both sides are closed below
        except* asyncio.CancelledError:
            pass  # aclose(): the same (ending quietly: asyncio's stream callback would report a cancelled handler)
        finally:
            for w in (client_w, server_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await w.wait_closed()
            self._live.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, bucket: Bucket, way: str, start: float
    ) -> None:
        """``src`` to ``dst`` at the bucket's rate, each chunk ``rtt / 2`` late (never before ``start``), then EOF."""
        lag = self.rtt / 2
        depth = 16 + int(bucket.rate * lag / CHUNK) * 2  # room for the data in flight during the delay
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(depth)

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                if not data:
                    break
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
                self.sent[way] += len(data)
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(deliver())
            while data := await src.read(CHUNK):
                await bucket.take(len(data))
                await line.put((max(time.monotonic(), start) + lag, data))
            await line.put((0.0, b""))


async def start(
    target: str,
    up_mbps: float | None,
    down_mbps: float | None,
    rtt_ms: float = 0.0,
    port: int = 0,
    *,
    connect_rtt_ms: float | None = None,
) -> Proxy:
    """A proxy on 127.0.0.1 in front of ``target`` (``http://host:port``), serving on this event loop."""
    parts = urlsplit(target)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"target {target!r} needs a host and a port")
    connect = None if connect_rtt_ms is None else connect_rtt_ms / 1000
    proxy = Proxy(parts.hostname, parts.port, up_mbps, down_mbps, rtt_ms / 1000, connect_rtt=connect)
    await proxy.listen(port)
    return proxy


@contextlib.contextmanager
def throttled(target: str, mbps: float, rtt_ms: float = 0.0, connect_rtt_ms: float | None = None) -> Iterator[str]:
    """The proxy in a child process in front of ``target``, ``mbps`` each way; yields its endpoint."""
    cmd = [sys.executable, __file__, "--target", target, "--mbps", str(mbps), "--rtt-ms", str(rtt_ms)]
    if connect_rtt_ms is not None:
        cmd += ["--connect-rtt-ms", str(connect_rtt_ms)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None and proc.stdin is not None
    try:
        endpoint = proc.stdout.readline().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the proxy did not start (exit code {proc.wait(10)})")
        yield endpoint
    finally:
        proc.stdin.close()  # the proxy's cue to stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


async def serve(args: argparse.Namespace) -> None:
    up = args.up_mbps if args.up_mbps is not None else args.mbps
    down = args.down_mbps if args.down_mbps is not None else args.mbps
    proxy = await start(args.target, up, down, args.rtt_ms, args.port, connect_rtt_ms=args.connect_rtt_ms)
    print(proxy.endpoint, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin (or exits)
    await proxy.aclose()
    if args.verbose:
        print(f"proxy: {proxy.served} connections, {proxy.sent['up'] / MB:.1f} MB up, "
              f"{proxy.sent['down'] / MB:.1f} MB down", file=sys.stderr)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="http://127.0.0.1:PORT of the server")
    parser.add_argument("--mbps", type=float, default=None, help="MB/s each way (default: unlimited)")
    parser.add_argument("--up-mbps", type=float, default=None, help="MB/s to the server (default: --mbps)")
    parser.add_argument("--down-mbps", type=float, default=None, help="MB/s from the server (default: --mbps)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time, ms")
    parser.add_argument(
        "--connect-rtt-ms", type=float, default=None, help="added to a new connection (default: --rtt-ms)"
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="connections and bytes forwarded, at the end")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
