"""The ``statetransfer`` command line: inspect, validate, diff, stores, keys, and the demo.

Exit codes: 0 success, 1 a check failed (invalid snapshot, verify problems,
damaged or unreadable data), 2 usage errors (bad arguments, missing files,
unknown store schemes, plugins that do not import).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._loading import load_class
from .container import dumps, load
from .crypto import KEYRING_ENV, Keyring, reencrypt
from .diffing import diff_snapshots
from .errors import PluginError, StateTransferError, StoreError
from .model import StateSnapshot
from .plugin import StateTransferable
from .stores import SnapshotStore, open_store

__all__ = ["main"]

T = TypeVar("T")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_json = msgspec.json.Encoder()


class UsageProblem(StateTransferError):
    """A problem with how the command was called (exit code 2)."""


def _emit_json(value: Any) -> None:
    sys.stdout.write(_json.encode(msgspec.to_builtins(value)).decode() + "\n")


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise SystemExit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and the contract's exit codes (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (UsageProblem, PluginError) as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(str(exc), 2)
        except StoreError as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(str(exc), 2 if "unknown store scheme" in str(exc) or "pip install" in str(exc) else 1)
        except StateTransferError as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(f"{exc} ({type(exc).__name__})", 1)

    return wrapper


def _keyring(ctx: click.Context, *, required: bool = False) -> Keyring | None:
    path = ctx.obj.get("keyring")
    if path:
        return Keyring.from_file(path)
    if os.environ.get(KEYRING_ENV):
        return Keyring.from_env()
    if required:
        raise UsageProblem(f"this command needs keys: pass --keyring FILE or set {KEYRING_ENV}")
    return None


@contextlib.contextmanager
def _spinner(label: str) -> Iterator[None]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as progress:  # fmt: skip
        progress.add_task(label, total=None)
        yield


def _read_snapshot(path: str, verify_key: bytes | None = None) -> StateSnapshot:
    if not Path(path).is_file():
        raise UsageProblem(f"no such snapshot file {path!r}")
    with _spinner(f"reading {path}"):
        return load(path, verify_key=verify_key)


def _snapshot_arg(ref: tuple[str, ...], verify_key: bytes | None = None) -> StateSnapshot:
    """A snapshot named by a file path, or by ``STORE_URL ID``."""
    if len(ref) == 1:
        return _read_snapshot(ref[0], verify_key)
    if len(ref) == 2:
        url, snapshot_id = ref
        with _spinner(f"fetching {snapshot_id}"):
            return _with_store(url, lambda s: s.get(snapshot_id, verify_key=verify_key))
    raise UsageProblem("name a snapshot as FILE or as STORE_URL ID")


def _write_file(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically (a temporary file, then a rename)."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise UsageProblem(f"cannot write {str(target)!r}: {exc.strerror}") from exc


def _verify_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes().strip()
    except OSError as exc:
        raise UsageProblem(f"cannot read verify key file {path!r}: {exc.strerror}") from exc
    with contextlib.suppress(ValueError):
        decoded = base64.b64decode(raw, validate=True)
        if len(decoded) >= 32:
            return decoded
    return raw


def _load_plugin_class(spec: str) -> type[StateTransferable]:
    cls = load_class(spec, search_path=os.getcwd())
    if not issubclass(cls, StateTransferable):
        raise UsageProblem(f"{spec!r} is not a StateTransferable class")
    return cls


def _table(*columns: str) -> Table:
    """A table whose first column (ids, names) never wraps, so it stays copy-pasteable."""
    table = Table()
    for i, name in enumerate(columns):
        table.add_column(name, no_wrap=i == 0)
    return table


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the group ------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--keyring", "keyring", type=click.Path(dir_okay=False), help=f"Keyring file (else ${KEYRING_ENV}).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="statetransfer")
@click.pass_context
def main(ctx: click.Context, keyring: str | None, debug: bool) -> None:
    """Export, import, migrate, hot-reload and back up plugin state."""
    ctx.ensure_object(dict)
    ctx.obj.update(keyring=keyring, debug=debug)


# -- inspect --------------------------------------------------------------------------------------
def describe(snapshot: StateSnapshot, *, size: int | None, signature: str) -> dict[str, Any]:
    """The ``inspect --json`` shape."""
    sections = []
    for name, sec in sorted(snapshot.sections.items()):
        enc = sec.encryption
        sections.append({
            "name": name,
            "schema_version": sec.schema_version,
            "stored_size": len(sec.data),
            "original_size": int(sec.metadata.get("original_size", len(sec.data))),
            "compression": sec.metadata.get("compression", "zstd") if sec.compressed else None,
            "encryption": None if enc is None else {"algorithm": enc.algorithm, "key_id": enc.key_id},
            "codec": sec.metadata.get("codec"),
        })  # fmt: skip
    return {
        "id": snapshot.id,
        "plugin_id": snapshot.plugin_id,
        "plugin_version": snapshot.plugin_version,
        "schema_version": snapshot.schema_version,
        "timestamp": snapshot.timestamp,
        "created_ns": snapshot.created_ns,
        "metadata": msgspec.to_builtins(snapshot.metadata),
        "checksum": snapshot.checksum,
        "checksum_ok": True,
        "signature": signature,
        "size": size,
        "sections": sections,
    }


@main.command()
@click.argument("snapshot", nargs=-1, required=True)
@click.option("--verify-key-file", type=click.Path(dir_okay=False), help="HMAC key file to verify the signature.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@command
def inspect(ctx: click.Context, snapshot: tuple[str, ...], verify_key_file: str | None, as_json: bool) -> None:
    """Show a snapshot's header, metadata and sections (SNAPSHOT is FILE or STORE_URL ID)."""
    key = _verify_key(verify_key_file)
    snap = _snapshot_arg(snapshot, key)
    size = Path(snapshot[0]).stat().st_size if len(snapshot) == 1 else len(dumps(snap))
    signature = "verified" if key is not None else ("signed (not verified)" if snap.signature else "unsigned")
    info = describe(snap, size=size, signature=signature)
    if as_json:
        _emit_json(info)
        return
    meta = snap.metadata
    out.print(f"[bold]snapshot[/] {snap.id}  ({_human(size)})")
    out.print(f"plugin     {snap.plugin_id} {snap.plugin_version}  schema {snap.schema_version}")
    out.print(f"created    {_when(snap.timestamp)}  reason {meta.reason.value}  by {meta.created_by}")
    expires = _when(meta.expires_at) if meta.expires_at else "never"
    out.print(f"tags       {', '.join(meta.tags) or '-'}  expires {expires}")
    out.print(f"checksum   {snap.checksum}  [green]ok[/]")
    out.print(f"signature  {signature}")
    table = _table("section", "schema", "stored", "original", "compression", "encryption (key id)")
    for s in info["sections"]:
        enc = s["encryption"]
        table.add_row(s["name"], str(s["schema_version"]), _human(s["stored_size"]), _human(s["original_size"]),
                      s["compression"] or "-", f"{enc['algorithm']} ({enc['key_id']})" if enc else "-")  # fmt: skip
    out.print(table)


# -- validate -------------------------------------------------------------------------------------
@main.command()
@click.argument("snapshot", nargs=-1, required=True)
@click.option("--plugin", "plugin_spec", required=True, help="The plugin class, 'package.module:ClassName'.")
@click.option("--shallow", is_flag=True, help="Do not decode sections (faster, finds fewer problems).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@command
def validate(ctx: click.Context, snapshot: tuple[str, ...], plugin_spec: str, shallow: bool, as_json: bool) -> None:
    """Validate a snapshot against a plugin's code: verdict and migration path per section, score. Exit 1 if invalid."""
    cls = _load_plugin_class(plugin_spec)
    snap = _snapshot_arg(snapshot)
    keyring = _keyring(ctx)
    try:
        plugin = cls(keyring=keyring)  # type: ignore[call-arg]
    except TypeError:
        plugin = cls()

    async def check() -> Any:
        if hasattr(plugin, "plan"):
            return await plugin.validate_state(snap, deep=not shallow)  # type: ignore[call-arg]
        return await plugin.validate_state(snap)

    v = _run(check())
    if as_json:
        _emit_json({
            "snapshot": snap.id, "plugin_id": plugin.metadata.id, "is_valid": v.is_valid,
            "schema_compatible": v.schema_compatible, "version_compatible": v.version_compatible,
            "compatibility_score": v.compatibility_score, "errors": v.errors, "warnings": v.warnings,
            "sections": msgspec.to_builtins(v.section_validations),
        })  # fmt: skip
    else:
        verdict = "[green]valid[/]" if v.is_valid else "[red]INVALID[/]"
        out.print(f"{snap.id} for {plugin.metadata.id} {plugin.metadata.version}: {verdict}, "
                  f"score {v.compatibility_score:.3f}")  # fmt: skip
        out.print(f"schema compatible {v.schema_compatible}, version compatible {v.version_compatible}")
        table = _table("section", "verdict", "migration path", "problems")
        for name, sv in sorted(v.section_validations.items()):
            path = " -> ".join(map(str, sv.migration_path)) or "-"
            problems = "; ".join([*sv.errors, *sv.warnings]) or "-"
            table.add_row(name, sv.verdict if sv.is_valid else f"[red]{sv.verdict}[/]", path, problems)
        out.print(table)
        for e in v.errors:
            out.print(f"[red]error:[/] {e}")
        for w in v.warnings:
            out.print(f"[yellow]warning:[/] {w}")
    if not v.is_valid:
        raise SystemExit(1)


# -- diff -----------------------------------------------------------------------------------------
@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@command
def diff(ctx: click.Context, a: str, b: str, as_json: bool) -> None:
    """Show what changed from snapshot file A to B, down to keys of decoded sections."""
    result = diff_snapshots(_read_snapshot(a), _read_snapshot(b), keyring=_keyring(ctx))
    if as_json:
        _emit_json(result)
        return
    out.print(f"[bold]{result['a']}[/] -> [bold]{result['b']}[/]")
    for m in result["metadata"]:
        out.print(f"  {m['field']}: {m['a']!r} -> {m['b']!r}")
    secs = result["sections"]
    for name in secs["added"]:
        out.print(f"[green]+ section {name}[/]")
    for name in secs["removed"]:
        out.print(f"[red]- section {name}[/]")
    for entry in secs["changed"]:
        out.print(f"[yellow]~ section {entry['name']}[/]" + ("" if entry.get("decoded") else f" ({entry['note']})"))
        for c in entry["changes"]:
            sign = {"added": "+", "removed": "-", "changed": "~"}[c["op"]]
            detail = {"added": f"{c['b']!r}", "removed": f"{c['a']!r}", "changed": f"{c['a']!r} -> {c['b']!r}"}
            out.print(f"    {sign} {c['path']}: {detail[c['op']]}")
    if secs["unchanged"]:
        out.print(f"  unchanged: {', '.join(secs['unchanged'])}")


# -- stores ---------------------------------------------------------------------------------------
def _with_store(url: str, work: Callable[[SnapshotStore], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return _run(run())


@main.command("list")
@click.argument("store_url")
@click.option("--plugin", "plugin_id", help="Only this plugin's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable: all must match).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@command
def list_(store_url: str, plugin_id: str | None, tags: tuple[str, ...], as_json: bool) -> None:
    """List a store's snapshots, newest first."""
    infos = _with_store(store_url, lambda s: s.list(plugin_id=plugin_id, tags=list(tags) or None))
    if as_json:
        _emit_json(infos)
        return
    table = _table("id", "plugin", "version", "schema", "created", "reason", "tags", "size")
    for i in infos:
        table.add_row(i.id, i.plugin_id, i.plugin_version, str(i.schema_version), _when(i.timestamp),
                      i.reason.value, ",".join(i.tags), _human(i.size))  # fmt: skip
    out.print(table)
    out.print(f"{len(infos)} snapshot(s)")


@main.command()
@click.argument("file")
@click.argument("store_url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@command
def push(file: str, store_url: str, as_json: bool) -> None:
    """Put a snapshot file into a store."""
    snap = _read_snapshot(file)
    with _spinner(f"pushing {snap.id}"):
        info = _with_store(store_url, lambda s: s.put(snap))
    if as_json:
        _emit_json(info)
    else:
        out.print(f"pushed {info.id} ({info.plugin_id}, {_human(info.size)}) to {store_url}")


@main.command()
@click.argument("store_url")
@click.argument("snapshot_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: ID.stsnap).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@command
def pull(store_url: str, snapshot_id: str, output: str | None, as_json: bool) -> None:
    """Get a snapshot from a store into a file."""
    with _spinner(f"pulling {snapshot_id}"):
        snap = _with_store(store_url, lambda s: s.get(snapshot_id))
    target = Path(output or f"{snapshot_id}.stsnap")
    data = dumps(snap)
    _write_file(target, data)
    if as_json:
        _emit_json({"id": snap.id, "file": str(target), "size": len(data)})
    else:
        out.print(f"pulled {snap.id} to {target} ({_human(len(data))})")


@main.command()
@click.argument("store_url")
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep the N newest snapshots per plugin.")
@click.option("--keep-daily", type=click.IntRange(min=0), help="Keep the newest of each of the last N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), help="Keep the newest of each of the last N weeks.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@command
def prune(  # noqa: PLR0917 - one parameter per click option
    store_url: str, keep_last: int | None, keep_daily: int | None, keep_weekly: int | None, dry_run: bool, as_json: bool
) -> None:
    """Remove expired snapshots, and those no keep rule keeps (rules apply per plugin)."""
    with _spinner("pruning"):
        report = _with_store(store_url, lambda s: s.prune(keep_last, keep_daily, keep_weekly, dry_run=dry_run))
    if as_json:
        _emit_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(report.removed)} snapshot(s), kept {len(report.kept)}"
              + ("" if dry_run else f", freed {report.blobs_removed} blob(s)"))  # fmt: skip
    for snapshot_id in report.removed:
        out.print(f"  - {snapshot_id}")


@main.command()
@click.argument("store_url")
@click.option("--read-data/--no-read-data", default=True, help="Re-hash every blob (default) or only check presence.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@command
def verify(store_url: str, read_data: bool, as_json: bool) -> None:
    """Check every snapshot in a store; exit 1 if any problem is found."""
    with Progress(TextColumn("verifying"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=err, transient=True, disable=not err.is_terminal) as progress:  # fmt: skip
        task = progress.add_task("verify", total=None)
        report = _with_store(
            store_url,
            lambda s: s.verify(read_data=read_data, progress=lambda d, t: progress.update(task, completed=d, total=t)),
        )
    if as_json:
        _emit_json(report)
    else:
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        out.print(f"checked {report.checked} snapshot(s), {report.blobs_checked} blob(s) re-hashed: {status}")
        for p in report.problems:
            out.print(f"  [red]![/] {p}")
    if not report.ok:
        raise SystemExit(1)


# -- keys -----------------------------------------------------------------------------------------
@main.command()
@click.option("--key-id", default="default", show_default=True, help="Id of the new key.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Keyring file to create or add to (0600).")
@command
def keygen(key_id: str, out_file: str | None) -> None:
    """Generate a key; with --out, add it to that keyring file as the new default."""
    fresh = Keyring.generate(key_id)
    if out_file is None:
        sys.stdout.write(fresh.to_json())
        return
    path = Path(out_file)
    ring = Keyring.from_file(path) if path.exists() else Keyring()
    if key_id in ring:
        raise UsageProblem(f"{out_file!r} already has a key {key_id!r}; choose another --key-id")
    ring.add(key_id, fresh.get(key_id))
    ring.default_key_id = key_id
    ring.to_file(path)
    out.print(f"added key {key_id!r} to {out_file} (now the default; {len(ring)} key(s)). Back this file up.")


@main.command()
@click.argument("snapshot_file")
@click.option("--to", "to_key", required=True, help="Key id to re-encrypt every encrypted section with.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of in place.")
@click.pass_context
@command
def rekey(ctx: click.Context, snapshot_file: str, to_key: str, output: str | None) -> None:
    """Re-encrypt a snapshot's sections under another key (key rotation); plugin state is not decoded."""
    ring = _keyring(ctx, required=True)
    assert ring is not None
    snap = _read_snapshot(snapshot_file)
    rotated = reencrypt(snap, ring, to_key)
    target = Path(output or snapshot_file)
    _write_file(target, dumps(rotated))
    count = sum(1 for s in rotated.sections.values() if s.encryption is not None)
    out.print(f"re-encrypted {count} section(s) of {snap.id} under key {to_key!r} -> {target}")


# -- demo -----------------------------------------------------------------------------------------
@main.command()
@click.option("--store", "store_url", help="Store URL for the backup step (default: a temporary directory).")
@command
def demo(store_url: str | None) -> None:
    """Load a plugin, serve calls, hot-reload it to v2 with a migration, back up, restore in a fresh process."""
    from .demo import run_demo  # noqa: PLC0415 - only the demo needs it

    ok = _run(run_demo(out, store_url))
    if not ok:
        raise SystemExit(1)
