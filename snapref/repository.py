"""The public face of snapref: a repository and what users do with it.

A :class:`Repository` is a warehouse (any fsspec URL, holding immutable objects,
shards and manifest lists) plus the SQL catalog recorded in the warehouse's
``snapref.json``. Everything else — import, transactions, checkout and commit of
reference files, time travel, branches and tags — is a method here, and the CLI is a
thin layer over these methods. Checkout and commit of reference files are implemented
in :mod:`snapref.checkout`.
"""

from __future__ import annotations

import functools
import getpass
import operator
import os
import posixpath
import subprocess
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

import ujson

from snapref import checkout
from snapref.catalog import BRANCH, MAIN_BRANCH, TAG, Log, Lookups, RefRecord, Snapshot
from snapref.catalog.lookups import SQLiteReader, sqlite_url
from snapref.errors import (
    AlreadyExistsError,
    CatalogSchemaError,
    CatalogUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RepositoryClosedError,
    RepositoryNotFoundError,
    VersionNotFoundError,
)
from snapref.fs import SnapshotFileSystem, SourcePolicy, StagedReferences
from snapref.manifest import Manifest, VirtualRef
from snapref.objects import Warehouse, connection_failed
from snapref.refs import allowed_prefix, bulk, check_protocol, read_reference_set, source_prefix
from snapref.refs_parquet import DEFAULT_RECORD_SIZE, is_parquet_references, stream_parquet_import
from snapref.transaction import ChangeSet, Transaction, check_name, commit_changes

if TYPE_CHECKING:
    import zarr

    from snapref.catalog import Catalog
    from snapref.listing import DatasetListing
    from snapref.store import SnapshotStore

__all__ = ["Repository", "connect", "init", "open", "open_dataset", "split_spec"]

CONFIG_FILE = "snapref.json"
EMBEDDED_CATALOG = "catalog.db"
#: the setting in which a catalog records the id of its repository (snapref.json's "id")
REPOSITORY_ID = "repository_id"

VersionSpec = int | str | None


class Repository:
    """A snapref repository: one warehouse and its catalog.

    Create one with :func:`snapref.init`, open one with :func:`snapref.connect`.
    """

    def __init__(
        self,
        warehouse: Warehouse,
        catalog: Lookups,
        source_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``catalog``: an open :class:`~snapref.catalog.Catalog`, or a
        :class:`~snapref.catalog.lookups.SQLiteReader` of one, which opens the whole
        catalog (and imports SQLAlchemy) only when something besides finding and
        reading a version needs it."""
        self.warehouse = warehouse
        # finding a version reads through these; `db` is the whole catalog
        self._reads = catalog
        self._db: Catalog | None = None if isinstance(catalog, SQLiteReader) else catalog.full()
        self._db_lock = threading.Lock()
        self.objects = warehouse.objects
        self._source_options = dict(source_options or {})

    def __repr__(self) -> str:
        return f"<snapref.Repository {self.warehouse.url}>"

    @property
    def url(self) -> str:
        return self.warehouse.url

    @property
    def db(self) -> Catalog:
        """The SQL catalog (datasets, snapshots, refs), opened on first use;
        ``catalog()`` is the listing."""
        if self._db is None:
            with self._db_lock:
                if self._db is None:
                    self._db = self._reads.full()
                    # from now on every read goes through it too: one Repository
                    # never reads two databases (say a catalog file replaced meanwhile)
                    self._reads = self._db
        return self._db

    @property
    def catalog_url(self) -> str:
        """The SQLAlchemy URL of the catalog this repository uses."""
        return self._reads.url

    def close(self) -> None:
        """Give back the catalog's connections (on duckdb, the database file's lock).
        The repository cannot be used afterwards: every call raises
        RepositoryClosedError. Versions opened before go on reading."""
        with self._db_lock:
            db, self._db = self._db, None
            self._reads = _Closed(self._reads.url, self.warehouse.url)
        if db is not None:
            db.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return isinstance(self._reads, _Closed)

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets and versions ---------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of the datasets in this repository, sorted."""
        return [d.name for d in self.db.datasets()]

    def catalog(self, versions: bool = False) -> list[DatasetListing]:
        """The catalogue: every dataset with its description, latest version,
        branches, tags, number of versions and last change (see :mod:`snapref.listing`);
        ``versions=True`` adds every version."""
        from snapref.listing import catalog

        return catalog(self, versions=versions)

    def to_intake(self, path: str, *, route: str = "snapref", **kw: Any) -> dict[str, Any]:
        """Write the catalogue as an Intake catalogue file (YAML) at ``path``; see
        :func:`snapref.listing.to_intake`."""
        from snapref.listing import to_intake

        return to_intake(self, path, route=route, **kw)

    def head(self, name: str, branch: str = MAIN_BRANCH) -> Snapshot:
        """The snapshot at the head of ``branch`` of dataset ``name``."""
        return self._reads.snapshot(self._reads.branch(name, branch).snapshot_id)

    def resolve(
        self,
        name: str,
        version: VersionSpec = None,
        *,
        as_of: datetime | str | None = None,
        branch: str | None = None,
    ) -> Snapshot:
        """Find the snapshot a user means.

        Parameters
        ----------
        version
            A version number (``3`` or ``"3"``), a branch or tag name, or a snapshot id
            or unique id prefix. None means the head of ``branch`` (default ``main``).
        as_of
            A time (datetime, or ISO 8601 text; naive means UTC): the version that was
            the head of ``branch`` at that time, from the branch's recorded history.
        branch
            Must be a branch of ``name`` when given (or with ``as_of``): a misspelt
            branch or a tag is a VersionNotFoundError, never ignored.

        Raises
        ------
        DatasetNotFoundError, VersionNotFoundError, InvalidInputError
        """
        self._reads.dataset(name)
        if (branch is not None and version is not None) or as_of is not None:
            # a branch that does not exist (a typo, a tag) is said, never ignored
            self._reads.branch(name, branch or MAIN_BRANCH)
        if as_of is not None:
            if version is not None:
                raise InvalidInputError("Give either a version or as_of, not both")
            when = _parse_when(as_of)
            snap_id = self.db.head_at(name, branch or MAIN_BRANCH, when)
            if snap_id is None:
                raise VersionNotFoundError(self._none_then(name, branch or MAIN_BRANCH, when))
            return self._reads.snapshot(snap_id)
        if version is None:
            return self.head(name, branch or MAIN_BRANCH)
        if not isinstance(version, str):
            version = _version_number(version)
        # ASCII digits only: str.isdigit() also takes '²' and '٣', which int() refuses
        # or reads as another number
        if isinstance(version, int) or (version.isascii() and version.isdigit()):
            number = int(version)
            # a number beyond what SQL integers hold is no version (and no query)
            snap = self._reads.snapshot_by_version(name, number) if number < 2**63 else None
            if snap is not None:
                return snap
            if isinstance(version, int):
                raise VersionNotFoundError(self._no_version(name, version))
        text = str(version)
        ref = self._reads.ref(name, text)
        if ref is not None:
            return self._reads.snapshot(ref.snapshot_id)
        matches = self._reads.snapshots_by_id_prefix(name, text) if len(text) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise VersionNotFoundError(
                f"Snapshot id prefix {text!r} of dataset {name!r} is ambiguous "
                f"({len(matches)} matches); give more characters"
            )
        raise VersionNotFoundError(self._no_version(name, text))

    def _none_then(self, name: str, branch: str, when: datetime) -> str:
        first = next(iter(self.db.ref_log(name, branch)), None)
        since = (
            f"its first version there is from {first.timestamp.isoformat()}: give that "
            "time or a later one"
            if first is not None
            else "it has no version yet"
        )
        return (
            f"Dataset {name!r} had no version on branch {branch!r} at "
            f"{(when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()}; {since}"
        )

    def _no_version(self, name: str, version: Any) -> str:
        refs = ", ".join(r.name for r in self.db.refs(name))
        latest = max((s.version for s in self.db.all_snapshots(name).values()), default=0)
        return (
            f"Dataset {name!r} has no version {version!r}: versions are 1..{latest}, refs "
            f"are {refs}; snapshot ids need at least 4 characters"
        )

    def manifest(self, snapshot: Snapshot) -> Manifest:
        """The (lazily loaded) manifest of ``snapshot``."""
        return Manifest.load(self.warehouse, snapshot.manifest)

    def changes(self, snapshot: Snapshot) -> dict[str, str]:
        """The keys ``snapshot`` changed: ``{key: "A" | "M" | "D"}``, sorted by key."""
        if not snapshot.parents:
            return dict.fromkeys(sorted(self.manifest(snapshot)), "A")
        return self.db.changes(snapshot.id)

    def log(self, name: str, branch: str | None = None) -> Log:
        """The versions of ``branch`` (default ``main``), newest first: a read-only
        sequence of :class:`Snapshot` (indexing, slicing, iteration, ``len``)."""
        head = self.db.branch(name, branch or MAIN_BRANCH)
        return self.db.ancestry(head.snapshot_id, dataset=name)

    def refs(self, name: str) -> list[RefRecord]:
        """Branches and tags of dataset ``name``."""
        self.db.dataset(name)
        return self.db.refs(name)

    def sources(self, name: str) -> list[str]:
        """URL prefixes that virtual references of ``name`` may point into."""
        self.db.dataset(name)
        return self.db.sources(name)

    def allow_source(self, prefix: str, dataset: str | None = None) -> str:
        """Allow reads from ``prefix`` for one dataset, or repository-wide; returns the
        prefix as recorded (a local path becomes its ``file://`` URL)."""
        prefix = allowed_prefix(prefix)
        if dataset is None:
            current = self.db.get_setting("allowed_sources", [])
            if prefix not in current:
                self.db.set_setting("allowed_sources", [*current, prefix])
        else:
            self.db.dataset(dataset)
            self.db.add_sources(dataset, [prefix])
        return prefix

    def _policy(self, dataset: str | None, extra: Iterable[str] = ()) -> SourcePolicy:
        prefixes = set(self._reads.get_setting("allowed_sources", []))
        if dataset is not None:
            prefixes.update(self._reads.sources(dataset))
        prefixes.update(extra)
        return SourcePolicy(tuple(sorted(prefixes)))

    # -- tags and branches -------------------------------------------------------------

    def tag(self, name: str, version: VersionSpec, tag: str, author: str | None = None) -> Snapshot:
        """Name a version with a tag; tags never move."""
        snap = self.resolve(name, version)
        check_name(tag)
        self.db.create_ref(name, tag, TAG, snap.id, author or self.default_author())
        return snap

    def branch(
        self, name: str, new: str, from_version: VersionSpec = None, author: str | None = None
    ) -> Snapshot:
        """Create branch ``new`` at ``from_version`` (default: head of ``main``)."""
        snap = self.resolve(name, from_version)
        check_name(new)
        self.db.create_ref(name, new, BRANCH, snap.id, author or self.default_author())
        return snap

    # -- making versions ---------------------------------------------------------------

    def transaction(
        self,
        name: str,
        message: str,
        branch: str = MAIN_BRANCH,
        author: str | None = None,
        properties: Mapping[str, Any] | None = None,
        allow_sources: Iterable[str] = (),
        rebase: bool = False,
    ) -> Transaction:
        """Start editing ``branch`` of dataset ``name``; see :class:`Transaction`.

        ``rebase=True``: if the branch moves before the commit, the edits are replayed
        onto its new head when they touch other keys (else a MergeConflictError).
        """
        return Transaction(
            self,
            name,
            message=message,
            branch=branch,
            author=author,
            properties=properties,
            allow_sources=allow_sources,
            rebase=rebase,
        )

    def import_references(
        self,
        name: str,
        refs: Mapping[str, Any] | str,
        message: str = "Import references",
        *,
        author: str | None = None,
        properties: Mapping[str, Any] | None = None,
        description: str = "",
        storage_options: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Create dataset ``name`` from a kerchunk reference set, as version 1.

        Virtual references stay virtual (nothing is copied) and their folders become
        the dataset's allowed sources; inline chunk data becomes warehouse objects.

        Parameters
        ----------
        refs
            A decoded reference set (dict) or the URL/path of a JSON reference file.

        Raises
        ------
        AlreadyExistsError, InvalidReferenceError, InvalidKeyError
        """
        check_name(name, what="dataset")
        if name in self.datasets():
            raise AlreadyExistsError(
                f"A dataset named {name!r} exists already; commit a new version with "
                "'snapref commit' or choose another name"
            )
        sources: set[str] = set()
        with bulk():
            if isinstance(refs, str) and is_parquet_references(refs, storage_options):
                # record by record into shards: memory stays bounded however many refs
                changeset, sources = stream_parquet_import(self, refs, storage_options)
            else:
                changeset = ChangeSet()
                urls: set[str] = set()
                for key, value in read_reference_set(refs, storage_options).items():
                    if isinstance(value, VirtualRef):
                        changeset.changes[key] = value
                        urls.add(value.url)
                    else:
                        changeset.put_bytes(key, value)
                sources = {source_prefix(url) for url in urls}
                for prefix in sorted(sources):
                    check_protocol(prefix, "source of references")
            snap = commit_changes(
                self,
                name,
                MAIN_BRANCH,
                None,
                Manifest.empty(self.warehouse),
                changeset,
                message=message,
                author=author,
                properties=properties,
                new_sources=sorted(sources),
                description=description,
            )
        assert snap is not None
        return snap

    def commit_references(
        self,
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
        """Record an edited reference set (from :meth:`checkout`) as a new version.

        The parent is taken from ``parent``, else from the checkout's record inside or
        beside the file. If ``branch`` moved away from the parent since the checkout,
        this is a :class:`ConflictError` — never a silent overwrite.

        Returns the new snapshot, or None if the file changes nothing.
        """
        return checkout.commit_references(
            self,
            name,
            refs,
            message,
            parent=parent,
            branch=branch,
            author=author,
            properties=properties,
            allow_sources=allow_sources,
            storage_options=storage_options,
        )

    # -- reading versions ----------------------------------------------------------------

    def to_references(self, name: str, version: VersionSpec = None, **kw: Any) -> dict[str, Any]:
        """Version ``version`` of ``name`` as a kerchunk JSON (version 1) reference set
        that plain fsspec opens (invariant 4). Objects are referenced by their
        warehouse URL."""
        return checkout.to_references(self, name, version, **kw)

    def checkout(
        self,
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
        """Write version ``version`` of ``name`` as a kerchunk JSON reference file, or
        with ``format="parquet"`` as a complete parquet reference directory
        (:mod:`snapref.refs_parquet`, ``record_size`` references per record file).

        A record of the checkout (repository, dataset, snapshot, branch) is kept in the
        file under ``"snapref"`` (in ``PATH/.snapref`` for a directory) and in a
        sidecar file ``PATH.snapref``, so that :meth:`commit_references` knows the
        parent even after ``fs.save_json`` or the lazy mapper's ``flush()``.

        An existing ``path`` is replaced only with ``overwrite=True`` (it may hold
        edits not committed yet), and only if it is a reference set; nothing is ever
        written inside the warehouse or over the catalog.
        """
        return checkout.checkout(
            self,
            name,
            version,
            path,
            branch=branch,
            storage_options=storage_options,
            format=format,
            record_size=record_size,
            overwrite=overwrite,
        )

    def output_location(
        self, path: str, storage_options: Mapping[str, Any] | None, doing: str
    ) -> tuple[Any, str]:
        """The filesystem and path of ``path``, a file snapref is asked to write
        (a checkout, a catalogue); an :class:`InvalidInputError` if it lies in the
        repository's own storage (its warehouse, an embedded catalog file)."""
        return checkout.output_location(self, path, storage_options, doing)

    def _filesystem(
        self,
        staged: StagedReferences,
        dataset: str,
        *,
        asynchronous: bool,
        read_only: bool = False,
        extra_sources: Iterable[str] = (),
    ) -> SnapshotFileSystem:
        return SnapshotFileSystem(
            staged,
            self.objects,
            self.warehouse.fs_for(asynchronous),
            self._policy(dataset, extra_sources),
            source_options=self._source_options_for(),
            read_only=read_only,
            asynchronous=asynchronous,
        )

    def _source_options_for(self) -> dict[str, Mapping[str, Any]]:
        # sources on the warehouse's own protocol share its credentials by default
        opts: dict[str, Mapping[str, Any]] = {
            self.warehouse.protocol: self.warehouse.storage_options
        }
        opts.update(self._source_options)
        return opts

    def filesystem(
        self, name: str, version: VersionSpec = None, *, asynchronous: bool = False, **kw: Any
    ) -> SnapshotFileSystem:
        """A read-only fsspec filesystem over one version of ``name`` (a
        :class:`~snapref.protocol.SnaprefFileSystem`: it pickles cheaply for dask)."""
        from snapref.protocol import SnaprefFileSystem

        return SnaprefFileSystem(self, name, version, asynchronous=asynchronous, **kw)

    def store(self, name: str, version: VersionSpec = None, **kw: Any) -> SnapshotStore:
        """A read-only zarr 3 store (a :class:`~snapref.store.SnapshotStore`) over one
        version of ``name``."""
        from snapref.store import SnapshotStore  # imports zarr: see snapref/store.py

        fs = self.filesystem(name, version, asynchronous=True, **kw)
        return SnapshotStore(fs, read_only=True)

    def open(self, name: str, version: VersionSpec = None, **kw: Any) -> zarr.Group | zarr.Array:
        """Version ``version`` of ``name`` as a read-only zarr Group, or Array if the
        dataset's root is an array (an ingested array store), as ``zarr.open`` does."""
        import zarr
        from zarr.errors import (
            ArrayNotFoundError,
            ContainsArrayError,
            ContainsGroupError,
            GroupNotFoundError,
        )

        store = self.store(name, version, **kw)
        try:
            return zarr.open_group(store, mode="r")
        except (ContainsArrayError, GroupNotFoundError):
            pass
        try:
            return zarr.open_array(store, mode="r")
        except (ArrayNotFoundError, ContainsGroupError):
            which = f"{name}@{version}" if version is not None else name
            raise NotFoundError(
                f"{which} holds no zarr group or array at its "
                "root (no .zgroup, .zarray or zarr.json); open a node below it with "
                f"zarr.open(repo.store({name!r}, ...), path=...), or read its keys with "
                "repo.filesystem()"
            ) from None

    def open_dataset(
        self,
        name: str,
        version: VersionSpec = None,
        *,
        as_of: Any = None,
        branch: str | None = None,
        **xr_kwargs: Any,
    ) -> Any:
        """Version ``version`` of ``name`` as an xarray Dataset (lazy, read-only)."""
        import xarray as xr

        engine = xr_kwargs.pop("engine", None)
        if (
            engine not in (None, "zarr")
            and getattr(engine, "__name__", "") != "ZarrBackendEntrypoint"
        ):
            raise InvalidInputError(
                f"A snapref version is Zarr, so xarray's engine is 'zarr', not {engine!r}; "
                "leave engine out"
            )
        store = self.store(name, version, as_of=as_of, branch=branch)
        xr_kwargs.setdefault("consolidated", False)
        xr_kwargs.setdefault("chunks", None)
        return xr.open_dataset(store, engine="zarr", **xr_kwargs)  # type: ignore[arg-type]

    # -- history (snapref/history.py, snapref/merge.py, snapref/inspect.py) ------------

    def diff(self, name: str, old: VersionSpec, new: VersionSpec = None) -> Any:
        """What changed between two versions: a :class:`snapref.history.Diff`."""
        from snapref import history

        return history.diff(self, self.resolve(name, old), self.resolve(name, new))

    def blame(
        self,
        name: str,
        array: str,
        index: Iterable[int] | None = None,
        version: VersionSpec = None,
        *,
        history: bool = False,
    ) -> list[Any]:
        """Who last wrote each chunk of ``array`` (or the chunk holding ``index``);
        see :func:`snapref.history.blame`."""
        from snapref import history as h

        if index is not None and not isinstance(index, Iterable):
            index = (index,)  # one dimension: blame(..., 3) as blame(..., (3,))
        idx = None if index is None else tuple(index)
        return h.blame(self, self.resolve(name, version), array, idx, history=history)

    def source_files(self, name: str, version: VersionSpec = None) -> list[Any]:
        """External files a version references, with chunk and byte counts."""
        from snapref import history

        return history.sources(self, self.resolve(name, version))

    def versions_using(self, url: str) -> list[Any]:
        """``[(snapshot, SourceUse)]``: every version of every dataset referencing
        ``url`` (a URL ending in ``/`` matches every file under it)."""
        from snapref import history

        return history.snapshots_using(self, url)

    def reset(
        self,
        name: str,
        to: VersionSpec,
        branch: str = MAIN_BRANCH,
        *,
        author: str | None = None,
        message: str | None = None,
    ) -> Snapshot:
        """Move ``branch`` back (or anywhere) to version ``to``; returns the old head."""
        from snapref import merge

        return merge.reset(
            self, name, branch, self.resolve(name, to), author=author, message=message
        )

    def revert(
        self,
        name: str,
        version: VersionSpec,
        branch: str = MAIN_BRANCH,
        *,
        message: str | None = None,
        author: str | None = None,
    ) -> Snapshot | None:
        """Commit a new version on ``branch`` that undoes ``version``'s changes."""
        from snapref import merge

        snap = self.resolve(name, version)
        return merge.revert(self, snap, branch=branch, message=message, author=author)

    def merge(
        self,
        name: str,
        source: str,
        into: str = MAIN_BRANCH,
        *,
        message: str | None = None,
        strategy: str | None = None,
        author: str | None = None,
    ) -> Any:
        """Three-way merge of branch ``source`` into ``into``; a
        :class:`snapref.merge.MergeResult`."""
        from snapref import merge

        return merge.merge(
            self, name, source, into=into, message=message, strategy=strategy, author=author
        )

    def audit(self, name: str | None = None) -> list[Any]:
        """Every ref change (commit, tag, branch, reset, merge, revert), oldest first."""
        if name is not None:
            self.db.dataset(name)
        return self.db.ref_log(name)

    @property
    def inspect(self) -> Any:
        """Metadata tables as Arrow tables; see :class:`snapref.inspect.Inspector`."""
        from snapref.inspect import Inspector

        return Inspector(self)

    # -- provenance --------------------------------------------------------------------

    @staticmethod
    def default_author() -> str:
        """Author for new versions: ``$SNAPREF_AUTHOR``, else git's user, else the login."""
        return os.environ.get("SNAPREF_AUTHOR") or _git_author() or getpass.getuser()


class _Closed(Lookups):
    """The catalog of a closed Repository: every read says so, and how to go on."""

    def __init__(self, url: str, repository: str) -> None:
        self.url = url
        self._repository = repository

    def _error(self) -> RepositoryClosedError:
        return RepositoryClosedError(
            f"The repository {self._repository} was closed (close(), or its with block "
            f"ended). Connect again: snapref.connect({self._repository!r})"
        )

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        raise self._error()

    def full(self) -> Catalog:
        raise self._error()


@functools.cache  # two subprocesses: once per process is enough
def _git_author() -> str:
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        email = subprocess.run(
            ["git", "config", "user.email"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{name} <{email}>" if name and email else name


# -- module-level entry points -----------------------------------------------------------


def init(
    url: str,
    catalog: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Repository:
    """Create a repository at ``url`` and return it.

    Parameters
    ----------
    url
        The warehouse: a local folder or any fsspec URL (``s3://bucket/prefix``).
    catalog
        SQLAlchemy URL of the catalog. Default for a local folder: an embedded SQLite
        file inside it. Required for remote warehouses.
    storage_options
        fsspec options (credentials, endpoint); used, never stored.

    Raises
    ------
    AlreadyExistsError
        If a repository exists at ``url``.
    InvalidInputError
        If a remote warehouse has no ``catalog``.
    NotFoundError
        If the warehouse's bucket does not exist.
    """
    with _storage_options_checked(url, storage_options):
        warehouse = Warehouse(url, storage_options)
        config_path = warehouse.path(CONFIG_FILE)
        exists = warehouse.fs.exists(config_path)
    if exists:
        raise AlreadyExistsError(f"A snapref repository exists at {warehouse.url} already")
    made = _missing_folders(warehouse.root) if warehouse.is_local else []
    if warehouse.is_local:
        try:
            warehouse.fs.makedirs(warehouse.root, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidInputError(
                f"Cannot create a repository at {warehouse.url}: a file is in the way (a "
                "repository is a folder). Choose another path."
            ) from None
    try:
        return _init_in(warehouse, catalog)
    except BaseException:
        for folder in made:  # leave the disk as it was; a folder now holding more stays
            with suppress(OSError):
                os.rmdir(folder)
        raise


def _missing_folders(path: str) -> list[str]:
    """The folders ``makedirs(path)`` would create, deepest first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _init_in(warehouse: Warehouse, catalog: str | None) -> Repository:
    """:func:`init`'s claim of the warehouse and creation of the catalog."""
    config_path = warehouse.path(CONFIG_FILE)
    if catalog is None:
        if not warehouse.is_local:
            raise InvalidInputError(
                f"A repository at {warehouse.url} needs a catalog: pass --catalog with an "
                "SQLAlchemy URL, e.g. sqlite:////abs/path/catalog.db or postgresql://..."
            )
        recorded = EMBEDDED_CATALOG
    else:
        catalog = _absolute_file_db(catalog)
        recorded = _without_password(catalog)
    # the id, recorded in both, tells a catalog given by --catalog/$SNAPREF_CATALOG
    # that belongs to another repository (connect)
    config = {"format": 1, "catalog": recorded, "id": uuid.uuid4().hex}
    # Claim the warehouse before creating the catalog: when the warehouse cannot be
    # written (no such bucket), no catalog is left behind to block a retry. The claim
    # is exclusive: of several processes running init at once, one makes the
    # repository and the others get AlreadyExistsError, touching nothing (a loser
    # removing the config file it failed with removed the winner's).
    try:
        warehouse.fs.pipe_file(config_path, ujson.dumps(config, indent=2).encode(), mode="create")
    except FileExistsError:
        raise AlreadyExistsError(
            f"A snapref repository exists at {warehouse.url} already"
        ) from None
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"Cannot create a repository at {warehouse.url}: {exc}. Create the bucket "
            "first, or check the URL and --storage-option settings"
        ) from exc
    try:
        from snapref.catalog.sql import Catalog

        cat = Catalog.create(_catalog_url(warehouse, recorded) if catalog is None else catalog)
        cat.set_setting(REPOSITORY_ID, config["id"])
    except BaseException:
        warehouse.fs.rm_file(config_path)
        raise
    return Repository(warehouse, cat)


def connect(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    catalog: str | None = None,
    source_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Repository:
    """Open the repository at ``url``; its catalog is found from the warehouse.

    ``catalog`` overrides the recorded catalog URL (e.g. to add a password, which is
    never recorded). ``source_options`` gives fsspec options per protocol for reading
    virtual references (default: the warehouse's options for its own protocol).

    Raises
    ------
    RepositoryNotFoundError
        If ``url`` holds no snapref repository.
    """
    with _storage_options_checked(url, storage_options):
        warehouse = Warehouse(url, storage_options)
        try:
            raw = warehouse.fs.cat_file(warehouse.path(CONFIG_FILE))
        except (FileNotFoundError, NotADirectoryError):
            raise RepositoryNotFoundError(
                f"No snapref repository at {warehouse.url}: create one with "
                f"'snapref init {url}', or check the URL and --storage-option settings"
            ) from None
        except IsADirectoryError:
            raw = b"(a folder)"
        except OSError as exc:
            if isinstance(exc, PermissionError) or not connection_failed(exc):
                raise
            raise RepositoryNotFoundError(
                f"Cannot reach the repository at {warehouse.url} ({type(exc).__name__}: "
                f"{exc}). Check the URL, the endpoint (endpoint_url) and the network."
            ) from exc
    config = _config(warehouse, raw)
    override = catalog or os.environ.get("SNAPREF_CATALOG")
    lookups = _open_catalog(override or _catalog_url(warehouse, config["catalog"]))
    if override and "id" in config:
        recorded_id = lookups.get_setting(REPOSITORY_ID)
        if recorded_id is not None and recorded_id != config["id"]:
            lookups.close()
            raise CatalogUnavailableError(
                f"The catalog {_without_password(override)} belongs to another repository, "
                f"not to {warehouse.url} (whose catalog is {config['catalog']}). Give this "
                "repository's catalog with --catalog, or unset SNAPREF_CATALOG."
            )
    return Repository(warehouse, lookups, source_options)


def _config(warehouse: Warehouse, raw: bytes) -> dict[str, Any]:
    """The repository's ``snapref.json``, checked."""
    try:
        config = ujson.loads(raw)
    except ValueError:
        config = None
    if isinstance(config, dict) and config.get("format") not in (1, None):
        raise CatalogSchemaError(
            f"The repository at {warehouse.url} has layout format {config.get('format')!r}; "
            "this snapref reads format 1. Upgrade snapref."
        )
    if not (
        isinstance(config, dict)
        and config.get("format") == 1
        and isinstance(config.get("catalog"), str)
    ):
        raise IntegrityError(
            f"{warehouse.path(CONFIG_FILE)} is damaged: it must be a JSON object "
            '{"format": 1, "catalog": URL} naming the catalog (a path relative to the '
            "warehouse for the embedded one, catalog.db). Restore it from a backup, or "
            "write it again with the catalog's URL."
        )
    return config


def _open_catalog(url: str) -> Lookups:
    """A reader of a SQLite catalog file of the current schema, the whole Catalog
    otherwise (which migrates an older catalog, or says what is wrong)."""
    reader = SQLiteReader.open(url)
    if reader is not None:
        return reader
    from snapref.catalog.sql import Catalog

    return Catalog.open(url)


def _catalog_url(warehouse: Warehouse, recorded: str) -> str:
    if "://" in recorded:
        return recorded
    # an embedded catalog, recorded relative to the warehouse so the folder can move
    return sqlite_url(posixpath.join(warehouse.root, recorded))


def _absolute_file_db(url: str) -> str:
    """``sqlite:///relative.db`` or ``duckdb:///relative.duckdb`` made absolute, since
    it is recorded for every later process, whatever its working directory."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise CatalogUnavailableError(  # as connect says it (catalog/engine.py)
            f"{url!r} is not a catalog URL. Give an SQLAlchemy URL, e.g. "
            "sqlite:////abs/path/catalog.db, duckdb:////abs/path/catalog.duckdb or "
            "postgresql+psycopg://user@host/db"
        ) from None
    db = parsed.database
    file_based = parsed.get_backend_name() in ("sqlite", "duckdb")
    if file_based and db and db != ":memory:" and not os.path.isabs(db):
        return parsed.set(database=os.path.abspath(db)).render_as_string(hide_password=False)
    return url


def _without_password(url: str) -> str:
    """``url`` as it may be recorded: with no password (``URL.set`` ignores None)."""
    import sqlalchemy as sa

    return sa.engine.make_url(url)._replace(password=None).render_as_string(hide_password=False)


@contextmanager
def _storage_options_checked(url: str, storage_options: Mapping[str, Any] | None) -> Iterator[None]:
    """Around the first use of a warehouse: an option the filesystem does not take
    (``endpoint=``) or a malformed value (``endpoint_url=HOST:PORT``) surfaces there as
    a TypeError or ValueError from deep inside the filesystem's client."""
    check_protocol(url, "repository URL")
    try:
        yield
    except (TypeError, ValueError) as exc:
        names = ", ".join(sorted(storage_options or {})) or "none"
        raise InvalidInputError(
            f"Cannot use the warehouse {url} with the storage options given ({names}): "
            f"{type(exc).__name__}: {exc}. Check each option's name and value (for S3, "
            "e.g. endpoint_url=http://HOST:PORT, key, secret, "
            "client_kwargs={'region_name': ...})."
        ) from exc


def _as_repository(repo: Repository | str, storage_options: Mapping[str, Any] | None) -> Repository:
    return repo if isinstance(repo, Repository) else connect(repo, storage_options)


def open(  # noqa: A001 - mirrors zarr.open / xarray.open_dataset
    repo: Repository | str,
    name: str,
    version: VersionSpec = None,
    *,
    as_of: datetime | str | None = None,
    branch: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.Group | zarr.Array:
    """Open one version of a dataset as a read-only zarr Group (an Array if the
    dataset's root is an array).

    ``version`` is a version number, tag, branch, or snapshot id (prefix); ``as_of``
    picks the version current at a time; neither means the head of ``main``.
    """
    return _as_repository(repo, storage_options).open(name, version, as_of=as_of, branch=branch)


def open_dataset(
    repo: Repository | str,
    name: str,
    version: VersionSpec = None,
    *,
    as_of: datetime | str | None = None,
    branch: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **xr_kwargs: Any,
) -> Any:
    """Like :func:`open`, returning an xarray Dataset (pass ``chunks=`` for dask)."""
    return _as_repository(repo, storage_options).open_dataset(
        name, version, as_of=as_of, branch=branch, **xr_kwargs
    )


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"air@3"`` -> ``("air", "3")``; ``"air"`` -> ``("air", None)``."""
    name, sep, ref = spec.partition("@")
    if not name or (sep and not ref):
        raise InvalidInputError(f"Invalid dataset reference {spec!r}: use NAME or NAME@VERSION")
    return name, (ref if sep else None)


def _version_number(version: Any) -> int:
    """A version given as a number of any integer type (numpy's, pandas'...)."""
    try:
        if isinstance(version, bool):
            raise TypeError
        return operator.index(version)
    except TypeError:
        raise InvalidInputError(
            f"Invalid version {version!r}: give a version number, a branch or tag name, "
            "or a snapshot id"
        ) from None


def _parse_when(when: Any) -> datetime:
    """``as_of`` as a datetime: a datetime (pandas' Timestamp is one), a date (its
    midnight, UTC), a numpy datetime64 or ISO 8601 text."""
    if isinstance(when, datetime):
        return when
    if isinstance(when, date):
        return datetime.combine(when, time(), tzinfo=UTC)
    if type(when).__name__ == "datetime64" and hasattr(when, "astype"):  # numpy's
        item = when.astype("datetime64[us]").item()
        if isinstance(item, datetime):
            return item
    if isinstance(when, str):
        try:
            return datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise InvalidInputError(
        f"Invalid time {when!r}: give a datetime, a date, or ISO 8601 text such as "
        "2026-01-01T12:00:00Z"
    )
