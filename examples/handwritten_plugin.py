"""The reference's "Complete Example", written by hand with statetransfer's public helpers.

Run it: ``python examples/handwritten_plugin.py``. It exports a plugin's
config, cache and metrics, round-trips the snapshot through bytes, and
imports it into a fresh instance, as the reference describes.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid

import msgspec

import statetransfer as st


class Config(msgspec.Struct):
    ttl: int = 60
    max_entries: int = 10_000


class Metrics(msgspec.Struct):
    hits: int = 0
    misses: int = 0


class PluginState(msgspec.Struct):
    config: Config
    cache: dict[str, str]
    metrics: Metrics


class HandwrittenPlugin(st.StateTransferable):
    """Holds its state behind one lock, exports three sections, imports them one by one."""

    metadata = st.PluginMetadata(id="handwritten", version="1.0.0")

    def __init__(self) -> None:
        self.state = PluginState(Config(), {}, Metrics())
        self.lock = asyncio.Lock()

    def state_schema_version(self) -> int:
        return 1

    async def export_state(self) -> st.StateSnapshot:
        async with self.lock:
            config = msgspec.json.encode(self.state.config)
            cache = msgspec.msgpack.encode(self.state.cache)
            metrics = msgspec.json.encode(self.state.metrics)
        packed = st.compress(cache)
        sections = {
            "config": st.StateSection("config", 1, config, False, None, {}),
            "cache": st.StateSection(
                "cache",
                1,
                packed,
                True,
                None,
                {"compression": "zstd", "size": str(len(cache)), "original_size": str(len(cache))},
            ),
            "metrics": st.StateSection("metrics", 1, metrics, False, None, {}),
        }
        snapshot = st.StateSnapshot(
            id=str(uuid.uuid4()),
            plugin_id=self.metadata.id,
            plugin_version=self.metadata.version,
            schema_version=self.state_schema_version(),
            timestamp=int(time.time()),
            sections=sections,
            metadata=st.StateMetadata(reason=st.StateCreationReason.EXPORT, created_by="plugin"),
            checksum="",
        )
        return msgspec.structs.replace(snapshot, checksum=st.calculate_checksum(snapshot))

    async def import_state(self, snapshot: st.StateSnapshot) -> st.StateImportResult:
        started = time.perf_counter()
        validation = await self.validate_state(snapshot)
        if not validation.is_valid:
            msg = f"Validation score: {validation.compatibility_score}"
            raise st.ValidationFailed(msg, validation=validation)
        result = st.StateImportResult()
        async with self.lock:
            for name, section in snapshot.sections.items():
                try:
                    result.warnings.extend(self.import_section(name, section))
                    result.imported_sections.append(name)
                except (st.StateTransferError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    result.failed_sections.append(st.FailedSection(name=name, error=str(exc)))
        result.duration = datetime.timedelta(seconds=time.perf_counter() - started)
        return result

    async def validate_state(self, snapshot: st.StateSnapshot) -> st.StateValidation:
        validation = st.StateValidation(is_valid=True, schema_compatible=True, version_compatible=True)
        if snapshot.plugin_id != self.metadata.id:
            validation.is_valid = False
            validation.compatibility_score = 0.0
            validation.errors.append(f"snapshot is for {snapshot.plugin_id!r}")
            return validation
        if snapshot.checksum != st.calculate_checksum(snapshot):
            validation.is_valid = False
            validation.compatibility_score = 0.0
            validation.errors.append("checksum mismatch")
        if snapshot.schema_version > self.state_schema_version():
            validation.schema_compatible = False
            validation.is_valid = False
            validation.compatibility_score *= 0.5
        for name, section in snapshot.sections.items():
            section_valid = self.validate_section(name, section)
            if not section_valid.is_valid:
                validation.is_valid = False
            validation.section_validations[name] = section_valid
        return validation

    def import_section(self, name: str, section: st.StateSection) -> list[str]:
        warnings: list[str] = []
        if name == "config":
            self.state.config = msgspec.json.decode(section.data, type=Config)
        elif name == "cache":
            data = section.data
            if section.compressed:
                limit = int(section.metadata.get("original_size", "268435456"))
                data = st.decompress(data, section.metadata.get("compression", "zstd"), max_size=limit)
            self.state.cache = msgspec.msgpack.decode(data, type=dict[str, str])
        elif name == "metrics":
            try:  # metrics might be optional
                self.state.metrics = msgspec.json.decode(section.data, type=Metrics)
            except (msgspec.DecodeError, msgspec.ValidationError):
                warnings.append("Metrics import failed, using defaults")
        else:
            warnings.append(f"Unknown section: {name}")
        return warnings

    def validate_section(self, name: str, section: st.StateSection) -> st.SectionValidation:
        validation = st.SectionValidation()
        if name == "config":
            if section.schema_version > 1:
                validation.errors.append("Config schema too new")
                validation.is_valid = False
                validation.verdict = "incompatible"
        elif name == "cache":
            if not section.compressed:
                validation.warnings.append("Cache should be compressed")
        elif name != "metrics":
            validation.warnings.append("Unknown section")
            validation.verdict = "unknown"
        return validation


async def main() -> None:
    source = HandwrittenPlugin()
    source.state.cache = {f"user:{i}": f"session-{i}" for i in range(1000)}
    source.state.metrics = Metrics(hits=41, misses=1)
    snapshot = await source.export_state()
    data = st.dumps(snapshot)
    target = HandwrittenPlugin()
    result = await target.import_state(st.loads(data))
    print(f"snapshot {snapshot.id}: {len(data)} bytes, sections {sorted(snapshot.sections)}")
    print(f"imported {sorted(result.imported_sections)}, failed {result.failed_sections}, warnings {result.warnings}")
    print(f"cache entries {len(target.state.cache)}, metrics {target.state.metrics}")
    assert target.state == source.state


if __name__ == "__main__":
    asyncio.run(main())
