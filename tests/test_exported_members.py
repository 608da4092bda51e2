"""The top-level namespace: every public member is exported from ``statetransfer`` itself."""

import inspect
import typing

import statetransfer as st
import statetransfer._host
import statetransfer._releases
import statetransfer.errors
import statetransfer.stores


def test_all_is_sorted_and_resolves():
    """__all__ is sorted, and each name resolves to an object defined inside statetransfer."""
    assert st.__all__ == sorted(st.__all__)
    for name in st.__all__:
        member = getattr(st, name)
        if typing.get_origin(member) is typing.Literal:  # a type alias (Verdict, Phase)
            continue
        module = getattr(member, "__module__", "statetransfer")
        assert module.split(".")[0] == "statetransfer", (name, module)


def test_every_error_and_store_type_is_exported():
    """Errors, warnings and the store types a user meets are reachable from the top-level package."""
    for module in (statetransfer.errors, statetransfer.stores, statetransfer._host, statetransfer._releases):
        for name in module.__all__:
            member = getattr(module, name)
            if inspect.isclass(member):
                assert getattr(st, name, None) is member, f"{module.__name__}.{name} is not exported"


def test_error_tree():
    """Every error is a StateTransferError; leaves also subclass the builtins users catch."""
    for name in st.__all__:
        obj = getattr(st, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, st.StateTransferError), name
    assert issubclass(st.SnapshotNotFound, KeyError)
    assert issubclass(st.SnapshotNotFound, st.StoreError)
    assert issubclass(st.StoreNotFound, st.StoreError)
    assert issubclass(st.InvalidStoreURL, ValueError)
    assert issubclass(st.MissingDependency, ImportError)
    assert issubclass(st.WriteFailed, OSError)
    assert issubclass(st.ChecksumMismatch, st.CorruptSnapshot)


def test_errors_carry_data():
    """Errors name what they concern in attributes, not only in their message."""
    import asyncio

    import pytest

    class P(st.StatefulPlugin):
        metadata = st.PluginMetadata(id="p", version="1.0.0")
        secret = st.Section(dict[str, str], encrypt=True, default=dict)
        count = st.Section(int, default=int)

    source = P(keyring=st.Keyring.generate("k1"))
    snapshot = asyncio.run(source.export_state())
    with pytest.raises(st.ValidationFailed) as refused:
        asyncio.run(P(keyring=st.Keyring.generate("other")).import_state(snapshot))
    assert refused.value.snapshot_id == snapshot.id
    with pytest.raises(st.ImportFailed) as failed:
        asyncio.run(P(keyring=st.Keyring({"k1": b"\x01" * 32})).import_state(snapshot))
    assert failed.value.snapshot_id == snapshot.id and [f.name for f in failed.value.failed_sections] == ["secret"]
    with pytest.raises(st.DecryptionFailed) as sealed:
        from statetransfer._sections import unpack_section

        unpack_section(snapshot.sections["secret"], snapshot_id=snapshot.id, plugin_id="p",
                       keyring=st.Keyring({"k1": b"\x01" * 32}))  # fmt: skip
    assert (sealed.value.section, sealed.value.key_id, sealed.value.snapshot_id) == ("secret", "k1", snapshot.id)
    source.count = "many"  # type: ignore[assignment]
    with pytest.raises(st.EncodingError) as encoding:
        asyncio.run(source.export_state())
    assert encoding.value.path == "count" and isinstance(encoding.value, ValueError)
