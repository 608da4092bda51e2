"""Rolling a release back: downgrade steps in the newer release, export at older versions, check_plugin(previous=)."""

from __future__ import annotations

import pytest

import statetransfer as st
from statetransfer.testing import acheck_plugin, check_plugin


class CartV2(st.StatefulPlugin):
    """The release before: items as name -> count."""

    metadata = st.PluginMetadata(id="cart", version="2.0.0")
    items = st.Section(dict[str, int], version=2, default=dict)
    owner = st.Section(str, version=1, default=str)

    @items.migration(from_version=1)
    def _from_list(old):
        return dict.fromkeys(old, 1)


class Cart(st.StatefulPlugin):
    """The release: items as name -> [count, price in cents]; knows how to go back to version 2 and 1."""

    metadata = st.PluginMetadata(id="cart", version="3.0.0")
    items = st.Section(dict[str, list[int]], version=3, default=dict, compress=True)
    owner = st.Section(str, version=1, default=str)

    @items.migration(from_version=1)
    def _from_list(old):
        return dict.fromkeys(old, 1)

    @items.migration(from_version=2)
    def _add_price(old):
        return {name: [count, 0] for name, count in old.items()}

    @items.migration(from_version=3, to_version=2)
    def _drop_price(new):
        return {name: count for name, (count, _price) in new.items()}

    @items.migration(from_version=2, to_version=1)
    def _to_list(old):
        return sorted(old)


class CartNoRollback(st.StatefulPlugin):
    """The release without downgrade steps."""

    metadata = st.PluginMetadata(id="cart", version="3.0.0")
    items = st.Section(dict[str, list[int]], version=3, default=dict)
    owner = st.Section(str, version=1, default=str)

    @items.migration(from_version=2)
    def _add_price(old):
        return {name: [count, 0] for name, count in old.items()}


def filled_v2() -> CartV2:
    cart = CartV2()
    cart.items = {"apple": 3, "pear": 1}
    cart.owner = "ada"
    return cart


async def test_export_at_an_older_version_is_imported_by_the_older_release():
    """export_state(target_versions=...) runs the downgrade steps; the older class imports the result as is."""
    cart = Cart()
    cart.items = {"apple": [3, 120], "pear": [1, 80]}
    cart.owner = "ada"
    snap = await cart.export_state(target_versions={"items": 2})
    assert snap.sections["items"].schema_version == 2
    assert snap.sections["owner"].schema_version == 1
    assert snap.schema_version == 2
    old = CartV2()
    assert old.plan(snap)["items"].verdict == "as_is"
    await old.import_state(snap)
    assert old.items == {"apple": 3, "pear": 1} and old.owner == "ada"
    assert cart.items == {"apple": [3, 120], "pear": [1, 80]}, "the live state is not changed by a downgrade"


async def test_export_down_two_steps():
    """A target two versions down walks both downgrade steps."""
    cart = Cart()
    cart.items = {"pear": [1, 80], "apple": [3, 120]}
    snap = await cart.export_state(target_versions={"items": 1})
    assert snap.sections["items"].schema_version == 1

    class CartV1(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="1.0.0")
        items = st.Section(list[str], version=1, default=list)
        owner = st.Section(str, version=1, default=str)

    old = CartV1()
    await old.import_state(snap)
    assert old.items == ["apple", "pear"]


async def test_export_at_the_current_version_changes_nothing():
    """Naming the current version is the plain export."""
    cart = Cart()
    cart.items = {"a": [1, 2]}
    snap = await cart.export_state(target_versions={"items": 3})
    assert snap.sections["items"].schema_version == 3 and snap.schema_version == 3


async def test_missing_downgrade_step_is_named_at_export():
    """No path down: MigrationError naming the step that is missing, raised by export_state."""
    cart = CartNoRollback()
    cart.items = {"a": [1, 2]}
    with pytest.raises(st.MigrationError, match=r"section 'items': no downgrade step from 3 to 2 in CartNoRollback"):
        await cart.export_state(target_versions={"items": 2})

    class Partial(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="3.0.0")
        items = st.Section(dict[str, list[int]], version=3, default=dict)

        @items.migration(from_version=3, to_version=2)
        def _down(new):
            return new

    with pytest.raises(st.MigrationError, match=r"no downgrade step from 2 to 1 in Partial"):
        await Partial().export_state(target_versions={"items": 1})


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        pytest.param({"items": 4}, "cannot export at version 4; this code writes version 3", id="newer"),
        pytest.param({"items": -1}, "cannot export at version -1", id="negative"),
        pytest.param({"basket": 1}, "names section 'basket'", id="unknown-section"),
    ],
)
async def test_impossible_targets_refused(targets, match):
    """A version above the section's, or a section the plugin lacks, is refused."""
    with pytest.raises(st.MigrationError, match=match):
        await Cart().export_state(target_versions=targets)


async def test_a_failing_downgrade_names_the_step():
    """A downgrade step that raises fails the export with the step named."""

    class Fragile(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="fragile", version="2.0.0")
        items = st.Section(dict[str, int], version=2, default=dict)

        @items.migration(from_version=2, to_version=1)
        def _down(new):
            raise ValueError("cannot go back")

    plugin = Fragile()
    plugin.items = {"a": 1}
    with pytest.raises(st.MigrationError, match=r"downgrade 2->1 .*_down.* raised ValueError: cannot go back"):
        await plugin.export_state(target_versions={"items": 1})


async def test_encrypted_section_downgraded_and_sealed():
    """A downgraded encrypted section is encrypted again, and the older release reads it with the keyring."""
    ring = st.Keyring({"k": b"k" * 32})

    class SecretV1(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="secret", version="1.0.0")
        tokens = st.Section(list[str], version=1, default=list, encrypt=True)

    class Secret(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="secret", version="2.0.0")
        tokens = st.Section(dict[str, str], version=2, default=dict, encrypt=True)

        @tokens.migration(from_version=1)
        def _up(old):
            return {t: "" for t in old}

        @tokens.migration(from_version=2, to_version=1)
        def _down(new):
            return sorted(new)

    plugin = Secret(keyring=ring)
    plugin.tokens = {"t1": "x", "t0": "y"}
    snap = st.loads(st.dumps(await plugin.export_state(target_versions={"tokens": 1})))
    assert snap.sections["tokens"].encryption is not None
    old = SecretV1(keyring=ring)
    await old.import_state(snap)
    assert old.tokens == ["t0", "t1"]


async def test_hot_reload_export_downgrades_too():
    """The reason does not matter: a hot-reload export (which skips the re-decode check) also downgrades."""
    cart = Cart()
    cart.items = {"a": [2, 5]}
    snap = await cart.export_state(reason=st.StateCreationReason.HOT_RELOAD, target_versions={"items": 2})
    old = CartV2()
    await old.import_state(snap)
    assert old.items == {"a": 2}


async def test_imports_still_only_go_up():
    """With downgrade steps declared, an older snapshot still migrates straight up."""
    snap = await filled_v2().export_state()
    plan = Cart().plan(snap)
    assert plan["items"].verdict == "after_migration" and plan["items"].migration_path == [2, 3]
    cart = Cart()
    await cart.import_state(snap)
    assert cart.items == {"apple": [3, 0], "pear": [1, 0]}


def declare(version, steps):
    section = st.Section(dict[str, int], version=version)
    for from_version, to_version in steps:
        section.migration(from_version=from_version, to_version=to_version)(lambda value: value)
    return type("Checked", (st.StatefulPlugin,), {"metadata": st.PluginMetadata(id="d", version="1.0.0"), "s": section})


def test_downgrade_chain_accepted():
    """Steps down from the declared version, next to upgrades and to downgrades from newer versions, are accepted."""
    declare(3, [(1, None), (2, None), (3, 2), (2, 1), (4, 3)])
    declare(3, [(3, 1)])


@pytest.mark.parametrize(
    ("version", "steps", "match"),
    [
        pytest.param(3, [(2, 1)], "gap in the downgrade chain: version 3 cannot reach 2", id="gap-below"),
        pytest.param(3, [(3, 2), (1, 0)], "version 3 cannot reach 1", id="gap-further-down"),
        pytest.param(3, [(3, 2), (3, 2)], "duplicate", id="duplicate"),
        pytest.param(3, [(4, 2)], "past the declared version 3", id="crosses-the-version"),
        pytest.param(3, [(3, 3)], "cycle", id="self-cycle"),
        pytest.param(3, [(3, 4)], "past the declared version 3", id="up-from-the-version"),
    ],
)
def test_bad_downgrade_chains_rejected_at_class_creation(version, steps, match):
    """Gaps, duplicates and cycles among downgrade steps fail when the class is created."""
    with pytest.raises(st.MigrationError, match=match):
        declare(version, steps)


# -- check_plugin(previous=...) --------------------------------------------------------------------


def test_check_plugin_proves_upgrade_and_rollback():
    """The release and the one before exchange state both ways; the report names the downgrade walked."""
    report = check_plugin(Cart, previous=CartV2, make_previous=filled_v2)
    assert report.previous == "CartV2"
    assert report.downgrade_paths == [("items", [3, 2])]


async def test_acheck_plugin_previous():
    """The async form does the same inside a running loop."""
    report = await acheck_plugin(Cart, previous=CartV2, make_previous=filled_v2)
    assert report.downgrade_paths == [("items", [3, 2])]


def test_missing_downgrade_step_fails_with_its_name():
    """Without a downgrade step the rollback fails, naming the step."""
    with pytest.raises(AssertionError, match=r"section 'items': no downgrade step from 3 to 2 in CartNoRollback"):
        check_plugin(CartNoRollback, previous=CartV2, make_previous=filled_v2)


def test_missing_upgrade_step_fails_with_its_name():
    """A release that cannot read the previous release's state fails the upgrade, naming the step."""

    class CartV4(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="4.0.0")
        items = st.Section(dict[str, list[int]], version=4, default=dict)
        owner = st.Section(str, version=1, default=str)

        @items.migration(from_version=3)
        def _up(old):
            return old

    with pytest.raises(AssertionError, match=r"upgrade from CartV2: section 'items': no upgrade step from 2 to 4"):
        check_plugin(CartV4, previous=CartV2, make_previous=filled_v2)


def test_lossy_rollback_is_caught():
    """A downgrade that loses data fails the check with the section and both values named."""

    class Lossy(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="cart", version="3.0.0")
        items = st.Section(dict[str, list[int]], version=3, default=dict)
        owner = st.Section(str, version=1, default=str)

        @items.migration(from_version=2)
        def _add_price(old):
            return {name: [count, 0] for name, count in old.items()}

        @items.migration(from_version=3, to_version=2)
        def _forget(new):
            return {}

    with pytest.raises(AssertionError, match=r"rollback to CartV2 changed section 'items'"):
        check_plugin(Lossy, previous=CartV2, make_previous=filled_v2)


def test_previous_with_default_instances():
    """Without make_previous a fresh previous instance is exchanged (its defaults)."""
    assert check_plugin(Cart, previous=CartV2).previous == "CartV2"


def test_make_previous_needs_previous():
    """make_previous alone is a mistake in the call."""
    with pytest.raises(TypeError, match="needs previous="):
        check_plugin(Cart, make_previous=filled_v2)


def test_sections_added_and_removed_between_releases():
    """A section the new release dropped travels through it unchanged; one it added is carried back as unknown."""

    class Before(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="shop", version="1.0.0")
        items = st.Section(dict[str, int], default=dict)
        legacy = st.Section(list[str], default=list)

    class After(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="shop", version="2.0.0")
        items = st.Section(dict[str, int], default=dict)
        prices = st.Section(dict[str, int], default=dict)

    def before():
        plugin = Before()
        plugin.items, plugin.legacy = {"a": 1}, ["kept"]
        return plugin

    report = check_plugin(After, previous=Before, make_previous=before)
    assert report.previous == "Before" and report.downgrade_paths == []
