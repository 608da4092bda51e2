"""The top-level namespace: every public member is exported from ``statetransfer`` itself."""

import inspect

import statetransfer as st
import statetransfer.errors
import statetransfer.stores


def test_all_is_sorted_and_resolves():
    """__all__ is sorted, and each name resolves to an object defined inside statetransfer."""
    assert st.__all__ == sorted(st.__all__)
    for name in st.__all__:
        member = getattr(st, name)
        module = getattr(member, "__module__", "statetransfer")
        assert module.split(".")[0] == "statetransfer", (name, module)


def test_every_error_and_store_type_is_exported():
    """Errors, warnings and the store types a user meets are reachable from the top-level package."""
    for module in (statetransfer.errors, statetransfer.stores):
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
