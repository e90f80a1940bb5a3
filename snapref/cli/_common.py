"""What every command shares: the ``snapref`` group, repository access, error
handling and output helpers. Command modules register themselves on :data:`cli`."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import ujson

import snapref
from snapref import progress
from snapref.catalog import Snapshot
from snapref.catalog.records import format_time, printable
from snapref.errors import InvalidInputError, SnapRefError
from snapref.objects import connection_failed
from snapref.repository import Repository

__all__ = [
    "Context",
    "author_option",
    "cli",
    "echo_text",
    "emit_json",
    "handle_errors",
    "json_option",
    "pairs",
    "pass_ctx",
    "print_log_entry",
    "print_snapshot",
    "prop_option",
]


def pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


def parse_options(values: tuple[str, ...], what: str = "--storage-option") -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key, value in pairs(values, what).items():
        # "anon=true" and "client_kwargs={...}" are common: decode JSON where it parses
        try:
            opts[key] = ujson.loads(value)
        except ValueError:
            opts[key] = value
    return opts


class Context:
    """What the group options give every command: how to reach the repository."""

    def __init__(
        self, repo_url: str | None, storage_options: dict[str, Any], catalog: str | None = None
    ) -> None:
        self.repo_url = repo_url
        self.storage_options = storage_options
        self.catalog = catalog
        self._repo: Repository | None = None

    def repo(self) -> Repository:
        if self._repo is None:
            if not self.repo_url:
                raise click.UsageError(
                    "No repository given: pass -R/--repo URL or set SNAPREF_REPO"
                )
            self._repo = snapref.connect(self.repo_url, self.storage_options, self.catalog)
        return self._repo

    def options_for(self, url: str, source_options: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """fsspec options for a file outside the repository (a reference file, an
        output, an ingest source): the command's ``--source-option`` values when given,
        else the group's ``--storage-option`` for a remote ``url`` (one with ``://``),
        else None."""
        if source_options:
            return parse_options(source_options, "--source-option")
        return self.storage_options if "://" in url else None


pass_ctx = click.make_pass_decorator(Context)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn snapref's errors into ``Error: ...`` and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_arguments(kwargs)
            return func(*args, **kwargs)
        except SnapRefError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            # the reader went away ('snapref log air | head'): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:
            message = _storage_error(exc)
            if message is None:
                raise  # a bug: the traceback is what a report needs
            click.echo(f"Error: {message}", err=True)
            sys.exit(1)

    return wrapper


def _check_arguments(arguments: dict[str, Any]) -> None:
    """Refuse text that is not valid Unicode in any argument: bytes the shell could not
    decode (``$'\\xff'``) arrive as lone surrogates, which can be neither looked up,
    stored nor printed."""
    for name, value in arguments.items():
        for text in value if isinstance(value, tuple | list) else (value,):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidInputError(
                        f"The {name.replace('_', ' ')} argument {text!r} is not valid "
                        f"Unicode text ({exc.reason}); give it in UTF-8"
                    ) from None


def _storage_error(exc: Exception) -> str | None:
    """One line for what storage said no with (credentials, permissions, network),
    or None if ``exc`` is not such an error."""
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None and isinstance(exc, boto.NoCredentialsError):
        return (
            f"{exc}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), or "
            "pass --storage-option key=... --storage-option secret=..., or "
            "--storage-option anon=true for a public bucket."
        )
    if isinstance(exc, PermissionError):
        return (
            f"Access denied: {exc}. Check the credentials and that they may read and "
            "write this location (--storage-option, AWS_* variables)."
        )
    if boto is not None and isinstance(exc, boto.BotoCoreError | boto.ClientError):
        return f"{type(exc).__name__}: {exc}"
    if connection_failed(exc):
        return f"Cannot reach the storage: {exc}. Check the URL and endpoint_url."
    return None


def emit_json(data: Any) -> None:
    click.echo(ujson.dumps(data, indent=2, ensure_ascii=False, escape_forward_slashes=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
author_option = click.option(
    "--author", help="Author to record (default: $SNAPREF_AUTHOR, git's user, or login)."
)
prop_option = click.option(
    "--prop",
    "props",
    multiple=True,
    metavar="KEY=VALUE",
    help="User property to record; repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(snapref.__version__, prog_name="snapref")
@click.option(
    "-R",
    "--repo",
    "repo_url",
    envvar="SNAPREF_REPO",
    metavar="URL",
    help="Repository (warehouse) URL; default $SNAPREF_REPO.",
)
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec option for the warehouse and for reference files at remote URLs "
    "(credentials, endpoint_url, ...); repeatable. Never stored.",
)
@click.option(
    "--catalog",
    metavar="SQLALCHEMY_URL",
    help="Catalog URL to use instead of the one the repository recorded, e.g. with "
    "the password, which is never recorded; default $SNAPREF_CATALOG.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bars (they show only on a terminal anyway).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    repo_url: str | None,
    storage_options: tuple[str, ...],
    catalog: str | None,
    quiet: bool,
) -> None:
    """snapref: versioned snapshots of Zarr / kerchunk datasets.

    \b
    Example:
        snapref init ./warehouse
        export SNAPREF_REPO=./warehouse
        snapref import air refs.json -m "Adopt kerchunk references"
        snapref log air
    """
    ctx.obj = Context(repo_url, parse_options(storage_options), catalog)
    ctx.with_resource(progress.enabled(progress.should_show(quiet)))


def print_snapshot(snap: Snapshot, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json(snap.to_json())
        return
    click.echo(
        f"{verb} {snap.dataset} version {snap.version} ({snap.id[:12]}) on {snap.branch}: "
        f"{_changes(snap.summary)}"
    )


def echo_text(line: str) -> None:
    """Print a line made of recorded text (keys, URLs, regions, messages) with its
    control characters escaped (:func:`~snapref.catalog.records.printable`); tabs
    stay, as field separators."""
    click.echo(printable(line, keep="\t"))


def print_log_entry(snap: Snapshot) -> None:
    click.echo(
        click.style(f"version {snap.version}", fg="yellow")
        + f"  {snap.id[:12]}  {format_time(snap.timestamp)}  [{snap.branch}]"
    )
    click.echo(f"Author: {printable(snap.author)}")
    # lines are what the author typed ("\n", or "\r\n"); other breaks are escaped
    for line in snap.message.replace("\r\n", "\n").removesuffix("\n").split("\n"):
        click.echo(f"    {printable(line, keep=chr(9))}".rstrip())
    click.echo(f"    {_changes(snap.summary)}")
    click.echo()


def _changes(s: dict[str, int]) -> str:
    """A version's summary in one line: chunks added, modified and removed, metadata
    documents changed (when any), bytes written."""
    line = (
        f"+{s.get('chunks_added', 0)} ~{s.get('chunks_modified', 0)} "
        f"-{s.get('chunks_removed', 0)} chunks"
    )
    if meta := s.get("metadata_changed", 0):
        line += f", {meta} metadata document{'s' if meta != 1 else ''}"
    return f"{line}, {_size(s.get('bytes_written', 0))} written"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
