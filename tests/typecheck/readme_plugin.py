"""The README's plugin, checked by mypy --strict: section attributes have their declared types, never Any."""

from typing import assert_type

import msgspec

import statetransfer as st


class Config(msgspec.Struct):
    ttl: int = 60


class Cache(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="cache", version="2.0.0")
    config = st.Section(Config, codec="json", default=Config)
    entries = st.Section(dict[str, list[int]], version=2, compress=True, default=dict)
    secrets = st.Section(dict[str, str], encrypt=True, default=dict)


async def use(store: st.SnapshotStore) -> None:
    cache = Cache(keyring=st.Keyring.generate("k1"))
    assert_type(cache.entries, dict[str, list[int]])
    assert_type(cache.config, Config)
    assert_type(cache.secrets, dict[str, str])
    cache.entries = {"a": [1]}
    snapshot = await cache.export_state()
    assert_type(snapshot, st.StateSnapshot)
    assert_type(st.seal(snapshot, tags=[]), st.StateSnapshot)
    info = await st.backup(cache, store)
    assert_type(info, st.SnapshotInfo)
    result = await st.restore(cache, store, allow_older=True)
    assert_type(result.snapshot_id, str | None)
    listing = await store.list(plugin_id="cache")
    assert_type(listing.unreadable, list[st.UnreadableEntry])
    host = st.PluginHost(store=store)
    async with host.use("cache", Cache) as served:
        assert_type(served, Cache)
        assert_type(served.entries, dict[str, list[int]])
