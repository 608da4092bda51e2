"""Write the seed corpus for the atheris harness: one file per snapshot, manifest and chained store kind.

Run: ``python fuzz/make_corpus.py [DIR]`` (default ``fuzz/corpus``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import pack_store, seed_manifests, seed_snapshots, seed_stores

# The first byte of each corpus file selects the target in fuzz_loads.py.
SNAPSHOT, SIGNED, MANIFEST, SIGNED_MANIFEST = b"s", b"S", b"m", b"M"
#: A store keeping sections as chains (``targets.pack_store``), read as is or with its chains re-framed.
STORE, REFRAMED_STORE = b"c", b"C"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("corpus"))
    out.mkdir(parents=True, exist_ok=True)
    for name, (data, signed) in seed_snapshots().items():
        (out / f"snapshot-{name}").write_bytes((SIGNED if signed else SNAPSHOT) + data)
    signed = {name for name, (_, is_signed) in seed_snapshots().items() if is_signed}
    for name, data in seed_manifests().items():
        (out / f"manifest-{name}").write_bytes((SIGNED_MANIFEST if name in signed else MANIFEST) + data)
    for name, objects in seed_stores().items():
        (out / f"store-{name}").write_bytes(STORE + pack_store(objects))
        (out / f"store-{name}-reframed").write_bytes(REFRAMED_STORE + pack_store(objects))
    print(f"wrote {len(list(out.iterdir()))} seeds to {out}")


if __name__ == "__main__":
    main()
