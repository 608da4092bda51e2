"""The ``statetransfer`` command line: inspect, validate, diff, stores, keys, and the demo.

Every error ends as one line on stderr (``--debug`` shows the traceback) and
an exit code chosen by the error's type, never by its message text:

- 0: success.
- 1: an operation failed or a check found a problem: an invalid snapshot,
  damaged or unreadable data, verify problems, a store that failed.
- 2: a usage error: bad arguments, or a file, keyring, key, plugin or store
  named on the command line that does not exist or cannot be used
  (:class:`UsageProblem`, and the library's
  :class:`~statetransfer.errors.InvalidArgument` (with
  :class:`~statetransfer.errors.InvalidStoreURL`),
  :class:`~statetransfer.errors.MissingDependency`,
  :class:`~statetransfer.errors.PluginError` and
  :class:`~statetransfer.errors.StoreNotFound`, plus click's own usage errors).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import functools
import itertools
import os
import re
import secrets
import sys
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import click
import msgspec
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ._checksum import MIN_SIGNING_KEY_BYTES, sign, verify_signature
from ._container import dumps, loads
from ._crypto import KEYRING_ENV, Keyring, reencrypt
from ._diffing import diff_snapshots
from ._fileio import write_atomic
from ._loading import load_class
from ._model import StateSnapshot
from ._plugin import StateTransferable
from ._releases import CompatReport, MigrationReport, SectionVerdict, check_compat, migrate_store
from ._sections import framing
from ._stateful import StatefulPlugin
from .errors import (
    InvalidArgument,
    MissingDependency,
    PluginError,
    StateTransferError,
    StoreNotFound,
    StoreWarning,
)
from .stores import SnapshotStore, UnreadableEntry, VerifyReport, open_store
from .stores._aws import credentials_in_environment

__all__ = ["UsageProblem", "exit_code", "main"]

T = TypeVar("T")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_json = msgspec.json.Encoder()
#: Ids the command line gives new keys: no spaces, slashes or separators a keyring or shell would trip on.
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
#: Snapshot ids are shown shortened to the shortest unique prefix, but never shorter than this.
_SHORT_ID = 8


class UsageProblem(StateTransferError):
    """A problem with how the command was called: arguments, or things it names (exit code 2)."""


#: Error types that are the caller's to fix (exit 2); every other error is an operational failure (exit 1).
_USAGE_ERRORS: tuple[type[BaseException], ...] = (
    UsageProblem,
    InvalidArgument,
    MissingDependency,
    PluginError,
    StoreNotFound,
)


def exit_code(exc: BaseException) -> int:
    """The exit code for an error: 2 for usage errors (by type), 1 for everything else."""
    return 2 if isinstance(exc, _USAGE_ERRORS) else 1


def _emit_json(value: Any) -> None:
    sys.stdout.write(_json.encode(msgspec.to_builtins(value)).decode() + "\n")


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise SystemExit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _obj() -> dict[str, Any]:
    return click.get_current_context().ensure_object(dict)


def _message(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ") or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    return text if exit_code(exc) == 2 else f"{text} ({type(exc).__name__})"


# -- options every command accepts, before or after its name ----------------------------------------
def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value and param.name:
        ctx.ensure_object(dict)[param.name] = value
    return value


_GLOBAL_OPTIONS = (
    click.option("--keyring", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                 help=f"Keyring file (else ${KEYRING_ENV})."),
    click.option("--debug", is_flag=True, expose_value=False, callback=_remember, help="Show tracebacks."),
)  # fmt: skip


def _global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in _GLOBAL_OPTIONS:
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_global_options
@click.version_option(package_name="statetransfer")
def main() -> None:
    """Export, import, migrate, hot-reload and back up plugin state."""
    _obj()


def _command(name: str | None = None) -> Callable[[Callable[..., Any]], click.Command]:
    """A subcommand of ``main``: global options accepted, errors turned into one line and an exit code."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as exc:
                if _obj().get("debug"):
                    raise
                if isinstance(exc, StateTransferError | OSError):
                    _fail(_message(exc), exit_code(exc))
                _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", 1)

        return main.command(name)(_global_options(wrapper))

    return decorate


def _keyring(*, required: bool = False) -> Keyring | None:
    path = _obj().get("keyring")
    try:
        if path:
            return Keyring.from_file(path)
        if os.environ.get(KEYRING_ENV):
            return Keyring.from_env()
    except StateTransferError as exc:
        raise UsageProblem(f"keyring {path or '$' + KEYRING_ENV}: {exc}") from exc
    if required:
        raise UsageProblem(f"this command needs keys: pass --keyring FILE or set {KEYRING_ENV}")
    return None


def _key_file(path: str | None) -> bytes | None:
    """The signing key in ``path``: the file's bytes, exactly as they are (docs/cli.md, "Keys")."""
    if path is None:
        return None
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read key file {path!r}: {exc.strerror}") from exc
    if len(key) < MIN_SIGNING_KEY_BYTES:
        msg = (
            f"key file {path!r} holds {len(key)} bytes; a signing key is at least {MIN_SIGNING_KEY_BYTES} "
            "(make one with: statetransfer keygen --signing --out FILE)"
        )
        raise UsageProblem(msg)
    return key


# -- progress, files ------------------------------------------------------------------------------
@contextlib.contextmanager
def _progress(description: str, total: int | None = None, *, unit: str = "bytes") -> Iterator[Callable[..., None]]:
    """Progress on stderr when it is a terminal (amount, rate, time left); nothing at all when piped.

    Yields ``update(completed, total=None)``.
    """
    columns: list[ProgressColumn | str] = [TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes" and total is None:  # one call into a store: no amounts to show, only that it is working
        columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    elif unit == "bytes":
        columns += [DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns += [MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(description, total=total)

        def update(completed: int, total: int | None = None) -> None:
            progress.update(task, completed=completed, total=total)

        yield update


def _demo_progress(description: str, total: int | None) -> contextlib.AbstractContextManager[Callable[..., None]]:
    """The demo's steps: SKUs counted when there is a total, else a spinner while a step runs."""
    return _progress(description, total, unit="bytes" if total is None else "SKUs")


def _read_snapshot(path: str, verify_key: bytes | None = None) -> StateSnapshot:
    file = Path(path)
    if not file.is_file():
        raise UsageProblem(f"no such snapshot file {path!r}")
    data = bytearray()
    with _progress(f"reading {file.name}", file.stat().st_size) as update, file.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            data += chunk
            update(len(data))
    return loads(data, verify_key=verify_key)


def _write_file(target: Path, data: bytes, *, force: bool = True, mode: int | None = None) -> None:
    """Replace ``target`` with ``data`` atomically (the library's one file writer), with progress on a terminal.

    Unless ``force``, an existing ``target`` is refused rather than overwritten.
    """
    if not force and target.exists():
        raise UsageProblem(f"{str(target)!r} exists; pass --force to overwrite it")
    step = 1 << 20
    with _progress(f"writing {target.name}", len(data)) as update:

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(data), step):
                yield data[start : start + step]
                update(min(start + step, len(data)))

        write_atomic(target, pieces(), mode=mode)


# -- stores ---------------------------------------------------------------------------------------
def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "file"


def _check_s3_credentials(url: str) -> None:
    """Refuse, before any request, an S3 store with no credentials to sign with.

    Credentials come from the environment only; the instance-metadata service
    is asked only when ``AWS_EC2_METADATA_DISABLED=false`` says so.
    """
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    if query.get("skip_signature", "").lower() in ("1", "true", "yes"):
        return
    if credentials_in_environment():
        return
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false":
        return
    msg = (
        "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
        "temporary credentials) or AWS_PROFILE in the environment; on a machine with an instance role set "
        "AWS_EC2_METADATA_DISABLED=false; for a public bucket add ?skip_signature=true to the URL"
    )
    raise UsageProblem(msg)


def _check_store_url(url: str) -> None:
    """Refuse, before any work, stores the command line cannot use."""
    scheme = _scheme(url)
    if scheme == "memory":
        msg = (
            f"{url!r}: a memory:// store lives inside one process and is gone when the command exits; "
            "use file://, sqlite:// or s3://"
        )
        raise UsageProblem(msg)
    if scheme == "s3":
        _check_s3_credentials(url)


def _open_store(url: str, *, create: bool) -> SnapshotStore:
    """Open the store a command names; only writing commands ``create`` one where there is none."""
    _check_store_url(url)
    return open_store(url, create=create)


def _with_store(url: str, work: Callable[[SnapshotStore], Coroutine[Any, Any, T]], *, create: bool = False) -> T:
    """Run ``work`` on the store at ``url``; unreadable entries are reported by the commands, not as warnings."""

    async def run() -> T:
        store = _open_store(url, create=create)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)
                return await work(store)
        finally:
            await store.close()

    return _run(run())


def _report_unreadable(entries: Sequence[UnreadableEntry]) -> None:
    for entry in entries:
        err.print(f"[yellow]warning:[/] unreadable store entry {entry.key}: {entry.reason}", highlight=False)


async def _get(store: SnapshotStore, ref: str, verify_key: bytes | None = None) -> StateSnapshot:
    """The snapshot ``ref`` names: an id, or a prefix of exactly one id."""
    return await store.get(await store.resolve(ref), verify_key=verify_key, keyring=_keyring())


def _fetch(url: str, ref: str, verify_key: bytes | None = None) -> StateSnapshot:
    with _progress(f"fetching {ref}"):
        return _with_store(url, lambda s: _get(s, ref, verify_key))


def _snapshot_arg(ref: Sequence[str], verify_key: bytes | None = None) -> StateSnapshot:
    """A snapshot named by a file path, or by ``STORE_URL ID``."""
    if len(ref) == 1:
        return _read_snapshot(ref[0], verify_key)
    if len(ref) == 2:
        url, snapshot_id = ref
        if Path(url).is_file():
            msg = f"name one snapshot, as FILE or as STORE_URL ID; {url!r} is a file (to compare two: diff A B)"
            raise UsageProblem(msg)
        return _fetch(url, snapshot_id, verify_key)
    raise UsageProblem("name a snapshot as FILE or as STORE_URL ID")


def _load_plugin_class(spec: str) -> type[StateTransferable]:
    cls = load_class(spec, search_path=os.getcwd())
    if not issubclass(cls, StateTransferable):
        raise UsageProblem(f"{spec!r} is not a StateTransferable class")
    return cls


def _instance(cls: type[StateTransferable], keyring: Keyring | None) -> StateTransferable:
    """A fresh instance of a plugin class, made the way the host makes it (:meth:`Plugin.create`)."""
    return cls.create(keyring=keyring)


# -- output ---------------------------------------------------------------------------------------
def _emit_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table: drawn on a terminal, plain space-aligned columns when piped (no box characters)."""
    if out.is_terminal:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for i, name in enumerate(columns):
            table.add_column(name, no_wrap=i == 0)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=True)]
    for row in [columns, *rows]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        out.print(line, markup=False)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(ts: int, *, seconds: bool = True) -> str:
    fmt = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(fmt)


def short_ids(ids: Sequence[str]) -> dict[str, str]:
    """Each id shortened to one length: the shortest at which all are still unique, at least 8 characters."""
    ordered = sorted(set(ids))
    length = _SHORT_ID
    for a, b in itertools.pairwise(ordered):
        common = next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        length = max(length, common + 1)
    return {i: i[:length] for i in ordered}


# -- inspect --------------------------------------------------------------------------------------
def describe(snapshot: StateSnapshot, *, size: int | None, signature: str) -> dict[str, Any]:
    """The ``inspect --json`` shape."""
    sections = []
    for name, sec in sorted(snapshot.sections.items()):
        enc = sec.encryption
        layout = framing(sec)
        sections.append({
            "name": name,
            "schema_version": sec.schema_version,
            "stored_size": len(sec.data),
            "original_size": layout.original_size or len(sec.data),
            "compression": layout.compression if sec.compressed else None,
            "encryption": None if enc is None else {"algorithm": enc.algorithm, "key_id": enc.key_id},
            "codec": sec.metadata.get("codec") and layout.codec,
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


@_command()
@click.argument("snapshot", nargs=-1, required=True)
@click.option("--verify-key-file", type=click.Path(dir_okay=False), help="Signing key file to verify the signature.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(snapshot: tuple[str, ...], verify_key_file: str | None, as_json: bool) -> None:
    """Show a snapshot's header, metadata and sections.

    SNAPSHOT is a FILE, or STORE_URL ID (an id or a unique prefix of one).
    """
    key = _key_file(verify_key_file)
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
    rows = []
    for s in info["sections"]:
        enc = s["encryption"]
        rows.append([s["name"], str(s["schema_version"]), _human(s["stored_size"]), _human(s["original_size"]),
                     s["compression"] or "-", f"{enc['algorithm']} ({enc['key_id']})" if enc else "-"])  # fmt: skip
    _emit_table(["section", "schema", "stored", "original", "compression", "encryption (key id)"], rows)


# -- validate -------------------------------------------------------------------------------------
@_command()
@click.argument("snapshot", nargs=-1, required=True)
@click.option("--plugin", "plugin_spec", required=True, help="The plugin class, 'package.module:ClassName'.")
@click.option("--shallow", is_flag=True, help="Do not decode sections (faster, finds fewer problems).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(snapshot: tuple[str, ...], plugin_spec: str, shallow: bool, as_json: bool) -> None:
    """Check a snapshot against a plugin's code; exit 1 if invalid.

    Shows the verdict and migration path of each section, and the compatibility score.
    """
    cls = _load_plugin_class(plugin_spec)
    snap = _snapshot_arg(snapshot)
    plugin = _instance(cls, _keyring())

    async def check() -> Any:
        if isinstance(plugin, StatefulPlugin):  # declarative plugins can also decode every section
            return await plugin.validate_state(snap, deep=not shallow)
        return await plugin.validate_state(snap)

    v = _run(check())
    score = round(v.compatibility_score, 6)
    if as_json:
        _emit_json({
            "snapshot": snap.id, "plugin_id": plugin.metadata.id, "is_valid": v.is_valid,
            "schema_compatible": v.schema_compatible, "version_compatible": v.version_compatible,
            "compatibility_score": score, "errors": v.errors, "warnings": v.warnings,
            "sections": msgspec.to_builtins(v.section_validations),
        })  # fmt: skip
    else:
        verdict = "[green]valid[/]" if v.is_valid else "[red]INVALID[/]"
        out.print(f"{snap.id} for {plugin.metadata.id} {plugin.metadata.version}: {verdict}, score {score:.3f}")
        out.print(f"schema compatible {v.schema_compatible}, version compatible {v.version_compatible}")
        rows = []
        for name, sv in sorted(v.section_validations.items()):
            path = " -> ".join(map(str, sv.migration_path)) or "-"
            rows.append([name, sv.verdict, path, "; ".join([*sv.errors, *sv.warnings]) or "-"])
        _emit_table(["section", "verdict", "migration path", "problems"], rows)
        for e in v.errors:
            out.print(f"[red]error:[/] {e}")
        for w in v.warnings:
            out.print(f"[yellow]warning:[/] {w}")
    if not v.is_valid:
        raise SystemExit(1)


# -- diff -----------------------------------------------------------------------------------------
_SIGN = {"added": "+", "removed": "-", "changed": "~"}


@_command()
@click.argument("a")
@click.argument("b")
@click.option("--store", "store_url", help="Take A and B as snapshot ids (or unique prefixes) in this store.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show at most N changes per section (0: all); the rest are counted.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def diff(a: str, b: str, store_url: str | None, limit: int, as_json: bool) -> None:
    """Show what changed from snapshot A to B.

    A and B are files, or ids in the store given with --store. Decoded
    sections are compared key by key, with counts per operation.
    """
    if store_url is None:
        snap_a, snap_b = _read_snapshot(a), _read_snapshot(b)
    else:

        async def both(store: SnapshotStore) -> tuple[StateSnapshot, StateSnapshot]:
            return await _get(store, a), await _get(store, b)

        with _progress("fetching"):
            snap_a, snap_b = _with_store(store_url, both)
    result = diff_snapshots(snap_a, snap_b, keyring=_keyring(), limit=limit or None)
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
        if not entry["decoded"]:
            out.print(f"[yellow]~ section {entry['name']}[/] ({entry['note']})")
            continue
        counts = ", ".join(f"{n} {op}" for op, n in entry["counts"].items() if n)
        out.print(f"[yellow]~ section {entry['name']}[/]: {counts or 'schema version only'}")
        for c in entry["changes"]:
            detail = {"added": f"{c['b']!r}", "removed": f"{c['a']!r}", "changed": f"{c['a']!r} -> {c['b']!r}"}
            out.print(f"    {_SIGN[c['op']]} {c['path']}: {detail[c['op']]}", markup=False)
        if entry["omitted"]:
            out.print(f"    ... and {entry['omitted']} more change(s) not shown (--limit N, 0 shows all)")
    if secs["unchanged"]:
        out.print(f"  unchanged: {', '.join(secs['unchanged'])}")


# -- stores ---------------------------------------------------------------------------------------
@_command("list")
@click.argument("store_url")
@click.option("--plugin", "plugin_id", help="Only this plugin's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable: all must match).")
@click.option("--wide", is_flag=True, help="Full ids and every column (schema, tags, expiry, seconds).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(store_url: str, plugin_id: str | None, tags: tuple[str, ...], wide: bool, as_json: bool) -> None:
    """List a store's snapshots, newest first.

    Ids are shortened to unique prefixes, which every command accepts.
    """
    with _progress("listing"):
        infos = _with_store(store_url, lambda s: s.list(plugin_id=plugin_id, tags=list(tags) or None))
    _report_unreadable(infos.unreadable)
    if as_json:
        _emit_json(infos)
        return
    if wide:
        columns = ["id", "plugin", "version", "schema", "created", "reason", "tags", "expires", "size"]
        rows = [[i.id, i.plugin_id, i.plugin_version, str(i.schema_version), _when(i.timestamp), i.reason.value,
                 ",".join(i.tags) or "-", _when(i.expires_at) if i.expires_at else "never", _human(i.size)]
                for i in infos]  # fmt: skip
    else:
        short = short_ids([i.id for i in infos])
        columns = ["id", "plugin", "version", "created (UTC)", "reason", "size"]
        rows = [[short[i.id], i.plugin_id, i.plugin_version, _when(i.timestamp, seconds=False), i.reason.value,
                 _human(i.size)] for i in infos]  # fmt: skip
    _emit_table(columns, rows)
    out.print(f"{len(infos)} snapshot(s)")


@_command()
@click.argument("file")
@click.argument("store_url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def push(file: str, store_url: str, as_json: bool) -> None:
    """Put a snapshot file into a store (created if there is none)."""
    _check_store_url(store_url)  # before the file is read
    snap = _read_snapshot(file)
    with _progress(f"pushing {snap.id}"):
        keyring = _keyring()  # encrypted sections are kept incrementally only with their key
        info = _with_store(store_url, lambda s: s.put(snap, keyring=keyring), create=True)
    if as_json:
        _emit_json(info)
    else:
        out.print(f"pushed {info.id} ({info.plugin_id}, {_human(info.size)}) to {store_url}")


@_command()
@click.argument("store_url")
@click.argument("snapshot_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: ID.stsnap).")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pull(store_url: str, snapshot_id: str, output: str | None, force: bool, as_json: bool) -> None:
    """Get a snapshot from a store into a file.

    SNAPSHOT_ID may be a unique prefix of an id.
    """
    if output is not None and not force and Path(output).exists():
        raise UsageProblem(f"{output!r} exists; pass --force to overwrite it")
    snap = _fetch(store_url, snapshot_id)
    target = Path(output or f"{snap.id}.stsnap")
    data = dumps(snap)
    _write_file(target, data, force=force)
    if as_json:
        _emit_json({"id": snap.id, "file": str(target), "size": len(data)})
    else:
        out.print(f"pulled {snap.id} to {target} ({_human(len(data))})")


@_command()
@click.argument("store_url")
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep the N newest of each plugin and reason.")
@click.option("--keep-daily", type=click.IntRange(min=0), help="Keep the newest of each of the last N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), help="Keep the newest of each of the last N weeks.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prune(  # noqa: PLR0917 - one parameter per click option
    store_url: str, keep_last: int | None, keep_daily: int | None, keep_weekly: int | None, dry_run: bool, as_json: bool
) -> None:
    """Remove expired snapshots, and those no keep rule keeps.

    Keep rules apply per plugin and reason.
    """
    with _progress("pruning"):
        report = _with_store(store_url, lambda s: s.prune(keep_last, keep_daily, keep_weekly, dry_run=dry_run))
    _report_unreadable(report.unreadable)
    if as_json:
        _emit_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(report.removed)} snapshot(s), kept {len(report.kept)}"
              + ("" if dry_run else f", freed {report.blobs_removed} blob(s)"))  # fmt: skip
    for snapshot_id in report.removed:
        out.print(f"  - {snapshot_id}")


@_command()
@click.argument("store_url")
@click.option("--read-data/--no-read-data", default=True, help="Re-hash every blob (default) or only check presence.")
@click.option("--repair", is_flag=True, help="Heal what can be healed (damaged entries are moved aside).")
@click.option("--source", "source_url", help="With --repair: a replica store to copy intact blobs from.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(store_url: str, read_data: bool, repair: bool, source_url: str | None, as_json: bool) -> None:
    """Check every snapshot in a store; exit 1 on any problem."""
    if source_url is not None and not repair:
        raise UsageProblem("--source is for --repair: it names a replica to copy intact blobs from")

    async def check(store: SnapshotStore) -> VerifyReport:
        store.keyring = store.keyring or _keyring()  # sealed incremental sections are rebuilt with it
        if source_url is None:
            return await store.verify(read_data=read_data, progress=update, repair=repair)
        source = _open_store(source_url, create=False)
        try:
            return await store.verify(read_data=read_data, progress=update, repair=True, source=source)
        finally:
            await source.close()

    with _progress("verifying", unit="snapshots") as update:
        report = _with_store(store_url, check)
    if as_json:
        _emit_json(report)
    else:
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        rebuilt = f", {report.chains_rebuilt} incremental section(s) rebuilt" if report.chains_rebuilt else ""
        skipped = f" ({report.chains_skipped} sealed ones skipped: no key)" if report.chains_skipped else ""
        out.print(f"checked {report.checked} snapshot(s), {report.blobs_checked} blob(s) re-hashed{rebuilt}{skipped}: "
                  f"{status}")  # fmt: skip
        for p in report.problems:
            out.print(f"  [red]![/] {p}", markup=True)
        for r in report.repaired:
            out.print(f"  repaired: {r}", markup=False)
    if not report.ok:
        raise SystemExit(1)


# -- releases -------------------------------------------------------------------------------------
def _versions_text(versions: dict[str, int]) -> str:
    return " ".join(f"{name}={version}" for name, version in sorted(versions.items())) or "-"


def _code_text(section_versions: dict[str, int], schema_version: int) -> str:
    """What the code writes: its section versions, or (hand-written plugins) its schema version."""
    return _versions_text(section_versions) if section_versions else f"schema {schema_version}"


def _verdict_cell(v: SectionVerdict | None) -> str:
    if v is None:
        return "-"
    if not v.ok:
        return "INCOMPATIBLE"
    if v.verdict == "after_migration":
        return "->".join(map(str, v.migration_path))
    return {"as_is": "ok", "unknown": "unknown (kept)", "missing": "missing"}.get(v.verdict, v.verdict)


@_command("check-compat")
@click.argument("store_url")
@click.option("--plugin", "plugin_spec", required=True, help="The new code's plugin class, 'package.module:ClassName'.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_compat_(store_url: str, plugin_spec: str, as_json: bool) -> None:
    """Check that new code can import the state a store holds; exit 1 if not.

    Groups the plugin's snapshots by plugin version and schema versions and
    runs the code's plan() on the newest of each group, from its manifest
    (no section data is read). Encrypted sections need --keyring.
    """
    cls = _load_plugin_class(plugin_spec)
    plugin = _instance(cls, _keyring())
    with _progress("reading manifests"):
        report: CompatReport = _with_store(store_url, lambda s: check_compat(s, plugin))
    _report_unreadable(report.unreadable)
    if as_json:
        _emit_json(report)
    else:
        _print_compat(report, store_url)
    if not report.ok:
        raise SystemExit(1)


def _print_compat(report: CompatReport, store_url: str) -> None:
    code = f"{report.plugin_id} {report.plugin_version} ({_code_text(report.section_versions, report.schema_version)})"
    if not report.groups:
        out.print(f"no snapshots of plugin {report.plugin_id!r} in {store_url}: nothing to check", markup=False)
        return
    names = sorted({n for g in report.groups for n in g.sections})
    rows = [[g.plugin_version, str(g.schema_version), _versions_text(g.section_versions), str(g.count),
             short_ids([g.newest])[g.newest], *(_verdict_cell(g.sections.get(n)) for n in names),
             "ok" if g.ok else "FAIL"] for g in report.groups]  # fmt: skip
    _emit_table(["version", "schema", "section versions", "count", "newest", *names, "result"], rows)
    for g in report.groups:
        problems = [*g.errors, *(e for v in g.sections.values() for e in v.errors)]
        for problem in problems:
            out.print(f"  ! {g.plugin_version} ({_versions_text(g.section_versions)}): {problem}", markup=False)
    failing = sum(g.count for g in report.groups if not g.ok)
    verdict = "all import" if report.ok else f"{failing} snapshot(s) would fail to import"
    out.print(f"{report.snapshots} snapshot(s) in {len(report.groups)} group(s) checked against {code}: {verdict}",
              markup=False)  # fmt: skip


@_command()
@click.argument("store_url")
@click.option("--plugin", "plugin_spec", required=True, help="The new code's plugin class, 'package.module:ClassName'.")
@click.option("--dry-run", is_flag=True, help="Show what would be migrated and what would remain; write nothing.")
@click.option("--delete-originals", is_flag=True, help="Delete each original once its migrated copy is stored.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def migrate(store_url: str, plugin_spec: str, dry_run: bool, delete_originals: bool, as_json: bool) -> None:
    """Rewrite a plugin's stored snapshots to the code's schema versions.

    Each snapshot holding a section older than the code writes is imported
    (migrating it) and stored again as a new snapshot, reason "migration",
    with the original's time, tags and expiry. Originals are kept unless
    --delete-originals. Ends with a census of the schema versions left, so
    migration steps nothing needs can be deleted. Exit 1 if any failed.
    """
    cls = _load_plugin_class(plugin_spec)
    keyring = _keyring()
    _instance(cls, keyring)  # a class that cannot be made fails before the store is touched

    def work(store: SnapshotStore) -> Coroutine[Any, Any, MigrationReport]:
        return migrate_store(store, lambda: _instance(cls, keyring), dry_run=dry_run,
                             delete_originals=delete_originals)  # fmt: skip

    with _progress("migrating"):
        report = _with_store(store_url, work)
    _report_unreadable(report.unreadable)
    if as_json:
        _emit_json(report)
    else:
        _print_migration(report)
    if report.failed:
        raise SystemExit(1)


def _print_migration(report: MigrationReport) -> None:
    counts = collections.Counter(s.outcome for s in report.snapshots)
    target = _code_text(report.section_versions, report.schema_version)
    done = counts["would migrate"] if report.dry_run else counts["migrated"]
    verb = "would migrate" if report.dry_run else "migrated"
    others = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()) if outcome not in (verb,))
    out.print(f"{verb} {done} snapshot(s) of {report.plugin_id} to {target}" + (f" ({others})" if others else ""),
              markup=False)  # fmt: skip
    for s in report.snapshots:
        detail = f"-> {s.replacement}" if s.replacement else (s.error or "")
        gone = " (original deleted)" if s.deleted and not report.dry_run else (" (would delete)" if s.deleted else "")
        out.print(f"  {s.original}  {_versions_text(s.section_versions)}  {s.outcome} {detail}{gone}".rstrip(),
                  markup=False)  # fmt: skip
    if not report.delete_originals and report.snapshots:
        out.print("originals kept (--delete-originals removes each one once its migrated copy is stored)")
    rows = []
    for name, versions in report.census.items():
        current = report.section_versions.get(name)
        for version, n in versions.items():
            note = ("-" if not report.section_versions else "current" if version == current
                    else "older: its migration steps are still needed" if current is not None and version < current
                    else "not declared by this code")  # fmt: skip
            rows.append([name, str(version), str(n), note])
    suffix = " (after the migration)" if report.dry_run else ""
    out.print(f"schema versions in the store{suffix}:", markup=False)
    _emit_table(["section", "version", "snapshots", "note"], rows)
    if report.section_versions and not report.older_versions():
        out.print("no snapshot holds a version older than the code's: older migration steps are no longer needed")


# -- keys -----------------------------------------------------------------------------------------
@_command()
@click.option("--key-id", default="default", show_default=True, help="Id of the new encryption key.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Keyring file to create or add to (0600).")
@click.option("--signing", is_flag=True, help="Make a signing key file instead (for sign and --verify-key-file).")
def keygen(key_id: str, out_file: str | None, signing: bool) -> None:
    """Generate an encryption key, or a signing key.

    An encryption key is printed as a keyring, or with --out added to that
    keyring file as its new default. A signing key (--signing) is written
    to --out as 32 raw bytes.
    """
    if signing:
        if out_file is None:
            raise UsageProblem("keygen --signing needs --out FILE (a signing key is raw bytes, not text)")
        _write_file(Path(out_file), secrets.token_bytes(MIN_SIGNING_KEY_BYTES), force=False, mode=0o600)
        out.print(f"wrote a {MIN_SIGNING_KEY_BYTES}-byte signing key to {out_file} (0600). Keep it secret.")
        return
    if not _KEY_ID.match(key_id):
        raise UsageProblem(f"invalid key id {key_id!r}: use letters, digits and . _ @ + - (no spaces or '/'; max 64)")
    fresh = Keyring.generate(key_id)
    if out_file is None:
        sys.stdout.write(fresh.to_json())
        return
    path = Path(out_file)
    try:
        ring = Keyring.from_file(path) if path.exists() else Keyring()
    except StateTransferError as exc:
        raise UsageProblem(str(exc)) from exc
    if key_id in ring:
        raise UsageProblem(f"{out_file!r} already has a key {key_id!r}; choose another --key-id")
    ring.add(key_id, fresh.get(key_id))
    ring.default_key_id = key_id
    ring.to_file(path)
    out.print(f"added key {key_id!r} to {out_file} (now the default; {len(ring)} key(s)). Back this file up.")


@_command("sign")
@click.argument("snapshot_file")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False), help="Signing key file (keygen --signing).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of in place.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def sign_(snapshot_file: str, key_file: str, output: str | None, force: bool) -> None:
    """Sign a snapshot file with a signing key.

    HMAC-SHA256: readers holding the key can check that the snapshot is
    unchanged since someone with the key signed it.
    """
    key = _key_file(key_file)
    assert key is not None
    snap = _read_snapshot(snapshot_file)
    target = Path(output or snapshot_file)
    _write_file(target, dumps(sign(snap, key)), force=force or output is None)
    out.print(f"signed {snap.id} -> {target}")


@_command()
@click.argument("snapshot_file")
@click.option("--to", "to_key", required=True, help="Key id to re-encrypt every encrypted section with.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of in place.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--sign-key-file", type=click.Path(dir_okay=False), help="Re-sign with this key (a signed snapshot).")
@click.option("--drop-signature", is_flag=True, help="Write a signed snapshot back unsigned.")
def rekey(  # noqa: PLR0917 - one parameter per click option
    snapshot_file: str, to_key: str, output: str | None, force: bool, sign_key_file: str | None, drop_signature: bool
) -> None:
    """Re-encrypt a snapshot's sections under another key.

    Key rotation: plugin state is never decoded.

    A signed snapshot is re-signed with --sign-key-file (its signature is
    checked with that key first) or, with --drop-signature, written unsigned.
    """
    ring = _keyring(required=True)
    assert ring is not None
    sign_key = _key_file(sign_key_file)
    snap = _read_snapshot(snapshot_file)
    count = sum(1 for s in snap.sections.values() if s.encryption is not None)
    if count == 0:
        out.print(f"nothing to re-encrypt: {snap.id} has no encrypted section; {snapshot_file} left unchanged")
        return
    if snap.signature and sign_key is None and not drop_signature:
        msg = (
            f"{snapshot_file!r} is signed, and re-encrypting changes what the signature covers: "
            "pass --sign-key-file KEY to re-sign it, or --drop-signature to write it unsigned"
        )
        raise UsageProblem(msg)
    if snap.signature and sign_key is not None:
        verify_signature(snap, sign_key)
    rotated = reencrypt(snap, ring, to_key)
    if sign_key is not None:
        rotated = sign(rotated, sign_key)
    target = Path(output or snapshot_file)
    _write_file(target, dumps(rotated), force=force or output is None)
    signature = "signed" if sign_key is not None else ("signature dropped" if snap.signature else "unsigned")
    out.print(f"re-encrypted {count} section(s) of {snap.id} under key {to_key!r} -> {target} ({signature})")


# -- demo -----------------------------------------------------------------------------------------
@_command()
@click.option("--store", "store_url", help="Store URL for the backup step (default: a temporary directory).")
@click.option("--size", "skus", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="SKUs in the demo's inventory (more state: longer steps, with progress on a terminal).")  # fmt: skip
def demo(store_url: str | None, skus: int) -> None:
    """Run the guided tour: hot reload under load, backup, restore.

    Loads a plugin, serves calls, hot-reloads it to v2 with a migration,
    backs it up and restores it in a fresh process; exit 0 only if every
    step checked out.
    """
    from ._demo import run_demo  # noqa: PLC0415 - only the demo needs it

    if store_url is not None:  # a store the demo cannot use is refused before any step runs
        _with_store(store_url, lambda s: asyncio.sleep(0), create=True)
    ok = _run(run_demo(out, store_url, skus=skus, progress=_demo_progress))
    if not ok:
        raise SystemExit(1)
