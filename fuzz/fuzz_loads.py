"""Coverage-guided fuzzing (atheris) of everything that reads untrusted snapshot bytes.

Set up: ``pip install atheris && python fuzz/make_corpus.py``; run:
``python fuzz/fuzz_loads.py fuzz/corpus -max_total_time=600`` (libFuzzer flags).
The first input byte picks the target: ``s`` a snapshot, ``S`` a signed
snapshot (verified), ``m`` a store manifest, ``M`` a signed one (verified),
``c`` a store holding a snapshot kept as chains (``targets.pack_store``: the
``STMF\\x03`` manifest, then the chain objects; read back with ``store.get``),
``C`` the same with the manifest's chains made to list the objects that follow
it (digests recomputed), so damage inside a chain object reaches the object,
delta and rebuild decoders. Any exception other than a ``StateTransferError``
is reported by atheris as a crash, with the input saved; so is a store target
accepting anything but one of the seed snapshots, byte for byte (those the
``store-*`` seeds of the corpus directories hold: seeds are made afresh, with
new timestamps and nonces, each time ``make_corpus.py`` runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    import statetransfer as st
    from fuzz.targets import check_manifest, check_snapshot, check_store, check_stored, seed_stores

#: What a store target may accept: the snapshots the seed stores hold, as ``st.dumps`` bytes.
EXPECTED: set[bytes] = set()


def expected_snapshots(argv: list[str]) -> set[bytes]:
    """The snapshots of ``seed_stores()`` and of the ``store-*`` seeds in the corpus directories of ``argv``."""
    found = {st.dumps(check_stored(objects)) for objects in seed_stores().values()}
    for arg in argv[1:]:
        if not arg.startswith("-") and Path(arg).is_dir():
            for seed in sorted(Path(arg).glob("store-*")):
                data = seed.read_bytes()
                found.add(st.dumps(check_store(data[1:], reframe=data[:1] == b"C")))
    return found


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = data[:1], data[1:]
    try:
        if kind in (b"m", b"M"):
            check_manifest(body, signed=kind == b"M")
        elif kind in (b"c", b"C"):
            snapshot = check_store(body, reframe=kind == b"C")
            if st.dumps(snapshot) not in EXPECTED:
                raise AssertionError(f"a store read back a snapshot no seed holds: {snapshot.id!r}")
        else:
            check_snapshot(body, signed=kind == b"S")
    except st.StateTransferError:
        pass


def main() -> None:
    EXPECTED.update(expected_snapshots(sys.argv))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
