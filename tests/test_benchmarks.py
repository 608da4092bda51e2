"""The benchmark suite runs and writes valid JSON (its timings are never asserted).

The one bound on time is the throttling proxy's own: it must really hold traffic to its rate (generous bounds).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_emits_json(tmp_path):
    """benchmarks/run.py --quick writes every ratio to results-quick.json, leaving the committed full results alone."""
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench, ignore=shutil.ignore_patterns("__pycache__", "results-quick.json"))
    committed = (ROOT / "benchmarks" / "results.json").read_bytes()
    out = bench / "results-quick.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(bench / "run.py"), "--quick"], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (bench / "results.json").read_bytes() == committed
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert set(doc["ratios"]) == {
        "export_vs_pickle", "export_vs_msgspec", "import_vs_pickle", "import_vs_msgspec", "size_vs_gzip_pickle",
        "peak_memory_vs_msgpack", "scaling_max_deviation", "store_vs_file",
    }  # fmt: skip
    assert all(isinstance(v, float) and v > 0 for v in doc["ratios"].values())
    assert doc["reload_1mb"]["p50"] > 0 and doc["stall_ms"] > 0
    assert "export+dumps vs pickle.dumps" in proc.stdout


def test_incremental_benchmark_runs(tmp_path):
    """benchmarks/incremental.py at tiny sizes: every case restores exactly and reports its stored bytes."""
    out = tmp_path / "incremental.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["--map-mb", "2", "--bytes-mb", "3", "--rounds", "2", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "incremental.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text())
    assert [c["case"].split(",")[0] for c in cases] == ["map 2 MB", "map 2 MB", "bytes 3 MB"]
    assert all(0 < c["incremental_stored_bytes"] < c["full_stored_bytes"] for c in cases)


def test_recovery_benchmark_runs(tmp_path):
    """benchmarks/recovery.py --quick checkpoints, kills and restarts a service, and prints its medians."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "export + write" in proc.stdout and "serving restored state" in proc.stdout


def test_incremental_benchmark_on_s3_through_the_proxy(tmp_path):
    """--only-s3 --s3-mbps: the map cases, plain and encrypted, on moto behind the throttling proxy."""
    out = tmp_path / "incremental.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["--only-s3", "--s3-mbps", "40", "--map-mb", "2", "--rounds", "2", "--probe-mb", "2", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "incremental.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text())
    assert [c["case"] for c in cases] == [
        "map 2 MB, 1% of keys changed, s3 at 40 MB/s",
        "map 2 MB, 1% of keys changed, encrypted, s3 at 40 MB/s",
    ]
    assert all(0 < c["incremental_stored_bytes"] < c["full_stored_bytes"] and c["s3_mbps"] == 40 for c in cases)
    assert "s3 through the proxy" in proc.stdout


# -- the throttling proxy ------------------------------------------------------------------------------
def load_proxy():
    spec = importlib.util.spec_from_file_location("throttle_proxy", ROOT / "benchmarks" / "throttle_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads a 16-byte header (n, m), then n bytes; answers with m bytes, then closes."""
    header = await reader.readexactly(16)
    n, m = int.from_bytes(header[:8], "big"), int.from_bytes(header[8:], "big")
    while n:
        n -= len(await reader.readexactly(min(n, 1 << 20)))
    for start in range(0, m, 1 << 20):
        writer.write(b"d" * min(1 << 20, m - start))
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def exchange(endpoint: str, n: int, m: int) -> int:
    """Send n bytes through ``endpoint`` to the sink, ask m back: the bytes that came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
    writer.write(n.to_bytes(8, "big") + m.to_bytes(8, "big"))
    for start in range(0, n, 1 << 20):
        writer.write(b"u" * min(1 << 20, n - start))
        await writer.drain()
    got = 0
    while data := await reader.read(1 << 20):
        got += len(data)
    writer.close()
    await writer.wait_closed()
    return got


async def settled(proxy) -> int:
    """The proxy's open connections once closes have gone through (a few seconds at most)."""
    for _ in range(100):
        if not proxy.open:
            break
        await asyncio.sleep(0.05)
    return proxy.open


async def test_throttle_proxy_limits_bandwidth_each_way():
    """20 MB at 40 MB/s takes about 0.5 s each way (the burst allowance is 10 ms); many connections share the rate."""
    tp = load_proxy()
    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    proxy = await tp.start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", 40, 40)
    try:
        started = time.perf_counter()
        assert await exchange(proxy.endpoint, 20 * tp.MB, 0) == 0
        up = time.perf_counter() - started
        started = time.perf_counter()
        assert await exchange(proxy.endpoint, 0, 20 * tp.MB) == 20 * tp.MB
        down = time.perf_counter() - started
        started = time.perf_counter()
        got = await asyncio.gather(*(exchange(proxy.endpoint, 100_000, 100_000) for _ in range(100)))
        many = time.perf_counter() - started
        assert got == [100_000] * 100
        assert proxy.sent == {"up": 30 * tp.MB + 102 * 16, "down": 30 * tp.MB}
        assert 0.45 < up < 10 and 0.45 < down < 10, (up, down)
        assert many > 0.2, many  # 10 MB each way: 0.25 s at least
        assert proxy.served == 102 and await settled(proxy) == 0
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()


async def test_throttle_proxy_adds_its_round_trips():
    """One exchange costs the RTT, plus the connect RTT on a new connection (at least; no upper bound)."""
    tp = load_proxy()
    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    took = {}
    for connect in (None, 0):
        proxy = await tp.start(target, None, None, 60, connect_rtt_ms=connect)
        try:
            started = time.perf_counter()
            assert await exchange(proxy.endpoint, 10, 10) == 10
            took[connect] = time.perf_counter() - started
        finally:
            await proxy.aclose()
    server.close()
    await server.wait_closed()
    assert took[None] > 0.115 and took[0] > 0.055, took


async def test_throttle_proxy_passes_closes_on_and_closes_on_aclose():
    """A client that hangs up mid-upload, a server that does, a target that is down, aclose() with live connections."""
    tp = load_proxy()
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # until EOF
        writer.close()
        await writer.wait_closed()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (record, hang_up)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    down = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    down_port = down.sockets[0].getsockname()[1]
    down.close()
    await down.wait_closed()
    proxies = [await tp.start(f"http://127.0.0.1:{p}", 20, 20, 10) for p in (*ports, down_port)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(proxies[0].endpoint.rsplit(":", 1)[1]))
        writer.write(b"partial upload")
        await writer.drain()
        writer.close()  # mid-request
        await writer.wait_closed()
        assert await settled(proxies[0]) == 0
        assert seen == [b"partial upload"]
        for proxy in proxies[1:]:  # the server hangs up, or there is none: the client sees EOF
            reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.endpoint.rsplit(":", 1)[1]))
            writer.write(b"request")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
            assert await settled(proxy) == 0
        idle = [
            await asyncio.open_connection("127.0.0.1", int(proxies[0].endpoint.rsplit(":", 1)[1])) for _ in range(5)
        ]
        for _ in range(100):
            if proxies[0].open == 5:
                break
            await asyncio.sleep(0.02)
        assert proxies[0].open == 5
        await proxies[0].aclose()
        assert proxies[0].open == 0
        for reader, writer in idle:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
    finally:
        for proxy in proxies:
            await proxy.aclose()
        for server in servers:
            server.close()
            await server.wait_closed()
