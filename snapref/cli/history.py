"""History commands: diff, blame, sources, reset, revert, merge, audit, query."""

from __future__ import annotations

import click

from snapref.catalog.records import format_time, printable
from snapref.cli._common import (
    Context,
    author_option,
    cli,
    echo_text,
    emit_json,
    handle_errors,
    json_option,
    pass_ctx,
)
from snapref.errors import InvalidInputError
from snapref.repository import split_spec


def _same_dataset(a: str, b: str) -> tuple[str, str | None, str | None]:
    name_a, va = split_spec(a)
    name_b, vb = split_spec(b)
    if name_a != name_b:
        raise InvalidInputError(f"diff compares versions of one dataset, not {name_a} and {name_b}")
    return name_a, va, vb


@cli.command()
@click.argument("old", metavar="NAME@A")
@click.argument("new", metavar="NAME[@B]")
@json_option
@pass_ctx
@handle_errors
def diff(obj: Context, old: str, new: str, as_json: bool) -> None:
    """Show what changed from version A to version B (default: the head of main):
    arrays and groups added/removed, metadata old -> new, chunks added/modified/removed
    and the changed regions of each array.

    \b
    Example:
        snapref diff air@1 air@3
        snapref diff air@v2025-qc air@main --json
    """
    name, va, vb = _same_dataset(old, new)
    if va is None:
        raise click.UsageError("Give the first version: NAME@A")
    d = obj.repo().diff(name, va, vb)
    if as_json:
        emit_json(d.to_json())
        return
    echo_text(f"diff {name} version {d.old.version} -> {d.new.version}")
    for label, items in (
        ("array added", d.arrays_added),
        ("array removed", d.arrays_removed),
        ("group added", d.groups_added),
        ("group removed", d.groups_removed),
    ):
        for path in items:
            echo_text(f"{label}: {path or '/'}")
    for key, fields in d.metadata.items():
        echo_text(f"metadata {key}:")
        for f, (a, b) in fields.items():
            echo_text(f"    {f or '(document)'}: {a!r} -> {b!r}")
    for array, ch in d.chunks.items():
        echo_text(
            f"array {array or '/'}: +{len(ch.added)} ~{len(ch.modified)} -{len(ch.removed)} chunks"
        )
        for region in ch.regions:
            echo_text(f"    {region}")
    for key, op in d.other.items():
        echo_text(f"{op} {key}")
    if d.is_empty:
        click.echo("no changes")


@cli.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@click.argument("array")
@click.argument("index", nargs=-1, type=int)
@click.option("--history", "with_history", is_flag=True, help="List every version that changed it.")
@json_option
@pass_ctx
@handle_errors
def blame(
    obj: Context, spec: str, array: str, index: tuple[int, ...], with_history: bool, as_json: bool
) -> None:
    """Which version last wrote each chunk of ARRAY (or the chunk holding INDEX), with
    author, time and message, and where the chunk's bytes are (warehouse object or
    virtual reference: source file and byte range).

    \b
    Example:
        snapref blame air temp 3 10 20
        snapref blame air@2 temp --history --json
    """
    name, version = split_spec(spec)
    lines = obj.repo().blame(name, array, index or None, version, history=with_history)
    if as_json:
        emit_json([line.to_json() for line in lines])
        return
    for line in lines:
        s = line.snapshot
        who = (
            f"v{s.version} {s.id[:8]} {format_time(s.timestamp)[:19]} "
            f"{printable(s.author)}: {printable(s.message)}"
            if s
            else "not stored (fill value)"
        )
        if line.kind == "virtual":
            where = f"virtual {line.url} [{line.offset}, +{line.length}]"
        elif line.kind == "object":
            where = f"object {line.digest[:12] if line.digest else ''} ({line.length} B)"
        else:
            where = line.kind
        echo_text(f"{line.key}\t{line.region}\t{who}\t{where}")
        for h in line.history:
            echo_text(
                f"    v{h.version} {h.id[:8]} {format_time(h.timestamp)[:19]} "
                f"{printable(h.author)}: {printable(h.message)}"
            )


@cli.command()
@click.argument("spec", metavar="[NAME[@VERSION]]", required=False)
@click.option(
    "--url",
    help="Reverse: the datasets and versions that reference URL "
    "(a URL ending in / matches the files under it).",
)
@json_option
@pass_ctx
@handle_errors
def sources(obj: Context, spec: str | None, url: str | None, as_json: bool) -> None:
    """List the external files a version references, with chunks and bytes from each;
    or, with --url, every version of every dataset that references a file.

    \b
    Example:
        snapref sources air@3
        snapref sources --url s3://era5-pds/2024/air.nc
    """
    repo = obj.repo()
    if url is not None:
        if spec is not None:
            raise click.UsageError("Give either NAME@VERSION or --url, not both")
        rows = [
            {"dataset": s.dataset, "version": s.version, "id": s.id, **u.to_json()}
            for s, u in repo.versions_using(url)
        ]
        if as_json:
            emit_json(rows)
        else:
            for r in rows:
                echo_text(f"{r['dataset']}@{r['version']}\t{r['chunks']} chunks\t{r['bytes']} B")
        return
    if spec is None:
        raise click.UsageError("Give NAME[@VERSION] or --url URL")
    name, version = split_spec(spec)
    uses = repo.source_files(name, version)
    if as_json:
        emit_json([u.to_json() for u in uses])
        return
    for u in uses:
        echo_text(f"{u.url}\t{u.chunks} chunks\t{u.bytes} B")


@cli.command()
@click.argument("name")
@click.option("--branch", default="main", show_default=True, help="The branch to move.")
@click.option("--to", "to", required=True, metavar="VERSION", help="Version to move the branch to.")
@click.option("-m", "--message", help="Why (recorded in the audit log).")
@author_option
@json_option
@pass_ctx
@handle_errors
def reset(
    obj: Context,
    name: str,
    branch: str,
    to: str,
    message: str | None,
    author: str | None,
    as_json: bool,
) -> None:
    """Move branch BRANCH of NAME to VERSION. The old head stays readable by its id and
    is recorded in 'snapref audit'.

    \b
    Example:
        snapref reset air --branch main --to 3 -m "bad import in 4"
    """
    repo = obj.repo()
    old = repo.reset(name, to, branch, author=author, message=message)
    new = repo.head(name, branch)
    if as_json:
        emit_json({"branch": branch, "old": old.to_json(), "new": new.to_json()})
    else:
        click.echo(
            f"Reset {name} {branch} from version {old.version} ({old.id[:12]}) to "
            f"version {new.version} ({new.id[:12]})"
        )


@cli.command()
@click.argument("spec", metavar="NAME@VERSION")
@click.option("--branch", default="main", show_default=True, help="Branch to commit the revert to.")
@click.option("-m", "--message", help="Default: 'Revert version N: ...'.")
@author_option
@json_option
@pass_ctx
@handle_errors
def revert(
    obj: Context, spec: str, branch: str, message: str | None, author: str | None, as_json: bool
) -> None:
    """Commit a new version that undoes what VERSION changed.

    \b
    Example:
        snapref revert air@4
    """
    name, version = split_spec(spec)
    if version is None:
        raise click.UsageError("Give the version to revert: NAME@VERSION")
    snap = obj.repo().revert(name, version, branch, message=message, author=author)
    if as_json:
        emit_json(None if snap is None else snap.to_json())
    elif snap is None:
        click.echo("Nothing to revert: the branch does not have those changes")
    else:
        click.echo(
            f"Reverted {name}@{version} as version {snap.version} ({snap.id[:12]}) on {branch}"
        )


@cli.command()
@click.argument("name")
@click.argument("source", metavar="SOURCE_BRANCH")
@click.option("--into", default="main", show_default=True, help="Branch to merge into.")
@click.option("-m", "--message", help="Default: 'Merge SOURCE into INTO'.")
@click.option(
    "--strategy",
    type=click.Choice(["ours", "theirs"]),
    help="Resolve chunks changed on both sides (default: report them and stop).",
)
@author_option
@json_option
@pass_ctx
@handle_errors
def merge(
    obj: Context,
    name: str,
    source: str,
    into: str,
    message: str | None,
    strategy: str | None,
    author: str | None,
    as_json: bool,
) -> None:
    """Merge SOURCE_BRANCH of NAME into another branch: a three-way merge per chunk
    from the common ancestor, recorded as a version with two parents.

    \b
    Example:
        snapref merge air qc --into main -m "QC fixes"
        snapref merge air qc --strategy theirs
    """
    result = obj.repo().merge(name, source, into, message=message, strategy=strategy, author=author)
    snap = result.snapshot
    if as_json:
        emit_json(
            {
                "snapshot": None if snap is None else snap.to_json(),
                "base": None if result.base is None else result.base.version,
                "conflicts": result.conflicts,
                "strategy": result.strategy,
            }
        )
        return
    if snap is None:
        click.echo(f"Nothing to merge: {into} has every change of {source}")
        return
    click.echo(
        f"Merged {source} into {into} of {name} as version {snap.version} ({snap.id[:12]}), "
        f"from common ancestor version {result.base.version if result.base else '-'}"
    )
    if result.conflicts:
        click.echo(f"{len(result.conflicts)} conflicting keys resolved as {strategy}:")
        for key in result.conflicts:
            click.echo(f"    {key}")


@cli.command()
@click.argument("name", required=False)
@json_option
@pass_ctx
@handle_errors
def audit(obj: Context, name: str | None, as_json: bool) -> None:
    """Every change of a branch or tag (create, commit, merge, revert, reset, tag,
    branch): who, when, old and new version, why. Oldest first.

    \b
    Example:
        snapref audit air
        snapref audit --json
    """
    repo = obj.repo()
    entries = repo.audit(name)
    versions: dict[str, int] = {}
    for ds in {e.dataset for e in entries}:
        versions.update({k: v[0] for k, v in repo.db.graph(ds).items()})
    if as_json:
        emit_json(
            [
                {
                    **e.to_json(),
                    "old_version": versions.get(e.old_snapshot or ""),
                    "new_version": versions.get(e.new_snapshot or ""),
                }
                for e in entries
            ]
        )
        return
    for e in entries:
        old = f"v{versions[e.old_snapshot]}" if e.old_snapshot in versions else "-"
        new = f"v{versions[e.new_snapshot]}" if e.new_snapshot in versions else "-"
        why = f"  {printable(e.message)}" if e.message else ""
        click.echo(
            f"{format_time(e.timestamp)[:23]}  {e.dataset}  {e.ref}  {e.action}  "
            f"{old} -> {new}  {printable(e.author)}{why}"
        )


@cli.command()
@click.argument("sql")
@json_option
@pass_ctx
@handle_errors
def query(obj: Context, sql: str, as_json: bool) -> None:
    """Run one DuckDB SELECT over the metadata tables: datasets, snapshots, refs,
    history, audit, changes, manifests, shard_entries, entries (every key of every
    version). The query may read these tables only: files, URLs, other databases,
    extensions and statements other than a query are refused.

    \b
    Example:
        snapref query "SELECT version, op FROM changes WHERE dataset='air' AND key='temp/3.4'"
        snapref query "SELECT DISTINCT dataset, version FROM entries WHERE url LIKE '%air.h5'"
    """
    from snapref.cli._query_output import rows_as_json, rows_as_text

    table = obj.repo().inspect.query(sql)
    if as_json:
        emit_json(rows_as_json(table))
        return
    for line in rows_as_text(table):
        click.echo(line)
