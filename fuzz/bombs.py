"""Bomb campaign: small inputs that claim or produce enormous output; each must fail fast and small.

Run: ``python fuzz/bombs.py [--json FILE]``. Every case runs in a fresh
subprocess; the table reports the error raised, the wall time, and the
child's peak resident memory above its baseline (goal: under 100 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES: dict[str, str] = {
    "zstd frame declaring 10 GiB (1 KiB input), decompress()": """
cobj = zstandard.ZstdCompressor().compressobj(size=10 << 30)
bomb = cobj.compress(b"\\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
run(lambda: st.decompress(bomb, "zstd"), len(bomb))
""",
    "zstd 10 GiB of zeros, size undeclared, decompress()": """
cctx = zstandard.ZstdCompressor(write_content_size=False)
cobj = cctx.compressobj()
block = b"\\0" * (64 << 20)
bomb = b"".join(cobj.compress(block) for _ in range(160)) + cobj.flush()
run(lambda: st.decompress(bomb, "zstd"), len(bomb))
""",
    "lz4 frame declaring 10 GiB, decompress()": """
c = lz4.frame.LZ4FrameCompressor()
frame = c.begin(source_size=1024) + c.compress(b"\\0" * 1024) + c.flush()
for hc in range(256):
    bomb = frame[:6] + struct.pack("<Q", 10 << 30) + bytes([hc]) + frame[15:]
    try:
        if lz4.frame.get_frame_info(bomb)["content_size"] == 10 << 30:
            break
    except RuntimeError:
        pass
run(lambda: st.decompress(bomb, "lz4"), len(bomb))
""",
    "lz4 2 GiB of zeros, size undeclared, decompress()": """
c = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB)
block = b"\\0" * (64 << 20)
bomb = c.begin() + b"".join(c.compress(block) for _ in range(32)) + c.flush()
run(lambda: st.decompress(bomb, "lz4"), len(bomb))
""",
    "section recording 10 GiB in a snapshot, loads + import": """
cobj = zstandard.ZstdCompressor().compressobj(size=10 << 30)
data = cobj.compress(b"\\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
sec = st.StateSection("cache", 2, data, True, None, {"compression": "zstd", "original_size": str(10 << 30)})
snap = seal(sec)
run(lambda: check_snapshot(st.dumps(snap)), len(st.dumps(snap)))
""",
    "section recording 10 GiB, import_state with the default 4 GiB limit": """
cobj = zstandard.ZstdCompressor().compressobj(size=10 << 30)
data = cobj.compress(b"\\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
sec = st.StateSection("cache", 2, data, True, None, {"compression": "zstd", "original_size": str(10 << 30)})
snap = seal(sec)
run(lambda: asyncio.run(FuzzPlugin(keyring=KEYRING).import_state(st.loads(st.dumps(snap)))), len(st.dumps(snap)))
""",
    "section frame declaring 3 GiB but recording 1 KiB, loads + import": """
cobj = zstandard.ZstdCompressor().compressobj(size=3 << 30)
data = cobj.compress(b"\\0" * 1024) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
sec = st.StateSection("cache", 2, data, True, None, {"compression": "zstd", "original_size": "1024"})
snap = seal(sec)
run(lambda: check_snapshot(st.dumps(snap)), len(st.dumps(snap)))
""",
    "container section length field 2**63": """
raw = st.dumps(seal(st.StateSection("cache", 2, b"x" * 10, False, None, {})))
doc = msgspec.msgpack.decode(header_of(raw))
doc["sections"][0]["length"] = 2**63
bomb = reframe(raw, msgspec.msgpack.encode(doc))
run(lambda: st.loads(bomb), len(bomb))
""",
    "container header length field 2**32-1": """
raw = st.dumps(seal(st.StateSection("cache", 2, b"x" * 10, False, None, {})))
bomb = raw[:12] + struct.pack(">I", 2**32 - 1) + raw[16:]
run(lambda: st.loads(bomb), len(bomb))
""",
    "msgpack section claiming 2**32-1 map entries": """
data = b"\\xdf\\xff\\xff\\xff\\xff" + b"\\xa1a\\x01" * 4
sec = st.StateSection("cache", 2, data, False, None, {"codec": "msgpack", "original_size": str(len(data))})
snap = seal(sec)
run(lambda: check_snapshot(st.dumps(snap)), len(st.dumps(snap)))
""",
}

PRELUDE = """
import resource, struct, sys, time, msgspec, zstandard, lz4.frame
sys.path.insert(0, {root!r})
import statetransfer as st
from fuzz.targets import KEYRING, FuzzPlugin, check_snapshot
import asyncio
from fuzz.mutate import header_of, reframe

def seal(section):
    snap = st.StateSnapshot("bomb", "fuzz", "2.0.0", 2, 0, {{section.name: section}}, st.StateMetadata())
    return st.seal(snap)

def run(func, size):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        func()
        outcome = "ACCEPTED"
    except st.StateTransferError as exc:
        outcome = f"{{type(exc).__name__}}: {{str(exc)[:70]}}"
    except BaseException as exc:
        outcome = f"OTHER {{type(exc).__name__}}: {{exc}}"
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(repr((outcome, elapsed, (peak - base) / 1024, size)))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    rows = []
    for name, body in CASES.items():
        script = PRELUDE.format(root=str(ROOT)) + body
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
        line = (
            proc.stdout.strip().splitlines()[-1]
            if proc.stdout.strip()
            else repr(("CRASHED " + proc.stderr[-200:], 0, 0, 0))
        )
        outcome, elapsed, peak_mb, size = eval(line)  # noqa: S307 - our own child's repr of a tuple
        rows.append({"case": name, "input_bytes": size, "outcome": outcome, "seconds": elapsed, "peak_mb": peak_mb})
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':{width}}  {'input':>9}  {'time':>8}  {'peak+':>8}  outcome")
    for r in rows:
        figures = f"{r['input_bytes']:>9}  {r['seconds'] * 1e3:6.1f}ms  {r['peak_mb']:6.1f}MB"
        print(f"{r['case']:{width}}  {figures}  {r['outcome']}")
    bad = [r for r in rows if r["peak_mb"] >= 100 or r["outcome"].startswith(("ACCEPTED", "OTHER", "CRASHED"))]
    peak = max(r["peak_mb"] for r in rows)
    print(f"{len(rows)} bombs, {len(rows) - len(bad)} failed fast and small, max peak {peak:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
