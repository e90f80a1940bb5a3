"""The catalogue commands: catalog (alias ls), describe, ingest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from snapref.catalog.records import printable
from snapref.cli._common import (
    Context,
    author_option,
    cli,
    emit_json,
    handle_errors,
    json_option,
    pairs,
    pass_ctx,
    print_snapshot,
    prop_option,
)
from snapref.listing import ROUTES, DatasetListing


def _catalog(
    obj: Context,
    versions: bool,
    fmt: str,
    output: str | None,
    route: str,
    as_json: bool,
) -> None:
    repo = obj.repo()
    if fmt == "intake":
        if not output:
            raise click.UsageError("--format intake needs -o/--output FILE.yaml")
        doc = repo.to_intake(output, route=route, storage_options=obj.options_for(output))
        n = len(doc["sources"])
        click.echo(f"Wrote an Intake catalogue with {n} entries to {output}", err=as_json)
        if as_json:
            emit_json({"path": output, "entries": list(doc["sources"])})
        return
    if output:
        raise click.UsageError("-o/--output goes with --format intake")
    listing = repo.catalog(versions=versions)
    if as_json:
        emit_json([d.to_json() for d in listing])
        return
    if not listing:
        click.echo("No datasets yet: create one with 'snapref import' or 'snapref ingest'")
    for ds in listing:
        _print_dataset(ds)


def _print_dataset(ds: DatasetListing) -> None:
    latest = ds.latest
    about = f"  {printable(ds.description)}" if ds.description else ""
    click.echo(click.style(ds.name, bold=True) + about)
    click.echo(
        f"    latest: version {latest.version} ({latest.id[:12]})  "
        f"{ds.n_versions} version{'s' if ds.n_versions != 1 else ''}  "
        f"last change {ds.last_change}"
    )
    branches = ", ".join(f"{b}@{v}" for b, v in sorted(ds.branches.items()))
    tags = ", ".join(f"{t}@{v}" for t, v in sorted(ds.tags.items())) or "-"
    click.echo(f"    branches: {branches}  tags: {tags}")
    for key, value in sorted(ds.properties.items()):
        click.echo(printable(f"    {key} = {value}"))
    for v in ds.versions or []:
        refs = f" [{', '.join(v.refs)}]" if v.refs else ""
        click.echo(
            f"      {v.version:>4}  {v.id[:12]}  {v.timestamp}  {printable(v.message)}{refs}"
        )


_catalog_options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--versions", is_flag=True, help="Also list every version, newest first."),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "intake"]),
        default="text",
        show_default=True,
        help="intake: write an Intake catalogue (YAML) to -o.",
    ),
    click.option("-o", "--output", metavar="FILE", help="Where --format intake writes."),
    click.option(
        "--route",
        type=click.Choice(ROUTES),
        default="snapref",
        show_default=True,
        help="How Intake entries reach the data: snapref:// URLs, or kerchunk JSON "
        "references written beside the catalogue (readable without snapref).",
    ),
    json_option,
    pass_ctx,
    handle_errors,
]


def _with_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_catalog_options):
        func = option(func)
    return func


@cli.command("catalog")
@_with_options
def catalog_(
    obj: Context, versions: bool, fmt: str, output: str | None, route: str, as_json: bool
) -> None:
    """List every dataset: description, latest version, branches, tags, number of
    versions, last change; or write it as an Intake catalogue.

    \b
    Example:
        snapref catalog
        snapref catalog --versions --json
        snapref catalog --format intake -o catalog.yaml
        python -c 'import intake; print(list(intake.open_catalog("catalog.yaml")))'
    """
    _catalog(obj, versions, fmt, output, route, as_json)


@cli.command("ls")
@_with_options
def ls(
    obj: Context, versions: bool, fmt: str, output: str | None, route: str, as_json: bool
) -> None:
    """Alias of 'snapref catalog': list every dataset.

    \b
    Example:
        snapref ls --versions
    """
    _catalog(obj, versions, fmt, output, route, as_json)


@cli.command()
@click.argument("name")
@click.argument("description", required=False)
@click.option(
    "--prop",
    "props",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dataset property to set (KEY= with no value removes it); repeatable.",
)
@json_option
@pass_ctx
@handle_errors
def describe(
    obj: Context, name: str, description: str | None, props: tuple[str, ...], as_json: bool
) -> None:
    """Set the description and properties of dataset NAME (shown by 'snapref catalog'
    and in Intake catalogues).

    \b
    Example:
        snapref describe air "ERA5 2 m air temperature, QC'd" --prop owner=qc-team
    """
    repo = obj.repo()
    properties = None
    if props:
        properties = dict(repo.db.dataset(name).properties)
        for key, value in pairs(props, "--prop").items():
            if value:
                properties[key] = value
            else:
                properties.pop(key, None)
    record = repo.db.update_dataset(name, description=description, properties=properties)
    if as_json:
        emit_json(
            {
                "name": record.name,
                "description": record.description,
                "properties": record.properties,
            }
        )
        return
    click.echo(f"{record.name}: {printable(record.description) or '(no description)'}")
    for key, value in sorted(record.properties.items()):
        click.echo(printable(f"    {key} = {value}"))


@cli.command()
@click.argument("name")
@click.argument("source", metavar="SRC")
@click.option("-m", "--message", help="Why (default: 'Ingest SRC').")
@click.option("--branch", default="main", show_default=True, help="Branch to commit to.")
@click.option("--description", default="", help="Description of a new dataset.")
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Reads in flight at once.",
)
@click.option(
    "--source-option",
    "source_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec option for SRC only (e.g. anon=true for a public bucket); repeatable. "
    "Default: the --storage-option given before the command, for a remote SRC.",
)
@author_option
@prop_option
@json_option
@pass_ctx
@handle_errors
def ingest(
    obj: Context,
    name: str,
    source: str,
    message: str | None,
    branch: str,
    description: str,
    concurrency: int,
    source_options: tuple[str, ...],
    author: str | None,
    props: tuple[str, ...],
    as_json: bool,
) -> None:
    """Copy the Zarr v2/v3 store SRC (a folder, s3://...) into the warehouse as a new
    version of NAME (version 1 of a new dataset).

    Only chunks whose bytes are not stored yet are written; an interrupted ingest,
    run again, continues where it stopped.

    \b
    Example:
        snapref ingest era5 s3://bucket/era5.zarr --source-option anon=true
    """
    from snapref.ingest import ingest as run_ingest

    result = run_ingest(
        obj.repo(),
        name,
        source,
        message=message,
        branch=branch,
        author=author,
        properties=pairs(props, "--prop"),
        description=description,
        storage_options=obj.options_for(source, source_options),
        concurrency=concurrency,
    )
    if as_json:
        emit_json(
            {
                "snapshot": result.snapshot.to_json() if result.snapshot else None,
                "files": result.files,
                "chunks": result.chunks,
                "objects_written": result.objects_written,
                "bytes_written": result.bytes_written,
            }
        )
        return
    if result.snapshot is None:
        click.echo(f"{source} equals the head of {name}@{branch}; no version recorded")
        return
    print_snapshot(result.snapshot, False, verb="Ingested")
    click.echo(
        f"{result.chunks} chunks read, {result.objects_written} new objects "
        f"({result.bytes_written} bytes) stored"
    )
