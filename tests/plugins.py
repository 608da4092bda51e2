"""Plugins shared by several test modules."""

from __future__ import annotations

import msgspec

import statetransfer as st


class Config(msgspec.Struct):
    ttl: int = 60
    name: str = "cache"


class CacheV1(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="cache", version="1.0.0")
    config = st.Section(Config, version=1, codec="json")
    entries = st.Section(dict[str, int], version=1, compress=True)

    def __init__(self, keyring=None):
        super().__init__(keyring=keyring)
        self.config = Config()
        self.entries = {}


class Cache(st.StatefulPlugin):
    """The contract's example plugin (schema 2)."""

    metadata = st.PluginMetadata(id="cache", version="2.0.0")
    schema_version = 2
    config = st.Section(Config, version=1, codec="json")
    entries = st.Section(dict[str, list[int]], version=2, compress=True)
    secrets = st.Section(dict[str, str], version=1, encrypt=True)

    @entries.migration(from_version=1)
    def _entries_v1_to_v2(old):
        return {k: [v] for k, v in old.items()}

    def __init__(self, keyring=None):
        super().__init__(keyring=keyring)
        self.config = Config()
        self.entries = {}
        self.secrets = {}


class CacheNoSecrets(st.StatefulPlugin):
    """Cache schema 2 without the encrypted section (no keyring needed)."""

    metadata = st.PluginMetadata(id="cache", version="2.1.0")
    schema_version = 2
    config = st.Section(Config, version=1, codec="json")
    entries = st.Section(dict[str, list[int]], version=2, compress=True)

    @entries.migration(from_version=1)
    def _entries_v1_to_v2(old):
        return {k: [v] for k, v in old.items()}

    def __init__(self, keyring=None):
        super().__init__(keyring=keyring)
        self.config = Config()
        self.entries = {}
