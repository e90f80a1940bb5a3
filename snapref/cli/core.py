"""The core commands: init, import, checkout, commit, log, show, tag, branch,
allow-source."""

from __future__ import annotations

import warnings

import click
from click.core import ParameterSource

import snapref
from snapref.catalog import BRANCH, TAG
from snapref.catalog.records import printable
from snapref.cli._common import (
    Context,
    author_option,
    cli,
    echo_text,
    emit_json,
    handle_errors,
    json_option,
    pairs,
    pass_ctx,
    print_log_entry,
    print_snapshot,
    prop_option,
)
from snapref.repository import split_spec


@cli.command()
@click.argument("url", required=False)
@click.option(
    "--catalog",
    metavar="SQLALCHEMY_URL",
    help="Catalog database; default: an embedded SQLite file in a local warehouse. "
    "Required for remote warehouses.",
)
@pass_ctx
@handle_errors
def init(obj: Context, url: str | None, catalog: str | None) -> None:
    """Create a repository at URL (default: -R/$SNAPREF_REPO).

    \b
    Example:
        snapref init ./warehouse
        snapref init s3://bucket/warehouse --catalog sqlite:////data/catalog.db
    """
    url = url or obj.repo_url
    if not url:
        raise click.UsageError("Give the repository URL: snapref init URL")
    repo = snapref.init(url, catalog=catalog or obj.catalog, storage_options=obj.storage_options)
    click.echo(f"Created snapref repository at {repo.url}")


@cli.command("import")
@click.argument("name")
@click.argument("refs")
@click.option(
    "-m",
    "--message",
    default="Import references",
    show_default=True,
    help="Why the dataset was adopted: version 1's message.",
)
@click.option("--description", default="", help="Description of the dataset.")
@author_option
@prop_option
@json_option
@pass_ctx
@handle_errors
def import_(
    obj: Context,
    name: str,
    refs: str,
    message: str,
    description: str,
    author: str | None,
    props: tuple[str, ...],
    as_json: bool,
) -> None:
    """Adopt the kerchunk reference set REFS (a JSON file, or a parquet reference
    directory) as version 1 of dataset NAME.

    Virtual references stay virtual (nothing is copied); the folders they point into
    become the dataset's allowed sources.

    \b
    Example:
        snapref import air air.json -m "Adopt ERA5 air temperature"
    """
    snap = obj.repo().import_references(
        name,
        refs,
        message,
        author=author,
        properties=pairs(props, "--prop"),
        description=description,
        storage_options=obj.options_for(refs),
    )
    print_snapshot(snap, as_json, verb="Imported")


@cli.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@click.option("-o", "--output", required=True, metavar="PATH", help="Reference file to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "parquet"]),
    default="json",
    show_default=True,
    help="parquet: a complete parquet reference directory (fsspec's lazy layout).",
)
@click.option(
    "--record-size",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="References per parquet record file (--format parquet).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUTPUT if it exists (a reference set; edits in it not committed are lost).",
)
@json_option
@pass_ctx
@handle_errors
def checkout(
    obj: Context,
    spec: str,
    output: str,
    fmt: str,
    record_size: int,
    force: bool,
    as_json: bool,
) -> None:
    """Write a version as a plain kerchunk JSON reference file, or as a parquet
    reference directory (--format parquet).

    Edit it with fsspec + zarr (saving with fs.save_json, or the lazy mapper's
    flush() for parquet), then record it with 'snapref commit'. A sidecar file
    OUTPUT.snapref remembers the version.

    \b
    Example:
        snapref checkout air@3 -o work.json
        snapref checkout air --format parquet -o work.parq
    """
    if fmt != "parquet" and _given("record_size"):
        raise click.UsageError(
            "--record-size applies to --format parquet only: add --format parquet or drop "
            "--record-size"
        )
    name, version = split_spec(spec)
    snap = obj.repo().checkout(
        name,
        version,
        output,
        storage_options=obj.options_for(output),
        format=fmt,
        record_size=record_size,
        overwrite=force,
    )
    if as_json:
        emit_json({"path": output, **snap.to_json()})
    else:
        click.echo(f"Checked out {name} version {snap.version} ({snap.id[:12]}) to {output}")


@cli.command()
@click.argument("name")
@click.argument("refs", metavar="REFS_FILE")
@click.option("-m", "--message", required=True, help="Why this change was made.")
@click.option("--parent", metavar="VERSION", help="Version the file was checked out from.")
@click.option("--branch", help="Branch to commit to (default: the checkout's, else main).")
@click.option(
    "--allow-source",
    "allow_sources",
    multiple=True,
    metavar="PREFIX",
    help="Also allow virtual references into PREFIX (recorded for the dataset).",
)
@author_option
@prop_option
@json_option
@pass_ctx
@handle_errors
def commit(
    obj: Context,
    name: str,
    refs: str,
    message: str,
    parent: str | None,
    branch: str | None,
    allow_sources: tuple[str, ...],
    author: str | None,
    props: tuple[str, ...],
    as_json: bool,
) -> None:
    """Record an edited reference file (JSON, or parquet directory) as a new version
    of NAME.

    Only changed chunks become new objects. If the branch moved since the checkout,
    the commit is refused as a conflict.

    \b
    Example:
        snapref commit air work.json -m "Mask bad pixels" --prop ticket=QC-12
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        snap = obj.repo().commit_references(
            name,
            refs,
            message,
            parent=parent,
            branch=branch,
            author=author,
            properties=pairs(props, "--prop"),
            allow_sources=allow_sources,
            storage_options=obj.options_for(refs),
        )
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)
    if snap is None:
        if as_json:
            emit_json(None)
        else:
            click.echo("Nothing changed; no version recorded")
        return
    print_snapshot(snap, as_json, verb="Committed")


@cli.command()
@click.argument("name")
@click.option("--branch", help="Branch to list (default: main).")
@click.option("--graph", is_flag=True, help="Draw every branch and merge as ASCII art.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "dot"]),
    default="text",
    show_default=True,
    help="text: for people; json: as --json; dot: the version graph for Graphviz (dot -Tpng).",
)
@json_option
@pass_ctx
@handle_errors
def log(obj: Context, name: str, branch: str | None, graph: bool, fmt: str, as_json: bool) -> None:
    """List the versions of NAME, newest first.

    \b
    Example:
        snapref log air
        snapref log air --branch qc --json
        snapref log air --graph
        snapref log air --format dot | dot -Tpng > air.png
    """
    text_given = fmt == "text" and _given("fmt")
    outputs = [
        option
        for option, chosen in (
            ("--graph", graph),
            ("--format dot", fmt == "dot"),
            ("--format text", text_given and as_json),
            ("--json" if as_json else "--format json", as_json or fmt == "json"),
        )
        if chosen
    ]
    if len(outputs) > 1:
        raise click.UsageError(
            f"{' and '.join(outputs)} are different outputs: give only one of --graph, "
            "--format dot, --format json/--json"
        )
    if branch is not None and (graph or fmt == "dot"):
        drawing = "--graph" if graph else "--format dot"
        raise click.UsageError(
            f"{drawing} draws every branch, so --branch does not apply: drop --branch, "
            f"or drop {drawing} to list the versions of branch {branch!r}"
        )
    if graph or fmt == "dot":
        from snapref import history as h

        obj.repo().db.dataset(name)
        if fmt == "dot":
            click.echo(h.graph_dot(obj.repo(), name), nl=False)
        else:
            for line in h.graph_lines(obj.repo(), name):
                click.echo(printable(line))
        return
    as_json = as_json or fmt == "json"
    history = obj.repo().log(name, branch)
    if as_json:
        emit_json([s.to_json() for s in history])
        return
    for snap in history:
        print_log_entry(snap)


@cli.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@json_option
@pass_ctx
@handle_errors
def show(obj: Context, spec: str, as_json: bool) -> None:
    """Show one version in full: provenance, changed keys, sources, manifest.

    \b
    Example:
        snapref show air@2
    """
    name, version = split_spec(spec)
    repo = obj.repo()
    snap = repo.resolve(name, version)
    manifest = repo.manifest(snap)
    changes = repo.changes(snap)
    info = {
        **snap.to_json(),
        "refs": [r.name for r in repo.refs(name) if r.snapshot_id == snap.id],
        "sources": repo.sources(name),
        "arrays": {a: manifest.array_count(a) for a in sorted(manifest.arrays)},
        "keys": len(manifest),
        "shards": manifest.shard_count(),
        "changes": changes,
    }
    if as_json:
        emit_json(info)
        return
    print_log_entry(snap)
    echo_text(f"Refs:     {', '.join(info['refs']) or '-'}")
    echo_text(f"Sources:  {', '.join(info['sources']) or '-'}")
    echo_text(f"Manifest: {snap.manifest[:12]}  {info['keys']} keys in {info['shards']} shards")
    for array, count in info["arrays"].items():
        echo_text(f"  {array or '/'}: {count} chunk references")
    if snap.properties:
        echo_text("Properties:")
        for k, v in snap.properties.items():
            echo_text(f"  {k} = {v}")
    echo_text(f"Changed keys ({len(changes)}):")
    for key, op in list(changes.items())[:50]:
        echo_text(f"  {op} {key}")
    if len(changes) > 50:
        echo_text(f"  ... and {len(changes) - 50} more (see --json)")


@cli.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@click.argument("tag_name", metavar="[TAG]", required=False)
@author_option
@json_option
@pass_ctx
@handle_errors
def tag(obj: Context, spec: str, tag_name: str | None, author: str | None, as_json: bool) -> None:
    """Tag a version (tags never move); with no TAG, list the tags of NAME.

    \b
    Example:
        snapref tag air@3 v2025-qc
        snapref tag air
    """
    _ref_command(obj, spec, tag_name, TAG, author, as_json)


@cli.command()
@click.argument("name")
@click.argument("new", required=False)
@click.option(
    "--from", "from_version", metavar="VERSION", help="Start point (default: head of main)."
)
@author_option
@json_option
@pass_ctx
@handle_errors
def branch(
    obj: Context,
    name: str,
    new: str | None,
    from_version: str | None,
    author: str | None,
    as_json: bool,
) -> None:
    """Create branch NEW of dataset NAME; with no NEW, list its branches.

    \b
    Example:
        snapref branch air qc --from 3
        snapref branch air
    """
    if new is None and from_version is not None:
        raise click.UsageError(
            f"--from needs a NEW branch name: 'snapref branch {name} NEW --from "
            f"{from_version}', or 'snapref branch {name}' to list branches"
        )
    spec = f"{name}@{from_version}" if from_version else name
    _ref_command(obj, spec, new, BRANCH, author, as_json)


def _ref_command(
    obj: Context, spec: str, new: str | None, kind: str, author: str | None, as_json: bool
) -> None:
    name, version = split_spec(spec)
    if new is None and version is not None:
        # listing ignores @VERSION: refuse rather than list and drop it silently
        plural = "tags" if kind == TAG else "branches"
        raise click.UsageError(
            f"Give a {kind.upper() if kind == TAG else 'NEW branch'} name to {kind} "
            f"{spec}, or 'snapref {kind} {name}' to list {plural}"
        )
    repo = obj.repo()
    if new is None:
        refs = [r for r in repo.refs(name) if r.kind == kind]
        snaps = {r.snapshot_id: repo.db.snapshot(r.snapshot_id) for r in refs}
        rows = [
            {
                "name": r.name,
                "kind": r.kind,
                "version": snaps[r.snapshot_id].version,
                "id": r.snapshot_id,
            }
            for r in refs
        ]
        if as_json:
            emit_json(rows)
        else:
            for row in rows:
                click.echo(f"{row['name']}\tversion {row['version']}\t{row['id'][:12]}")
        return
    if kind == TAG:
        snap = repo.tag(name, version, new, author=author)
    else:
        snap = repo.branch(name, new, version, author=author)
    if as_json:
        emit_json({"name": new, "kind": kind, "version": snap.version, "id": snap.id})
    else:
        click.echo(f"Created {kind} {new} at {name} version {snap.version} ({snap.id[:12]})")


def _given(param: str) -> bool:
    """Whether the user gave option ``param`` (not just its default)."""
    source = click.get_current_context().get_parameter_source(param)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


@cli.command("allow-source")
@click.argument("prefix")
@click.option("--dataset", help="Allow it for this dataset only (default: repository-wide).")
@pass_ctx
@handle_errors
def allow_source(obj: Context, prefix: str, dataset: str | None) -> None:
    """Allow virtual references into PREFIX (invariant: nothing unsafe is read).

    \b
    Example:
        snapref allow-source s3://era5-pds/2024/ --dataset air
    """
    recorded = obj.repo().allow_source(prefix, dataset)
    where = f"dataset {dataset}" if dataset else "the whole repository"
    click.echo(f"Allowed {recorded} for {where}")
