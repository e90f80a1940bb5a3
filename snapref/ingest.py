"""Plain Zarr in: copy a Zarr v2 or v3 store into the warehouse and record a version.

:func:`ingest` lists the store (any fsspec URL: a local folder, ``s3://...``), keeps
zarr metadata documents inline and copies every other file (chunks, shards) into the
warehouse as content-addressed objects, then commits the result as version 1 of a new
dataset or as a new version of an existing one.

- **Bounded, concurrent I/O.** Files are read and stored in batches of
  ``batch_size``, with at most ``concurrency`` reads in flight (one async gather on an
  async filesystem such as S3, a thread pool otherwise); memory holds one batch.
- **Only what differs is written.** Objects are named by the hash of their bytes, so
  a chunk whose bytes are stored already (from an earlier version, another dataset,
  or an interrupted run) is not written again; a new version records only the keys
  whose bytes differ from the branch head.
- **Resumable.** An interrupted ingest leaves only unreferenced objects behind; run it
  again and it writes only the objects still missing, then commits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec

from snapref import progress
from snapref.catalog import MAIN_BRANCH, Snapshot
from snapref.errors import InvalidInputError, NotFoundError
from snapref.keys import is_metadata_key, validate_key
from snapref.manifest import InlineRef, Manifest, ObjectRef
from snapref.objects import content_hash
from snapref.refs import check_protocol
from snapref.transaction import ChangeSet, check_new_dataset, commit_changes

if TYPE_CHECKING:
    from snapref.repository import Repository

__all__ = ["IngestResult", "ingest"]

#: Reads kept in flight at once.
DEFAULT_CONCURRENCY = 32
#: Files held in memory at once (read, hashed, stored, then dropped).
DEFAULT_BATCH_SIZE = 256

_ROOT_METADATA = (".zgroup", ".zarray", "zarr.json")


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did.

    ``snapshot`` is the new version (None: the store equals the branch head).
    ``objects_written``/``bytes_written`` count objects that were not stored yet;
    ``files`` is how many files the store has, ``chunks`` how many became objects.
    """

    snapshot: Snapshot | None
    files: int
    chunks: int
    objects_written: int
    bytes_written: int


def ingest(
    repo: Repository,
    name: str,
    source: str,
    *,
    message: str | None = None,
    branch: str = MAIN_BRANCH,
    author: str | None = None,
    properties: Mapping[str, Any] | None = None,
    description: str = "",
    storage_options: Mapping[str, Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> IngestResult:
    """Copy the Zarr store at ``source`` into ``repo`` as dataset ``name``.

    A new dataset gets version 1; an existing one gets a new version on ``branch``
    holding exactly the store's content (keys missing from the store are deleted).

    Parameters
    ----------
    source
        URL or path of a Zarr v2 or v3 store (group or array) on any fsspec
        filesystem.
    storage_options
        fsspec options for reading ``source`` (credentials, ``endpoint_url``).
    concurrency, batch_size
        Reads in flight, and files held in memory, at once.

    Raises
    ------
    NotFoundError
        If ``source`` does not exist.
    InvalidInputError
        If ``source`` is not a Zarr store, or a parameter is out of range.
    ConflictError
        If ``branch`` moved while copying; the objects stay, so a retry is cheap.
    """
    if concurrency < 1 or batch_size < 1:
        raise InvalidInputError("concurrency and batch_size must be at least 1")
    exists = name in repo.datasets()
    if not exists:
        check_new_dataset(name, branch)  # before listing or copying anything
    check_protocol(source, "Zarr store")
    fs, root = fsspec.core.url_to_fs(source, **dict(storage_options or {}))
    root = root.rstrip("/")
    keys = _list_store(fs, root, source)
    parent = repo.head(name, branch) if exists else None
    base = repo.manifest(parent) if parent is not None else Manifest.empty(repo.warehouse)

    changeset = ChangeSet()
    chunks = [k for k in keys if not is_metadata_key(k)]
    metadata = [k for k in keys if is_metadata_key(k)]
    for key, data in _read(fs, root, metadata, concurrency):
        changeset.changes[key] = InlineRef(data)
    written = bytes_written = 0
    with progress.bar(len(chunks), f"Ingesting {name}") as tick:
        for batch in _batches(chunks, batch_size):
            objects: dict[str, bytes] = {}
            for key, data in _read(fs, root, batch, concurrency):
                digest = content_hash(data)
                objects[digest] = data
                changeset.changes[key] = ObjectRef(digest, len(data))
            result = repo.objects.put_many(objects)
            written += result.written
            bytes_written += result.bytes_written
            tick(len(batch))
    changeset.staged_written = (written, bytes_written)  # stored batch by batch above
    if parent is not None:
        present = set(keys)
        for key in base:
            if key not in present:
                changeset.delete(key)
    props = {"ingested_from": source, **dict(properties or {})}
    snap = commit_changes(
        repo,
        name,
        branch,
        parent,
        base,
        changeset,
        message=message or f"Ingest {source}",
        author=author,
        properties=props,
        description=description,
    )
    return IngestResult(snap, len(keys), len(chunks), written, bytes_written)


def _list_store(fs: Any, root: str, source: str) -> list[str]:
    # root "" is a store at the root of its filesystem (zip://::store.zarr.zip,
    # reference://): it always exists, and its files are listed without a prefix
    if root and not fs.exists(root):
        raise NotFoundError(f"No Zarr store at {source!r}: the path does not exist")
    if root and not fs.isdir(root):
        raise InvalidInputError(
            f"{source!r} is a file, not a Zarr store (a folder with .zgroup, .zarray or "
            "zarr.json). For a kerchunk reference file use 'snapref import'."
        )
    prefix = root + "/" if root else ""
    found = (p.lstrip("/") if not root else p for p in _files_below(fs, root))
    keys = sorted(p[len(prefix) :] for p in found if p.startswith(prefix))
    if not any(k in _ROOT_METADATA for k in keys):
        raise InvalidInputError(
            f"{source!r} is not a Zarr store: it has no .zgroup, .zarray or zarr.json at its root"
        )
    for key in keys:
        validate_key(key)
    return keys


def _files_below(fs: Any, root: str) -> list[str]:
    """Every file below ``root``. A folder that cannot be listed is an error, never an
    empty folder: fsspec's ``find`` leaves such folders out (its walk takes
    ``on_error="raise"`` but drops it when it goes down a level), and an ingest then
    recorded a version with those chunks deleted. s3fs lists a prefix in one flat
    listing, whose errors raise; other filesystems are walked here, folder by folder."""
    if fs.async_impl:
        return list(fs.find(root))
    files, folders = [], [root]
    while folders:
        folder = folders.pop()
        for info in fs.ls(folder, detail=True):
            name = info["name"].rstrip("/")
            if info["type"] != "directory":
                files.append(name)
            elif name != folder.rstrip("/"):
                folders.append(name)
    return files


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(fs: Any, root: str, keys: Sequence[str], concurrency: int) -> Iterator[tuple[str, bytes]]:
    """The bytes of ``keys`` under ``root``, read with ``concurrency`` reads in flight."""
    if not keys:
        return
    paths = [f"{root}/{k}" if root else k for k in keys]
    if fs.async_impl:
        data = fs.cat(paths, batch_size=concurrency, on_error="raise")
        if not isinstance(data, dict):
            data = {paths[0]: data}
        for key, path in zip(keys, paths, strict=True):
            yield key, data[path]
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        yield from zip(keys, pool.map(fs.cat_file, paths), strict=True)
