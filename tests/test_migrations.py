"""Migration chains are checked when declared: gaps, duplicates, cycles, steps past the version."""

from __future__ import annotations

import pytest

import statetransfer as st
from statetransfer._migrations import _REGISTRY, find_path, make_step


def declare(version: int, steps: list[tuple[int, int | None]], plugin_id: str = "m"):
    section = st.Section(dict[str, int], version=version)
    for from_version, to_version in steps:
        section.migration(from_version=from_version, to_version=to_version)(lambda old: old)
    return type("P", (st.StatefulPlugin,), {"metadata": st.PluginMetadata(id=plugin_id, version="1.0.0"), "s": section})


def test_good_chain_accepted():
    """A contiguous chain 1→2→3 and a downgrade 4→3 are accepted."""
    declare(3, [(1, None), (2, None), (4, 3)])


@pytest.mark.parametrize(
    ("version", "steps", "match"),
    [
        pytest.param(4, [(1, None), (3, None)], "gap", id="gap"),
        pytest.param(3, [(1, None), (1, None), (2, None)], "duplicate", id="duplicate"),
        pytest.param(3, [(2, 2)], "cycle", id="self-cycle"),
        pytest.param(2, [(1, 3)], "past the declared version", id="past-version"),
        pytest.param(2, [(5, 3)], "gap", id="downgrade-stops-short"),
    ],
)
def test_bad_chains_rejected_at_class_creation(version, steps, match):
    """Ill-formed chains fail when the class is created, not when it runs."""
    with pytest.raises(st.MigrationError, match=match):
        declare(version, steps)


def test_module_level_registration():
    """st.migration registers steps for a plugin section from any module."""
    key = ("reg-plugin", "s")
    try:

        @st.migration("reg-plugin", "s", from_version=1)
        def one_to_two(old):
            return {**old, "upgraded": 1}

        cls = declare(2, [], plugin_id="reg-plugin")
        plan = cls().plan(
            st.StateSnapshot(
                "x", "reg-plugin", "1.0.0", 1, 0, {"s": st.StateSection("s", 1, b"\x80")}, st.StateMetadata()
            )
        )
        assert plan["s"].migration_path == [1, 2]
        with pytest.raises(st.MigrationError, match="duplicate"):

            @st.migration("reg-plugin", "s", from_version=1)
            def other(old):
                return old
    finally:
        _REGISTRY.pop(key, None)


def test_module_level_gap_rejected():
    """A registered step that cannot reach the class's version is a gap at class creation."""
    try:
        st.migration("gap-plugin", "s", from_version=5, to_version=6)(lambda old: old)
        with pytest.raises(st.MigrationError, match="gap"):
            declare(2, [(1, None)], plugin_id="gap-plugin")
    finally:
        _REGISTRY.pop(("gap-plugin", "s"), None)


def test_shortest_path():
    """find_path takes the shortest chain."""
    steps = [make_step(lambda x: x, 1, 2), make_step(lambda x: x, 2, 3), make_step(lambda x: x, 1, 3)]
    path = find_path(steps, 1, 3)
    assert [(s.from_version, s.to_version) for s in path] == [(1, 3)]
    assert find_path(steps, 3, 1) is None
    assert find_path(steps, 2, 2) == []
