"""Coverage-guided fuzzing (atheris) of everything that reads untrusted snapshot bytes.

Set up: ``pip install atheris && python fuzz/make_corpus.py``; run:
``python fuzz/fuzz_loads.py fuzz/corpus -max_total_time=600`` (libFuzzer flags).
The first input byte picks the target: ``s`` a snapshot, ``S`` a signed
snapshot (verified), ``m`` a store manifest, ``M`` a signed one (verified). Any exception other than a
``StateTransferError`` is reported by atheris as a crash, with the input saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    import statetransfer as st
    from fuzz.targets import check_manifest, check_snapshot


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = data[:1], data[1:]
    try:
        if kind in (b"m", b"M"):
            check_manifest(body, signed=kind == b"M")
        else:
            check_snapshot(body, signed=kind == b"S")
    except st.StateTransferError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
