"""Per-section schema migration steps: registration, chain checks and path planning."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import MigrationError

__all__ = ["MigrationStep", "check_chain", "find_path", "migration", "missing_step", "registered_steps"]

F = TypeVar("F", bound=Callable[[Any], Any])


@dataclass(frozen=True)
class MigrationStep:
    """One step of a section's schema: ``func(value at from_version) -> value at to_version``."""

    from_version: int
    to_version: int
    func: Callable[[Any], Any]
    origin: str = ""

    def describe(self) -> str:
        return f"{self.from_version}->{self.to_version} ({self.origin or getattr(self.func, '__qualname__', '?')})"


def make_step(func: Callable[[Any], Any], from_version: int, to_version: int | None) -> MigrationStep:
    """Build a step, checking its versions (a step to itself is a cycle)."""
    if not isinstance(from_version, int) or from_version < 0:
        raise MigrationError(f"from_version must be a non-negative int, got {from_version!r}")
    to = from_version + 1 if to_version is None else to_version
    if not isinstance(to, int) or to < 0:
        raise MigrationError(f"to_version must be a non-negative int, got {to!r}")
    if to == from_version:
        raise MigrationError(f"migration {from_version}->{to} maps a version to itself (a cycle)")
    origin = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"
    return MigrationStep(from_version, to, func, origin)


# (plugin id, section) -> steps registered from any module with st.migration(...)
_REGISTRY: dict[tuple[str, str], list[MigrationStep]] = {}


def migration(plugin_id: str, section: str, from_version: int, to_version: int | None = None) -> Callable[[F], F]:
    """Register a migration step for ``plugin_id``'s ``section`` from any module.

    Lets a later release ship migrations for an older plugin. ``to_version``
    defaults to ``from_version + 1``; a smaller ``to_version`` is a downgrade step.

    Raises:
        MigrationError: a step with the same versions is already registered.
    """

    def register(func: F) -> F:
        step = make_step(func, from_version, to_version)
        steps = _REGISTRY.setdefault((plugin_id, section), [])
        for other in steps:
            if (other.from_version, other.to_version) == (step.from_version, step.to_version):
                if other.origin == step.origin:  # the same function registered again (module reload)
                    steps.remove(other)
                    break
                msg = f"duplicate migration for {plugin_id!r}.{section!r}: {step.describe()} and {other.describe()}"
                raise MigrationError(msg)
        steps.append(step)
        return func

    return register


def registered_steps(plugin_id: str, section: str) -> list[MigrationStep]:
    """Steps registered with :func:`migration` for one plugin section."""
    return list(_REGISTRY.get((plugin_id, section), ()))


def _merge(steps: Iterable[MigrationStep], where: str) -> dict[int, list[MigrationStep]]:
    graph: dict[int, list[MigrationStep]] = {}
    seen: dict[tuple[int, int], MigrationStep] = {}
    for step in steps:
        key = (step.from_version, step.to_version)
        if key in seen:
            if seen[key].func is step.func:
                continue
            raise MigrationError(f"{where}: duplicate migration {step.describe()} and {seen[key].describe()}")
        seen[key] = step
        graph.setdefault(step.from_version, []).append(step)
    return graph


def check_chain(steps: Iterable[MigrationStep], target: int, where: str) -> None:
    """Reject ill-formed chains: duplicates, steps past ``target``, gaps.

    Upgrade steps (to a higher version) lead up to ``target``: every version
    one starts from must reach it. Downgrade steps come in two kinds: from a
    newer version down to ``target`` (older code reading newer state), and
    from ``target`` down to older versions (newer code writing state that an
    older release can read, for a rollback): every version one of those
    starts from must be reachable from ``target``. No step crosses
    ``target``, and every path only goes one way, so the chain has no cycles.
    """
    graph = _merge(steps, where)
    for from_version, outs in graph.items():
        for step in outs:
            up_past = step.from_version <= target < step.to_version
            down_past = step.to_version < target < step.from_version
            if up_past or down_past:
                raise MigrationError(f"{where}: migration {step.describe()} goes past the declared version {target}")
        if from_version == target:
            continue
        rollback = from_version < target and any(s.to_version < from_version for s in outs)
        if rollback and find_path(graph, target, from_version) is None:
            msg = f"{where}: gap in the downgrade chain: version {target} cannot reach {from_version}"
            raise MigrationError(msg)
        leads_to_target = from_version > target or any(s.to_version > from_version for s in outs)
        if leads_to_target and find_path(graph, from_version, target) is None:
            raise MigrationError(f"{where}: gap in the migration chain: version {from_version} cannot reach {target}")


def find_path(
    graph: dict[int, list[MigrationStep]] | Iterable[MigrationStep], start: int, target: int
) -> list[MigrationStep] | None:
    """The shortest list of steps from ``start`` to ``target``, or None.

    The path only goes one way: up through upgrade steps when ``target`` is
    higher, down through downgrade steps when it is lower, never past ``target``.
    """
    if not isinstance(graph, dict):
        graph = _merge(graph, "migrations")
    if start == target:
        return []
    low, high = min(start, target), max(start, target)
    upward = target > start
    queue: deque[tuple[int, list[MigrationStep]]] = deque([(start, [])])
    visited = {start}
    while queue:
        version, path = queue.popleft()
        for step in sorted(graph.get(version, ()), key=lambda s: abs(target - s.to_version)):
            if step.to_version in visited or (step.to_version > version) != upward:
                continue
            if not low <= step.to_version <= high:
                continue
            walked = [*path, step]
            if step.to_version == target:
                return walked
            visited.add(step.to_version)
            queue.append((step.to_version, walked))
    return None


def missing_step(graph: dict[int, list[MigrationStep]] | Iterable[MigrationStep], start: int, target: int) -> int:
    """Where a walk from ``start`` towards ``target`` gets stuck: the version nearest ``target`` it reaches.

    The step that is missing goes from the returned version to ``target``
    (or to any version between them).
    """
    if not isinstance(graph, dict):
        graph = _merge(graph, "migrations")
    low, high = min(start, target), max(start, target)
    versions = {start, *(v for outs in graph.values() for s in outs for v in (s.from_version, s.to_version))}
    reached = [v for v in versions if low <= v <= high and find_path(graph, start, v) is not None]
    return min(reached, key=lambda v: abs(target - v))
