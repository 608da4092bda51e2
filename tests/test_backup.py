"""backup() and restore(): the round trip through a store, what they choose and what they refuse."""

from __future__ import annotations

import time

import pytest

import statetransfer as st


class Notes(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="notes", version="1.0.0")
    items = st.Section(dict[str, str], default=dict)
    big = st.Section(bytes, codec="raw", default=bytes)


async def test_backup_then_restore_round_trip():
    """A backup restored into a fresh plugin gives the same state; the info describes the backup."""
    store = st.open_store("memory://")
    plugin = Notes()
    plugin.items = {"a": "first", "b": "second"}
    info = await st.backup(plugin, store, tags=["nightly"], expires_at=int(time.time()) + 3600)
    assert info.plugin_id == "notes" and info.reason == st.StateCreationReason.BACKUP
    assert info.tags == ["nightly"] and info.expires_at is not None
    fresh = Notes()
    result = await st.restore(fresh, store)
    assert fresh.items == plugin.items and result.snapshot_id == info.id
    assert sorted(result.imported_sections) == ["big", "items"]


async def test_unchanged_sections_are_stored_once():
    """Two backups of an unchanged large section store its blob once."""
    store = st.open_store("memory://")
    plugin = Notes()
    plugin.big = bytes(range(256)) * 4096
    await st.backup(plugin, store)
    plugin.items = {"changed": "yes"}
    await st.backup(plugin, store)
    blobs = [o for o in await store.list_objects("blobs/") if o.regular]
    assert len(blobs) == 3  # big once, items twice (empty, then changed)


async def test_restore_picks_the_newest_and_accepts_ids():
    """Without an id the newest backup is restored; an id (or unique prefix) restores that one."""
    store = st.open_store("memory://")
    plugin = Notes()
    plugin.items = {"v": "1"}
    first = await st.backup(plugin, store)
    time.sleep(0.002)
    plugin.items = {"v": "2"}
    await st.backup(plugin, store)
    fresh = Notes()
    await st.restore(fresh, store)
    assert fresh.items == {"v": "2"}
    await st.restore(fresh, store, first.id[:10])
    assert fresh.items == {"v": "1"}


async def test_restore_skips_expired_unless_allowed():
    """Expired backups are not restored by default, and the error says how to allow them."""
    store = st.open_store("memory://")
    plugin = Notes()
    plugin.items = {"old": "x"}
    info = await st.backup(plugin, store, expires_at=int(time.time()) - 10)
    with pytest.raises(st.SnapshotNotFound, match="allow_expired"):
        await st.restore(Notes(), store)
    with pytest.raises(st.SnapshotNotFound, match="expired"):
        await st.restore(Notes(), store, info.id)
    fresh = Notes()
    assert (await st.restore(fresh, store, allow_expired=True)).snapshot_id == info.id
    assert fresh.items == {"old": "x"}


async def test_restore_with_nothing_stored():
    """restore of a plugin with no backup raises SnapshotNotFound naming the plugin."""
    with pytest.raises(st.SnapshotNotFound, match="'notes'"):
        await st.restore(Notes(), st.open_store("memory://"))


def test_seal_recomputes_checksum_and_drops_signature():
    """seal() applies changes with a fresh checksum; a signature is dropped unless the copy is re-signed."""
    from statetransfer.testing import make_snapshot

    key = b"k" * 32
    signed = st.sign(make_snapshot("s"), key)
    sealed = st.seal(signed, plugin_version="2.0.0")
    assert sealed.plugin_version == "2.0.0" and sealed.signature is None
    assert st.loads(st.dumps(sealed)) == sealed
    resigned = st.seal(signed, plugin_version="2.0.0", sign_key=key)
    assert st.loads(st.dumps(resigned), verify_key=key).plugin_version == "2.0.0"
    with pytest.raises(st.InvalidArgument, match="not snapshot fields"):
        st.seal(signed, colour="red")


@pytest.mark.parametrize(
    ("passphrase", "salt", "match"),
    [
        pytest.param(b"bytes", b"s" * 16, "passphrase must be a str", id="bytes-passphrase"),
        pytest.param("ok", "a-str-salt-of-16+", "salt must be bytes", id="str-salt"),
        pytest.param("ok", b"short", "at least 16 bytes", id="short-salt"),
    ],
)
def test_passphrase_misuse_is_a_clear_error(passphrase, salt, match):
    """from_passphrase given the wrong types raises InvalidArgument (a ValueError), not an internal error."""
    with pytest.raises(st.InvalidArgument, match=match) as info:
        st.Keyring.from_passphrase("k", passphrase, salt=salt)
    assert isinstance(info.value, ValueError)
