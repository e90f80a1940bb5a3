"""Parquet reference sets in and out: the layout of fsspec's ``LazyReferenceMapper``.

``kerchunk.df.refs_to_dataframe`` writes this layout, and
``fsspec.filesystem("reference", fo=DIR)`` reads it lazily::

    DIR/.zmetadata               {"metadata": {key: JSON document}, "record_size": N}
    DIR/<array>/refs.<i>.parq    rows for chunk numbers i*N .. i*N+N-1 of <array>

Zarr metadata documents live (decoded) in ``.zmetadata``; every array of the
hierarchy (zarr v2, ``.`` dimension separator) has one parquet *record* per
``record_size`` chunks, in C order of the chunk grid. A row holds ``path``,
``offset``, ``size`` (``0, 0``: the whole file) and ``raw`` (inline bytes); a row with
neither path nor raw is a missing chunk, and a missing record file reads as missing
chunks too — which is why :func:`write_parquet_references` always writes every
record of every array: a partial directory would read fill values silently.

Only zarr v2 hierarchies whose keys are metadata documents or chunk keys fit this
layout; anything else is an :class:`~snapref.errors.InvalidInputError` on export.

pyarrow and numpy are imported by the functions that read or write record files, not
by this module, which :mod:`snapref.repository` imports: see :mod:`snapref.manifest`.
"""

from __future__ import annotations

import functools
import io
import math
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import ujson

from snapref import progress
from snapref.errors import InvalidInputError, InvalidReferenceError
from snapref.keys import chunk_coords, is_metadata_key, validate_key
from snapref.manifest import (
    META,
    InlineRef,
    Manifest,
    ObjectRef,
    SectionWriter,
    VirtualRef,
    array_section,
    chunk_table,
)
from snapref.objects import content_hash
from snapref.refs import Parsed, check_protocol, normalize_url

if TYPE_CHECKING:
    import pyarrow as pa

    from snapref.catalog import Snapshot
    from snapref.repository import Repository
    from snapref.transaction import ChangeSet

__all__ = [
    "DEFAULT_RECORD_SIZE",
    "RECORD_FILE",
    "is_parquet_references",
    "load_parquet_references",
    "write_parquet_references",
]

#: References per parquet record file, as ``LazyReferenceMapper.create`` defaults.
DEFAULT_RECORD_SIZE = 10_000
#: The checkout record kept *inside* a checked-out directory (fsspec ignores it).
RECORD_FILE = ".snapref"
ZMETADATA = ".zmetadata"


def _pandas_column(name: str, numpy_type: str, pandas_type: str) -> dict[str, Any]:
    return {
        "name": name,
        "field_name": name,
        "numpy_type": numpy_type,
        "pandas_type": pandas_type,
        "metadata": None,
    }


# fastparquet (fsspec's default reader) needs the pandas metadata to read offset and
# size as int64: without it they come back as nullable Int64 and then as float64,
# which fsspec cannot seek with.
_PANDAS_METADATA = {
    "index_columns": [],
    "column_indexes": [],
    "partition_columns": [],
    "columns": [
        _pandas_column("path", "object", "unicode"),
        _pandas_column("offset", "int64", "int64"),
        _pandas_column("size", "int64", "int64"),
        _pandas_column("raw", "object", "bytes"),
    ],
    "creator": {"library": "snapref", "version": ""},
    "pandas_version": "2.0.0",
}


@functools.cache
def _record_schema() -> pa.Schema:
    """The Arrow schema of a record file (made on first use: it needs pyarrow)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("path", pa.string()),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("raw", pa.binary()),
        ],
        metadata={"pandas": ujson.dumps(_PANDAS_METADATA)},
    )


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    check_protocol(url, "parquet reference set")
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path.rstrip("/")


@dataclass(frozen=True)
class _RefDir:
    """A parquet reference set's folder and the record size of its ``.zmetadata``:
    what the layout needs to find, read or write a record file."""

    url: str  # as given: messages name it, and it tells a local folder from a remote one
    fs: Any
    root: str  # the folder's path on fs, without a trailing slash
    record_size: int

    @classmethod
    def open(
        cls, url: str, storage_options: Mapping[str, Any] | None
    ) -> tuple[_RefDir, dict[str, Any]]:
        """The parquet reference set at ``url``, and the metadata documents (decoded)
        of its ``.zmetadata``, which is checked."""
        fs, root = _fs(url, storage_options)
        metadata, record_size = _read_zmetadata(fs, root, url)
        return cls(url, fs, root, record_size), metadata

    @property
    def relative_to(self) -> str | None:
        """What relative local paths in the records are relative to: the folder that
        holds the set, as a JSON file's folder is (None for a remote set)."""
        return None if "://" in self.url else posixpath.dirname(posixpath.abspath(self.root))

    def record_path(self, array: str, number: int) -> str:
        """Record file ``number`` of ``array``, in the array's folder (a root array's
        are in the set's own folder)."""
        folder = f"{self.root}/{array}" if array else self.root
        return f"{folder}/refs.{number}.parq"


def is_parquet_references(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if ``url`` is a directory holding a parquet reference set (``.zmetadata``
    with a ``record_size``)."""
    if url == "-":
        return False
    try:
        fs, path = _fs(url, storage_options)
        if not fs.isdir(path):
            return False
        doc = ujson.loads(fs.cat_file(f"{path}/{ZMETADATA}"))
    except (FileNotFoundError, ValueError, OSError):
        return False
    return isinstance(doc, dict) and "record_size" in doc and "metadata" in doc


def check_reference_folder(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """For a folder that is no parquet reference set but holds a ``.zmetadata``: raise
    the error that says what is wrong with that file."""
    fs, root = _fs(url, storage_options)
    try:
        data = fs.cat_file(f"{root}/{ZMETADATA}")
    except (FileNotFoundError, IsADirectoryError):
        return
    try:
        doc = ujson.loads(data)
    except ValueError as exc:
        raise InvalidReferenceError(
            f"{root}/{ZMETADATA} is not valid JSON ({exc}); in a parquet reference set it "
            "holds 'metadata' and 'record_size'"
        ) from None
    if isinstance(doc, dict) and "zarr_consolidated_format" in doc:
        raise InvalidReferenceError(
            f"{url!r} is a Zarr store (with consolidated metadata), not a reference set: "
            "copy it into a dataset with 'snapref ingest'"
        )
    _read_zmetadata(fs, root, url)


# -- reading -------------------------------------------------------------------------------


def load_parquet_references(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    base: Manifest | None = None,
) -> dict[str, Parsed]:
    """Read the parquet reference set at ``url`` into snapref's parsed form.

    Returns key -> inline bytes or :class:`~snapref.manifest.VirtualRef` (URLs
    normalized; relative local paths are relative to the directory's parent, as in
    a JSON file's folder), like :func:`snapref.refs.parse_references`.

    ``base``: the manifest an edited set was checked out from. A metadata document
    that decodes to the same JSON as in ``base`` keeps ``base``'s bytes, because the
    layout stores documents decoded and re-encoding would change their spelling.

    Raises
    ------
    InvalidReferenceError
        If ``.zmetadata`` or a record file is malformed.
    """
    refdir, metadata = _RefDir.open(url, storage_options)
    out: dict[str, Parsed] = {}
    for key, value in metadata.items():
        if posixpath.basename(key) == ZMETADATA:
            # consolidated metadata written by zarr into the layout's own .zmetadata:
            # a copy of the documents beside it, stale after the next edit (and the
            # export leaves it out the same way)
            continue
        validate_key(key)
        data = ujson.dumps(value).encode() if not isinstance(value, str) else value.encode()
        if base is not None and not base.is_empty:
            before = base.get(key)
            if isinstance(before, InlineRef) and _same_json(before.data, value):
                data = before.data
        out[key] = data
    arrays = _arrays(metadata)
    records = [
        (a, grid, r)
        for a, grid in arrays.items()
        for r in range(_n_records(grid, refdir.record_size))
    ]
    with progress.bar(len(records), "Reading parquet references") as tick:
        for array, grid, record in records:
            _read_record(refdir, array, grid, record, out)
            tick(1)
    return out


def stream_parquet_import(
    repo: Repository, url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[ChangeSet, set[str]]:
    """A new dataset's changes from the parquet reference set at ``url``, read record
    by record with bounded memory: chunk references go straight into shards
    (:class:`~snapref.manifest.SectionWriter`), inline chunk data into objects.

    Returns the change set (metadata documents plus prebuilt array sections) and the
    source prefixes its virtual references point into.
    """
    from snapref.refs import source_prefix
    from snapref.transaction import ChangeSet

    refdir, metadata = _RefDir.open(url, storage_options)
    changes = ChangeSet()
    for key, value in metadata.items():
        validate_key(key)
        changes.put_bytes(
            key, ujson.dumps(value).encode() if not isinstance(value, str) else value.encode()
        )
    sources: set[str] = set()
    objects = (0, 0)
    shards = (0, 0)
    arrays = _arrays(metadata)
    total = sum(_n_records(grid, refdir.record_size) for grid in arrays.values())
    with progress.bar(total, "Reading parquet references") as tick:
        for array, grid in sorted(arrays.items()):
            writer = SectionWriter(repo.warehouse, array)
            for record in range(_n_records(grid, refdir.record_size)):
                table, urls, written = _record_table(repo, refdir, array, grid, record)
                if table is not None:
                    writer.add(table)
                sources.update(source_prefix(u) for u in urls)
                objects = (objects[0] + written[0], objects[1] + written[1])
                tick(1)
            infos = writer.finish()
            if infos:
                changes.sections[writer.section] = infos
            shards = (shards[0] + writer.shards_written, shards[1] + writer.bytes_written)
    changes.staged_written = objects
    changes.sections_written = shards
    return changes, sources


def _read_zmetadata(fs: Any, root: str, url: str) -> tuple[dict[str, Any], int]:
    try:
        doc = ujson.loads(fs.cat_file(f"{root}/{ZMETADATA}"))
        record_size = int(doc["record_size"])
        metadata: dict[str, Any] = dict(doc["metadata"])
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        problem = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidReferenceError(
            f"{url!r} is not a parquet reference set: it needs a {ZMETADATA} file with "
            f"'metadata' and 'record_size' ({problem})"
        ) from exc
    if record_size <= 0:
        raise InvalidReferenceError(f"{url!r}: record_size must be positive, not {record_size}")
    return metadata, record_size


def _record_table(
    repo: Repository, refdir: _RefDir, array: str, grid: tuple[int, ...], record: int
) -> tuple[pa.Table | None, set[str], tuple[int, int]]:
    """One record as a shard-schema table in chunk order, the URLs it references, and
    the (objects, bytes) its inline chunks added to the warehouse."""
    rows = _record_rows(refdir, array, grid, record)
    if rows is None:
        return None, set(), (0, 0)
    names, paths, offsets, sizes, raws = rows
    relative_to = refdir.relative_to
    normalized = {u: normalize_url(u, relative_to) for u in set(paths) if u is not None}
    inline = {i: (content_hash(r), bytes(r)) for i, r in enumerate(raws) if r is not None}
    put = repo.objects.put_many(dict(inline.values()))
    keys: list[str] = []
    digests: list[str | None] = []
    urls: list[str | None] = []
    offs: list[int | None] = []
    lengths: list[int | None] = []
    for i, name in enumerate(names):
        if i in inline:
            keys.append(name)
            digests.append(inline[i][0])
            urls.append(None)
            offs.append(None)
            lengths.append(len(inline[i][1]))
        elif paths[i] is not None:
            off, size = offsets[i] or 0, sizes[i] or 0
            whole = off == 0 and size == 0
            keys.append(name)
            digests.append(None)
            urls.append(normalized[paths[i]])
            offs.append(None if whole else int(off))
            lengths.append(None if whole else int(size))
    table = chunk_table(keys, digests, urls, offs, lengths)
    return table, set(normalized.values()), (put.written, put.bytes_written)


def _same_json(data: bytes, value: Any) -> bool:
    try:
        return bool(ujson.loads(data) == value)
    except ValueError:
        return False


def _arrays(metadata: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Array path -> chunk grid, for every ``.zarray`` in the metadata."""
    out = {}
    for key, doc in metadata.items():
        if posixpath.basename(key) != ".zarray":
            continue
        if isinstance(doc, str | bytes):
            doc = ujson.loads(doc)
        out[posixpath.dirname(key)] = _grid(key, doc)
    return out


def _grid(key: str, zarray: Mapping[str, Any]) -> tuple[int, ...]:
    try:
        shape, chunks = zarray["shape"], zarray["chunks"]
        grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise InvalidReferenceError(f"{key}: cannot compute the chunk grid ({exc})") from exc
    return grid or (1,)  # a 0-d array has one chunk, key "0", as fsspec counts it


def _n_records(grid: tuple[int, ...], record_size: int) -> int:
    return math.ceil(math.prod(grid) / record_size)


def _record_rows(
    refdir: _RefDir, array: str, grid: tuple[int, ...], record: int
) -> tuple[list[str], list[Any], list[Any], list[Any], list[Any]] | None:
    """The keys of one record file in chunk order, with its path, offset, size and raw
    columns; None for a missing record (fsspec reads those as missing chunks)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = refdir.record_path(array, record)
    try:
        data = refdir.fs.cat_file(path)
    except FileNotFoundError:
        return None  # fsspec writes no file for a record that holds no chunk
    except IsADirectoryError:
        raise InvalidReferenceError(f"{path} is a folder, not a parquet record file") from None
    try:
        # ParquetFile, not read_table: read_table loads pyarrow.dataset and pandas
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except (pa.ArrowException, OSError) as exc:
        raise InvalidReferenceError(f"{path} is not a readable parquet file ({exc})") from exc
    if missing := [c for c in ("path", "offset", "size") if c not in table.column_names]:
        raise InvalidReferenceError(
            f"{path} lacks the column(s) {', '.join(map(repr, missing))}: a record file of "
            "a parquet reference set has the columns path, offset, size and raw"
        )
    start = record * refdir.record_size
    stop = min(start + table.num_rows, math.prod(grid))
    if stop <= start:
        return None
    n = stop - start

    def column(name: str, default: Any) -> list[Any]:
        if name in table.column_names:
            return list(table.column(name).slice(0, n).to_pylist())
        return [default] * n

    coords = np.unravel_index(np.arange(start, stop), grid)
    prefix = f"{array}/" if array else ""
    keys = [prefix + ".".join(map(str, c)) for c in zip(*(a.tolist() for a in coords), strict=True)]
    for name in ("offset", "size"):
        negative = np.flatnonzero(table.column(name).slice(0, n).to_numpy(zero_copy_only=False) < 0)
        if len(negative):
            i = int(negative[0])
            raise InvalidReferenceError(
                f"{path}, row {i} (key {keys[i]!r}): {name} {table.column(name)[i].as_py()} is "
                "negative; offsets and sizes are byte counts, from 0 to 2^63 - 1"
            )
    return keys, column("path", None), column("offset", 0), column("size", 0), column("raw", None)


def _read_record(
    refdir: _RefDir, array: str, grid: tuple[int, ...], record: int, out: dict[str, Parsed]
) -> None:
    rows = _record_rows(refdir, array, grid, record)
    if rows is None:
        return
    relative_to = refdir.relative_to
    for key, url, offset, size, raw in zip(*rows, strict=True):
        if raw is not None:
            out[key] = bytes(raw)
        elif url is not None:
            full = normalize_url(url, relative_to)
            offset, size = offset or 0, size or 0
            if offset == 0 and size == 0:
                out[key] = VirtualRef(full)
            else:
                out[key] = VirtualRef(full, int(offset), int(size))


# -- writing -------------------------------------------------------------------------------


def write_parquet_references(
    repo: Repository,
    snapshot: Snapshot,
    url: str,
    *,
    record_size: int = DEFAULT_RECORD_SIZE,
    storage_options: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
) -> None:
    """Write ``snapshot`` as a complete parquet reference set in directory ``url``.

    Every record of every array is written (missing chunks as empty rows), so the
    directory reads exactly like the snapshot with plain fsspec. Warehouse objects are
    referenced by URL, virtual references keep their URL and byte range, inline
    chunks go into ``raw``. ``record`` (the checkout record) is also written as
    ``url/.snapref``. An existing parquet reference set at ``url`` is replaced;
    anything else there is an error.

    Raises
    ------
    InvalidInputError
        If the snapshot is not a zarr v2 hierarchy of metadata and ``.``-separated
        chunk keys (the only shape this layout can hold).
    """
    import pyarrow.parquet as pq

    if record_size <= 0:
        raise InvalidInputError(f"record_size must be positive, not {record_size}")
    manifest = repo.manifest(snapshot)
    metadata: dict[str, Any] = {}
    for key, ref in manifest.section_items(META):
        if key.endswith(ZMETADATA):
            continue  # consolidated metadata: the layout's own .zmetadata replaces it
        if not is_metadata_key(key) or not isinstance(ref, InlineRef):
            raise InvalidInputError(
                f"Key {key!r} of {snapshot.dataset} version {snapshot.version} is neither "
                "zarr metadata nor a chunk of an array; the parquet layout cannot hold it. "
                "Check it out as JSON instead (--format json)."
            )
        if posixpath.basename(key) == "zarr.json":
            raise InvalidInputError(
                f"{snapshot.dataset} version {snapshot.version} is a zarr v3 hierarchy "
                f"({key}); the parquet reference layout holds zarr v2 only. Check it out "
                "as JSON instead (--format json)."
            )
        metadata[key] = ujson.loads(ref.data)
    arrays = {}
    for array in sorted(manifest.arrays):
        if not array:
            raise InvalidInputError(
                f"{snapshot.dataset} version {snapshot.version} is a single array at the "
                "root; fsspec's parquet references need arrays inside a group. Check it "
                "out as JSON instead (--format json)."
            )
        zarray = metadata.get(f"{array}/.zarray")
        if zarray is None:
            raise InvalidInputError(f"Array {array!r} has no .zarray document")
        if zarray.get("dimension_separator", ".") != ".":
            raise InvalidInputError(
                f"Array {array!r} uses dimension_separator {zarray['dimension_separator']!r}; "
                "fsspec's parquet references need '.'. Check it out as JSON instead."
            )
        arrays[array] = _grid(array, zarray)

    fs, root = _fs(url, storage_options)
    refdir = _RefDir(url, fs, root, record_size)
    if fs.exists(root):
        if not is_parquet_references(url, storage_options):
            # never delete a folder we did not write
            raise InvalidInputError(
                f"{url!r} exists and is not a parquet reference set; choose a new path"
            )
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    total = sum(_n_records(g, record_size) for g in arrays.values())
    with progress.bar(total, "Writing parquet references") as tick:
        for array, grid in arrays.items():
            entries = manifest.section_items(array_section(array))
            for number, table in _records(repo, array, grid, record_size, entries):
                path = refdir.record_path(array, number)
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd", write_statistics=False)
                fs.pipe_file(path, buf.getvalue())
                tick(1)
    doc = {"metadata": metadata, "record_size": record_size}
    fs.pipe_file(f"{root}/{ZMETADATA}", ujson.dumps(doc, escape_forward_slashes=False).encode())
    if record is not None:
        fs.pipe_file(f"{root}/{RECORD_FILE}", ujson.dumps(dict(record), indent=2).encode())


def _records(
    repo: Repository,
    array: str,
    grid: tuple[int, ...],
    record_size: int,
    entries: Iterator[tuple[str, Any]],
) -> Iterator[tuple[int, pa.Table]]:
    """Every record table of one array, in order; entries come sorted by grid position."""
    import pyarrow as pa

    n_records = _n_records(grid, record_size)
    strides = _strides(grid)
    pending = next(entries, None)
    for number in range(n_records):
        start = number * record_size
        # every record file has record_size rows, the last one padded with empty rows
        # (missing chunks), as fsspec and kerchunk write them: fsspec's lazy mapper
        # writes the chunks of a grown array into those rows
        rows = record_size
        paths: list[str | None] = [None] * rows
        offsets = [0] * rows
        sizes = [0] * rows
        raws: list[bytes | None] = [None] * rows
        while pending is not None:
            key, ref = pending
            coords = chunk_coords(array, key)
            if not _read_by_zarr(array, key, coords, grid):
                # outside the grid (a shape cut shorter by hand) or spelt otherwise
                # ('0/1', '00.1'): zarr never reads it, and no row of the layout holds it
                pending = next(entries, None)
                continue
            assert coords is not None
            index = sum(c * s for c, s in zip(coords, strides, strict=True))
            if index >= start + rows:
                break
            i = index - start
            if isinstance(ref, InlineRef):
                raws[i] = ref.data
            elif isinstance(ref, ObjectRef):
                paths[i] = repo.objects.url(ref.digest)
            else:
                assert isinstance(ref, VirtualRef)
                paths[i] = ref.url
                if ref.offset is not None:
                    offsets[i], sizes[i] = ref.offset, ref.length or 0
            pending = next(entries, None)
        yield number, pa.table([paths, offsets, sizes, raws], schema=_record_schema())


def _read_by_zarr(
    array: str, key: str, coords: tuple[int, ...] | None, grid: tuple[int, ...]
) -> bool:
    """Whether zarr (v2, '.' separator) reads ``key`` as a chunk of ``array``: the key
    of a position inside the grid, spelt as zarr spells it."""
    if coords is None or len(coords) != len(grid):
        return False
    if not all(0 <= c < g for c, g in zip(coords, grid, strict=True)):
        return False
    return key == f"{array}/{'.'.join(map(str, coords))}"


def _strides(grid: tuple[int, ...]) -> list[int]:
    out = [1] * len(grid)
    for i in range(len(grid) - 2, -1, -1):
        out[i] = out[i + 1] * grid[i + 1]
    return out
