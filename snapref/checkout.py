"""Checking a version out to a reference file, and committing the edited file back.

:func:`checkout` writes one version of a dataset as a kerchunk reference set (a JSON
file, or a parquet reference directory) that plain fsspec, zarr and xarray can open and
edit, together with a record of the version it came from (repository, dataset,
snapshot, branch): inside it (under ``"snapref"``, or in ``PATH/.snapref`` for a
directory) and in a sidecar file ``PATH.snapref`` beside it, which survives tools that
rewrite the file.

:func:`commit_references` reads the edited file back, finds its parent version from
that record (or ``parent=``), diffs the file against the parent's manifest and commits
only the entries that changed; then it points the record at the new version, so that
editing and committing the same file can go on.

The :class:`~snapref.Repository` methods of the same names are the public API (and
hold the documentation); they delegate here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import ujson

from snapref import progress
from snapref.catalog import BRANCH, MAIN_BRANCH, Snapshot
from snapref.errors import InvalidInputError, InvalidReferenceError, VersionNotFoundError
from snapref.manifest import InlineRef, Manifest, ObjectRef, Ref, VirtualRef
from snapref.refs import (
    bulk,
    check_protocol,
    encode_inline,
    load_reference_file,
    normalize_url,
    read_reference_set,
)
from snapref.refs_parquet import (
    DEFAULT_RECORD_SIZE,
    is_parquet_references,
    write_parquet_references,
)
from snapref.refs_parquet import RECORD_FILE as PARQUET_RECORD_FILE
from snapref.transaction import ChangeSet, commit_changes

if TYPE_CHECKING:
    from snapref.repository import Repository, VersionSpec

#: Checkout writes this beside the reference file, to know the parent at commit time.
SIDECAR_SUFFIX = ".snapref"

# -- checkout: a version out to a reference file ----------------------------------------


def checkout(
    repo: Repository,
    name: str,
    version: VersionSpec,
    path: str,
    *,
    branch: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    format: str = "json",  # noqa: A002 - the CLI's --format
    record_size: int = DEFAULT_RECORD_SIZE,
    overwrite: bool = False,
) -> Snapshot:
    """Write one version as a reference file plus its checkout record; documented at
    :meth:`snapref.Repository.checkout`."""
    import fsspec

    if format not in ("json", "parquet"):
        raise InvalidInputError(f"Unknown reference format {format!r}: use json or parquet")
    snap = repo.resolve(name, version, branch=branch)
    _check_checkout_target(repo, path, storage_options, format, overwrite)
    named = repo.db.ref(name, version) if isinstance(version, str) else None
    on_branch = branch or (
        version if isinstance(version, str) and named and named.kind == BRANCH else MAIN_BRANCH
    )
    record = _record(repo, snap, on_branch)
    if format == "parquet":
        path = path.rstrip("/")
        write_parquet_references(
            repo,
            snap,
            path,
            record_size=record_size,
            storage_options=storage_options,
            record=record,
        )
        _write_record(path + SIDECAR_SUFFIX, record, storage_options)
        return snap
    out = to_references(repo, name, snap.id)
    out["snapref"] = record
    with fsspec.open(path, "wb", **dict(storage_options or {})) as f:
        f.write(ujson.dumps(out).encode())
    _write_record(path + SIDECAR_SUFFIX, record, storage_options)
    return snap


def _check_checkout_target(
    repo: Repository,
    path: str,
    storage_options: Mapping[str, Any] | None,
    fmt: str,
    overwrite: bool,
) -> None:
    """Raise unless a checkout may write ``path`` (see :func:`checkout`)."""
    fs, where = output_location(repo, path, storage_options, "check out to")
    if not fs.exists(where):
        return
    if fmt == "json" and fs.isdir(where):
        raise InvalidInputError(
            f"Cannot check out to {path!r}: it is a folder. Give the path of the JSON "
            "file to write inside it, e.g. DIR/work.json."
        )
    if not overwrite:
        raise InvalidInputError(
            f"{path!r} exists already. Choose a new path, or replace it with --force "
            "(overwrite=True in Python): edits in it not committed yet would be lost."
        )
    if fmt == "json":
        with fs.open(where, "rb") as f:
            head = f.read(64).lstrip()
        if not head.startswith(b"{"):
            raise InvalidInputError(
                f"{path!r} exists and is not a JSON reference file; snapref does not "
                "replace other files, even with --force. Choose another path."
            )


def output_location(
    repo: Repository, path: str, storage_options: Mapping[str, Any] | None, doing: str
) -> tuple[Any, str]:
    """Where snapref may write ``path``; documented at
    :meth:`snapref.Repository.output_location`."""
    import fsspec

    check_protocol(path, "output path")
    fs, where = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if {"http", "https"} & set(protocols):
        raise InvalidInputError(
            f"Cannot {doing} {path!r}: fsspec reads HTTP URLs but cannot write them. "
            "Give a local path or a writable URL (s3://, gs://, ...)."
        )
    where = where.rstrip("/")
    target = fs.unstrip_protocol(where)
    catalog = repo.db.engine.url
    inside = target == repo.warehouse.url or target.startswith(repo.warehouse.url + "/")
    if inside or (
        catalog.get_backend_name() in ("sqlite", "duckdb")
        and catalog.database
        and normalize_url(target) == normalize_url(os.path.abspath(catalog.database))
    ):
        raise InvalidInputError(
            f"Cannot {doing} {path!r}: it is the repository's own storage "
            f"({repo.warehouse.url}), which only snapref writes. Choose a path outside it."
        )
    return fs, where


def to_references(
    repo: Repository, name: str, version: VersionSpec = None, **kw: Any
) -> dict[str, Any]:
    """One version as a kerchunk JSON reference set; documented at
    :meth:`snapref.Repository.to_references`."""
    snap = repo.resolve(name, version, **kw)
    refs: dict[str, Any] = {}
    manifest = repo.manifest(snap)
    for key, ref in progress.items(manifest.items(), len(manifest), "Reading references"):
        if isinstance(ref, InlineRef):
            refs[key] = encode_inline(ref.data)
        elif isinstance(ref, ObjectRef):
            refs[key] = [repo.objects.url(ref.digest)]
        elif ref.offset is None:
            refs[key] = [ref.url]
        else:
            refs[key] = [ref.url, ref.offset, ref.length]
    return {"version": 1, "refs": refs}


def _record(repo: Repository, snap: Snapshot, branch: str) -> dict[str, Any]:
    return {
        "repository": repo.url,
        "dataset": snap.dataset,
        "snapshot": snap.id,
        "version": snap.version,
        "branch": branch,
    }


def _write_record(
    path: str, record: Mapping[str, Any], storage_options: Mapping[str, Any] | None
) -> None:
    import fsspec

    with fsspec.open(path, "wb", **dict(storage_options or {})) as f:
        f.write(ujson.dumps(record, indent=2).encode())


# -- commit: the edited file back as a new version --------------------------------------


def commit_references(
    repo: Repository,
    name: str,
    refs: Mapping[str, Any] | str,
    message: str,
    *,
    parent: VersionSpec = None,
    branch: str | None = None,
    author: str | None = None,
    properties: Mapping[str, Any] | None = None,
    allow_sources: Iterable[str] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> Snapshot | None:
    """Commit an edited checkout as a new version; documented at
    :meth:`snapref.Repository.commit_references`."""
    record = _checkout_record(refs, storage_options) if parent is None else None
    if parent is None and record is None:
        if (
            isinstance(refs, str)
            and refs != "-"
            and not is_parquet_references(refs, storage_options)
        ):
            load_reference_file(refs, storage_options)  # says if it is missing or bad
        raise InvalidInputError(
            "Cannot tell which version this reference set was checked out from: it "
            "has no snapref record and no sidecar file. Pass --parent VERSION "
            "(parent= in Python)."
        )
    if record is not None:
        if record.get("dataset") not in (None, name):
            raise InvalidInputError(
                f"This reference set was checked out from dataset "
                f"{record['dataset']!r}, not {name!r}"
            )
        try:
            parent_snap = repo.db.snapshot(record["snapshot"])
        except VersionNotFoundError:
            raise VersionNotFoundError(
                f"This reference set was checked out from snapshot "
                f"{str(record['snapshot'])[:12]} of {record.get('repository', '?')}, which "
                f"this repository ({repo.url}) does not hold. Commit it there, or "
                "here with --parent VERSION (parent= in Python)."
            ) from None
        branch = branch or record.get("branch") or MAIN_BRANCH
    else:
        parent_snap = repo.resolve(name, parent)
        branch = branch or MAIN_BRANCH
    base = repo.manifest(parent_snap)
    with bulk():
        changeset = _edits(repo, base, read_reference_set(refs, storage_options, base))
        snap = commit_changes(
            repo,
            name,
            branch,
            parent_snap,
            base,
            changeset,
            message=message,
            author=author,
            properties=properties,
            allow_sources=allow_sources,
            noop_on_branch=True,
        )
    if snap is not None and isinstance(refs, str) and refs != "-":
        # the file now matches the new version: further edits continue from it
        try:
            _write_record(refs + SIDECAR_SUFFIX, _record(repo, snap, branch), storage_options)
            if is_parquet_references(refs, storage_options):
                inside = refs.rstrip("/") + "/" + PARQUET_RECORD_FILE
                _write_record(inside, _record(repo, snap, branch), storage_options)
        except Exception as exc:  # the version is recorded: say so, whatever failed
            warnings.warn(
                f"Committed {name} version {snap.version}, but could not update the "
                f"checkout record beside {refs!r} ({exc}). To commit further edits of "
                f"that file, pass --parent {snap.version} (parent={snap.version} in "
                "Python).",
                stacklevel=3,  # the caller of Repository.commit_references
            )
    return snap


def _checkout_record(
    refs: Mapping[str, Any] | str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The checkout record of a reference set: its sidecar file (kept current by
    commits), else the record inside it (which ``fs.save_json`` drops)."""
    import fsspec

    if isinstance(refs, Mapping):
        rec = refs.get("snapref")
        return rec if isinstance(rec, dict) else None
    try:
        with fsspec.open(refs + SIDECAR_SUFFIX, "rb", **dict(storage_options or {})) as f:
            return dict(ujson.loads(f.read()))
    except (FileNotFoundError, IsADirectoryError, ValueError, TypeError):
        pass
    try:
        with fsspec.open(
            refs.rstrip("/") + "/" + PARQUET_RECORD_FILE, "rb", **dict(storage_options or {})
        ) as f:
            return dict(ujson.loads(f.read()))
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
        pass
    try:
        doc = load_reference_file(refs, storage_options)
    except InvalidReferenceError:
        return None
    rec = doc.get("snapref") if isinstance(doc, dict) else None
    return rec if isinstance(rec, dict) else None


def _edits(repo: Repository, base: Manifest, parsed: Mapping[str, Any]) -> ChangeSet:
    """What the edited reference set ``parsed`` (a checkout of ``base``) changes.

    One walk over ``base``, shard by shard, sets aside every entry written as the
    checkout wrote it (a warehouse object by its URL, a virtual reference, inline
    bytes): committing an edited checkout of 10^6 chunks looks up no key.
    """
    changeset = ChangeSet()
    seen: set[str] = set()
    for key, before in base.items():
        seen.add(key)
        after = parsed.get(key)
        if after is None:
            changeset.delete(key)
        elif not _as_checked_out(repo, before, after):
            _stage_edit(repo, changeset, key, after)
    if len(seen) != len(parsed):
        for key, after in parsed.items():
            if key not in seen:
                _stage_edit(repo, changeset, key, after)
    return changeset


def _as_checked_out(repo: Repository, before: Ref, after: Any) -> bool:
    """Whether ``after`` (parsed from a reference set) is ``before`` as a checkout
    writes it: the same virtual reference, the same inline bytes, or a warehouse
    object by its URL. Anything else is staged, and compared again if need be
    (:meth:`ChangeSet.without_noops`: metadata spelt otherwise, bytes inlined)."""
    if type(after) is not VirtualRef:
        return type(before) is InlineRef and before.data == after
    if type(before) is ObjectRef:
        return after.offset is None and after.url == repo.objects.url(before.digest)
    return before == after


def _stage_edit(repo: Repository, changeset: ChangeSet, key: str, value: Any) -> None:
    """Stage ``value`` (parsed from a reference set) at ``key``: a warehouse
    object's URL as that object, a byte range of one as those bytes."""
    if not isinstance(value, VirtualRef):
        changeset.put_bytes(key, value)
        return
    digest = repo.objects.digest_of_url(value.url)
    if digest is None:
        changeset.changes[key] = value
    elif value.offset is None:  # a whole warehouse object, as checkouts write
        changeset.changes[key] = ObjectRef(digest, len(repo.objects.get(digest)))
    else:  # a byte range of one: those bytes (checked), as a value of their own
        changeset.put_bytes(key, _object_range(repo, key, digest, value))


def _object_range(repo: Repository, key: str, digest: str, ref: VirtualRef) -> bytes:
    """The bytes ``[offset, offset + length)`` of a warehouse object that ``key`` names
    by URL, from the object's verified bytes."""
    data = repo.objects.get(digest)
    start, length = ref.offset or 0, ref.length or 0
    if start + length > len(data):
        raise InvalidReferenceError(
            f"Key {key!r}: the range [{start}, {start + length}) lies beyond the "
            f"{len(data)} bytes of {ref.url}. Give a range inside the object, or [url]."
        )
    return data[start : start + length]
