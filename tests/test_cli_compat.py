"""``statetransfer check-compat`` and ``statetransfer migrate``: the release gate and stored-snapshot migration."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import msgspec
import pytest
from click.testing import CliRunner

import statetransfer as st
from statetransfer._cli import main

from .test_releases import Cart, CartV2


class CartNoUpgrade(st.StatefulPlugin):
    """A release that forgot the 2 -> 3 step."""

    metadata = st.PluginMetadata(id="cart", version="3.0.0")
    items = st.Section(dict[str, list[int]], version=3, default=dict)
    owner = st.Section(str, version=1, default=str)


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


async def fill(url: str) -> dict[str, list[st.StateSnapshot]]:
    """Three snapshots by release 2, one by release 3, one of another plugin."""
    made: dict[str, list[st.StateSnapshot]] = {"v2": [], "v3": []}
    store = st.open_store(url)
    base = 1_700_000_000
    for i in range(3):
        old = CartV2()
        old.items = {"apple": i + 1}
        old.owner = "ada"
        snap = await old.export_state(reason=st.StateCreationReason.BACKUP, tags=["nightly"])
        snap = _at(snap, base + i)
        await store.put(snap)
        made["v2"].append(snap)
    new = Cart()
    new.items = {"pear": [2, 80]}
    snap = _at(await new.export_state(reason=st.StateCreationReason.BACKUP), base + 10)
    await store.put(snap)
    made["v3"].append(snap)

    class Other(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="other", version="1.0.0")
        things = st.Section(list[int], version=7, default=list)

    await store.put(await Other().export_state())
    await store.close()
    return made


def _at(snap: st.StateSnapshot, seconds: int) -> st.StateSnapshot:
    moved = msgspec.structs.replace(snap, timestamp=seconds, created_ns=seconds * 1_000_000_000)
    return msgspec.structs.replace(moved, checksum=st.calculate_checksum(moved))


@pytest.fixture
def store(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    made = asyncio.run(fill(url))
    return url, made


def listing(url: str, plugin_id: str = "cart") -> list[st.SnapshotInfo]:
    async def go():
        async with st.open_store(url, create=False) as s:
            return list(await s.list(plugin_id=plugin_id))

    return asyncio.run(go())


# -- check-compat ---------------------------------------------------------------------------------------------


def test_check_compat_passes_and_groups(store):
    """One row per (plugin version, schema versions) with its count and verdicts; exit 0 when all import."""
    url, made = store
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_releases:Cart")
    assert code == 0, out
    lines = out.splitlines()
    v2 = next(line for line in lines if line.startswith("2.0.0"))
    assert "items=2 owner=1" in v2 and " 3 " in v2 and "2->3" in v2 and v2.rstrip().endswith("ok")
    assert made["v2"][-1].id[:8] in v2, "the newest snapshot of the group is the one judged"
    v3 = next(line for line in lines if line.startswith("3.0.0"))
    assert " 1 " in v3
    assert "4 snapshot(s) in 2 group(s)" in out and "all import" in out


def test_check_compat_json(store):
    """--json: every group with its count, newest id and per-section verdict."""
    url, made = store
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_releases:Cart", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["plugin_id"] == "cart" and report["snapshots"] == 4
    assert report["section_versions"] == {"items": 3, "owner": 1}
    groups = {g["plugin_version"]: g for g in report["groups"]}
    assert set(groups) == {"2.0.0", "3.0.0"}
    old = groups["2.0.0"]
    assert (
        old["count"] == 3 and old["newest"] == made["v2"][-1].id and old["section_versions"] == {"items": 2, "owner": 1}
    )
    assert old["sections"]["items"] == {"schema_version": 2, "verdict": "after_migration", "migration_path": [2, 3],
                                        "errors": []}  # fmt: skip
    assert groups["3.0.0"]["sections"]["owner"]["verdict"] == "as_is"


def test_check_compat_fails_when_a_group_cannot_import(store):
    """Code missing a step: the group is marked, the reason printed, exit 1."""
    url, _ = store
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_cli_compat:CartNoUpgrade")
    assert code == 1
    v2 = next(line for line in out.splitlines() if line.startswith("2.0.0"))
    assert "INCOMPATIBLE" in v2 and v2.rstrip().endswith("FAIL")
    assert "no migration from schema version 2 to 3" in out
    assert "3 snapshot(s) would fail to import" in out
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_cli_compat:CartNoUpgrade", "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_check_compat_for_a_rollback(store):
    """The previous release checked against a store holding the new release's state: the newer schema fails."""
    url, _ = store
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_releases:CartV2")
    assert code == 1
    assert "snapshot schema version 3 is newer than the plugin's 2" in out


def test_check_compat_reads_manifests_only(store, tmp_path):
    """With every section blob gone, the verdicts are the same: only manifests are read."""
    url, _ = store
    shutil.rmtree(tmp_path / "store" / "blobs")
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_releases:Cart")
    assert code == 0, out
    assert "all import" in out


def test_check_compat_with_nothing_to_check(tmp_path):
    """A store holding no snapshot of the plugin passes, and says so."""
    url = f"file://{tmp_path / 'empty'}"
    asyncio.run(st.open_store(url).close())
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_releases:Cart")
    assert code == 0 and "nothing to check" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--plugin", "tests.test_releases:Cart"], "no store at", id="no-store"),
        pytest.param(["--plugin", "no_such_module:Cart"], "cannot import 'no_such_module'", id="bad-plugin"),
    ],
)
def test_check_compat_usage_errors(tmp_path, args, message):
    """A store that does not exist, or a plugin that cannot be imported: exit 2, nothing created."""
    target = tmp_path / "absent"
    code, _, err = run("check-compat", f"file://{target}", *args)
    assert code == 2
    assert message in err
    assert not target.exists()


# -- migrate --------------------------------------------------------------------------------------------------


def test_migrate_dry_run_writes_nothing(store):
    """--dry-run lists what would be rewritten and the census as it would be; the store is unchanged."""
    url, made = store
    before = listing(url)
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart", "--dry-run")
    assert code == 0, out
    assert "would migrate 3 snapshot(s) of cart to items=3 owner=1" in out
    for snap in made["v2"]:
        assert snap.id in out
    assert listing(url) == before
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart", "--dry-run", "--json")
    report = json.loads(out)
    assert report["dry_run"] is True
    assert report["census"]["items"] == {"2": 3, "3": 4}


def test_migrate_rewrites_and_keeps_originals(store):
    """Old snapshots get MIGRATION copies at the code's versions (same time and tags); originals stay, and count."""
    url, made = store
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [s["outcome"] for s in report["snapshots"]] == ["migrated"] * 3
    assert report["census"] == {"items": {"2": 3, "3": 4}, "owner": {"1": 7}}
    infos = {i.id: i for i in listing(url)}
    assert all(s.id in infos for s in made["v2"]), "originals are kept by default"

    async def check():
        async with st.open_store(url, create=False) as s:
            for entry, original in zip(report["snapshots"], made["v2"], strict=True):
                copy = await s.get(entry["replacement"])
                assert copy.metadata.reason is st.StateCreationReason.MIGRATION
                assert copy.metadata.custom["migrated_from"] == original.id
                assert copy.metadata.tags == ["nightly"] and copy.timestamp == original.timestamp
                assert {n: sec.schema_version for n, sec in copy.sections.items()} == {"items": 3, "owner": 1}
                plugin = Cart()
                await plugin.import_state(copy)
                assert plugin.items == {"apple": [made["v2"].index(original) + 1, 0]} and plugin.owner == "ada"
            newest = Cart()  # a migrated old snapshot never looks newer than the state made after it
            restored = await st.restore(newest, s)
            assert restored.snapshot_id == made["v3"][0].id

    asyncio.run(check())
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart")
    assert code == 0
    assert "migrated 0 snapshot(s)" in out and "3 already migrated" in out
    assert len(listing(url)) == 7, "a second run does not migrate again"
    assert "older: its migration steps are still needed" in out


def test_migrate_delete_originals(store):
    """--delete-originals removes each original once its copy is stored; the census then shows nothing old."""
    url, made = store
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart", "--delete-originals")
    assert code == 0, out
    ids = {i.id for i in listing(url)}
    assert not ids & {s.id for s in made["v2"]} and len(ids) == 4
    assert "older migration steps are no longer needed" in out
    assert len(listing(url, "other")) == 1, "other plugins' snapshots are untouched"


def test_migrate_failure_is_reported_and_others_go_on(store):
    """Code that cannot migrate: every candidate fails with the reason, nothing is written, exit 1."""
    url, _ = store
    before = listing(url)
    code, out, _ = run("migrate", url, "--plugin", "tests.test_cli_compat:CartNoUpgrade")
    assert code == 1
    assert out.count("failed") >= 3 and "no migration from schema version 2 to 3" in out
    assert listing(url) == before


def test_migrate_skips_expired(tmp_path):
    """An expired snapshot is not migrated (it is pruning's)."""
    url = f"file://{tmp_path / 'store'}"

    async def put():
        old = CartV2()
        old.items = {"a": 1}
        async with st.open_store(url) as s:
            await s.put(await old.export_state(expires_at=int(time.time()) - 10))

    asyncio.run(put())
    code, out, _ = run("migrate", url, "--plugin", "tests.test_releases:Cart", "--json")
    assert code == 0
    assert [s["outcome"] for s in json.loads(out)["snapshots"]] == ["expired"]
    assert len(listing(url)) == 1


class HandCart(st.StateTransferable):
    """A hand-written plugin (no plan()): check-compat reads its snapshots whole."""

    metadata = Cart.metadata

    def __init__(self):
        self._inner = Cart()

    async def export_state(self):
        return await self._inner.export_state()

    async def import_state(self, snapshot):
        return await self._inner.import_state(snapshot)

    async def validate_state(self, snapshot):
        return await self._inner.validate_state(snapshot)

    def state_schema_version(self):
        return 3


def test_hand_written_plugin(store, tmp_path):
    """Without plan() the newest snapshot of each group is read and validated; migrate goes by schema version."""
    url, _ = store
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_cli_compat:HandCart", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["section_versions"] == {} and report["schema_version"] == 3
    old = next(g for g in report["groups"] if g["plugin_version"] == "2.0.0")
    assert old["sections"]["items"]["migration_path"] == [2, 3]
    code, out, _ = run("migrate", url, "--plugin", "tests.test_cli_compat:HandCart")
    assert code == 0, out
    assert "migrated 3 snapshot(s) of cart to schema 3" in out
    shutil.rmtree(tmp_path / "store" / "blobs")
    code, out, _ = run("check-compat", url, "--plugin", "tests.test_cli_compat:HandCart")
    assert code == 1 and "cannot read snapshot" in out


def test_unreadable_manifest_is_named_not_fatal(store, tmp_path):
    """A damaged manifest is named on stderr; the readable snapshots are still judged."""
    url, _ = store
    (tmp_path / "store" / "manifests" / "broken").write_bytes(b"not a manifest")
    result = CliRunner().invoke(main, ["check-compat", url, "--plugin", "tests.test_releases:Cart"])
    assert result.exit_code == 0, result.output
    assert "unreadable store entry manifests/broken" in result.stderr
    assert "4 snapshot(s) in 2 group(s)" in result.stdout
