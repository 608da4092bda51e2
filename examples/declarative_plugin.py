"""The reference's complete example done declaratively, plus a v1 -> v2 schema migration.

Run it: ``python examples/declarative_plugin.py``.
"""

from __future__ import annotations

import asyncio

import msgspec

import statetransfer as st


# --- the plugin author's code: the reference's ~150 lines become these ---------------------------
class Config(msgspec.Struct):
    ttl: int = 60
    max_entries: int = 10_000


class Metrics(msgspec.Struct):
    hits: int = 0
    misses: int = 0


class SessionCache(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="sessions", version="2.0.0")
    config = st.Section(Config, codec="json", default=Config)
    cache = st.Section(dict[str, list[str]], version=2, compress=True, default=dict)
    metrics = st.Section(Metrics, codec="json", default=Metrics)

    @cache.migration(from_version=1)
    def _one_session_per_user_to_many(old: dict[str, str]) -> dict[str, list[str]]:
        return {user: [session] for user, session in old.items()}


# --- end of the plugin author's code -----------------------------------------------------------


class SessionCacheV1(st.StatefulPlugin):
    """What release 1 of the plugin looked like: one session per user."""

    metadata = st.PluginMetadata(id="sessions", version="1.4.0")
    config = st.Section(Config, codec="json", default=Config)
    cache = st.Section(dict[str, str], version=1, compress=True, default=dict)
    metrics = st.Section(Metrics, codec="json", default=Metrics)


async def main() -> None:
    old = SessionCacheV1()
    old.cache = {f"user:{i}": f"session-{i}" for i in range(1000)}
    old.metrics = Metrics(hits=41, misses=1)
    data = st.dumps(await old.export_state())

    new = SessionCache()
    snapshot = st.loads(data)
    for name, verdict in new.plan(snapshot).items():
        print(f"{name:8} {verdict.verdict:16} path={verdict.migration_path}")
    result = await new.import_state(snapshot)
    print(f"imported {sorted(result.imported_sections)}; warnings {result.warnings}")
    print(f"user:7 -> {new.cache['user:7']}; metrics {new.metrics}")
    assert new.cache == {user: [s] for user, s in old.cache.items()}


if __name__ == "__main__":
    asyncio.run(main())
