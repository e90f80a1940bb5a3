"""History and provenance: diff, blame, sources, version graph.

Everything here only reads: the catalog (the snapshot graph, the changed keys of each
snapshot, the ref log) and manifests. What writes new versions from others (reset,
revert, merge, rebase) is in :mod:`snapref.merge`, which uses the manifest comparison
and array geometry defined here.

Two ideas keep it fast on long histories and big manifests:

- **Diffs skip shared shards.** Shards are content-addressed, so a shard whose digest
  appears in both manifests holds identical entries; only the shards unique to either
  side are read. Two versions of a million-chunk array that differ in ten chunks read
  at most ten shards per side, never the whole manifest.
- **Blame is an indexed query.** ``snapshot_changes`` is indexed by ``(key,
  snapshot_id)``; the versions that touched one key come from one range scan, and the
  snapshot graph (ids, versions, parents; no provenance decoded) decides which of them
  the requested version inherits from. A dataset's first version records no change
  rows: a key no later version changed was written by it.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import ujson

from snapref.catalog import BRANCH, Snapshot
from snapref.catalog.records import format_time, printable
from snapref.errors import InvalidInputError, NotFoundError
from snapref.keys import check_metadata, chunk_coords, is_metadata_key, node_path
from snapref.manifest import (
    KIND_OBJECT,
    KIND_VIRTUAL,
    InlineRef,
    Manifest,
    ObjectRef,
    Ref,
    VirtualRef,
    array_of_section,
    array_section,
    read_shard_table,
    ref_of,
    section_of,
)

if TYPE_CHECKING:
    from snapref.repository import Repository

__all__ = [
    "BlameLine",
    "Diff",
    "SourceUse",
    "blame",
    "changed_entries",
    "diff",
    "graph_dot",
    "graph_lines",
    "regions",
    "snapshots_using",
    "sources",
]


# -- comparing manifests -----------------------------------------------------------------


def _shard_infos(m: Manifest) -> dict[str, Any]:
    return {info.digest: info for infos in m.sections.values() for info in infos}


_COLUMNS = ("kind", "data", "digest", "url", "offset", "length")


def _unique_shards(m: Manifest, digests: Iterable[str]) -> pa.Table | None:
    """The entries of some shards of ``m`` as one Arrow table (plain, not dictionary
    columns), read straight from the verified parquet files."""
    tables = []
    for digest in digests:
        table = read_shard_table(m.shards.get(digest))
        tables.append(
            pa.table(
                {
                    name: col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
                    for name, col in zip(table.column_names, table.columns, strict=True)
                }
            )
        )
    return pa.concat_tables(tables) if tables else None


def changed_entries(a: Manifest, b: Manifest) -> dict[str, tuple[Ref | None, Ref | None]]:
    """``{key: (ref in a, ref in b)}`` for every key whose reference differs, by key.

    Only shards that are not in both manifests are read: a key lives in exactly one
    shard of a manifest, so a key in a shared shard has the same reference on both
    sides. The rows of those shards are compared column by column in Arrow; Python
    objects are made only for the keys that differ.
    """
    if a.digest is not None and a.digest == b.digest:
        return {}
    sa_, sb = _shard_infos(a), _shard_infos(b)
    ta = _unique_shards(a, [d for d in sa_ if d not in sb])
    tb = _unique_shards(b, [d for d in sb if d not in sa_])
    out: dict[str, tuple[Ref | None, Ref | None]] = {}
    if ta is None and tb is None:
        return out
    if ta is None or tb is None:
        side = 0 if tb is None else 1
        for row in (ta if tb is None else tb).to_pylist():  # type: ignore[union-attr]
            ref = ref_of(*(row[c] for c in _COLUMNS))
            out[row["key"]] = (ref, None) if side == 0 else (None, ref)
        return dict(sorted(out.items()))
    joined = ta.join(tb, keys="key", join_type="full outer", left_suffix="_a", right_suffix="_b")
    differs = None
    for c in _COLUMNS:
        x, y = joined.column(f"{c}_a"), joined.column(f"{c}_b")
        d = pc.or_(pc.fill_null(pc.not_equal(x, y), False), pc.xor(pc.is_null(x), pc.is_null(y)))
        differs = d if differs is None else pc.or_(differs, d)
    for row in joined.filter(differs).to_pylist():
        old = None if row["kind_a"] is None else ref_of(*(row[f"{c}_a"] for c in _COLUMNS))
        new = None if row["kind_b"] is None else ref_of(*(row[f"{c}_b"] for c in _COLUMNS))
        out[row["key"]] = (old, new)
    return dict(sorted(out.items()))


# -- array geometry -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayInfo:
    """What diff and blame need to know of an array: its shape, chunk shape and how
    chunk keys are spelled."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    separator: str
    prefix: str  # "c" + separator for zarr v3 default keys, "" otherwise

    def key(self, coords: Sequence[int]) -> str:
        base = f"{self.path}/" if self.path else ""
        if not coords:
            return base + (self.prefix.rstrip("/.") or "0")
        return base + self.prefix + self.separator.join(map(str, coords))

    def coords(self, key: str) -> tuple[int, ...] | None:
        """The chunk grid coordinates of ``key`` in this array, None if it is no chunk
        of it (zarr v2 names the one chunk of a 0-d array ``0``)."""
        c = chunk_coords(self.path, key)
        if c is not None and not self.shape and c == (0,):
            return ()
        return c if c is not None and len(c) == len(self.shape) else None

    def holds(self, coords: Sequence[int]) -> bool:
        """Whether the chunk at ``coords`` lies inside the array's shape."""
        return len(coords) == len(self.shape) and all(
            0 <= c and c * n < size
            for c, n, size in zip(coords, self.chunks, self.shape, strict=True)
        )

    def same_grid(self, other: ArrayInfo) -> bool:
        return (self.chunks, self.separator, self.prefix) == (
            other.chunks,
            other.separator,
            other.prefix,
        )

    def slices(self, box: Sequence[tuple[int, int]]) -> str:
        """``temp[0:2, 20:40]``: a box of chunk coordinates in array coordinates."""
        parts = []
        for (lo, hi), c, n in zip(box, self.chunks, self.shape, strict=True):
            parts.append(f"{lo * c}:{min(hi * c, n)}")
        return f"{self.path or '/'}[{', '.join(parts)}]"


def array_info(manifest: Manifest | Callable[[str], Ref | None], path: str) -> ArrayInfo | None:
    """Geometry of array ``path`` in ``manifest`` (or in what a lookup function
    returns: a state being merged) in zarr v2 or v3, or None."""
    get = manifest.get if isinstance(manifest, Manifest) else manifest
    base = f"{path}/" if path else ""
    ref = get(base + ".zarray")
    if isinstance(ref, InlineRef):
        doc = check_metadata(base + ".zarray", ref.data)  # an older snapref took any
        return ArrayInfo(
            path,
            tuple(doc.get("shape", ())),
            tuple(doc.get("chunks", ())),
            doc.get("dimension_separator") or ".",
            "",
        )
    ref = get(base + "zarr.json")
    if isinstance(ref, InlineRef):
        doc = check_metadata(base + "zarr.json", ref.data)
        if doc.get("node_type") != "array":
            return None
        shape = tuple(doc.get("shape", ()))
        grid = doc.get("chunk_grid", {}).get("configuration", {})
        chunks = tuple(grid.get("chunk_shape", shape))
        enc = doc.get("chunk_key_encoding", {"name": "default"})
        conf = enc.get("configuration", {})
        if enc.get("name") == "v2":
            return ArrayInfo(path, shape, chunks, conf.get("separator", "."), "")
        sep = conf.get("separator", "/")
        return ArrayInfo(path, shape, chunks, sep, "c" + sep)
    return None


def regions(coords: Iterable[Sequence[int]]) -> list[tuple[tuple[int, int], ...]]:
    """Merge chunk coordinates into few boxes ``((lo, hi), ...)`` (hi exclusive).

    Unit boxes are merged dimension by dimension, last first: runs along a dimension,
    then runs with equal extents in every other dimension. A full rectangle of chunks
    becomes one box; scattered chunks stay separate.
    """
    boxes = {tuple((c, c + 1) for c in p) for p in coords}
    if not boxes:
        return []
    ndim = len(next(iter(boxes)))
    for dim in reversed(range(ndim)):
        groups: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        for box in boxes:
            rest = box[:dim] + box[dim + 1 :]
            groups.setdefault(rest, []).append(box[dim])
        merged = set()
        for rest, spans in groups.items():
            spans.sort()
            lo, hi = spans[0]
            for s_lo, s_hi in spans[1:]:
                if s_lo <= hi:
                    hi = max(hi, s_hi)
                else:
                    merged.add((*rest[:dim], (lo, hi), *rest[dim:]))
                    lo, hi = s_lo, s_hi
            merged.add((*rest[:dim], (lo, hi), *rest[dim:]))
        boxes = merged
    return sorted(boxes)


# -- diff ---------------------------------------------------------------------------------


@dataclass
class ArrayChanges:
    """Chunk keys added, modified and removed in one array, and the index regions."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "modified": self.modified,
            "removed": self.removed,
            "regions": self.regions,
        }


@dataclass
class Diff:
    """What changed from version ``old`` to version ``new`` of one dataset."""

    dataset: str
    old: Snapshot
    new: Snapshot
    arrays_added: list[str] = field(default_factory=list)
    arrays_removed: list[str] = field(default_factory=list)
    groups_added: list[str] = field(default_factory=list)
    groups_removed: list[str] = field(default_factory=list)
    #: ``{metadata key: {field: [old, new]}}`` (``attributes.x`` for zarr v3 attributes)
    metadata: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: ``{array path: ArrayChanges}``, for arrays whose chunks changed
    chunks: dict[str, ArrayChanges] = field(default_factory=dict)
    #: other (non-chunk, non-metadata) keys: ``{key: "A" | "M" | "D"}``
    other: dict[str, str] = field(default_factory=dict)

    @property
    def arrays_changed(self) -> list[str]:
        nodes = {node_path(k) for k in self.metadata} | set(self.chunks)
        return sorted(
            nodes
            - set(self.arrays_added)
            - set(self.arrays_removed)
            - set(self.groups_added)
            - set(self.groups_removed)
        )

    @property
    def is_empty(self) -> bool:
        return not (self.metadata or self.chunks or self.other)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "from": {"version": self.old.version, "id": self.old.id},
            "to": {"version": self.new.version, "id": self.new.id},
            "arrays_added": self.arrays_added,
            "arrays_removed": self.arrays_removed,
            "groups_added": self.groups_added,
            "groups_removed": self.groups_removed,
            "changed": self.arrays_changed,
            "metadata": self.metadata,
            "chunks": {a: c.to_json() for a, c in self.chunks.items()},
            "other": self.other,
        }


def _json_of(ref: Ref | None) -> Any:
    if isinstance(ref, InlineRef):
        try:
            return ujson.loads(ref.data)
        except ValueError:
            return ref.data.decode("utf-8", "replace")
    return None


def _field_changes(old: Any, new: Any) -> dict[str, list[Any]]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return {"": [old, new]}
    out: dict[str, list[Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "attributes" and isinstance(a, dict | None) and isinstance(b, dict | None):
            for sub, pair in _field_changes(a or {}, b or {}).items():
                out[f"attributes.{sub}"] = pair
        else:
            out[k] = [a, b]
    return out


def _is_group(key: str, ref: Ref | None) -> bool:
    name = key.rpartition("/")[2]
    if name == ".zgroup":
        return ref is not None
    if name == "zarr.json":
        doc = _json_of(ref)
        return isinstance(doc, dict) and doc.get("node_type") == "group"
    return False


def diff(repo: Repository, old: Snapshot, new: Snapshot) -> Diff:
    """Compare two versions of one dataset (ancestors of each other or not).

    Raises
    ------
    InvalidInputError
        If the two snapshots belong to different datasets.
    """
    if old.dataset != new.dataset:
        raise InvalidInputError(
            f"Cannot diff versions of different datasets ({old.dataset!r}, {new.dataset!r})"
        )
    ma, mb = repo.manifest(old), repo.manifest(new)
    changed = changed_entries(ma, mb)
    out = Diff(old.dataset, old, new)
    out.arrays_added = sorted(mb.arrays - ma.arrays)
    out.arrays_removed = sorted(ma.arrays - mb.arrays)
    chunk_ops: dict[str, list[tuple[str, str]]] = {}  # array -> [(op, key)]
    for key, (before, after) in changed.items():
        op = "A" if before is None else ("D" if after is None else "M")
        if is_metadata_key(key):
            if _is_group(key, after) and not _is_group(key, before):
                out.groups_added.append(node_path(key))
            elif _is_group(key, before) and not _is_group(key, after):
                out.groups_removed.append(node_path(key))
            fields = _field_changes(_json_of(before), _json_of(after))
            if fields:  # rewritten with the same content (e.g. other JSON spacing): no change
                out.metadata[key] = fields
            continue
        array = array_of_section(section_of(key, mb.arrays if after is not None else ma.arrays))
        if array is None:
            out.other[key] = op
            continue
        entry = out.chunks.setdefault(array, ArrayChanges())
        {"A": entry.added, "M": entry.modified, "D": entry.removed}[op].append(key)
        chunk_ops.setdefault(array, []).append((op, key))
    # a node whose metadata moved from .zgroup to zarr.json (or back: a v2 hierarchy
    # replaced by a v3 one) was neither added nor removed
    moved = set(out.groups_added) & set(out.groups_removed)
    out.groups_added = [g for g in out.groups_added if g not in moved]
    out.groups_removed = [g for g in out.groups_removed if g not in moved]
    for array, entry in out.chunks.items():
        entry.regions = _changed_regions(
            array_info(ma, array), array_info(mb, array), chunk_ops[array]
        )
    return out


def _changed_regions(
    old: ArrayInfo | None, new: ArrayInfo | None, ops: Sequence[tuple[str, str]]
) -> list[str]:
    """The boxes of an array that changed, in array coordinates: a removed chunk is
    where the old version had it, an added one where the new has it (an array cut
    short, or rechunked, differs in both places)."""
    if old is not None and new is not None and old.same_grid(new):
        # one grid: the boxes of every changed chunk, within the larger of the shapes
        both = replace(new, shape=tuple(map(max, old.shape, new.shape)))
        coords = [c for _, k in ops if (c := both.coords(k)) is not None]
        return [both.slices(box) for box in regions(coords)]
    out: list[str] = []
    for info, kinds in ((old, "DM"), (new, "AM")):
        if info is not None:
            coords = [c for op, k in ops if op in kinds and (c := info.coords(k)) is not None]
            out.extend(info.slices(box) for box in regions(coords))
    return list(dict.fromkeys(out))


# -- blame --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlameLine:
    """Who last wrote one chunk as seen from a version, and where its bytes are."""

    key: str
    region: str
    snapshot: Snapshot | None  # None: the chunk is not stored (fill value)
    kind: str  # "object", "virtual", "inline" or "missing"
    url: str | None = None
    offset: int | None = None
    length: int | None = None
    digest: str | None = None
    history: tuple[Snapshot, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "region": self.region,
            "kind": self.kind,
            "url": self.url,
            "offset": self.offset,
            "length": self.length,
            "digest": self.digest,
            "version": None,
        }
        if self.snapshot is not None:
            s = self.snapshot
            out.update(
                version=s.version,
                id=s.id,
                author=s.author,
                timestamp=format_time(s.timestamp),
                message=s.message,
            )
        if self.history:
            out["history"] = [
                {
                    "version": s.version,
                    "id": s.id,
                    "author": s.author,
                    "timestamp": format_time(s.timestamp),
                    "message": s.message,
                }
                for s in self.history
            ]
        return out


class _Graph:
    """Walks over one dataset's snapshot graph that decode provenance only for the
    few snapshots they return."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._chains: dict[str, dict[str, int]] = {}
        self._roots: dict[str, str] = {}
        self._manifests: dict[str, Manifest] = {}
        self._snaps: dict[str, Snapshot] = {}

    def chain(self, start: str) -> dict[str, int]:
        """First-parent chain from ``start``: ``{id: distance}`` (one light query)."""
        if start not in self._chains:
            ids = self.repo.db.chain_ids(start)
            self._chains[start] = {s: i for i, s in enumerate(ids)}
        return self._chains[start]

    def root(self, start: str) -> str:
        """The first version on ``start``'s first-parent chain (once per chain: a
        whole array's blame asks for every chunk no later version wrote)."""
        if start not in self._roots:
            chain = self.chain(start)
            self._roots[start] = max(chain, key=chain.__getitem__)
        return self._roots[start]

    def manifest(self, snap_id: str) -> Manifest:
        if snap_id not in self._manifests:
            self._manifests[snap_id] = self.repo.manifest(self.snapshot(snap_id))
        return self._manifests[snap_id]

    def snapshot(self, snap_id: str) -> Snapshot:
        if snap_id not in self._snaps:
            self._snaps[snap_id] = self.repo.db.snapshot(snap_id)
        return self._snaps[snap_id]

    def writer(self, start: str, key: str, changed: Mapping[str, str]) -> str:
        """The snapshot whose write of ``key`` ``start`` sees."""
        while True:
            chain = self.chain(start)
            hits = [(d, s) for s, d in ((s, chain.get(s)) for s in changed) if d is not None]
            if not hits:
                return self.root(start)  # the root wrote it
            best = min(hits)[1]
            parents = self.snapshot(best).parents
            # a merge that took the other side's value: blame the other side's writer
            if len(parents) > 1 and changed[best] != "D":
                mine = self.manifest(best).get(key)
                source = next((p for p in parents[1:] if self.manifest(p).get(key) == mine), None)
                if source is not None:
                    start = source
                    continue
            return best


def chunk_key(info: ArrayInfo, index: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """The chunk key holding array index ``index`` (negative indices count from the end).

    Raises
    ------
    InvalidInputError
        If ``index`` has the wrong number of dimensions or is out of bounds.
    """
    if len(index) != len(info.shape):
        raise InvalidInputError(
            f"Array {info.path!r} has {len(info.shape)} dimensions; give {len(info.shape)} "
            f"indices, not {len(index)}"
        )
    coords = []
    for i, n, c in zip(_integers(index), info.shape, info.chunks, strict=True):
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise InvalidInputError(f"Index {tuple(index)} is out of bounds for shape {info.shape}")
        coords.append(j // c)
    return info.key(coords), tuple(coords)


def _integers(index: Sequence[Any]) -> list[int]:
    """``index`` as Python ints; any integer type (numpy's too), never a float or bool."""
    try:
        if any(isinstance(i, bool) for i in index):
            raise TypeError
        return [operator.index(i) for i in index]
    except TypeError:
        raise InvalidInputError(
            f"Invalid index {tuple(index)!r}: give whole numbers, one per dimension"
        ) from None


def blame(
    repo: Repository,
    snap: Snapshot,
    array: str,
    index: Sequence[int] | None = None,
    *,
    history: bool = False,
) -> list[BlameLine]:
    """For each chunk of ``array`` in version ``snap`` (or the chunk holding ``index``),
    the version that last wrote it, with where its bytes are.

    With ``history``, each line also lists every version among ``snap``'s ancestors
    that changed the chunk, newest first.

    Raises
    ------
    NotFoundError
        If ``array`` is no array in that version.
    """
    manifest = repo.manifest(snap)
    info = array_info(manifest, array)
    if info is None:
        arrays = ", ".join(sorted(manifest.arrays)) or "none"
        raise NotFoundError(
            f"{snap.dataset} version {snap.version} has no array {array!r} (arrays: {arrays})"
        )
    refs: dict[str, Ref] = {}  # what the section listing read already
    if index is not None:
        key, coords = chunk_key(info, index)
        keys = {key: coords}
        changes = repo.db.key_changes(snap.dataset, [key])
    else:
        keys = {}
        for key, ref in manifest.section_items(array_section(array)):
            c = info.coords(key)
            if c is not None:
                keys[key] = c
                refs[key] = ref
        changes = repo.db.changed_keys_under(snap.dataset, f"{array}/" if array else "")
    graph = _Graph(repo)
    ancestors = repo.db.ancestor_ids(snap.id) if history else set()
    root = graph.root(snap.id)
    lines = []
    for key, coords in keys.items():
        ref = refs[key] if key in refs else manifest.get(key)
        changed = changes.get(key, {})
        region = info.slices([(c, c + 1) for c in coords])
        writer = graph.writer(snap.id, key, changed) if ref is not None else None
        hist: tuple[Snapshot, ...] = ()
        if history:
            ids = [s for s in changed if s in ancestors]
            if root not in changed and graph.manifest(root).get(key) is not None:
                ids.append(root)
            hist = tuple(
                sorted((graph.snapshot(s) for s in ids), key=lambda s: s.version, reverse=True)
            )
        who = graph.snapshot(writer) if writer is not None else None
        if isinstance(ref, ObjectRef):
            line = BlameLine(
                key,
                region,
                who,
                "object",
                repo.objects.url(ref.digest),
                None,
                ref.size,
                ref.digest,
                hist,
            )
        elif isinstance(ref, VirtualRef):
            line = BlameLine(
                key, region, who, "virtual", ref.url, ref.offset, ref.length, None, hist
            )
        elif isinstance(ref, InlineRef):
            line = BlameLine(key, region, who, "inline", None, None, len(ref.data), None, hist)
        else:
            line = BlameLine(key, region, None, "missing", history=hist)
        lines.append(line)
    return lines


# -- sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceUse:
    """One external file a version depends on."""

    url: str
    chunks: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "chunks": self.chunks, "bytes": self.bytes}


def _shard_urls(manifest: Manifest, digest: str) -> tuple[dict[str, tuple[int, int]], bool]:
    """``{url: (references, bytes)}`` of the virtual references in one shard, and
    whether it holds any warehouse object (counted by Arrow, not row by row)."""
    table = read_shard_table(manifest.shards.get(digest), ["kind", "url", "length"])
    kinds = table["kind"]
    virtual = table.filter(pc.equal(kinds, KIND_VIRTUAL))
    url = virtual["url"]
    if pa.types.is_dictionary(url.type):
        url = url.cast(url.type.value_type)
    grouped = (
        pa.table({"url": url, "length": pc.fill_null(virtual["length"], 0)})
        .group_by("url")
        .aggregate([("length", "count"), ("length", "sum")])
    )
    counts = zip(
        grouped["length_count"].to_pylist(), grouped["length_sum"].to_pylist(), strict=True
    )
    out = dict(zip(grouped["url"].to_pylist(), counts, strict=True))
    return out, pc.any(pc.equal(kinds, KIND_OBJECT)).as_py() is True


def protocols(
    repo: Repository, snap: Snapshot, seen: dict[str, frozenset[str]] | None = None
) -> set[str]:
    """The fsspec protocols that version ``snap``'s exported references name: those of
    its virtual sources, and the warehouse's if it holds any object. ``seen`` caches
    the answer per shard across calls (versions share most shards)."""
    seen = {} if seen is None else seen
    manifest = repo.manifest(snap)
    out: set[str] = set()
    for digest in _shard_infos(manifest):
        if digest not in seen:
            urls, has_objects = _shard_urls(manifest, digest)
            found = {fsspec.core.split_protocol(u)[0] or "file" for u in urls}
            if has_objects:
                found.add(repo.warehouse.protocol)
            seen[digest] = frozenset(found)
        out |= seen[digest]
    return out


def sources(repo: Repository, snap: Snapshot) -> list[SourceUse]:
    """The external files version ``snap`` references, with chunks and bytes from each."""
    manifest = repo.manifest(snap)
    totals: dict[str, list[int]] = {}
    for digest in _shard_infos(manifest):
        for url, (n, b) in _shard_urls(manifest, digest)[0].items():
            t = totals.setdefault(url, [0, 0])
            t[0] += n
            t[1] += b
    return [SourceUse(u, n, b) for u, (n, b) in sorted(totals.items())]


def snapshots_using(repo: Repository, url: str) -> list[tuple[Snapshot, SourceUse]]:
    """Every version of every dataset that references ``url`` (or a URL under it, if
    it ends with ``/``), oldest first per dataset. Each distinct shard is read once."""
    per_shard: dict[str, dict[str, tuple[int, int]]] = {}
    wanted = {url}
    if "://" not in url:  # a local path: stored references are file:// URLs
        local = "file://" + os.path.abspath(url)
        wanted.add(local + "/" if url.endswith("/") and not local.endswith("/") else local)
    out = []
    for name in repo.datasets():
        for snap in sorted(repo.db.all_snapshots(name).values(), key=lambda s: s.version):
            manifest = repo.manifest(snap)
            n = b = 0
            for digest in _shard_infos(manifest):
                if digest not in per_shard:
                    per_shard[digest] = {
                        u: v
                        for u, v in _shard_urls(manifest, digest)[0].items()
                        if u in wanted or any(w.endswith("/") and u.startswith(w) for w in wanted)
                    }
                for cn, cb in per_shard[digest].values():
                    n += cn
                    b += cb
            if n:
                out.append((snap, SourceUse(url, n, b)))
    return out


# -- graph --------------------------------------------------------------------------------


def _labels(repo: Repository, name: str) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for r in repo.refs(name):
        labels.setdefault(r.snapshot_id, []).append(
            r.name if r.kind == BRANCH else f"tag: {r.name}"
        )
    return labels


def graph_lines(repo: Repository, name: str) -> list[str]:
    """An ASCII drawing of every version of ``name`` and how branches and merges
    connect them, newest first (``*`` a version, ``|`` a line of history, ``\\`` a
    merged branch joining, ``/`` a branch leaving its start point). An edge to a lane
    that is not the next one is drawn across the lanes between with ``-`` (``+``
    where it crosses a line), so it is never taken for an edge of the lane beside it:
    ``|-+-\\``."""
    snaps = sorted(repo.db.all_snapshots(name).values(), key=lambda s: -s.version)
    labels = _labels(repo, name)
    lanes: list[str | None] = []
    out: list[str] = []

    def row(marks: dict[int, str], edge_from: int | None = None) -> str:
        """One line: ``marks`` by lane, ``|`` on the other live lanes; with
        ``edge_from``, the one mark is an edge from that lane, bridged with ``-``
        across the lanes between (``+`` where it crosses a line)."""
        width = max([len(lanes), *(k + 1 for k in marks)])
        cells = [
            marks.get(i, "|" if i < len(lanes) and lanes[i] is not None else " ")
            for i in range(width)
        ]
        gaps = [" "] * width
        if edge_from is not None and max(marks) - edge_from > 1:
            for i in range(edge_from, max(marks)):
                gaps[i] = "-"
                if i > edge_from:
                    cells[i] = "+" if cells[i] == "|" else "-"
        return "".join(c + g for c, g in zip(cells, gaps, strict=True)).rstrip()

    for snap in snaps:
        cols = [i for i, lane in enumerate(lanes) if lane == snap.id]
        if not cols:
            lanes.append(snap.id)
            cols = [len(lanes) - 1]
        col = cols[0]
        for extra in cols[1:]:
            # branches that started here: their lanes end, drawn joining this one
            out.append(row({extra: "/"}, edge_from=col))
            lanes[extra] = None
        refs = f" ({', '.join(labels[snap.id])})" if snap.id in labels else ""
        text = f"v{snap.version} {snap.id[:8]} {_first_line(snap.message)}{refs}"
        out.append(row({col: "*"}) + "  " + text)
        lanes[col] = snap.parents[0] if snap.parents else None
        for p in snap.parents[1:]:
            free = next((i for i in range(col + 1, len(lanes)) if lanes[i] is None), None)
            if free is None:
                lanes.append(p)
                free = len(lanes) - 1
            else:
                lanes[free] = p
            out.append(row({free: "\\"}, edge_from=col))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return out


def graph_dot(repo: Repository, name: str) -> str:
    """The version graph of ``name`` in Graphviz dot (``dot -Tpng``)."""
    snaps = sorted(repo.db.all_snapshots(name).values(), key=lambda s: s.version)
    labels = _labels(repo, name)
    lines = [f'digraph "{name}" {{', "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
    for s in snaps:
        text = f"v{s.version} {s.id[:8]}\\n{_dot_text(_first_line(s.message)[:40])}"
        lines.append(f'  "{s.id}" [label="{text}"];')
        for i, p in enumerate(s.parents):
            style = "" if i == 0 else " [style=dashed]"
            lines.append(f'  "{s.id}" -> "{p}"{style};')
    for snap_id, names in sorted(labels.items()):
        for label in names:
            ref = _dot_text(label)
            lines.append(f'  "ref:{ref}" [label="{ref}", shape=ellipse];')
            lines.append(f'  "ref:{ref}" -> "{snap_id}" [style=dotted];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _first_line(message: str) -> str:
    return message.strip().split("\n", 1)[0]


def _dot_text(text: str) -> str:
    """``text`` safe inside a double-quoted dot string: control characters written
    as escapes (:func:`~snapref.catalog.records.printable`), and a backslash (say the
    last character of a cut message) doubled, so it never escapes the closing quote."""
    return printable(text).replace("\\", "\\\\").replace('"', '\\"')
