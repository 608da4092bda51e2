"""statetransfer.testing.check_plugin: the one call plugin authors put in their own suites."""

from __future__ import annotations

import pytest

import statetransfer as st
from statetransfer.testing import acheck_plugin, check_plugin

from .plugins import Cache, Config


def make_cache() -> Cache:
    ring = st.Keyring({"k1": b"1" * 32})
    plugin = Cache(keyring=ring)
    plugin.config = Config(ttl=3)
    plugin.entries = {"a": [1, 2]}
    plugin.secrets = {"s": "v"}
    return plugin


def test_check_plugin_passes_and_reports_paths():
    """A correct plugin passes; the report lists the migration paths exercised."""
    report = check_plugin(
        Cache, make=make_cache, keyring=st.Keyring({"k1": b"1" * 32}), old_values={("entries", 1): {"x": 5}}
    )
    assert report.plugin_id == "cache"
    assert report.migration_paths == [("entries", [1, 2])]
    assert report.unexercised_paths == []


def test_unexercised_paths_reported_and_required():
    """Migration sources without a sample are listed, and fail with require_all_paths=True."""
    ring = st.Keyring({"k1": b"1" * 32})
    report = check_plugin(Cache, make=make_cache, keyring=ring)
    assert report.unexercised_paths == [("entries", 1)]
    with pytest.raises(AssertionError, match="without a sample"):
        check_plugin(Cache, make=make_cache, keyring=ring, require_all_paths=True)


async def test_broken_migration_is_caught():
    """A migration that produces the wrong type fails the check with the section named."""

    class Bad(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="bad", version="1.0.0")
        entries = st.Section(dict[str, list[int]], version=2, default=dict)

        @entries.migration(from_version=1)
        def _wrong(old):
            return {k: str(v) for k, v in old.items()}

    with pytest.raises(
        AssertionError, match=r'migration entries v1 -> v2 failed.*entries\["x"\]: expected array, got str'
    ):
        await acheck_plugin(Bad, old_values={("entries", 1): {"x": 1}})


async def test_export_that_loses_data_is_caught():
    """A plugin whose import silently drops data fails the round-trip check."""

    class Lossy(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="lossy", version="1.0.0")
        items = st.Section(list[int], default=list)

        def __init__(self, keyring=None):
            super().__init__(keyring=keyring)
            self.items = [1, 2, 3]

        async def import_state(self, snapshot, **kw):
            result = await super().import_state(snapshot, **kw)
            self.items = self.items[:-1]
            return result

    with pytest.raises(AssertionError, match="round trip"):
        await acheck_plugin(Lossy)


async def test_sync_form_refuses_running_loop():
    """check_plugin inside a running loop says to use acheck_plugin."""
    with pytest.raises(RuntimeError, match="acheck_plugin"):
        check_plugin(Cache)


def test_keyring_comes_from_the_populated_instance_or_is_made_up():
    """A plugin with an encrypted section passes without keyring=: make()'s keyring, or a throwaway one, is used."""
    assert check_plugin(Cache, make=make_cache, old_values={("entries", 1): {"x": 5}}).unexercised_paths == []
    assert check_plugin(Cache).plugin_id == "cache"


def test_a_failure_is_not_chained_to_the_event_loop_probe():
    """A failing check_plugin raises its AssertionError alone, not "during handling of" a 'no running event loop'."""
    with pytest.raises(AssertionError, match="without a sample") as info:
        check_plugin(Cache, make=make_cache, require_all_paths=True)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert not any("no running event loop" in text for text in chain)
