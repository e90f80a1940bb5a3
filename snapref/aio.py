"""Asynchronous reads, for servers: one event loop serving many versions at once.

:func:`open_async` returns a zarr :class:`~zarr.AsyncGroup` over one version of a
dataset. Everything below it — metadata, manifest shards, warehouse objects, byte
ranges of the original files — is read through async fsspec filesystems awaited on
the caller's event loop: no thread per request, no ``fsspec.asyn.sync`` round trip
through fsspec's I/O thread::

    repo = snapref.connect("s3://bucket/wh")              # sync and cheap: call it once

    async def handler(version):
        group = await snapref.open_async(repo, "air", version=version)
        temp = await group.getitem("temp")
        return await temp.getitem((0, slice(0, 10), slice(0, 10)))

What still runs outside the event loop, by design of the layers underneath:

- Resolving ``version`` is a few small synchronous catalog reads (the dataset, the
  ref, the snapshot): sub-millisecond on the embedded SQLite catalog, which is read
  with Python's sqlite3; round trips on PostgreSQL, through SQLAlchemy.
- Files on *local disk* have no async API: fsspec's ``AsyncFileSystemWrapper`` reads
  them in asyncio's default thread pool (bounded, shared). S3, GCS, HTTP are natively
  async (s3fs, gcsfs, aiohttp).
- zarr decompresses chunks in asyncio's default thread pool (``asyncio.to_thread``).

The warehouse filesystem and the source filesystems are shared by every version
opened on the same event loop, so serving many versions opens one S3 session, not
one per request.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fsspec.asyn import AsyncFileSystem
from fsspec.utils import get_protocol

from snapref.catalog import Snapshot
from snapref.fs import _source_filesystems
from snapref.manifest import Manifest
from snapref.protocol import _CONNECTIONS, SnaprefFileSystem
from snapref.repository import Repository, VersionSpec

if TYPE_CHECKING:
    import zarr

__all__ = ["open_async", "open_snapshot_async"]


class _LoopFilesystems:
    """The async filesystems of one repository on one event loop."""

    def __init__(self, repo: Repository) -> None:
        self.warehouse: AsyncFileSystem = repo.warehouse.async_fs()
        self.sources: dict[str | None, AsyncFileSystem] = {}

    def sources_for(
        self, prefixes: tuple[str, ...], options: Mapping[str, Mapping[str, Any]]
    ) -> dict[str | None, AsyncFileSystem]:
        missing = ({get_protocol(p) for p in prefixes} | {"file"}) - set(self.sources)
        if missing:
            made = _source_filesystems(tuple(f"{p}://" for p in missing), options, True)
            self.sources.update(made)
        return self.sources


#: event loop -> repository -> its filesystems on that loop (both held weakly)
_PER_LOOP: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Repository, _LoopFilesystems]
] = weakref.WeakKeyDictionary()


#: threads that each run a loop meet in _PER_LOOP: listing it while another adds to
#: it raised "dictionary changed size during iteration"
_PER_LOOP_LOCK = threading.Lock()


def _filesystems(repo: Repository) -> _LoopFilesystems:
    loop = asyncio.get_running_loop()
    with _PER_LOOP_LOCK:
        # an async filesystem's session refers back to its loop, so an entry would
        # keep its own key alive: the entries of closed loops (each asyncio.run) go
        for closed in [other for other in _PER_LOOP if other.is_closed()]:
            _PER_LOOP.pop(closed, None)
        per_repo = _PER_LOOP.get(loop)
        if per_repo is None:
            per_repo = _PER_LOOP[loop] = weakref.WeakKeyDictionary()
        shared = per_repo.get(repo)
        if shared is None:
            shared = per_repo[repo] = _LoopFilesystems(repo)
        return shared


async def open_snapshot_async(repo: Repository, snapshot: Snapshot) -> zarr.AsyncGroup:
    """Like :func:`open_async`, for a snapshot resolved already (``repo.resolve``)."""
    shared = _filesystems(repo)
    manifest = await Manifest.load_async(repo.warehouse, snapshot.manifest, shared.warehouse)
    # fsspec's ReferenceFileSystem looks up the key "version" as it is made, a
    # synchronous read: the shard that answers it is loaded here, awaited
    await manifest.get_async("version", shared.warehouse)
    fs = SnaprefFileSystem(
        repo,
        snapshot.dataset,
        _resolved=(snapshot, manifest),
        _warehouse_fs=shared.warehouse,
        asynchronous=True,
        loop=asyncio.get_running_loop(),
    )
    fs.fss = shared.sources_for(fs._policy.prefixes, repo._source_options_for())
    import zarr.api.asynchronous  # not at import time: see snapref/store.py

    from snapref.store import SnapshotStore

    store = SnapshotStore(fs, read_only=True)
    return await zarr.api.asynchronous.open_group(store=store, mode="r")


async def open_async(
    repo: Repository | str,
    name: str,
    version: VersionSpec = None,
    *,
    as_of: datetime | str | None = None,
    branch: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.AsyncGroup:
    """Open one version of a dataset as a read-only zarr ``AsyncGroup``.

    The arguments are those of :func:`snapref.open`. Pass a connected
    :class:`~snapref.Repository` (``snapref.connect`` once, at start-up); a URL is
    connected once per process and storage options, and reused (as an unpickled
    :class:`~snapref.protocol.SnaprefFileSystem` does).

    Raises
    ------
    DatasetNotFoundError, VersionNotFoundError, InvalidInputError
        As :meth:`Repository.resolve`.
    """
    repository = (
        repo if isinstance(repo, Repository) else _CONNECTIONS.get(repo, storage_options or {})
    )
    snapshot = repository.resolve(name, version, as_of=as_of, branch=branch)
    return await open_snapshot_async(repository, snapshot)
