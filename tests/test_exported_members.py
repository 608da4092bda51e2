"""The top-level namespace is exactly the public contract."""

import statetransfer as st

CONTRACT_NAMES = {
    # §1 model
    "StateSnapshot", "StateSection", "StateMetadata", "StateCreationReason", "EncryptionInfo",
    "StateImportResult", "FailedSection", "StateValidation", "SectionValidation", "PluginMetadata",
    # §2 errors
    "StateTransferError", "ValidationFailed", "ChecksumMismatch", "CorruptSnapshot", "DecryptionFailed",
    "MissingKey", "DecompressionLimitExceeded", "MigrationError", "ImportFailed", "StoreError", "SnapshotNotFound",
    # §3 snapshot bytes
    "dumps", "loads", "dump", "load", "calculate_checksum", "sign",
    # §4 sections
    "compress", "decompress", "Keyring", "reencrypt",
    # §5 plugins
    "Plugin", "StateTransferable", "StatefulPlugin", "Section", "migration", "transfer_state",
    # §6 host
    "PluginHost", "ReloadResult",
    # §7 stores
    "SnapshotStore", "open_store", "SnapshotInfo", "VerifyReport", "backup", "restore",
}  # fmt: skip


def test_all_matches_the_contract():
    """__all__ lists exactly the contract's names, sorted, and each one resolves."""
    assert set(st.__all__) == CONTRACT_NAMES
    assert st.__all__ == sorted(st.__all__)
    for name in st.__all__:
        assert getattr(st, name) is not None


def test_error_tree():
    """Every error is a StateTransferError; SnapshotNotFound is also a KeyError."""
    for name in CONTRACT_NAMES:
        obj = getattr(st, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, st.StateTransferError)
    assert issubclass(st.SnapshotNotFound, KeyError)
    assert issubclass(st.SnapshotNotFound, st.StoreError)
    assert issubclass(st.ChecksumMismatch, st.CorruptSnapshot)
