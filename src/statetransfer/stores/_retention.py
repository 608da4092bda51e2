"""Retention: which snapshots a prune keeps, as a pure function of their infos, the rules and the time."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Sequence

from ..errors import InvalidArgument
from ._manifest import SnapshotInfo

__all__ = ["GROUP_FIELDS", "plan_prune"]

#: The :class:`SnapshotInfo` fields retention may group by.
GROUP_FIELDS = frozenset({"plugin_id", "reason", "plugin_version", "schema_version"})


def order_key(info: SnapshotInfo) -> tuple[int, str]:
    """Sort key of a snapshot by creation time (nanoseconds when recorded), then id."""
    return (info.created_ns or info.timestamp * 1_000_000_000, info.id)


def _day(info: SnapshotInfo) -> Hashable:
    return datetime.datetime.fromtimestamp(info.timestamp, datetime.UTC).date()


def _week(info: SnapshotInfo) -> Hashable:
    return datetime.datetime.fromtimestamp(info.timestamp, datetime.UTC).isocalendar()[:2]


def _newest_per_period(infos: list[SnapshotInfo], count: int, period: Callable[[SnapshotInfo], Hashable]) -> list[str]:
    kept: list[str] = []
    seen: set[Hashable] = set()
    for info in infos:  # newest first
        if len(seen) >= count:
            break
        key = period(info)
        if key not in seen:
            seen.add(key)
            kept.append(info.id)
    return kept


def check_rules(
    keep_last: int | None, keep_daily: int | None, keep_weekly: int | None, group_by: Sequence[str]
) -> tuple[str, ...]:
    """Validate retention arguments; returns ``group_by`` as a tuple.

    Raises:
        InvalidArgument: a negative or non-int count, or an unknown grouping field.
    """
    for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily), ("keep_weekly", keep_weekly)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidArgument(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(group_by, str):
        group_by = (group_by,)
    fields = tuple(group_by)
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise InvalidArgument(f"group_by: unknown fields {unknown!r}; choose from {sorted(GROUP_FIELDS)}")
    return fields


def plan_prune(
    infos: Sequence[SnapshotInfo],
    *,
    keep_last: int | None = None,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    group_by: Sequence[str] = ("plugin_id", "reason"),
    now: float,
) -> tuple[list[str], list[str]]:
    """Split snapshot ids into (removed, kept), both newest first.

    Expired snapshots (``expires_at`` before ``now``) are always removed. When
    any keep rule is given, a snapshot survives only if one rule keeps it,
    applied within each group of snapshots sharing the ``group_by`` fields
    (by default plugin and reason, so checkpoints never push out backups):
    the ``keep_last`` newest; the newest of each of the ``keep_daily`` most
    recent days (UTC); the newest of each of the ``keep_weekly`` most recent
    ISO weeks. With no rule, only expired snapshots go.
    """
    fields = check_rules(keep_last, keep_daily, keep_weekly, group_by)
    ordered = sorted(infos, key=order_key, reverse=True)
    rules = keep_last is not None or keep_daily is not None or keep_weekly is not None
    groups: dict[tuple[object, ...], list[SnapshotInfo]] = {}
    for info in ordered:
        groups.setdefault(tuple(getattr(info, f) for f in fields), []).append(info)
    keep: set[str] = set()
    for group in groups.values():
        live = [i for i in group if i.expires_at is None or i.expires_at >= now]
        if not rules:
            keep.update(i.id for i in live)
            continue
        keep.update(i.id for i in live[: keep_last or 0])
        keep.update(_newest_per_period(live, keep_daily or 0, _day))
        keep.update(_newest_per_period(live, keep_weekly or 0, _week))
    removed = [i.id for i in ordered if i.id not in keep]
    kept = [i.id for i in ordered if i.id in keep]
    return removed, kept
