"""Declarative plugins: validation rules, import rules, migrations, concurrency."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import statetransfer as st

from .conftest import seal
from .plugins import Cache, CacheNoSecrets, CacheV1, Config


def replace_section(snapshot: st.StateSnapshot, section: st.StateSection) -> st.StateSnapshot:
    return seal(msgspec.structs.replace(snapshot, sections={**snapshot.sections, section.name: section}))


def state_of(plugin: st.StatefulPlugin) -> dict:
    return copy.deepcopy({name: getattr(plugin, name) for name in plugin.sections}) | {
        "_preserved": dict(plugin._preserved)
    }


@pytest.fixture
def ring():
    return st.Keyring.generate("k1")


@pytest.fixture
async def filled(ring):
    plugin = Cache(keyring=ring)
    plugin.config = Config(ttl=5)
    plugin.entries = {f"k{i}": [i] for i in range(500)}
    plugin.secrets = {"token": "abc"}
    return plugin


async def test_round_trip_through_bytes(filled, ring):
    """Export, dumps, loads, import into a fresh instance reproduces every section."""
    snapshot = await filled.export_state()
    target = Cache(keyring=ring)
    result = await target.import_state(st.loads(st.dumps(snapshot)))
    assert sorted(result.imported_sections) == ["config", "entries", "secrets"]
    assert result.failed_sections == []
    assert state_of(target) == state_of(filled)
    assert snapshot.metadata.reason == st.StateCreationReason.EXPORT
    assert snapshot.sections["entries"].compressed
    assert snapshot.sections["secrets"].encryption.key_id == "k1"
    assert b"abc" not in snapshot.sections["secrets"].data


async def test_export_reason_tags_expiry(filled):
    """The caller sets reason, tags and expires_at of an export."""
    snap = await filled.export_state(reason=st.StateCreationReason.BACKUP, tags=["nightly"], expires_at=2**40)
    assert snap.metadata.reason == st.StateCreationReason.BACKUP
    assert snap.metadata.tags == ["nightly"]
    assert snap.metadata.expires_at == 2**40
    assert st.calculate_checksum(snap) == snap.checksum


# -- validation rules ---------------------------------------------------------------------------


async def test_rule_plugin_id_differs(filled):
    """Another plugin's snapshot: invalid, score 0.0, a reason in errors."""
    snap = seal(msgspec.structs.replace(await filled.export_state(), plugin_id="other"))
    v = await filled.validate_state(snap)
    assert not v.is_valid and v.compatibility_score == 0.0
    assert any("'other'" in e for e in v.errors)


async def test_rule_checksum_wrong(filled):
    """A wrong checksum makes the snapshot invalid with a reason."""
    snap = msgspec.structs.replace(await filled.export_state(), checksum="sha256:" + "0" * 64)
    v = await filled.validate_state(snap)
    assert not v.is_valid and any("checksum" in e for e in v.errors)


async def test_rule_expired(filled):
    """A snapshot whose expires_at is in the past is invalid."""
    snap = await filled.export_state(expires_at=int(time.time()) - 10)
    v = await filled.validate_state(snap)
    assert not v.is_valid and any("expired" in e for e in v.errors)


async def test_rule_newer_schema(filled):
    """A snapshot with a newer schema version: schema_compatible=False, invalid."""
    snap = seal(msgspec.structs.replace(await filled.export_state(), schema_version=3))
    v = await filled.validate_state(snap)
    assert v.schema_compatible is False and v.is_valid is False


async def test_rule_older_schema_with_migration_path(ring):
    """An older snapshot is valid when every section has a migration path (after_migration)."""
    old = CacheV1()
    old.entries = {"a": 1}
    v = await Cache(keyring=ring).validate_state(await old.export_state())
    assert v.is_valid
    assert v.section_validations["entries"].verdict == "after_migration"
    assert v.section_validations["entries"].migration_path == [1, 2]
    assert v.section_validations["config"].verdict == "as_is"
    assert v.section_validations["config"].migration_path == []


async def test_rule_version_compatible_is_same_major(filled):
    """A differing major is version_compatible=False but does not by itself invalidate."""
    snap = seal(msgspec.structs.replace(await filled.export_state(), plugin_version="3.0.0"))
    v = await filled.validate_state(snap)
    assert v.version_compatible is False and v.is_valid is True
    same = seal(msgspec.structs.replace(snap, plugin_version="2.9.1"))
    assert (await filled.validate_state(same)).version_compatible is True


async def test_rule_unparsable_version(filled):
    """An unparsable version: version_compatible=False plus a warning, no exception."""
    snap = seal(msgspec.structs.replace(await filled.export_state(), plugin_version="banana"))
    v = await filled.validate_state(snap)
    assert v.version_compatible is False and v.is_valid
    assert any("banana" in w for w in v.warnings)


async def test_rule_unknown_section_preserved(filled, ring):
    """An undeclared section is 'unknown', valid, warned; not imported; carried by the next export."""
    extra = st.StateSection("future", 7, b"opaque", False, None, {"k": "v"})
    snap = replace_section(await filled.export_state(), extra)
    target = Cache(keyring=ring)
    v = await target.validate_state(snap)
    assert v.is_valid and v.section_validations["future"].verdict == "unknown"
    assert v.section_validations["future"].warnings
    result = await target.import_state(snap)
    assert "future" not in result.imported_sections
    again = await target.export_state()
    assert again.sections["future"] == extra
    third = Cache(keyring=ring)
    await third.import_state(st.loads(st.dumps(again)))
    assert (await third.export_state()).sections["future"] == extra


async def test_unknown_encrypted_section_survives_round_trip(filled, ring):
    """An encrypted unknown section still decrypts after being carried into later snapshots."""
    from statetransfer._sections import pack_section, unpack_section

    first = await filled.export_state()
    extra = pack_section("vault", 1, b"hidden", snapshot_id=first.id, plugin_id="cache", keyring=ring, encrypt=True)
    snap = replace_section(first, extra)
    for keyring in (ring, None):  # with the key: re-sealed; without: carried with its binding
        carrier = CacheNoSecrets(keyring=keyring)
        await carrier.import_state(
            seal(msgspec.structs.replace(snap, sections={k: v for k, v in snap.sections.items() if k != "secrets"}))
        )
        later = await carrier.export_state()
        carried = later.sections["vault"]
        assert unpack_section(carried, snapshot_id=later.id, plugin_id="cache", keyring=ring) == b"hidden"


async def test_rule_missing_key(filled):
    """An encrypted section whose key is missing is invalid; the error names the key id."""
    snap = await filled.export_state()
    v = await Cache(keyring=st.Keyring.generate("other")).validate_state(snap)
    assert not v.is_valid
    assert not v.section_validations["secrets"].is_valid
    assert any("'k1'" in e for e in v.section_validations["secrets"].errors)
    assert v.section_validations["config"].is_valid


async def test_rule_score_bounds_and_monotonic(filled, ring):
    """Score is 1.0 only when all as_is; each added problem never raises it."""
    snap = await filled.export_state()
    target = Cache(keyring=ring)
    scores = [(await target.validate_state(snap)).compatibility_score]
    snap = replace_section(snap, st.StateSection("future", 1, b"x"))
    scores.append((await target.validate_state(snap)).compatibility_score)
    snap = seal(msgspec.structs.replace(snap, plugin_version="9.0.0"))
    scores.append((await target.validate_state(snap)).compatibility_score)
    snap = replace_section(snap, st.StateSection("entries", 1, msgspec.msgpack.encode({"a": 1})))
    scores.append((await target.validate_state(snap)).compatibility_score)
    snap = replace_section(snap, st.StateSection("config", 5, b"{}"))
    scores.append((await target.validate_state(snap)).compatibility_score)
    snap = seal(msgspec.structs.replace(snap, schema_version=9))
    scores.append((await target.validate_state(snap)).compatibility_score)
    assert scores[0] == 1.0
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(b < a for a, b in itertools.pairwise(scores)), scores


# -- import rules -------------------------------------------------------------------------------


async def test_import_validates_first(filled, ring):
    """import_state raises ValidationFailed (carrying the validation) when invalid."""
    snap = seal(msgspec.structs.replace(await filled.export_state(), plugin_id="other"))
    target = Cache(keyring=ring)
    before = state_of(target)
    with pytest.raises(st.ValidationFailed) as info:
        await target.import_state(snap)
    assert info.value.validation.compatibility_score == 0.0
    assert state_of(target) == before


async def test_import_atomic(filled, ring):
    """A section that fails to decode aborts the import with ImportFailed and leaves state exactly as before."""
    bad = st.StateSection("entries", 2, msgspec.msgpack.encode({"a": [1, "x"]}))
    snap = replace_section(await filled.export_state(), bad)
    target = Cache(keyring=ring)
    target.entries = {"keep": [1]}
    target.config = Config(ttl=1)
    before = state_of(target)
    with pytest.raises(st.ImportFailed, match=r'entries\["a"\]\[1\]: expected int, got str') as info:
        await target.import_state(snap)
    assert [f.name for f in info.value.failed_sections] == ["entries"]
    assert state_of(target) == before


async def test_import_partial(filled, ring):
    """partial=True applies the sections that succeed and lists the others."""
    bad = st.StateSection("entries", 2, b"\xc1 not msgpack")
    snap = replace_section(await filled.export_state(), bad)
    target = Cache(keyring=ring)
    result = await target.import_state(snap, partial=True)
    assert sorted(result.imported_sections) == ["config", "secrets"]
    assert [f.name for f in result.failed_sections] == ["entries"]
    assert target.config == filled.config and target.entries == {}


async def test_import_duration_covers_validation(filled, ring, monkeypatch):
    """duration covers the whole call, validation included."""
    target = Cache(keyring=ring)
    original = target.validate_state

    async def slow_validate(snapshot, **kw):
        await asyncio.sleep(0.05)
        return await original(snapshot, **kw)

    monkeypatch.setattr(target, "validate_state", slow_validate)
    result = await target.import_state(await filled.export_state())
    assert result.duration.total_seconds() >= 0.05


async def test_migration_that_raises(ring):
    """A migration step that raises is a MigrationError naming the step; atomic import keeps state."""

    class Broken(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cache", version="2.0.0")
        entries = st.Section(dict[str, list[int]], version=2)

        @entries.migration(from_version=1)
        def _boom(old):
            raise ValueError("cannot convert")

        def __init__(self):
            super().__init__()
            self.entries = {"x": [1]}

    old = CacheV1()
    old.entries = {"a": 1}
    target = Broken()
    with pytest.raises(st.ImportFailed, match=r"_boom.*ValueError: cannot convert"):
        await target.import_state(await old.export_state())
    assert target.entries == {"x": [1]}


async def test_missing_migration_step(ring):
    """A section with no path to the declared version is incompatible, with an actionable error."""

    class NoPath(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cache", version="2.0.0")
        entries = st.Section(dict[str, list[int]], version=2)

        def __init__(self):
            super().__init__()
            self.entries = {}

    v = await NoPath().validate_state(await CacheV1().export_state())
    sv = v.section_validations["entries"]
    assert sv.verdict == "incompatible" and not v.is_valid
    assert "no migration from schema version 1 to 2" in sv.errors[0]


async def test_deep_validation_names_field_path(filled, ring):
    """validate_state(deep=True) decodes sections and reports the failing field path."""
    bad = st.StateSection("entries", 2, msgspec.msgpack.encode({"a": [1, "x"]}))
    snap = replace_section(await filled.export_state(), bad)
    shallow = await filled.validate_state(snap)
    deep = await filled.validate_state(snap, deep=True)
    assert shallow.is_valid
    assert not deep.is_valid
    assert deep.section_validations["entries"].errors == ['entries["a"][1]: expected int, got str']


async def test_validate_hook(ring):
    """A section's validate hook rejects domain-invalid values on import."""

    def positive(value: dict[str, int]):
        return [f"{k} is negative" for k, v in value.items() if v < 0]

    class Guarded(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="g", version="1.0.0")
        counts = st.Section(dict[str, int], validate=positive)

        def __init__(self):
            super().__init__()
            self.counts = {}

    src = Guarded()
    src.counts = {"a": -1}
    with pytest.raises(st.ImportFailed, match="a is negative"):
        await Guarded().import_state(await src.export_state())


async def test_transfer_state(ring):
    """transfer_state moves state between instances and refuses low scores."""
    src = CacheV1()
    src.entries = {"a": 1, "b": 2}
    dst = CacheNoSecrets()
    result = await st.transfer_state(src, dst)
    assert dst.entries == {"a": [1], "b": [2]}
    assert "entries" in result.imported_sections
    with pytest.raises(st.ValidationFailed, match=r"minimum 0\.99"):
        await st.transfer_state(src, CacheNoSecrets(), min_score=0.99)


async def test_downgrade_with_reverse_step():
    """A reverse step lets an older plugin read a newer snapshot when allowed."""

    class Down(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cache", version="1.1.0")
        config = st.Section(Config, version=1, codec="json")
        entries = st.Section(dict[str, int], version=1)

        @entries.migration(from_version=2, to_version=1)
        def _down(new):
            return {k: v[0] for k, v in new.items()}

        def __init__(self):
            super().__init__()
            self.config = Config()
            self.entries = {}

    src = CacheNoSecrets()
    src.entries = {"a": [7, 8]}
    snap = await src.export_state()
    target = Down()
    plan = target.plan(snap)
    assert plan["entries"].verdict == "after_migration" and plan["entries"].migration_path == [2, 1]
    with pytest.raises(st.ValidationFailed):
        await target.import_state(snap)
    await target.import_state(snap, allow_downgrade=True)
    assert target.entries == {"a": 7}


async def test_plan_changes_nothing(filled, ring):
    """plan() reports verdicts and paths without touching state."""
    old = CacheV1()
    old.entries = {"a": 1}
    before = state_of(filled)
    plan = filled.plan(await old.export_state())
    assert {n: p.verdict for n, p in plan.items()} == {"config": "as_is", "entries": "after_migration"}
    assert state_of(filled) == before


async def test_concurrent_export_never_torn():
    """Export while 8 tasks mutate the state never yields a torn section."""

    class Ledger(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="ledger", version="1.0.0")
        accounts = st.Section(dict[str, int], compress=True)
        history = st.Section(list[int])

        def __init__(self):
            super().__init__()
            self.accounts = {f"a{i}": 100 for i in range(200)}
            self.history = []

        async def transfer(self, src: str, dst: str, amount: int):
            async with self.state_lock:
                self.accounts[src] -= amount
                await asyncio.sleep(0)  # a real plugin awaits I/O mid-change
                self.accounts[dst] += amount
                self.history.append(amount)

    plugin = Ledger()
    stop = asyncio.Event()

    async def mutate(seed: int):
        i = seed
        while not stop.is_set():
            await plugin.transfer(f"a{i % 200}", f"a{(i * 7 + 3) % 200}", 1 + i % 5)
            i += 1

    tasks = [asyncio.create_task(mutate(s)) for s in range(8)]
    snaps = []
    for _ in range(30):
        snaps.append(await plugin.export_state())
        await asyncio.sleep(0)
    stop.set()
    await asyncio.gather(*tasks)
    for snap in snaps:
        fresh = Ledger()
        await fresh.import_state(snap)
        assert sum(fresh.accounts.values()) == 200 * 100
    assert len({len(s.sections["history"].data) for s in snaps}) > 1


@settings(max_examples=25, deadline=None)
@given(hs.integers(2, 6), hs.dictionaries(hs.text(max_size=5), hs.integers(-1000, 1000), max_size=10))
async def test_stepwise_equals_direct_migration(n, data):
    """For a random chain v1→vN, importing v1 step by step equals one import at vN."""

    def make(version: int) -> type[st.StatefulPlugin]:
        attrs: dict = {
            "metadata": st.PluginMetadata(id="chain", version=f"{version}.0.0"),
            "value": st.Section(dict[str, int], version=version),
        }
        cls_ns = dict(attrs)
        section = cls_ns["value"]
        for v in range(1, version):
            section.migration(from_version=v)(lambda old, v=v: {k: x * 2 + v for k, x in old.items()})

        def __init__(self):
            st.StatefulPlugin.__init__(self)
            self.value = {}

        cls_ns["__init__"] = __init__
        return type(f"ChainV{version}", (st.StatefulPlugin,), cls_ns)

    classes = [make(v) for v in range(1, n + 1)]
    first = classes[0]()
    first.value = dict(data)
    snapshot = await first.export_state()
    direct = classes[-1]()
    await direct.import_state(snapshot)
    stepwise = snapshot
    for cls in classes[1:]:
        inst = cls()
        await inst.import_state(stepwise)
        stepwise = await inst.export_state()
    assert direct.value == inst.value
