"""Hostile input in the normal test suite: bounded, hypothesis-driven versions of the fuzz campaigns."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from fuzz.mutate import HOSTILE_VALUES, MANIFEST_BODY, header_of, reframe, spots
from fuzz.targets import (
    check_manifest,
    check_snapshot,
    check_store,
    check_stored,
    pack_store,
    seed_manifests,
    seed_snapshots,
    seed_stores,
    unpack_store,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import statetransfer as st
from statetransfer.stores._manifest import parse_chained

from .conftest import damage

SNAPSHOTS = seed_snapshots()
MANIFESTS = seed_manifests()
ORIGINALS = {name: st.loads(data) for name, (data, _) in SNAPSHOTS.items()}


def test_seeds_are_accepted():
    """Every seed is read, opened, decoded and imported without error."""
    for data, signed in SNAPSHOTS.values():
        check_snapshot(data, signed=signed)
    for name, data in MANIFESTS.items():
        check_manifest(data, signed=SNAPSHOTS[name][1])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(hs.sampled_from(sorted(SNAPSHOTS)), hs.data())
def test_raw_mutations_always_detected(name, data):
    """Flipped, inserted or deleted bytes anywhere in any kind of snapshot raise StateTransferError."""
    raw, signed = SNAPSHOTS[name]
    mutated = damage(data, raw)
    if mutated == raw:
        return
    with pytest.raises(st.StateTransferError):
        check_snapshot(bytes(mutated), signed=signed)


def _set_random_field(doc, data):
    parent, key = data.draw(hs.sampled_from(spots(doc)))
    parent[key] = data.draw(hs.sampled_from(HOSTILE_VALUES))
    return doc


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(hs.sampled_from(sorted(SNAPSHOTS)), hs.data())
def test_hostile_header_fields(name, data):
    """A header field set to a hostile value (framing recomputed) is detected, or changes nothing."""
    raw, signed = SNAPSHOTS[name]
    doc = _set_random_field(msgspec.msgpack.decode(header_of(raw)), data)
    forged = reframe(raw, msgspec.msgpack.encode(doc))
    try:
        result = check_snapshot(forged, signed=signed)
    except st.StateTransferError:
        return
    assert result == ORIGINALS[name]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(hs.sampled_from(sorted(MANIFESTS)), hs.data())
def test_hostile_manifests(name, data):
    """Damaged manifests (raw flips, or hostile fields with the digest recomputed) raise StateTransferError."""
    raw = MANIFESTS[name]
    if data.draw(hs.booleans()):
        mutated = bytearray(raw)
        mutated[data.draw(hs.integers(0, len(raw) - 1))] ^= data.draw(hs.integers(1, 255))
        with pytest.raises(st.StateTransferError):
            check_manifest(bytes(mutated), signed=SNAPSHOTS[name][1])
        return
    body = msgspec.msgpack.encode(_set_random_field(msgspec.msgpack.decode(raw[MANIFEST_BODY:]), data))
    forged = raw[:6] + hashlib.sha256(body).digest() + body
    try:
        check_manifest(forged, signed=SNAPSHOTS[name][1])
    except st.StateTransferError:
        return
    from statetransfer._container import decode_header

    assert decode_header(body) == decode_header(raw[MANIFEST_BODY:])


def test_mutation_campaign_runs():
    """A short run of the mutation campaign finds no accepted or escaping mutation."""
    from fuzz.mutate import campaign

    result = campaign(2000, seed=7)
    total = result["by_kind"]["total"]
    assert total.get("other", 0) == 0 and total.get("accepted", 0) == 0, result["examples"]
    assert total["detected"] > 1900


# -- stores keeping sections as chains (incremental) ---------------------------------------------------
STORES = seed_stores()
STORE_ORIGINALS = {name: st.dumps(check_stored(objects)) for name, objects in STORES.items()}


def test_store_seeds_read_back():
    """Each seed store reads back, and packs into one atheris input that reads back the same, re-framed or not."""
    for name, objects in STORES.items():
        _, chains = parse_chained(objects["manifests/fuzz-seed"], "fuzz-seed")
        assert {ref.kind for ref in chains.values()} == {"map", "bytes"}
        assert chains["secrets"].key_id is not None and len(chains["secrets"].objects) > 1
        packed = pack_store(objects)
        assert unpack_store(packed, reframe=True) == objects
        for reframed in (False, True):
            assert st.dumps(check_store(packed, reframe=reframed)) == STORE_ORIGINALS[name]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(hs.sampled_from(sorted(STORES)), hs.booleans(), hs.data())
def test_damaged_store_inputs(name, reframe, data):
    """The atheris store targets on damaged inputs: a StateTransferError, or exactly the seed's snapshot."""
    mutated = damage(data, pack_store(STORES[name]))
    try:
        snapshot = check_store(mutated, reframe=reframe)
    except st.StateTransferError:
        return
    assert st.dumps(snapshot) == STORE_ORIGINALS[name]


def test_chain_mutation_campaign_runs():
    """A short run of the chain mutation campaign (worker processes capped at 1 GiB) reaches the delta decoder
    and finds no accepted mutation, and no exception escaping but statetransfer's own."""
    from fuzz.mutate import CHAIN_KINDS, chain_campaign

    result = chain_campaign(1500, seed=7, workers=2, max_memory=1024, progress=False)
    by_kind, total = result["by_kind"], result["by_kind"]["total"]
    assert set(CHAIN_KINDS) <= set(by_kind)
    assert total.get("accepted", 0) == 0, result["examples"]
    assert not result["defects"], result["examples"]
    reasons = " | ".join(result["detected_by"])
    for reached in ("malformed delta", "reaches outside", "literal bytes do not add up", "bad envelope",
                    "wrong prefix", "DecryptionFailed", "section _ of snapshot _ is damaged"):  # fmt: skip
        assert reached in reasons


ALLOCATION_PROBE = """
import resource
import msgspec
import statetransfer as st
from fuzz.mutate import load_seed_stores, replace_object, _reseal
from fuzz.targets import check_stored

store = next(s for s in load_seed_stores() if s.name == "chains")
link = next(link for link in store.links if link.section == "cache" and link.index == 1)
ops, literal = msgspec.msgpack.decode(link.body)
ops += [0, 2**32 - sum(ops[1::2])]  # one more copy: the delta claims exactly the 4 GiB limit
forged = replace_object(store, link, _reseal(store, link, msgspec.msgpack.encode([ops, literal])))
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
try:
    check_stored(forged)
except st.StateTransferError as exc:
    print("refused:", exc)
"""


def test_hostile_delta_size_is_refused_before_allocating():
    """A ~130-byte delta whose op list claims 4 GiB is refused in a process capped at 1 GiB of address space."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", ALLOCATION_PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-500:]


@pytest.mark.parametrize("store_name", ["chains", "long-chains"])  # AES-256-GCM, ChaCha20-Poly1305
@pytest.mark.parametrize("nonce", [b"\xff" * 3, b"\xff" * 13], ids=["3-bytes", "13-bytes"])
def test_malformed_nonce_of_chained_section_is_refused(store_name, nonce):
    """A manifest (digest recomputed) giving a sealed incremental section a malformed nonce is refused."""
    from fuzz.mutate import load_seed_stores, seal_manifest

    store = next(s for s in load_seed_stores() if s.name == store_name)
    header = msgspec.msgpack.decode(store.header)
    sealed = next(sec for sec in header["sections"] if sec["encryption"] is not None)
    sealed["encryption"]["nonce"] = nonce
    manifest = seal_manifest(msgspec.msgpack.encode(header), store.chains)
    with pytest.raises(st.StateTransferError):
        check_stored({**store.objects, "manifests/fuzz-seed": manifest})
