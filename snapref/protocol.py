"""``snapref://`` URLs: one version of a dataset as an fsspec filesystem.

Registered with fsspec through the package's entry points (``fsspec.specs``), so with
snapref merely installed, every fsspec-aware tool opens a version by URL::

    xr.open_zarr("snapref://air@3", storage_options={"repo": "s3://bucket/wh"},
                 consolidated=False)
    zarr.open_group("snapref://air@v2025-qc", mode="r", storage_options={"repo": "./wh"})
    fsspec.filesystem("snapref", repo="./wh", dataset="air", version=3)

URL form: ``snapref://NAME[@REF][/PATH]``. ``REF`` is what the CLI accepts after ``@``
(a version number, a tag, a branch, a snapshot id or unique id prefix), resolved by
:meth:`snapref.Repository.resolve`; none means the head of ``main``. ``PATH`` is a
group or key inside the dataset.

Options (``storage_options`` of xarray/zarr, keyword arguments of
``fsspec.filesystem``):

==================  ===================================================================
``repo``            the repository: warehouse URL (local path, ``s3://...``) or a
                    :class:`~snapref.Repository`; default ``$SNAPREF_REPO``
``repo_options``    fsspec options of the warehouse (``endpoint_url``, ``key``, ...)
``catalog``         SQLAlchemy URL overriding the recorded catalog (e.g. with password)
``source_options``  fsspec options per protocol for virtual references
                    (``{"s3": {"anon": True}}``); default: the warehouse's options
``dataset``         the dataset, when the URL does not name it
``version``         the ``@REF`` part, when the URL does not give it
``as_of``           a time (datetime or ISO 8601): the version current then
``branch``          the branch for ``as_of`` and for no version (default ``main``)
==================  ===================================================================

The filesystem is read-only and pinned to the snapshot resolved when it was made: a
branch that moves later does not change what it shows. It pickles cheaply (the
repository URL, options, dataset and snapshot id; never the manifest), and an
unpickled copy reconnects — so Dask workers read from it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.utils import tokenize

from snapref.catalog import Snapshot
from snapref.errors import InvalidInputError
from snapref.fs import SnapshotFileSystem, StagedReferences
from snapref.manifest import META, Manifest, ShardInfo, array_section
from snapref.repository import Repository, connect

__all__ = ["SnaprefFileSystem", "parse_url"]

PROTOCOL = "snapref"
#: How many shards one listing loads at once.
_WARM_CONCURRENCY = 16


def parse_url(url: str) -> tuple[str | None, str | None, str]:
    """Split ``snapref://NAME[@REF][/PATH]`` into ``(NAME, REF, PATH)``.

    A path without the ``snapref://`` prefix is a path inside the dataset:
    ``(None, None, path)``.

    Raises
    ------
    InvalidInputError
        If the URL names no dataset, or ``@`` is followed by nothing.
    """
    for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
        if url.startswith(prefix):
            break
    else:
        return None, None, url.strip("/")
    spec, _, path = url[len(prefix) :].partition("/")
    name, sep, ref = spec.partition("@")
    if not name or (sep and not ref):
        raise InvalidInputError(
            f"Invalid snapref URL {url!r}: use snapref://NAME[@VERSION][/PATH], e.g. "
            "snapref://air@3 or snapref://air@v2025-qc/temp"
        )
    return name, (ref if sep else None), path.strip("/")


class _Connections:
    """Repositories reconnected by unpickled filesystems and by ``open_async(URL)``,
    shared in this process.

    Opening the catalog costs a schema check; a Dask worker unpickles a filesystem for
    every task, so reconnecting must be a dictionary lookup. The key holds the exact
    catalog URL, so a cached connection always reaches the same catalog.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Repository] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        url: str,
        repo_options: Mapping[str, Any],
        catalog: str | None = None,
        source_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Repository:
        """The repository at ``url``; ``catalog`` None means the one ``connect`` finds
        ($SNAPREF_CATALOG, else the one the warehouse records)."""
        catalog = catalog or os.environ.get("SNAPREF_CATALOG")
        key = tokenize(url, dict(repo_options), catalog, dict(source_options or {}), os.getpid())
        with self._lock:
            repo = self._items.get(key)
            if repo is not None and not repo.closed:  # closed by someone: connect anew
                self._items.move_to_end(key)
                return repo
        repo = connect(url, repo_options, catalog=catalog, source_options=source_options)
        with self._lock:
            self._items[key] = repo
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return repo


_CONNECTIONS = _Connections()


class SnaprefFileSystem(SnapshotFileSystem):
    """Read-only fsspec filesystem of one version of a dataset, made from user options.

    Parameters
    ----------
    repo
        Warehouse URL of the repository, or a :class:`~snapref.Repository`.
        Default: ``$SNAPREF_REPO``.
    dataset
        Name of the dataset (``snapref://NAME`` in a URL).
    version
        Version number, tag, branch, snapshot id or unique id prefix (``@REF``).
    as_of
        A time: the version that was the head of ``branch`` then.
    branch
        Branch for ``as_of`` and for no ``version`` (default ``main``).
    repo_options
        fsspec options of the warehouse (credentials, ``endpoint_url``).
    catalog
        SQLAlchemy URL of the catalog, overriding the one recorded in the warehouse.
    source_options
        fsspec options per protocol for reading virtual references.
    asynchronous
        Make an async instance (what zarr 3's ``FsspecStore`` needs).

    Raises
    ------
    InvalidInputError
        If no repository or no dataset is given, or ``version`` and ``as_of`` both are.
    RepositoryNotFoundError, DatasetNotFoundError, VersionNotFoundError
        If the repository, dataset or version does not exist.
    """

    protocol = PROTOCOL
    cachable = False  # "main" today is not "main" tomorrow: resolve every time

    def __init__(
        self,
        repo: str | Repository | None = None,
        dataset: str | None = None,
        version: int | str | None = None,
        *,
        as_of: datetime | str | None = None,
        branch: str | None = None,
        repo_options: Mapping[str, Any] | None = None,
        catalog: str | None = None,
        source_options: Mapping[str, Mapping[str, Any]] | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        _resolved: tuple[Snapshot, Manifest] | None = None,
        _warehouse_fs: AsyncFileSystem | None = None,
        _url_dataset: str | None = None,
        _url_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        dataset = _one_way("dataset", dataset, _url_dataset)
        version = _one_way("version", version, _url_version)
        if dataset is None:
            raise InvalidInputError(
                "Name the dataset: open snapref://NAME[@VERSION], or pass dataset=NAME"
            )
        repository = _repository(repo, repo_options, catalog, source_options)
        if _resolved is None:
            snapshot = repository.resolve(dataset, version, as_of=as_of, branch=branch)
            manifest = repository.manifest(snapshot)
        else:
            snapshot, manifest = _resolved
        self.repository = repository
        self.dataset = dataset
        self.snapshot = snapshot
        self._reconnect_args = (
            repository.url,
            dict(repository.warehouse.storage_options),
            # the catalog this one uses, so that a copy never depends on the
            # environment of the process it lands in
            repository.catalog_url,
            dict(repository._source_options),
        )
        warehouse_fs = (
            _warehouse_fs
            if _warehouse_fs is not None
            else repository.warehouse.fs_for(asynchronous)
        )
        super().__init__(
            StagedReferences(manifest),
            repository.objects,
            warehouse_fs,
            repository._policy(dataset),
            source_options=repository._source_options_for(),
            read_only=True,
            asynchronous=asynchronous,
            loop=loop,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"<SnaprefFileSystem {self.dataset}@{self.snapshot.version} "
            f"({self.snapshot.id[:12]}) in {self.repository.url}>"
        )

    # -- what fsspec, zarr and pickle see of the constructor ----------------------------

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options that make this same version again (the snapshot id, not "main").

        zarr's ``_make_async`` and fsspec rebuild a filesystem from these.
        """
        url, repo_options, catalog, source_options = self._reconnect_args
        opts: dict[str, Any] = {
            "repo": url,
            "dataset": self.dataset,
            "version": self.snapshot.id,
            "repo_options": repo_options,
            "source_options": source_options,
        }
        opts["catalog"] = catalog
        if self.asynchronous:
            opts["asynchronous"] = True
        return opts

    @storage_options.setter
    def storage_options(self, value: dict[str, Any]) -> None:
        pass  # set by fsspec's metaclass after __init__; the pinned options win

    @property
    def storage_args(self) -> tuple[Any, ...]:
        return ()

    @storage_args.setter
    def storage_args(self, value: tuple[Any, ...]) -> None:
        pass

    def __reduce__(self) -> Any:
        # No manifest, no catalog connection: a dask worker reconnects by URL and
        # reads the very snapshot this one shows.
        return _unpickle, (*self._reconnect_args, self.dataset, self.snapshot.id, self.asynchronous)

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.repository.url, self.dataset, self.snapshot.id)

    # -- URLs ------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``snapref://air@3/temp/0.0`` -> ``temp/0.0``; a path inside the dataset
        stays as it is."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return parse_url(str(path))[2]

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        # under names of their own: fsspec fails with a bare TypeError when an option
        # from the URL and one given by the caller share a name but not a value
        name, ref, _ = parse_url(path)
        out: dict[str, Any] = {}
        if name is not None:
            out["_url_dataset"] = name
        if ref is not None:
            out["_url_version"] = ref
        return out

    def unstrip_protocol(self, name: str) -> str:
        if name.startswith(f"{PROTOCOL}://"):
            return name
        return f"{PROTOCOL}://{self.dataset}@{self.snapshot.id}/{name.lstrip('/')}"

    # -- listings without blocking the event loop --------------------------------------
    #
    # The listing methods of SnapshotFileSystem read the manifest synchronously. Here
    # the shards a listing needs are first loaded through the async warehouse
    # filesystem (into the process-wide shard cache), so that the synchronous code
    # finds them loaded and never waits on I/O inside the event loop.

    async def _warm(self, path: str, whole_arrays_below: bool) -> None:
        base = self._staged.base
        prefix = f"{path}/" if path else ""
        wanted: list[ShardInfo] = list(base.sections.get(META, []))
        for array in base.arrays:
            folder = f"{array}/" if array else ""
            infos = base.sections.get(array_section(array), [])
            if folder == prefix or prefix.startswith(folder):
                wanted.extend(infos)
            elif folder.startswith(prefix):
                wanted.extend(infos if whole_arrays_below else infos[:1])
        sem = asyncio.Semaphore(_WARM_CONCURRENCY)

        async def load(info: ShardInfo) -> None:
            async with sem:
                await base._load_async(info, self._warehouse_fs)

        await asyncio.gather(*(load(i) for i in wanted))

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        await self._warm(self._strip_protocol(path), whole_arrays_below=False)
        return self.ls(path, detail, **kwargs)

    async def _find(
        self, path: str, maxdepth: int | None = None, withdirs: bool = False, **kwargs: Any
    ) -> Any:
        await self._warm(self._strip_protocol(path), whole_arrays_below=True)
        return await super()._find(path, maxdepth=maxdepth, withdirs=withdirs, **kwargs)

    async def _isdir(self, path: str) -> bool:
        await self._warm(self._strip_protocol(path), whole_arrays_below=False)
        return self.isdir(path)

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        stripped = self._strip_protocol(path)
        if not await self._isfile(stripped):
            await self._warm(stripped, whole_arrays_below=False)
        return await super()._info(path, **kwargs)

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        return await self._isfile(path) or await self._isdir(path)


def _repository(
    repo: str | Repository | None,
    repo_options: Mapping[str, Any] | None,
    catalog: str | None,
    source_options: Mapping[str, Mapping[str, Any]] | None,
) -> Repository:
    if isinstance(repo, Repository):
        if repo_options or catalog or source_options:
            raise InvalidInputError(
                "repo_options, catalog and source_options apply to a repository given by "
                "URL; this one is connected already"
            )
        return repo
    url = repo if repo is not None else os.environ.get("SNAPREF_REPO")
    if not url:
        raise InvalidInputError(
            "No repository given: pass storage_options={'repo': URL} (repo=URL to "
            "fsspec.filesystem), or set SNAPREF_REPO"
        )
    # connected afresh: a repository re-created at the same URL must not be served
    # from a stale connection (copies made by unpickling are cached: see _unpickle)
    return connect(str(url), repo_options, catalog=catalog, source_options=source_options)


def _unpickle(
    url: str,
    repo_options: dict[str, Any],
    catalog: str,
    source_options: dict[str, Mapping[str, Any]],
    dataset: str,
    snapshot_id: str,
    asynchronous: bool,
) -> SnaprefFileSystem:
    repository = _CONNECTIONS.get(url, repo_options, catalog, source_options)
    snapshot = repository._reads.snapshot(snapshot_id)
    return SnaprefFileSystem(
        repository,
        dataset,
        _resolved=(snapshot, repository.manifest(snapshot)),
        asynchronous=asynchronous,
    )


def _one_way(option: str, given: Any, from_url: str | None) -> Any:
    """The dataset or version, from the URL or the options, which must agree."""
    if from_url is None:
        return given
    if given is not None and str(given) != from_url:
        raise InvalidInputError(
            f"The URL names {option} {from_url!r} and the options say {option}={given!r}; "
            "give it one way (snapref://NAME@VERSION, or the options alone)"
        )
    return from_url
