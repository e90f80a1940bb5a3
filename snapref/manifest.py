"""Manifests: the full key -> reference map of one snapshot, stored in shards.

A manifest is split into *sections*: one ``meta`` section for every key that is not a
chunk (zarr metadata documents and any other file), and one section per array for
that array's chunk keys. Each section is a sorted run of references cut into
*shards* of at most :data:`MAX_SHARD_REFS` entries; chunk keys sort by their chunk
grid coordinates, so neighbouring chunks (and appended ones) share shards.

Shards are parquet files and the section list is a small JSON *manifest list*; both
are content-addressed (:mod:`snapref.objects`), so a snapshot that changes one chunk
rewrites one shard and one manifest list, and reuses every other shard as is
(invariant 3). Reading a key loads only the shard that holds it.

The parquet schema of a shard (see ``catalog_schemas/manifest-v1.json``):

======  =========  ==========================================================
column  type       meaning
======  =========  ==========================================================
key     string     dataset-relative key, e.g. ``temp/3.4``
kind    int8       0 inline bytes, 1 warehouse object, 2 virtual reference
data    binary     the bytes of an inline reference
digest  string     BLAKE3 of a warehouse object
url     string     target of a virtual reference (dictionary encoded)
offset  int64      byte offset of a virtual reference (null: whole file)
length  int64      byte length (inline and object: size; virtual: range length)
======  =========  ==========================================================

pyarrow and numpy (60-100 ms of a process's start) are imported by the functions that
encode, decode or sort shards, not by this module: ``import snapref`` and the commands
that only read the catalog (``snapref log``, ``tag``, ``ls``, ...) do without them, as
they do without zarr (see :mod:`snapref.store`).
"""

from __future__ import annotations

import bisect
import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ujson
from fsspec.asyn import AsyncFileSystem

from snapref import progress
from snapref.errors import CatalogSchemaError, InvalidReferenceError
from snapref.keys import array_path_of, chunk_coords, chunk_index, is_metadata_key
from snapref.objects import PutResult, Warehouse, content_hash

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = [
    "MAX_SHARD_REFS",
    "InlineRef",
    "Manifest",
    "ManifestWriter",
    "ObjectRef",
    "Ref",
    "SectionWriter",
    "VirtualRef",
    "array_of_section",
    "array_section",
    "chunk_table",
    "read_shard_table",
]

#: Upper bound of references per shard. A commit of one chunk rewrites one shard of at
#: most this many entries, whatever the size of the dataset.
MAX_SHARD_REFS = 5000

MANIFEST_FORMAT = 1
META = "meta"
_ARRAY_PREFIX = "array:"


@dataclass(frozen=True, slots=True)
class InlineRef:
    """Bytes kept in the manifest itself (zarr metadata documents)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A chunk stored in the warehouse as an immutable object named by its BLAKE3."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class VirtualRef:
    """A byte range of a file outside the warehouse (``offset=None``: whole file)."""

    url: str
    offset: int | None = None
    length: int | None = None


Ref = InlineRef | ObjectRef | VirtualRef

#: the columns of a shard, in order (their types: :func:`_shard_schema`)
_COLUMNS = ("key", "kind", "data", "digest", "url", "offset", "length")
KIND_INLINE, KIND_OBJECT, KIND_VIRTUAL = 0, 1, 2


@functools.cache
def _shard_schema() -> pa.Schema:
    """The Arrow schema of a shard (made on first use: it needs pyarrow)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("kind", pa.int8()),
            ("data", pa.binary()),
            ("digest", pa.string()),
            ("url", pa.string()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
        ]
    )


# -- shards ----------------------------------------------------------------------------


def encode_shard(entries: list[tuple[str, Ref]]) -> bytes:
    """Parquet bytes of a shard holding ``entries`` (already in section order)."""
    return _encode(_table_of(entries))


def _table_of(entries: list[tuple[str, Ref]]) -> pa.Table:
    return _table_of_refs([key for key, _ in entries], [ref for _, ref in entries])


def _table_of_refs(keys: list[str], refs: list[Ref]) -> pa.Table:
    """The table of rows ``keys[i]``, ``refs[i]``, in that order."""
    import pyarrow as pa

    if refs and all(type(ref) is VirtualRef for ref in refs):
        # a kerchunk import's chunks: no per-row tuples (10^6 of them)
        virtual: list[VirtualRef] = refs  # type: ignore[assignment]
        n = len(refs)
        cols: dict[str, Any] = {
            "key": keys,
            "kind": pa.repeat(pa.scalar(KIND_VIRTUAL, pa.int8()), n),
            "data": pa.nulls(n, pa.binary()),
            "digest": pa.nulls(n, pa.string()),
            # one column at a time: each list goes once its column is made
            "url": pa.array([ref.url for ref in virtual], pa.string()),
            "offset": pa.array([ref.offset for ref in virtual], pa.int64()),
            "length": pa.array([ref.length for ref in virtual], pa.int64()),
        }
        return pa.table(cols, schema=_shard_schema())
    rows = [_row_of_ref(ref) for ref in refs]
    columns = list(zip(*rows, strict=True)) if rows else [()] * 6
    cols = {"key": keys}
    cols.update(zip(_COLUMNS[1:], (list(c) for c in columns), strict=True))
    return pa.table(cols, schema=_shard_schema())


def _encode(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd",
        use_dictionary=["url", "digest"],
        write_statistics=False,
        store_schema=False,
    )
    return buf.getvalue()


def _row_of_ref(ref: Ref) -> tuple[Any, ...]:
    if type(ref) is VirtualRef:
        return (KIND_VIRTUAL, None, None, ref.url, ref.offset, ref.length)
    if type(ref) is ObjectRef:
        return (KIND_OBJECT, None, ref.digest, None, None, ref.size)
    assert isinstance(ref, InlineRef)
    return (KIND_INLINE, ref.data, None, None, None, len(ref.data))


def read_shard_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """The Arrow table of a shard's parquet bytes (``columns``: only those).

    ParquetFile, not ``pq.read_table``: read_table loads pyarrow.dataset and pandas
    (+45 MB). One thread: a shard is small, so Arrow's pool of threads costs more than
    it gives (0.53 vs 0.7 ms a shard, and -2.6 MB of peak memory in a fresh process).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(
        columns=columns, use_threads=False
    )


class Shard:
    """One loaded shard: an ordered key -> reference map over an Arrow table.

    Lookups build one reference from one row; rewrites (:meth:`apply`) work on the
    columns, so changing a chunk in a shard of thousands costs little Python.
    """

    __slots__ = ("_index", "_lookups", "_rows", "table")

    #: lookups of single rows before a shard turns its columns into Python lists once:
    #: a row read from Arrow costs ~15 us, one from lists ~1 us (opening a version reads
    #: a few keys; committing an edited checkout of 10^6 chunks reads every one)
    _ROW_READS = 32

    def __init__(self, table: pa.Table) -> None:
        self.table = table.combine_chunks()
        self._index: dict[str, int] | None = None
        self._lookups = 0
        self._rows: list[list[Any]] | None = None

    @classmethod
    def decode(cls, data: bytes) -> Shard:
        return cls(read_shard_table(data))

    @property
    def index(self) -> dict[str, int]:
        """key -> row number (built on first use)."""
        if self._index is None:
            keys = self.table.column("key").to_pylist()
            self._index = dict(zip(keys, range(len(keys)), strict=True))
        return self._index

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def weight(self) -> int:
        """The bytes this shard may come to hold, a little over: its Arrow table, and
        the key index and Python rows it makes as it is used (a Python object per
        value: ~50 bytes each beside the text, and the dict's or lists' slots)."""
        n, arrow = self.table.num_rows, self.table.nbytes
        return 2 * arrow + self.table.column("key").nbytes + (150 + 60 * len(_COLUMNS)) * n

    def get(self, key: str) -> Ref | None:
        i = self.index.get(key)
        if i is None:
            return None
        rows = self._rows
        if rows is None:
            self._lookups += 1
            if self._lookups <= self._ROW_READS:
                return _ref_of_row(tuple(self.table.column(n)[i].as_py() for n in _COLUMNS))
            rows = self._rows = [self.table.column(n).to_pylist() for n in _COLUMNS]
        return _ref_of_row(tuple(column[i] for column in rows))

    def keys(self) -> list[str]:
        return list(self.table.column("key").to_pylist())

    def items(self) -> Iterator[tuple[str, Ref]]:
        columns = [self.table.column(n).to_pylist() for n in _COLUMNS]
        for row in zip(*columns, strict=True):
            yield row[0], _ref_of_row(row)

    def apply(self, changes: Mapping[str, Ref | None], sort_key: Any) -> pa.Table:
        """A new table: this shard with ``changes`` applied, in section order.

        Changed rows are replaced column-wise and deleted rows filtered out; only
        added keys make the table be re-sorted (by ``sort_key`` of each key).
        """
        import numpy as np
        import pyarrow as pa

        index = self.index
        table = self.table
        mods = sorted((index[k], k, r) for k, r in changes.items() if r is not None and k in index)
        dels = [index[k] for k, r in changes.items() if r is None and k in index]
        adds = [(k, r) for k, r in changes.items() if r is not None and k not in index]
        if mods:
            # imported here: reading a version never needs it (-8 MB, -20 ms per process)
            import pyarrow.compute as pc

            mask = np.zeros(table.num_rows, dtype=bool)
            mask[[i for i, _, _ in mods]] = True
            repl = _table_of([(k, r) for _, k, r in mods])
            table = pa.table(
                [
                    pc.replace_with_mask(
                        table.column(n).combine_chunks(),
                        pa.array(mask),
                        repl.column(n).combine_chunks(),
                    )
                    for n in _COLUMNS
                ],
                schema=_shard_schema(),
            )
        if dels:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[dels] = False
            table = table.filter(pa.array(keep))
        if adds:
            table = pa.concat_tables([table, _table_of(adds)])
            keys = table.column("key").to_pylist()
            order = sorted(range(len(keys)), key=lambda i: sort_key(keys[i]))
            table = table.take(pa.array(order, type=pa.int64()))
        return table


def _ref_of_row(row: tuple[Any, ...]) -> Ref:
    return ref_of(*row[1:])


def ref_of(kind: int, data: Any, digest: Any, url: Any, offset: Any, length: Any) -> Ref:
    """The reference of one manifest row (its columns after ``key``)."""
    if kind == KIND_INLINE:
        return InlineRef(data)
    if kind == KIND_OBJECT:
        return ObjectRef(digest, length)
    return VirtualRef(url, offset, length)


class _ShardCache:
    """Process-wide LRU of decoded shards, keyed by content digest (safe to share:
    the same digest always means the same bytes), bounded by the memory they may hold
    (:attr:`Shard.weight`, charged in full when a shard comes in): a bound by count
    thrashed on datasets of more arrays than it held (each array has its own shards),
    decoding the same shards again on every open."""

    def __init__(self, capacity: int = 256 << 20) -> None:
        self.capacity = capacity
        self._held = 0
        self._items: OrderedDict[str, Shard] = OrderedDict()
        # threads share it (zarr's, dask's): without the lock, an entry evicted between
        # a get and its move_to_end raised KeyError, which a reference lookup reads
        # as a missing key, and zarr as fill values
        self._lock = threading.Lock()

    def get(self, digest: str) -> Shard | None:
        with self._lock:
            shard = self._items.get(digest)
            if shard is not None:
                self._items.move_to_end(digest)
            return shard

    def put(self, digest: str, shard: Shard) -> None:
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._held -= old.weight
            self._items[digest] = shard
            self._held += shard.weight
            while self._held > self.capacity and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._held -= evicted.weight

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._held = 0


SHARD_CACHE = _ShardCache()


# -- section names and ordering ------------------------------------------------------


def array_section(array: str) -> str:
    """Name of the section that holds the chunk references of ``array``."""
    return f"{_ARRAY_PREFIX}{array}"


def array_of_section(section: str) -> str | None:
    """The array whose chunks ``section`` holds; None for :data:`META`."""
    return section[len(_ARRAY_PREFIX) :] if section.startswith(_ARRAY_PREFIX) else None


def _sort_key(section: str, key: str) -> tuple[Any, ...]:
    """Order of ``key`` within ``section``: grid coordinates for chunks, text otherwise."""
    if section == META:
        return ((), key)
    # sliced here rather than by array_of_section: this runs for every row of a shard
    # that gains keys
    coords = chunk_coords(section[len(_ARRAY_PREFIX) :], key)
    return (coords or (), key)


def _section_order(section: str, keys: list[str]) -> list[int]:
    """The positions of ``keys`` (all of ``section``) in section order: sorted as by
    :func:`_sort_key`. Chunk coordinates are parsed into one numpy array and ordered by
    ``np.lexsort``, rather than held as a Python tuple per key for the sort (an import
    of 10^6 chunks made ~200 MB of them); sorting by ``_sort_key`` remains for what
    that cannot order alike: keys of equal coordinates (``3.4`` and ``c/3/4``), of
    unequal numbers of them, or beyond int64."""
    import numpy as np

    array = array_of_section(section)
    coords = _coords_array(array, keys) if array is not None and len(keys) > 1 else None
    if coords is not None:
        order = np.lexsort(coords.T[::-1])  # lexsort's last row is its first criterion
        ranked = coords[order]
        if not (ranked[1:] == ranked[:-1]).all(axis=1).any():
            return list(order.tolist())
    return sorted(range(len(keys)), key=lambda i: _sort_key(section, keys[i]))


def _coords_array(array: str, keys: list[str]) -> np.ndarray | None:
    """The chunk coordinates of ``keys`` in ``array``, one row each; None unless every
    key is a chunk of as many (one or more) coordinates, each an int64."""
    import numpy as np

    first = chunk_coords(array, keys[0])
    if not first:
        return None
    coords = np.empty((len(keys), len(first)), dtype=np.int64)
    try:
        for i, key in enumerate(keys):
            row = chunk_coords(array, key)
            if row is None or len(row) != len(first):
                return None
            coords[i] = row
    except OverflowError:
        return None
    return coords


# -- manifests -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    digest: str
    count: int
    first: str
    last: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "count": self.count, "first": self.first, "last": self.last}


class Manifest(Mapping[str, Ref]):
    """The read-only, lazily loaded key -> reference map of one snapshot.

    Only the manifest list is read up front; a shard is read the first time one of its
    keys is needed.
    """

    def __init__(self, warehouse: Warehouse, doc: Mapping[str, Any], digest: str | None) -> None:
        self.warehouse = warehouse
        self.digest = digest
        self.shards = warehouse.shards
        self.sections: dict[str, list[ShardInfo]] = {
            name: [ShardInfo(**s) for s in shards] for name, shards in doc["sections"].items()
        }
        self.arrays: frozenset[str] = frozenset(doc["arrays"])
        self._firsts = {
            name: [_sort_key(name, s.first) for s in infos] for name, infos in self.sections.items()
        }

    @property
    def is_empty(self) -> bool:
        """True for the manifest of nothing (the base of an import)."""
        return not self.sections

    @classmethod
    def empty(cls, warehouse: Warehouse) -> Manifest:
        return cls(warehouse, {"format": MANIFEST_FORMAT, "arrays": [], "sections": {}}, None)

    @classmethod
    def load(cls, warehouse: Warehouse, digest: str) -> Manifest:
        """Read the manifest list named ``digest`` (verified) from the warehouse."""
        return cls.from_bytes(warehouse, digest, warehouse.manifest_lists.get(digest))

    @classmethod
    async def load_async(cls, warehouse: Warehouse, digest: str, afs: AsyncFileSystem) -> Manifest:
        """:meth:`load` through an asynchronous filesystem (``Warehouse.async_fs``)."""
        data = await warehouse.manifest_lists.get_async(afs, digest)
        return cls.from_bytes(warehouse, digest, data)

    @classmethod
    def from_bytes(cls, warehouse: Warehouse, digest: str, data: bytes) -> Manifest:
        """The manifest list ``digest`` from its verified bytes; refuses a format this
        snapref does not read."""
        doc = ujson.loads(data)
        if doc.get("format") != MANIFEST_FORMAT:
            raise CatalogSchemaError(
                f"Manifest {digest} has format {doc.get('format')!r}; this snapref reads "
                f"format {MANIFEST_FORMAT}. Upgrade snapref."
            )
        return cls(warehouse, doc, digest)

    def to_json(self) -> dict[str, Any]:
        return _manifest_doc(self.arrays, self.sections)

    # -- locating keys -----------------------------------------------------------------

    def _shard_info(self, key: str) -> ShardInfo | None:
        section, order = _place(key, self.arrays)
        infos = self.sections.get(section)
        if not infos:
            return None
        i = max(bisect.bisect_right(self._firsts[section], order) - 1, 0)
        return infos[i]

    def _load(self, info: ShardInfo) -> Shard:
        shard = SHARD_CACHE.get(info.digest)
        if shard is None:
            shard = Shard.decode(self.shards.get(info.digest))
            SHARD_CACHE.put(info.digest, shard)
        return shard

    async def _load_async(self, info: ShardInfo, afs: AsyncFileSystem) -> Shard:
        shard = SHARD_CACHE.get(info.digest)
        if shard is None:
            shard = Shard.decode(await self.shards.get_async(afs, info.digest))
            SHARD_CACHE.put(info.digest, shard)
        return shard

    # -- Mapping -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        info = self._shard_info(key)
        if info is None:
            return default
        ref = self._load(info).get(key)
        return default if ref is None else ref

    async def get_async(self, key: str, afs: AsyncFileSystem) -> Ref | None:
        """Like :meth:`get`, loading a missing shard through ``afs`` without blocking."""
        info = self._shard_info(key)
        if info is None:
            return None
        return (await self._load_async(info, afs)).get(key)

    def __getitem__(self, key: str) -> Ref:
        ref = self.get(key)
        if ref is None:
            raise KeyError(key)
        return ref

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return sum(s.count for infos in self.sections.values() for s in infos)

    def __iter__(self) -> Iterator[str]:
        for _, infos in sorted(self.sections.items()):
            for info in infos:
                yield from self._load(info).keys()

    def items(self) -> Iterator[tuple[str, Ref]]:  # type: ignore[override]
        """Every entry, shard by shard (each shard decoded once, not once per key)."""
        for name in sorted(self.sections):
            yield from self.section_items(name)

    def shard_count(self) -> int:
        return sum(len(infos) for infos in self.sections.values())

    def section_items(self, section: str) -> Iterator[tuple[str, Ref]]:
        """Every entry of one section, in order (loads that section's shards)."""
        for info in self.sections.get(section, []):
            yield from self._load(info).items()

    def meta_keys(self) -> list[str]:
        """Every key of the ``meta`` section, sorted: zarr metadata and non-chunk files
        (read once: a manifest never changes, and listings ask for them often)."""
        return self._meta_keys

    @functools.cached_property
    def _meta_keys(self) -> list[str]:
        return sorted(k for k, _ in self.section_items(META))

    def meta_keys_under(self, prefix: str) -> Iterator[str]:
        """The ``meta`` keys that start with ``prefix``, found by bisection."""
        keys = self.meta_keys()
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            if not keys[i].startswith(prefix):
                return
            yield keys[i]

    def array_count(self, array: str) -> int:
        """Number of chunk references of ``array``."""
        return sum(s.count for s in self.sections.get(array_section(array), []))


def _manifest_doc(
    arrays: frozenset[str], sections: Mapping[str, list[ShardInfo]]
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "arrays": sorted(arrays),
        "sections": {
            name: [s.to_json() for s in infos] for name, infos in sorted(sections.items())
        },
    }


def section_of(key: str, arrays: frozenset[str]) -> str:
    """Section of ``key``: its array's, if it is a chunk of one, else ``meta``."""
    return _placer(arrays)(key)[0]


def _place(key: str, arrays: frozenset[str]) -> tuple[str, tuple[Any, ...]]:
    """Section of ``key`` and its sort key there, parsing the key once."""
    return _placer(arrays)(key)


@functools.lru_cache(maxsize=32)
def _placer(arrays: frozenset[str]) -> _Placer:
    return _Placer(arrays)


class _Placer:
    """Places keys given the set of array paths: a key is a chunk of the nearest array
    above it whose chunk key grammar it matches, else it belongs to ``meta``. The
    arrays above each folder are found once per folder (an import places 10^6 keys
    that share a few folders)."""

    __slots__ = ("_above", "arrays")

    #: folders remembered at most (zarr v3 chunk keys make one per row of chunks)
    _MAX_FOLDERS = 1 << 16

    def __init__(self, arrays: frozenset[str]) -> None:
        self.arrays = arrays
        self._above: dict[str, tuple[tuple[str, str], ...]] = {}

    def __call__(self, key: str) -> tuple[str, tuple[Any, ...]]:
        if not is_metadata_key(key):
            folder = key.rpartition("/")[0]
            above = self._above.get(folder)
            if above is None:
                if len(self._above) >= self._MAX_FOLDERS:
                    self._above.clear()
                above = self._above[folder] = self._arrays_above(folder)
            for path, section in above:
                coords = chunk_index(key[len(path) + 1 :] if path else key)
                if coords is not None:
                    return section, (coords, key)
        return META, ((), key)

    def _arrays_above(self, folder: str) -> tuple[tuple[str, str], ...]:
        """(path, section) of the arrays at ``folder`` and above it, nearest first."""
        found = []
        path = folder
        while True:
            if path in self.arrays:
                found.append((path, array_section(path)))
            if not path:
                return tuple(found)
            path = path.rpartition("/")[0]


# -- writing new manifests ---------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    """A new manifest and what writing it cost."""

    manifest: Manifest
    shards_written: int
    bytes_written: int


def _slices(table: pa.Table, max_refs: int) -> Iterator[pa.Table]:
    """``table`` in pieces of at most ``max_refs`` rows."""
    return (table.slice(start, max_refs) for start in range(0, table.num_rows, max_refs))


def _store_shards(
    pieces: Iterable[pa.Table], out: dict[str, bytes]
) -> Iterator[tuple[ShardInfo, pa.Table]]:
    """Each of ``pieces`` (rows in section order) as a shard: its parquet bytes go
    into ``out`` under their digest, and its info and rows are yielded as it is made
    (the caller stores ``out``)."""
    for piece in pieces:
        data = _encode(piece)
        digest = content_hash(data)
        out[digest] = data
        keys = piece.column("key")
        yield ShardInfo(digest, piece.num_rows, keys[0].as_py(), keys[-1].as_py()), piece


class ManifestWriter:
    """Builds the manifest of a new snapshot from a base manifest plus changes.

    Only the shards that hold changed keys are read and rewritten; every other shard
    of the base is reused by digest.
    """

    def __init__(self, base: Manifest, max_refs: int = MAX_SHARD_REFS) -> None:
        self.base = base
        self.max_refs = max_refs

    def write(
        self,
        changes: Mapping[str, Ref | None],
        prebuilt: Mapping[str, list[ShardInfo]] | None = None,
    ) -> WriteResult:
        """Apply ``changes`` (``None`` deletes a key) and store the result.

        ``prebuilt`` adds array sections whose shards a :class:`SectionWriter` stored
        already (bulk imports); their arrays must be new.

        Returns the new manifest; writes nothing when the result equals the base.
        """
        base = self.base
        arrays = _arrays_after(base, changes)
        for name in prebuilt or {}:
            array = array_of_section(name)
            if array not in arrays or name in base.sections:
                raise InvalidReferenceError(
                    f"Chunks of {array!r} were written in bulk, but {array!r} is not a new "
                    "array of this version (its .zarray or zarr.json is missing)"
                )
        by_section, sort_keys = _changes_by_section(base, arrays, changes)
        sections = {name: list(infos) for name, infos in base.sections.items()}
        for array in base.arrays - arrays:
            sections.pop(array_section(array), None)  # its entries were moved to other sections
        new_shards: dict[str, bytes] = {}
        for name, section_changes in by_section.items():
            sections[name] = self._rewrite_section(
                name, section_changes, new_shards, sort_keys.get(name, {})
            )
            if not sections[name]:
                del sections[name]
        sections.update({name: list(infos) for name, infos in (prebuilt or {}).items() if infos})
        doc = _manifest_doc(arrays, sections)
        data = ujson.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        digest = content_hash(data)
        if digest == base.digest:
            return WriteResult(base, 0, 0)
        shard_result = base.shards.put_many(new_shards)
        list_result: PutResult = base.warehouse.manifest_lists.put_many({digest: data})
        manifest = Manifest(base.warehouse, doc, digest)
        return WriteResult(
            manifest,
            shard_result.written,
            shard_result.bytes_written + list_result.bytes_written,
        )

    def _rewrite_section(
        self,
        name: str,
        changes: dict[str, Ref | None],
        out: dict[str, bytes],
        known: Mapping[str, tuple[Any, ...]],
    ) -> list[ShardInfo]:
        infos = list(self.base.sections.get(name, []))

        def sort_key(key: str) -> tuple[Any, ...]:
            return known.get(key) or _sort_key(name, key)

        firsts = [_sort_key(name, s.first) for s in infos]
        # group the changed keys by the shard that holds (or would hold) them
        groups: dict[int, dict[str, Ref | None]] = {}
        if not infos:
            groups[0] = changes  # a new section: everything goes into fresh shards
        for key, ref in changes.items() if infos else ():
            i = max(bisect.bisect_right(firsts, sort_key(key)) - 1, 0)
            groups.setdefault(i, {})[key] = ref
        result: list[ShardInfo] = []
        for i in range(max(len(infos), 1)):
            if i not in groups:
                if i < len(infos):
                    result.append(infos[i])
                continue
            m = self.max_refs
            if i < len(infos):
                table = self.base._load(infos[i]).apply(groups[i], sort_key)
                count, pieces = table.num_rows, _slices(table, m)
            else:
                keys = [k for k, r in groups[i].items() if r is not None]
                refs = [r for r in groups[i].values() if r is not None]
                order = _section_order(name, keys)
                keys, refs = [keys[j] for j in order], [refs[j] for j in order]
                # a table per shard, not one sliced: the shard cache keeps pieces, and
                # a slice keeps its whole table (~100 MB for 10^6 chunks)
                count = len(keys)
                pieces = (
                    _table_of_refs(keys[j : j + m], refs[j : j + m]) for j in range(0, count, m)
                )
            n_shards = -(-count // m)
            with progress.bar(n_shards if n_shards > 4 else 0, "Writing shards") as tick:
                for info, piece in _store_shards(pieces, out):
                    result.append(info)
                    SHARD_CACHE.put(info.digest, Shard(piece))
                    tick(1)
        return result


class SectionWriter:
    """Writes one array's chunk section from tables already in section order (chunk
    grid order, as parquet reference records come), storing each shard as soon as it
    is full: a bulk import holds at most one shard's worth of references in memory.

    Feed it tables made by :func:`chunk_table`; :meth:`finish` returns the shards for
    ``ManifestWriter.write(..., prebuilt={section: shards})``.
    """

    def __init__(self, warehouse: Warehouse, array: str, max_refs: int = MAX_SHARD_REFS) -> None:
        self.section = array_section(array)
        self.max_refs = max_refs
        self._shards = warehouse.shards
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last: tuple[Any, ...] | None = None
        self.infos: list[ShardInfo] = []
        self.count = 0
        self.shards_written = 0
        self.bytes_written = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        first = _sort_key(self.section, table.column("key")[0].as_py())
        if self._last is not None and first <= self._last:
            raise InvalidReferenceError(
                f"Bulk chunk references of {array_of_section(self.section)!r} are not in "
                "chunk-grid order"
            )
        self._last = _sort_key(self.section, table.column("key")[-1].as_py())
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.count += table.num_rows
        if self._pending_rows >= self.max_refs:
            self._flush(final=False)

    def finish(self) -> list[ShardInfo]:
        self._flush(final=True)
        return self.infos

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        table = pa.concat_tables(self._pending).combine_chunks()
        full = table.num_rows if final else table.num_rows - table.num_rows % self.max_refs
        out: dict[str, bytes] = {}
        self.infos.extend(
            info for info, _ in _store_shards(_slices(table.slice(0, full), self.max_refs), out)
        )
        rest = table.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        result = self._shards.put_many(out)
        self.shards_written += result.written
        self.bytes_written += result.bytes_written


def chunk_table(
    keys: list[str],
    digests: list[str | None],
    urls: list[str | None],
    offsets: list[int | None],
    lengths: list[int | None],
) -> pa.Table:
    """A shard-schema table of chunk references: objects where ``digests[i]`` is set
    (``lengths[i]`` its size), else virtual (``offsets[i]`` None: the whole file)."""
    import pyarrow as pa

    kinds = [KIND_OBJECT if d is not None else KIND_VIRTUAL for d in digests]
    return pa.table(
        {
            "key": keys,
            "kind": kinds,
            "data": pa.nulls(len(keys), pa.binary()),
            "digest": digests,
            "url": urls,
            "offset": offsets,
            "length": lengths,
        },
        schema=_shard_schema(),
    )


def _arrays_after(base: Manifest, changes: Mapping[str, Ref | None]) -> frozenset[str]:
    """Array paths of the new state: the base's, updated by changed metadata keys."""
    arrays = set(base.arrays)
    for key, ref in changes.items():
        if not is_metadata_key(key) or key.rpartition("/")[2] not in (".zarray", "zarr.json"):
            continue
        path = key.rpartition("/")[0]
        if ref is None:
            # deleting zarr.json/.zarray of an array makes it no array, unless the
            # other format's metadata remains
            other = (
                path
                + ("/" if path else "")
                + (".zarray" if key.endswith("zarr.json") else "zarr.json")
            )
            if changes.get(other, base.get(other)) is None:
                arrays.discard(path)
            continue
        if not isinstance(ref, InlineRef):
            raise InvalidReferenceError(
                f"Metadata key {key!r} must hold inline JSON, not a reference to {ref!r}"
            )
        if array_path_of(key, ref.data) is not None:
            arrays.add(path)
        elif key.endswith("zarr.json"):
            arrays.discard(path)
    return frozenset(arrays)


def _changes_by_section(
    base: Manifest, arrays: frozenset[str], changes: Mapping[str, Ref | None]
) -> tuple[dict[str, dict[str, Ref | None]], dict[str, dict[str, tuple[Any, ...]]]]:
    """Changes grouped by section, plus the moves that a change of arrays requires,
    and the sort key of each changed key of a section the base has (computed once:
    parsing is the costly part).

    Chunks of an array that is no longer an array move to the ``meta`` section; files
    under a new array's path that look like its chunks move into its section.
    """
    out: dict[str, dict[str, Ref | None]] = {}
    sort_keys: dict[str, dict[str, tuple[Any, ...]]] = {}  # section -> key -> order
    place, place_before = _placer(arrays), _placer(base.arrays)
    moves = not base.is_empty and arrays != base.arrays

    def put(key: str, ref: Ref | None) -> None:
        new, order = place(key)
        out.setdefault(new, {})[key] = ref
        if new in base.sections:  # a new section is sorted at once (_section_order)
            sort_keys.setdefault(new, {})[key] = order
        if moves:
            old = place_before(key)[0]
            if old != new and old in base.sections:
                out.setdefault(old, {}).setdefault(key, None)

    for key, ref in changes.items():
        put(key, ref)
    for array in base.arrays - arrays:
        for key, ref in base.section_items(array_section(array)):
            if key not in changes:
                put(key, ref)
    if arrays - base.arrays:
        for key, ref in base.section_items(META):
            if key not in changes and section_of(key, arrays) != META:
                put(key, ref)
    # removed arrays' sections are dropped whole; no need to delete from them
    removed = {array_section(a) for a in base.arrays - arrays}
    return {name: ch for name, ch in out.items() if name not in removed}, sort_keys
