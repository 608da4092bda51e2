"""The reference workload: a StatefulPlugin with config, a large cache, encrypted secrets and metrics."""

from __future__ import annotations

import random

import msgspec

import statetransfer as st

#: Bytes of msgpack per cache entry, measured on this workload (used to size scaling runs).
BYTES_PER_ENTRY = 65


class Config(msgspec.Struct, gc=False):
    ttl: int = 60
    max_entries: int = 250_000
    name: str = "reference"


class Entry(msgspec.Struct, gc=False):
    name: str
    score: float
    hits: int
    tags: list[str]


class Metrics(msgspec.Struct, gc=False):
    exports: int = 0
    imports: int = 0
    latency_ms: list[float] = msgspec.field(default_factory=list)


class Workload(st.StatefulPlugin):
    metadata = st.PluginMetadata(id="reference", version="1.0.0")
    config = st.Section(Config, codec="json", default=Config)
    cache = st.Section(dict[str, Entry], compress=True, default=dict)
    secrets = st.Section(dict[str, str], encrypt=True, default=dict)
    metrics = st.Section(Metrics, default=Metrics)


TAGS = ["hot", "cold", "eu", "us", "mobile", "web", "beta", "paid"]


def make_cache(entries: int, seed: int = 7) -> dict[str, Entry]:
    rng = random.Random(seed)
    return {
        f"user:{i:08d}": Entry(
            name=f"name-{rng.randrange(10**6):06d}",
            score=rng.random() * 100,
            hits=rng.randrange(10**6),
            tags=rng.sample(TAGS, rng.randrange(1, 4)),
        )
        for i in range(entries)
    }


def make_plugin(entries: int = 200_000, keyring: st.Keyring | None = None) -> Workload:
    plugin = Workload(keyring=keyring or st.Keyring.generate("bench"))
    plugin.cache = make_cache(entries)
    plugin.secrets = {f"svc-{i}": f"token-{i:06d}-{'x' * 24}" for i in range(1000)}
    plugin.metrics = Metrics(exports=3, imports=2, latency_ms=[0.5 * i for i in range(100)])
    return plugin


def state_of(plugin: Workload) -> dict[str, object]:
    """The plugin's state as a plain Python user would pickle it."""
    return {"config": plugin.config, "cache": plugin.cache, "secrets": plugin.secrets, "metrics": plugin.metrics}
