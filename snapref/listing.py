"""The catalogue: what a repository holds, as data and as an Intake catalogue.

:func:`catalog` lists every dataset with its description, latest version, branches,
tags, number of versions and last change (and optionally every version).
:func:`to_intake` writes the same listing as an Intake catalogue (version 1 YAML,
which Intake 2 still opens with ``intake.open_catalog``) with one entry per dataset
(its latest version), per ``dataset@version`` and per ``dataset@tag``. Versions are
entries rather than user parameters because Intake 2 drops the parameters of
version 1 sources.

Each entry is an ``intake_xarray.xzarr.ZarrSource``. How it reaches the data:

``route="snapref"`` (default)
    ``urlpath: snapref://NAME@SNAPSHOT_ID`` with ``storage_options: {repo: URL}`` —
    the ``snapref://`` fsspec protocol (:mod:`snapref.protocol`), so the reader needs
    snapref installed and access to the catalog. Entries name snapshot ids, never
    moving branches, so an entry always opens the same bytes.
``route="references"``
    Each snapshot is also written as a kerchunk JSON reference file beside the
    catalogue (``<stem>.refs/NAME/SNAPSHOT_ID.json``) and the entry opens it with
    ``reference://`` — plain fsspec, no snapref on the reader's side (invariant 4).

Credentials are never written into a catalogue; readers pass their own.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec
import ujson

from snapref import progress
from snapref.catalog import BRANCH, TAG, Snapshot
from snapref.catalog.records import format_time
from snapref.errors import InvalidInputError

if TYPE_CHECKING:
    from snapref.repository import Repository

__all__ = ["DatasetListing", "VersionListing", "catalog", "to_intake"]

ROUTES = ("snapref", "references")


@dataclass(frozen=True)
class VersionListing:
    """One version of a dataset in the catalogue."""

    version: int
    id: str
    parent: str | None
    timestamp: str
    author: str
    message: str
    branch: str
    summary: dict[str, int]
    properties: dict[str, Any]
    refs: tuple[str, ...] = ()

    @classmethod
    def of(cls, snap: Snapshot, refs: tuple[str, ...] = ()) -> VersionListing:
        return cls(
            version=snap.version,
            id=snap.id,
            parent=snap.parents[0] if snap.parents else None,
            timestamp=format_time(snap.timestamp),
            author=snap.author,
            message=snap.message,
            branch=snap.branch,
            summary=dict(snap.summary),
            properties=dict(snap.properties),
            refs=refs,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "parent": self.parent,
            "timestamp": self.timestamp,
            "author": self.author,
            "message": self.message,
            "branch": self.branch,
            "summary": self.summary,
            "properties": self.properties,
            "refs": list(self.refs),
        }


@dataclass(frozen=True)
class DatasetListing:
    """One dataset in the catalogue.

    ``latest`` is the head of ``main``; ``branches`` and ``tags`` map names to
    version numbers; ``last_change`` is the time of the newest version on any
    branch; ``versions`` is filled only when asked for (newest first).
    """

    name: str
    description: str
    properties: dict[str, Any]
    created_at: str
    latest: VersionListing
    branches: dict[str, int]
    tags: dict[str, int]
    n_versions: int
    last_change: str
    versions: list[VersionListing] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "properties": self.properties,
            "created_at": self.created_at,
            "latest": self.latest.to_json(),
            "branches": self.branches,
            "tags": self.tags,
            "n_versions": self.n_versions,
            "last_change": self.last_change,
        }
        if self.versions is not None:
            out["versions"] = [v.to_json() for v in self.versions]
        return out


def catalog(repo: Repository, versions: bool = False) -> list[DatasetListing]:
    """Every dataset of ``repo``, sorted by name (see :class:`DatasetListing`).

    ``versions=True`` also lists every version of each dataset, newest first.
    """
    out = []
    for record in repo.db.datasets():
        snaps = repo.db.all_snapshots(record.name)
        refs = repo.db.refs(record.name)
        names_of: dict[str, list[str]] = {}
        for r in refs:
            names_of.setdefault(r.snapshot_id, []).append(r.name)
        head = repo.head(record.name)
        ordered = sorted(snaps.values(), key=lambda s: s.version, reverse=True)
        out.append(
            DatasetListing(
                name=record.name,
                description=record.description,
                properties=dict(record.properties),
                created_at=format_time(record.created_at),
                latest=VersionListing.of(head, tuple(names_of.get(head.id, ()))),
                branches={r.name: snaps[r.snapshot_id].version for r in refs if r.kind == BRANCH},
                tags={r.name: snaps[r.snapshot_id].version for r in refs if r.kind == TAG},
                n_versions=len(snaps),
                last_change=format_time(max(s.timestamp for s in snaps.values())),
                versions=(
                    [VersionListing.of(s, tuple(names_of.get(s.id, ()))) for s in ordered]
                    if versions
                    else None
                ),
            )
        )
    return out


def to_intake(
    repo: Repository,
    path: str,
    *,
    route: str = "snapref",
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an Intake catalogue (version 1 YAML) of ``repo`` to ``path``.

    One entry per dataset (named ``NAME``: its latest version), per version
    (``NAME@3``) and per tag (``NAME@v2025-qc``); see the module docstring for the
    two routes. Returns the catalogue as a dict.

    Raises
    ------
    InvalidInputError
        For an unknown ``route``; for route 'references', a version whose references
        name more than one protocol (see :func:`_remote_protocols`).
    """
    import yaml

    if route not in ROUTES:
        raise InvalidInputError(f"Unknown route {route!r}: use one of {', '.join(ROUTES)}")
    _check_catalogue_target(repo, path, storage_options)
    listing = catalog(repo, versions=True)
    refs_dir = _refs_dir(path)
    remote = _remote_protocols(repo, listing) if route == "references" else {}
    sources: dict[str, Any] = {}
    todo = sum(len(d.versions or []) for d in listing)
    with progress.bar(todo if route == "references" else 0, "Writing references") as tick:
        for ds in listing:
            by_id = {v.id: v for v in ds.versions or []}
            entries: list[tuple[str, VersionListing]] = [(ds.name, ds.latest)]
            entries += [(f"{ds.name}@{v.version}", v) for v in ds.versions or []]
            entries += [(f"{ds.name}@{t}", by_id[_id_of(ds, t)]) for t in sorted(ds.tags)]
            for entry, version in entries:
                sources[entry] = _source(
                    repo, ds, version, refs_dir, remote[version.id] if remote else None
                )
            if route == "references":
                for version in ds.versions or []:
                    folder = f"{_folder_of(path)}/{refs_dir}"
                    _write_refs(repo, ds.name, version.id, folder, storage_options)
                    tick(1)
    doc = {
        "metadata": {
            "version": 1,
            "description": f"snapref catalogue of {repo.url}",
            "snapref": {"repository": repo.url, "route": route},
        },
        "sources": sources,
    }
    with fsspec.open(path, "w", **dict(storage_options or {})) as f:
        yaml.dump(doc, f, Dumper=_no_aliases_dumper(), sort_keys=False, allow_unicode=True)
    return doc


def _check_catalogue_target(
    repo: Repository, path: str, storage_options: Mapping[str, Any] | None
) -> None:
    """Raise unless ``path`` may take a catalogue: outside the repository's storage,
    and new or a catalogue snapref wrote (written again to refresh it), never another
    file (a typo of ``-o`` must not replace a source file)."""
    import yaml

    fs, where = repo.output_location(path, storage_options, "write a catalogue to")
    if not fs.exists(where):
        return
    if fs.isdir(where):
        raise InvalidInputError(
            f"Cannot write a catalogue to {path!r}: it is a folder. Give the path of the "
            "YAML file to write, e.g. DIR/catalog.yaml."
        )
    try:
        with fs.open(where, "rb") as f:
            doc = yaml.safe_load(f.read(1 << 20))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError):
        doc = None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not (isinstance(meta, dict) and "snapref" in meta):
        raise InvalidInputError(
            f"{path!r} exists and is not an Intake catalogue snapref wrote; snapref does "
            "not replace other files. Choose another path."
        )


def _no_aliases_dumper() -> type:
    import yaml

    class NoAliases(yaml.SafeDumper):  # type: ignore[misc]  # (no stubs for yaml)
        """Spell repeated values out: ``&id001`` anchors confuse human readers."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    return NoAliases


def _id_of(ds: DatasetListing, tag: str) -> str:
    for v in ds.versions or []:
        if v.version == ds.tags[tag]:
            return v.id
    raise AssertionError(f"tag {tag} of {ds.name} points at no listed version")


def _refs_dir(path: str) -> str:
    stem = posixpath.basename(path)
    for suffix in (".yaml", ".yml"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem + ".refs"


def _remote_protocols(repo: Repository, listing: list[DatasetListing]) -> dict[str, str]:
    """``{snapshot id: protocol}``: the one protocol each version's references name.

    A reference file opened by plain fsspec under zarr 3 reaches one protocol:
    ``remote_protocol`` names it, and ReferenceFileSystem's ``fs`` mapping, the only
    way to name several, does not make local files asynchronous, so zarr's reads of
    them fail. A version that mixes protocols (virtual chunks on S3 and objects in a
    local warehouse, say) is refused here, before anything is written.
    """
    from snapref.history import protocols

    seen: dict[str, frozenset[str]] = {}
    out = {}
    for ds in listing:
        snapshots = repo.db.all_snapshots(ds.name)  # one query per dataset
        for v in ds.versions or []:
            found = protocols(repo, snapshots[v.id], seen)
            if len(found) > 1:
                raise InvalidInputError(
                    f"Version {v.version} of {ds.name!r} references files through "
                    f"{' and '.join(sorted(found))}, and a plain reference:// entry reaches "
                    "one protocol under zarr 3. Write the catalogue with route 'snapref' "
                    "(--route snapref), which reads every protocol."
                )
            out[v.id] = found.pop() if found else repo.warehouse.protocol
    return out


def _source(
    repo: Repository,
    ds: DatasetListing,
    v: VersionListing,
    refs_dir: str,
    remote_protocol: str | None,
) -> dict[str, Any]:
    """One entry; through ``remote_protocol`` (route 'references') or snapref://."""
    metadata = {
        "dataset": ds.name,
        "version": v.version,
        "snapshot_id": v.id,
        "parent": v.parent,
        "timestamp": v.timestamp,
        "author": v.author,
        "message": v.message,
        "branch": v.branch,
        "refs": list(v.refs),
        "summary": v.summary,
        "properties": v.properties,
        "dataset_properties": ds.properties,
        "repository": repo.url,
    }
    metadata = _literal(metadata)
    if remote_protocol is None:
        args: dict[str, Any] = {
            "urlpath": f"snapref://{ds.name}@{v.id}",
            "storage_options": {"repo": repo.url},
        }
    else:
        storage_options: dict[str, Any] = {
            "fo": "{{ CATALOG_DIR }}/" + f"{refs_dir}/{ds.name}/{v.id}.json",
            "remote_protocol": remote_protocol,
        }
        if fsspec.get_filesystem_class(remote_protocol).async_impl:
            # zarr 3 opens reference:// asynchronously, and ReferenceFileSystem
            # requires an asynchronous filesystem to be made so too (S3, HTTP, ...)
            storage_options["remote_options"] = {"asynchronous": True}
        args = {"urlpath": "reference://", "storage_options": storage_options}
    args["consolidated"] = False
    title = ds.description or ds.name
    return {
        "description": f"{title} (version {v.version}: {v.message})",
        "driver": "intake_xarray.xzarr.ZarrSource",
        "args": args,
        "metadata": metadata,
    }


#: what Jinja2 reads as a template in text (Intake renders an entry's metadata)
_TEMPLATE_MARKS = ("{{", "{%", "{#")
_END_RAW = re.compile(r"\{%[-+]?\s*endraw\s*[-+]?%\}")


def _literal(value: Any) -> Any:
    """``value`` with each text that Jinja2 would take for a template wrapped in
    ``{% raw %}``: Intake renders every string of an entry's metadata when it opens
    the entry, so a message such as "fill {{ name }}" lost its words, "{{ env('HOME')
    }}" became a path, and an unbalanced "{{" made the entry impossible to open."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if not isinstance(value, str) or not any(m in value for m in _TEMPLATE_MARKS):
        return value
    # an endraw inside the text would end the raw block: it is written as an expression
    body = _END_RAW.sub(lambda m: "{% endraw %}{{ '" + m[0] + "' }}{% raw %}", value)
    return "{% raw %}" + body + "{% endraw %}"


def _write_refs(
    repo: Repository, name: str, snapshot_id: str, folder: str, so: Mapping[str, Any] | None
) -> None:
    """Write one snapshot's kerchunk JSON into ``folder``, unless present: a snapshot
    never changes, so an existing file is up to date."""
    fs, root = fsspec.core.url_to_fs(folder, **dict(so or {}))
    target = f"{root}/{name}/{snapshot_id}.json"
    if fs.exists(target):
        return
    fs.makedirs(f"{root}/{name}", exist_ok=True)
    refs = repo.to_references(name, snapshot_id)
    fs.pipe_file(target, ujson.dumps(refs, escape_forward_slashes=False).encode())


def _folder_of(path: str) -> str:
    if "://" in path:
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))
