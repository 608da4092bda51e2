"""Loading plugin code: parse a spec, execute a module from its source, instantiate the class.

One loader serves the host (which re-executes a plugin's module on every
reload) and the command line (which imports a plugin class once).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

from ._crypto import Keyring
from ._plugin import Plugin
from .errors import PluginError, StateTransferError

__all__ = [
    "ENTRY_POINT_GROUP",
    "exec_fresh_module",
    "find_class",
    "instantiate",
    "load_class",
    "module_file",
    "parse_spec",
    "resolve_spec",
]

ENTRY_POINT_GROUP = "statetransfer.plugins"


def parse_spec(spec: str) -> tuple[str, str]:
    """``"package.module:ClassName"`` split into module and class name.

    Raises:
        PluginError: the spec does not have that shape.
    """
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise PluginError(f"plugin spec {spec!r} must look like 'package.module:ClassName'")
    return module_name, class_name


def resolve_spec(spec: str) -> str:
    """``spec`` itself when it names ``module:Class``, else the value of that entry point.

    Raises:
        PluginError: no entry point of that name in ``statetransfer.plugins``.
    """
    if ":" in spec:
        return spec
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return str(ep.value)
    msg = f"no plugin entry point {spec!r} in group {ENTRY_POINT_GROUP!r}, and it is not 'module:Class'"
    raise PluginError(msg)


def exec_fresh_module(name: str) -> types.ModuleType:
    """Execute module ``name`` from its current source into a fresh module object.

    Source is compiled directly (never a cached ``.pyc``), so a file rewritten
    twice within one second with the same size still runs its newest text.
    ``sys.modules[name]`` points at the new module while it executes and
    after it succeeds; on failure the previous module is put back.

    Raises:
        PluginError: the module cannot be found, or raised while executing.
    """
    old = sys.modules.get(name)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise PluginError(f"cannot import {name!r}: cannot find module {name!r}: {exc}") from exc
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {name!r}: cannot find module {name!r} (is its directory on sys.path?)")
    module = importlib.util.module_from_spec(spec)
    origin = spec.origin
    sys.modules[name] = module
    try:
        if origin and origin.endswith(".py"):
            code = compile(Path(origin).read_bytes(), origin, "exec", dont_inherit=True)
            exec(code, module.__dict__)  # noqa: S102 - running the plugin's own source is the point
        else:
            spec.loader.exec_module(module)
    except BaseException as exc:
        if sys.modules.get(name) is module:
            if old is not None:
                sys.modules[name] = old
            else:
                sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
            raise
        raise PluginError(f"module {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    importlib.invalidate_caches()
    return module


def find_class(module: types.ModuleType, class_name: str) -> type[Plugin]:
    """The plugin class ``class_name`` of ``module``.

    Raises:
        PluginError: there is no such class, or it is not a :class:`Plugin` subclass.
    """
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginError(f"module {module.__name__!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"{cls!r} is not a statetransfer Plugin subclass")
    return cls


def load_class(spec: str, *, search_path: str | None = None) -> type[Plugin]:
    """The plugin class named by ``spec`` (``module:Class`` or an entry point name).

    Args:
        spec: what to load; a module not imported yet is executed from its source.
        search_path: a directory to make importable first (added to ``sys.path``
            once, if it is not there yet), e.g. the command line's working directory.

    Raises:
        PluginError: the spec is malformed, the module cannot be imported, or
            the class is missing or not a plugin.
    """
    module_name, class_name = parse_spec(resolve_spec(spec))
    if search_path is not None and search_path not in sys.path:
        sys.path.insert(0, search_path)
    module = sys.modules.get(module_name)
    if module is None:
        module = exec_fresh_module(module_name)
    return find_class(module, class_name)


def instantiate(cls: type[Plugin], keyring: Keyring | None) -> Plugin:
    """``cls.create(keyring=keyring)``, checked to have metadata with an id.

    Raises:
        PluginError: the constructor raised, or the instance has no plugin id.
    """
    try:
        instance = cls.create(keyring=keyring)
    except StateTransferError:
        raise
    except Exception as exc:
        raise PluginError(f"{cls.__qualname__}() raised {type(exc).__name__}: {exc}") from exc
    meta = getattr(instance, "metadata", None)
    if meta is None or not getattr(meta, "id", None):
        raise PluginError(f"{cls.__qualname__} has no metadata with an id")
    return instance


def module_file(name: str) -> Path | None:
    """The resolved source file of the imported module ``name``, if it has one."""
    origin = getattr(sys.modules.get(name), "__file__", None)
    return Path(origin).resolve() if origin else None
