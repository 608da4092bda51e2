"""Handing a declarative plugin's live state to its reloaded code without copying it.

:func:`plan_handover` compares the old and new declarations (pure, no state
read) and sorts each section into one of:

* ``live``: same schema version and the same type: the new instance gets the
  very object the old one held;
* ``rebind``: same version and the same structure, but the reload redefined
  classes of the plugin's own modules (msgspec Structs, dataclasses): the
  values are re-pointed at the new classes (``__class__`` assignment), so
  ``isinstance``, pickling and ``functools.singledispatch`` see the new code;
* ``serialized``: anything else (a migration, a changed structure, a section
  with a ``validate`` hook): encoded with the old codec and decoded, migrated
  and validated by the new code, as an import would;
* ``dropped``: the new code no longer declares the section.

:func:`stage` then runs the only plugin code of the handover, on copies,
and :func:`apply`, host code that cannot be interrupted half-way, moves the
live objects. See ``docs/hot-reload.md`` for the phase order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import _codecs as codecs
from ._model import SectionValidation, StateImportResult, StateSection, new_snapshot_id
from ._sections import pack_section
from ._stateful import Section, StatefulPlugin, _Staged
from .errors import PluginError

__all__ = ["HandoverPlan", "Staged", "apply", "check_plan", "plan_handover", "revert", "stage"]

Rebinder = Callable[[Any], None]
_GC_FLAG = 1 << 14  # Py_TPFLAGS_HAVE_GC: __class__ assignment needs both classes alike here
_SEQUENCES = (list, set, frozenset, tuple)


@dataclass
class HandoverPlan:
    """How each section of the old instance reaches the new one."""

    live: list[str] = field(default_factory=list)
    rebind: dict[str, Rebinder] = field(default_factory=dict)
    unbind: dict[str, Rebinder] = field(default_factory=dict)
    serialized: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: old sections kept undecoded (unknown to the old code): staged if the new code declares them
    stored: dict[str, tuple[StateSection, str]] = field(default_factory=dict)
    verdicts: dict[str, SectionValidation] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return [f"{name}: {e}" for name, sv in self.verdicts.items() for e in sv.errors]


class _Differs(Exception):
    """Two types are not structurally the same (or cannot be rebound safely)."""


class _Matcher:
    """Pairs old and new types; classes of the reloaded modules become a class map."""

    def __init__(self, old_globals: Mapping[str, dict[str, Any]], new_globals: Mapping[str, dict[str, Any]]) -> None:
        self.old_globals = old_globals
        self.new_globals = new_globals
        self.classes: dict[type, type] = {}
        self.old_hints: dict[type, dict[str, Any]] = {}

    def same(self, old: Any, new: Any) -> None:
        if old is new:
            return
        old_origin, new_origin = typing.get_origin(old), typing.get_origin(new)
        if old_origin is not None or new_origin is not None:
            if old_origin is typing.Annotated and new_origin is typing.Annotated:
                if old.__metadata__ != new.__metadata__:
                    raise _Differs
                self.same(old.__origin__, new.__origin__)
                return
            old_args, new_args = typing.get_args(old), typing.get_args(new)
            if old_origin != new_origin or len(old_args) != len(new_args):
                raise _Differs
            if old_origin is typing.Literal:
                if old_args != new_args:
                    raise _Differs
                return
            for a, b in zip(old_args, new_args, strict=True):
                self.same(a, b)
            return
        if isinstance(old, type) and isinstance(new, type):
            self._same_class(old, new)
            return
        if old != new:
            raise _Differs

    def _same_class(self, old: type, new: type) -> None:
        if old in self.classes:
            if self.classes[old] is not new:
                raise _Differs
            return
        reloaded = old.__module__ in self.old_globals and new.__module__ in self.new_globals
        if not reloaded or (old.__module__, old.__qualname__) != (new.__module__, new.__qualname__):
            raise _Differs
        if issubclass(old, enum.Enum) or not _same_layout(old, new):
            raise _Differs
        self.classes[old] = new  # before the fields, so recursive types terminate
        try:
            old_fields, new_fields = self._fields(old, self.old_globals), self._fields(new, self.new_globals)
            if list(old_fields) != list(new_fields):
                raise _Differs
            for name, (old_tp, old_default) in old_fields.items():
                new_tp, new_default = new_fields[name]
                if old_default != new_default:
                    raise _Differs
                self.same(old_tp, new_tp)
            for a, b in zip(old.__bases__, new.__bases__, strict=True):
                self.same(a, b)
        except (_Differs, ValueError):
            del self.classes[old]
            raise _Differs from None
        self.old_hints[old] = {name: tp for name, (tp, _) in old_fields.items() if name != "__config__"}

    @staticmethod
    def _fields(klass: type, module_globals: Mapping[str, dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
        """Field name -> (type, default) of a Struct or dataclass, resolved in the class's own module."""
        try:
            hints = typing.get_type_hints(klass, globalns=module_globals[klass.__module__], include_extras=True)
        except Exception as exc:
            raise _Differs from exc
        if issubclass(klass, msgspec.Struct):
            config = klass.__struct_config__
            settings = tuple(getattr(config, k) for k in sorted(dir(config)) if not k.startswith("_"))
            defaults = {
                name: getattr(value, "factory", value) if type(value).__name__ == "Factory" else value
                for name, value in zip(
                    reversed(klass.__struct_fields__), reversed(klass.__struct_defaults__), strict=False
                )
            }
            out = {name: (hints[name], defaults.get(name, ...)) for name in klass.__struct_fields__}
            out["__config__"] = (None, settings)
            return out
        if dataclasses.is_dataclass(klass):
            params = klass.__dataclass_params__  # type: ignore[attr-defined]
            out = {
                f.name: (hints[f.name], (f.default, f.default_factory, f.init, f.kw_only))
                for f in dataclasses.fields(klass)
            }
            out["__config__"] = (None, repr(params))
            return out
        raise _Differs

    # -- rebinding ----------------------------------------------------------------------------------
    def rebinder(self, tp: Any, classes: Mapping[type, type], hints: Mapping[type, dict[str, Any]]) -> Rebinder | None:
        """A function re-pointing every value of type ``tp`` (old classes, by ``classes``), or None if none needs it."""
        memo: dict[type, Rebinder | None] = {}
        return _compile(tp, classes, hints, memo)


def _same_layout(old: type, new: type) -> bool:
    return all(
        getattr(old, attr) == getattr(new, attr)
        for attr in ("__basicsize__", "__itemsize__", "__dictoffset__", "__weakrefoffset__")
    ) and (old.__flags__ & _GC_FLAG) == (new.__flags__ & _GC_FLAG)


def _compile(
    tp: Any, classes: Mapping[type, type], hints: Mapping[type, dict[str, Any]], memo: dict[type, Rebinder | None]
) -> Rebinder | None:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _compile(args[0], classes, hints, memo)
    if origin is dict:
        keys = _compile(args[0], classes, hints, memo) if args else None
        values = _compile(args[1], classes, hints, memo) if len(args) > 1 else None
        if keys is not None:
            raise _Differs  # keys are hashed by class: never re-pointed in place
        if values is None:
            return None
        leaf = _leaf(args[1], classes, hints)
        if leaf is not None:
            old, new = leaf

            def rebind_dict_leaf(value: Any) -> None:
                for item in value.values():
                    if type(item) is old:
                        item.__class__ = new

            return rebind_dict_leaf

        def rebind_dict(value: Any) -> None:
            for item in value.values():
                values(item)

        return rebind_dict
    if origin in _SEQUENCES:
        element = [_compile(a, classes, hints, memo) for a in args if a is not Ellipsis]
        funcs = [f for f in element if f is not None]
        if not funcs:
            return None
        if origin in (set, frozenset):
            raise _Differs  # set members are hashed by class
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            per_item = element

            def rebind_fixed_tuple(value: Any) -> None:
                for item, func in zip(value, per_item, strict=False):
                    if func is not None:
                        func(item)

            return rebind_fixed_tuple
        each = funcs[0]

        def rebind_items(value: Any) -> None:
            for item in value:
                each(item)

        return rebind_items
    if origin in (typing.Union, types.UnionType):
        members = [(a, _compile(a, classes, hints, memo)) for a in args]
        if any(f is not None and a not in classes for a, f in members):
            raise _Differs  # a container inside a union: the value's shape is not known without decoding
        by_class = {a: f for a, f in members if f is not None}
        if not by_class:
            return None

        def rebind_union(value: Any) -> None:
            func = by_class.get(type(value))
            if func is not None:
                func(value)

        return rebind_union
    if isinstance(tp, type) and tp in classes:
        if tp in memo:
            found = memo[tp]
            if found is not None:
                return found
            cls = tp

            def recurse(value: Any) -> None:  # a recursive type: memo[cls] is filled in below
                func = memo[cls]
                if func is not None:
                    func(value)

            return recurse
        memo[tp] = None
        new = classes[tp]
        fields = [(name, _compile(ftp, classes, hints, memo)) for name, ftp in hints[tp].items()]
        nested = [(name, f) for name, f in fields if f is not None]

        def rebind_object(value: Any) -> None:
            if type(value) is not tp:
                return
            value.__class__ = new
            for name, func in nested:
                func(getattr(value, name))

        memo[tp] = rebind_object
        return rebind_object
    return None


def _leaf(tp: Any, classes: Mapping[type, type], hints: Mapping[type, dict[str, Any]]) -> tuple[type, type] | None:
    """(old, new) when ``tp`` is a re-pointed class none of whose fields needs re-pointing."""
    if not (isinstance(tp, type) and tp in classes):
        return None
    if any(_compile(ftp, classes, hints, {tp: None}) is not None for ftp in hints[tp].values()):
        return None
    return tp, classes[tp]


def plan_handover(
    old: StatefulPlugin,
    new: StatefulPlugin,
    old_modules: Mapping[str, dict[str, Any]],
    new_modules: Mapping[str, dict[str, Any]],
) -> HandoverPlan:
    """Sort the old instance's sections for the handover to ``new``; reads declarations only.

    Args:
        old: the instance serving now.
        new: the instance of the reloaded code.
        old_modules: module name -> globals of each reloaded module, before the reload.
        new_modules: the same names -> globals after the reload.
    """
    plan = HandoverPlan()
    matcher = _Matcher(old_modules, new_modules)
    for name, old_sec in old.sections.items():
        new_sec = new.sections.get(name)
        if new_sec is None:
            plan.dropped.append(name)
            continue
        if old_sec.version == new_sec.version and new_sec.validator is None:
            before = dict(matcher.classes)
            try:
                matcher.same(old_sec.type, new_sec.type)
                _plan_rebind(plan, name, old_sec, new_sec, matcher)
            except _Differs:
                matcher.classes = before
            else:
                continue
        plan.serialized.append(name)
        stub = StateSection(name, old_sec.version, b"")
        plan.verdicts[name] = new._plan_section(stub)
    for name, (stored, origin) in old._preserved.items():
        plan.stored[name] = (stored, origin)
        plan.verdicts[name] = new._plan_section(stored)
    return plan


def _plan_rebind(plan: HandoverPlan, name: str, old_sec: Section[Any], new_sec: Section[Any], m: _Matcher) -> None:
    forward = m.rebinder(old_sec.type, m.classes, m.old_hints)
    if forward is None:
        plan.live.append(name)
        return
    backward = {new: old for old, new in m.classes.items()}
    new_hints = {m.classes[old]: hints for old, hints in m.old_hints.items()}
    reverse = m.rebinder(new_sec.type, backward, {cls: _retarget(h, m.classes) for cls, h in new_hints.items()})
    if reverse is None:
        raise _Differs
    plan.rebind[name] = forward
    plan.unbind[name] = reverse


def _retarget(hints: dict[str, Any], classes: Mapping[type, type]) -> dict[str, Any]:
    """Old field types with the old classes swapped for the new ones (the new classes' fields)."""
    return {name: _swap(tp, classes) for name, tp in hints.items()}


def _swap(tp: Any, classes: Mapping[type, type]) -> Any:
    if isinstance(tp, type):
        return classes.get(tp, tp)
    origin = typing.get_origin(tp)
    if origin is None or origin is typing.Literal:
        return tp
    args = tuple(_swap(a, classes) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return typing.Annotated[args[0], *tp.__metadata__]
    if origin is types.UnionType or origin is typing.Union:
        return typing.Union[args]  # noqa: UP007 - built from a tuple
    return types.GenericAlias(origin, args)


@dataclass
class Staged:
    """What :func:`stage` prepared: decoded copies, and the sections carried undecoded."""

    sections: list[_Staged]
    carried: dict[str, tuple[StateSection, str]]


async def stage(old: StatefulPlugin, new: StatefulPlugin, plan: HandoverPlan) -> Staged:
    """Encode the ``serialized`` sections and let the new code decode, migrate and validate them.

    The only plugin code of a handover runs here, on copies: the old
    instance's objects are read, never changed. The caller holds both
    instances' state locks (and keeps them through :func:`apply`).
    """
    staged: list[_Staged] = []
    for name in plan.serialized:
        staged.append(await asyncio.to_thread(_copy_section, old, new, name))
    carried: dict[str, tuple[StateSection, str]] = {}
    for name, (stored, origin) in plan.stored.items():
        if name in new.sections:
            staged.append(await asyncio.to_thread(new._stage, origin, old.metadata.id, stored))
        else:
            carried[name] = (stored, origin)
    for name in plan.dropped:
        carried[name] = _pack_dropped(old, name)
    return Staged(staged, carried)


def _copy_section(old: StatefulPlugin, new: StatefulPlugin, name: str) -> _Staged:
    """Section ``name`` of ``old`` encoded with its codec, then decoded, migrated and validated by ``new``."""
    codec, version = old.sections[name].codec, old.sections[name].version
    return new._stage_payload(name, codecs.encode(getattr(old, name), codec, where=name), codec, version)


def apply(old: StatefulPlugin, new: StatefulPlugin, plan: HandoverPlan, staged: Staged) -> StateImportResult:
    """Move the live objects and the staged copies to ``new``: host code only, nothing awaited.

    Re-pointing values at the new classes cannot fail for the values the plan
    checked (same memory layout, exact class match); should it fail anyway,
    the values already re-pointed are pointed back before the error propagates,
    so ``old`` is left as it was.
    """
    values = {name: getattr(old, name) for name in (*plan.live, *plan.rebind)}
    done: list[str] = []
    try:
        for name, rebind in plan.rebind.items():
            done.append(name)
            rebind(values[name])
    except BaseException:
        for name in done:
            plan.unbind[name](values[name])
        raise
    for name, value in values.items():
        setattr(new, name, value)
    for item in staged.sections:
        setattr(new, item.name, item.value)
    new._preserved = staged.carried
    warnings = [w for item in staged.sections for w in item.warnings]
    return StateImportResult(imported_sections=[*values, *(item.name for item in staged.sections)], warnings=warnings)


def revert(old: StatefulPlugin, plan: HandoverPlan) -> None:
    """Undo :func:`apply` for ``old``: point its re-pointed values back at the old classes.

    (``apply`` changes nothing else of ``old``: the new instance it filled is dropped.)
    """
    for name, unbind in plan.unbind.items():
        unbind(getattr(old, name))


def _pack_dropped(old: StatefulPlugin, name: str) -> tuple[StateSection, str]:
    """A section the new code no longer declares, packed so later exports carry it unchanged."""
    sec = old.sections[name]
    payload = codecs.encode(getattr(old, name), sec.codec, where=name)
    origin = new_snapshot_id()
    stored = pack_section(
        name, sec.version, payload, snapshot_id=origin, plugin_id=old.metadata.id, compression=sec.compression,
        level=sec.level, keyring=old.keyring, encrypt=sec.encrypt, metadata={"codec": sec.codec},
    )  # fmt: skip
    return stored, origin


def check_plan(plan: HandoverPlan, *, allow_dropped: bool) -> None:
    """Raise :class:`PluginError` if ``plan`` cannot be carried out (checked before any pause)."""
    if plan.dropped and not allow_dropped:
        msg = f"new code no longer declares section(s) {sorted(plan.dropped)} (allowed by allow_dropped_sections=True)"
        raise PluginError(msg)
    if plan.errors:
        raise PluginError("; ".join(plan.errors))
