"""Hostile input in the normal test suite: bounded, hypothesis-driven versions of the fuzz campaigns."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from fuzz.mutate import HOSTILE_VALUES, MANIFEST_BODY, header_of, reframe, spots
from fuzz.targets import check_manifest, check_snapshot, seed_manifests, seed_snapshots
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import statetransfer as st

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
