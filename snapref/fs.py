"""The reference filesystem of one dataset version, writable inside a transaction.

:class:`SnapshotFileSystem` is fsspec's ``ReferenceFileSystem`` over a lazily loaded
manifest (invariant 5): inline bytes come from the manifest, virtual references are
read from their source files through fsspec (nearby ranges merged by
``ReferenceFileSystem.cat``), and warehouse objects are read and checked against their
hash. Writes and deletes are *staged* in :class:`StagedReferences`; a transaction
turns them into a new snapshot when it commits. zarr reaches it through
:class:`snapref.store.SnapshotStore`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.implementations.reference import ReferenceFileSystem, ReferenceNotReachable
from fsspec.utils import get_protocol

from snapref.errors import (
    DisallowedSourceError,
    InvalidInputError,
    InvalidKeyError,
    ReadOnlyError,
    SourceUnavailableError,
    TransactionClosedError,
)
from snapref.keys import array_path_of, chunk_index, is_metadata_key, validate_key
from snapref.manifest import InlineRef, Manifest, ObjectRef, Ref, VirtualRef, array_section
from snapref.objects import BytesLike, ContentStore, new_async_fs, wrapped_fs
from snapref.refs import has_dot_segments

__all__ = ["SnapshotFileSystem", "SourcePolicy", "StagedReferences"]


class _StagingFile(io.BytesIO):
    """What ``fs.open(path, "wb")`` returns: the bytes are staged when it closes."""

    def __init__(self, fs: SnapshotFileSystem, path: str) -> None:
        super().__init__()
        self._fs = fs
        self._path = path

    def close(self) -> None:
        if not self.closed:
            self._fs.pipe_file(self._path, self.getvalue())
        super().close()


#: the documents that make a folder an array or a group
_NODE_DOCUMENTS = (".zarray", ".zgroup", "zarr.json")


class SourcePolicy:
    """The URL prefixes a dataset's virtual references may point into (invariant 7)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def allows(self, url: str) -> bool:
        return url.startswith(self.prefixes) and not has_dot_segments(url)

    def check(self, key: str, url: str) -> None:
        """Raise :class:`DisallowedSourceError` unless ``url`` is allowed."""
        if has_dot_segments(url):
            raise DisallowedSourceError(
                f"Key {key!r} points at {url!r}, whose path has '.' or '..' segments: "
                "local files and many servers resolve them, so the URL may lead outside "
                "the locations this dataset may read from. Write the URL without them."
            )
        if not self.allows(url):
            allowed = ", ".join(self.prefixes) or "none"
            raise DisallowedSourceError(
                f"Key {key!r} points at {url!r}, outside the locations this dataset may "
                f"read from ({allowed}). If that location is trusted, allow it with "
                "'--allow-source PREFIX' (or allow_sources=[...] in Python)."
            )


def _fsspec_value(ref: Ref) -> Any:
    """The form ``ReferenceFileSystem`` understands (objects stay typed)."""
    if isinstance(ref, InlineRef):
        return ref.data
    if isinstance(ref, VirtualRef):
        return [ref.url] if ref.offset is None else [ref.url, ref.offset, ref.length]
    return ref


class StagedReferences(MutableMapping[str, Any]):
    """A manifest with staged writes on top: the ``references`` of the filesystem.

    Values read are what ``ReferenceFileSystem`` expects (bytes, ``[url]``,
    ``[url, offset, length]``) or an :class:`ObjectRef`. Values written are bytes.
    """

    def __init__(self, base: Manifest) -> None:
        self.base = base
        #: key -> new bytes (metadata), an already stored object, a reference copied
        #: from another key (fs.copy), or None (deleted)
        self.staged: dict[str, bytes | ObjectRef | VirtualRef | None] = {}
        #: folder -> how many staged keys that are not deletions lie below it, so that
        #: is_dir needs no scan of the staged keys (once per new file: quadratic)
        self._live_below: dict[str, int] = {}
        #: what staging wrote to the warehouse so far (objects, bytes)
        self.objects_written = 0
        self.bytes_written = 0

    # -- reading -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key in self.staged:
            value = self.staged[key]
            if value is None:
                raise KeyError(key)
            return _fsspec_value(value) if isinstance(value, VirtualRef) else value
        ref = self.base.get(key)
        if ref is None:
            raise KeyError(key)
        return _fsspec_value(ref)

    async def get_async(self, key: str, afs: AsyncFileSystem) -> Any:
        """Like ``self[key]``, loading a shard without blocking the event loop."""
        if key in self.staged:
            value = self.staged[key]
            if value is None:
                raise KeyError(key)
            return _fsspec_value(value) if isinstance(value, VirtualRef) else value
        ref = await self.base.get_async(key, afs)
        if ref is None:
            raise KeyError(key)
        return _fsspec_value(ref)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self.staged:
            return self.staged[key] is not None
        return key in self.base

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_under(""))

    def __len__(self) -> int:
        return len(self.keys_under(""))

    def __eq__(self, other: object) -> bool:
        """Equal when made of the same version and the same staged edits (cheap: no
        shard is read)."""
        if not isinstance(other, StagedReferences):
            return NotImplemented
        return (
            self.base.warehouse.url == other.base.warehouse.url
            and self.base.digest == other.base.digest
            and self.staged == other.staged
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def keys_under(self, path: str) -> list[str]:
        """Every key at or below ``path``, sorted (loads the shards of arrays below)."""
        keys = set(self._visible(f"{path}/" if path else ""))
        if path and path in self:
            keys.add(path)
        return sorted(keys)

    def is_dir(self, path: str) -> bool:
        """True if some key lies below ``path``: a staged one (counted as staged), a
        metadata document or file of the version (by bisection), else a chunk of an
        array at or below ``path`` (stops at the first one found)."""
        if path == "" or self._live_below.get(path):
            return True
        prefix = f"{path}/"
        if any(k not in self.staged for k in self.base.meta_keys_under(prefix)):
            return True
        return next(self._base_chunks(prefix), None) is not None

    def list_dir(self, path: str) -> dict[str, bool]:
        """Direct children of ``path``: name -> is it a directory."""
        prefix = f"{path}/" if path else ""
        children: dict[str, bool] = {}
        for key in self._visible(prefix, one_per_array_below=True):
            head, sep, _ = key[len(prefix) :].partition("/")
            full = prefix + head
            children[full] = children.get(full, False) or bool(sep)
        return children

    def _visible(self, prefix: str, one_per_array_below: bool = False) -> Iterator[str]:
        """Keys starting with ``prefix`` that are staged or in the base and not staged
        as deleted, lazily (a key may come twice).

        A chunk section is read only if its array can hold such keys, and one shard
        at a time; with ``one_per_array_below``, an array whose folder lies below the
        prefix yields only its first visible chunk — enough to name a child folder.
        """
        # a copy: another thread (fsspec's, zarr's) may stage keys while this lists
        for key, value in list(self.staged.items()):
            if value is not None and key.startswith(prefix):
                yield key
        for key in self.base.meta_keys_under(prefix):
            if key not in self.staged:
                yield key
        yield from self._base_chunks(prefix, one_per_array_below)

    def _base_chunks(self, prefix: str, one_per_array_below: bool = False) -> Iterator[str]:
        """Chunk keys of the version starting with ``prefix`` and not staged."""
        for array in self.base.arrays:
            folder = f"{array}/" if array else ""
            if not (folder.startswith(prefix) or prefix.startswith(folder)):
                continue
            chunks: Iterator[str] = (
                key
                for key, _ in self.base.section_items(array_section(array))
                if key.startswith(prefix) and key not in self.staged
            )
            if one_per_array_below and folder != prefix and folder.startswith(prefix):
                chunks = itertools.islice(chunks, 1)
            yield from chunks

    # -- writing -----------------------------------------------------------------------

    def check_new_file(self, key: str) -> None:
        """Raise unless ``key`` may hold a file: a valid key that is not the folder of
        an array or group (a key cannot be a file and a folder at once)."""
        validate_key(key)
        if any(f"{key}/{name}" in self for name in _NODE_DOCUMENTS):
            raise InvalidKeyError(
                f"Cannot write {key!r}: it is the folder of an array or group. Delete "
                "that node first (rm -r), or write to a key inside it."
            )
        parents = list(itertools.accumulate(key.split("/")[:-1], lambda a, b: f"{a}/{b}"))
        array = next((p for p in reversed(["", *parents]) if self._is_array_folder(p)), None)
        if array is not None and chunk_index(key[len(array) + 1 :] if array else key) is not None:
            return  # a chunk: its array's keys are zarr's (and looking costs shard reads)
        for parent in parents:
            if parent in self:
                raise InvalidKeyError(
                    f"Cannot write {key!r}: {parent!r} is a file, and a key cannot be a "
                    f"file and a folder at once. Delete {parent!r} first, or write elsewhere."
                )
        if self.is_dir(key):
            raise InvalidKeyError(
                f"Cannot write {key!r}: it is a folder (keys lie below it), and a key "
                "cannot be a file and a folder at once. Delete what is below it first "
                "(rm -r), or write to a key inside it."
            )

    def _is_array_folder(self, path: str) -> bool:
        """Whether ``path`` is an array as staged: its metadata document, written in
        this transaction (an array, not a group; not deleted), else the version's."""
        for name in (".zarray", "zarr.json"):
            key = f"{path}/{name}" if path else name
            if key in self.staged:
                value = self.staged[key]
                return isinstance(value, bytes) and array_path_of(key, value) is not None
        return path in self.base.arrays

    def __setitem__(self, key: str, value: Any) -> None:
        self.check_new_file(key)
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"Only bytes can be written to key {key!r}, not {type(value)}")
        self._stage(key, bytes(value))

    def stage_object(self, key: str, ref: ObjectRef, written: bool) -> None:
        """Stage ``key`` as an object already stored in the warehouse."""
        validate_key(key)
        self._stage(key, ref)
        if written:
            self.objects_written += 1
            self.bytes_written += ref.size

    def stage_copy(self, key: str, value: Any) -> None:
        """Stage at ``key`` a value read from another key (``self[source]``): the same
        bytes, object or byte range of a file; nothing is read or written."""
        self.check_new_file(key)
        if isinstance(value, list):  # fsspec's [url] or [url, offset, length]
            value = VirtualRef(*value)
        elif not isinstance(value, ObjectRef):
            value = bytes(value)
        self._stage(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._stage(key, None)

    def unstage(self, key: str) -> None:
        """Forget what was staged at ``key``: it shows the version's value again."""
        if key in self.staged:
            self._stage(key, None)
            del self.staged[key]

    def discard_all(self) -> None:
        """Forget everything staged."""
        self.staged.clear()
        self._live_below.clear()

    def _stage(self, key: str, value: bytes | ObjectRef | VirtualRef | None) -> None:
        """Every change of :attr:`staged` goes here, which keeps the folder counts."""
        was_live = self.staged.get(key) is not None
        self.staged[key] = value
        if was_live != (value is not None):
            step = 1 if value is not None else -1
            folder = key
            while "/" in folder:
                folder = folder.rpartition("/")[0]
                self._live_below[folder] = self._live_below.get(folder, 0) + step


class SnapshotFileSystem(ReferenceFileSystem):
    """fsspec filesystem over one version of a dataset; writable when not read-only.

    Parameters
    ----------
    references
        The manifest with its staging layer.
    objects
        Where warehouse objects are read from.
    warehouse_fs
        Filesystem for reading objects and shards (async twin when ``asynchronous``).
    policy
        Allowed source locations for virtual references.
    source_options
        fsspec options per protocol for reading virtual references.
    read_only
        Refuse every write with :class:`ReadOnlyError`.
    """

    protocol = "snapref"
    cachable = False

    def __init__(
        self,
        references: StagedReferences,
        objects: ContentStore,
        warehouse_fs: AsyncFileSystem,
        policy: SourcePolicy,
        source_options: Mapping[str, Mapping[str, Any]] | None = None,
        read_only: bool = False,
        asynchronous: bool = False,
        loop: Any = None,
        **kwargs: Any,
    ) -> None:
        self._staged = references
        self._objects = objects
        self._warehouse_fs = warehouse_fs
        self._policy = policy
        self._source_options = dict(source_options or {})
        self._read_only = read_only
        #: the transaction's filesystem this is a read-only view of (see read_only_view)
        self._writable: SnapshotFileSystem | None = None
        #: why writes are refused, once the transaction is closed (see close_for_writes)
        self._closed_message: str | None = None
        fss = _source_filesystems(policy.prefixes, self._source_options, asynchronous)
        super().__init__(fo=references, fs=fss, asynchronous=asynchronous, loop=loop, **kwargs)

    @property
    def staged(self) -> StagedReferences:
        return self._staged

    @property
    def read_only(self) -> bool:
        return self._read_only

    def read_only_view(self) -> SnapshotFileSystem:
        """A read-only filesystem over the same staged state (it sees later writes)."""
        if self._read_only:
            return self
        view = SnapshotFileSystem(
            self._staged,
            self._objects,
            self._warehouse_fs,
            self._policy,
            source_options=self._source_options,
            read_only=True,
            asynchronous=self.asynchronous,
        )
        view.fss = self.fss  # share the source filesystems (and their sessions)
        view._writable = self
        return view

    def writable(self) -> SnapshotFileSystem:
        """The writable filesystem of the transaction this is a view of (or itself).

        Raises
        ------
        ReadOnlyError
            If this is a view of a committed version, or a copy made by unpickling.
        """
        if not self._read_only:
            return self
        if self._writable is None:
            raise ReadOnlyError(
                "This is a read-only view of a version (or an unpickled copy of one); it "
                "cannot be made writable. Open a transaction (repo.transaction(...)) and "
                "use its store to make changes."
            )
        return self._writable

    def close_for_writes(self, message: str | None) -> None:
        """Refuse every later write with :class:`TransactionClosedError` saying
        ``message``; None takes writes again."""
        self._closed_message = message

    def _check_writable(self, path: str) -> None:
        if self._closed_message:
            raise TransactionClosedError(f"Cannot write {path!r}: {self._closed_message}")
        if self._read_only and self._writable is not None:
            raise ReadOnlyError(
                f"Cannot write {path!r}: this is a read-only view of a transaction; write "
                "through the transaction's own store or fs (tx.store, tx.fs)."
            )
        if self._read_only:
            raise ReadOnlyError(
                f"Cannot write {path!r}: this is a read-only view of a version. Open a "
                "transaction (repo.transaction(...)) to make changes."
            )

    # -- equality and pickling ---------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        """Equal when both show the same version with the same staged edits, with the
        same permissions (read-only or not) and the same allowed sources."""
        return (
            isinstance(other, SnapshotFileSystem)
            and self._read_only == other._read_only
            and self._policy.prefixes == other._policy.prefixes
            and self._source_options == other._source_options
            and self._staged == other._staged
        )

    def __hash__(self) -> int:
        base = self._staged.base
        return hash((self._read_only, base.warehouse.url, base.digest))

    def __reduce__(self) -> Any:
        # A copy in another process (a dask worker, say) could stage writes, but they
        # would never reach the transaction's commit: refuse rather than lose them.
        if not self._read_only:
            raise TypeError(
                "Cannot pickle the writable filesystem or store of a snapref transaction: "
                "its staged edits live in this process, and writes made through a copy "
                "would never be committed. Write from this process (dask's threaded "
                "scheduler does), or pickle a read-only view (store.with_read_only(True)) "
                "to read the staged state elsewhere."
            )
        return super().__reduce__()

    # -- reads -------------------------------------------------------------------------

    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        return await self._read(path, start, end, **kwargs)  # type: ignore[return-value]  # bytes unless view

    async def _cat_view(self, path: str) -> BytesLike:
        """The whole value of key ``path`` for zarr's store, which only reads it: like
        ``_cat_file``, but a large object of a local warehouse comes as a memory map
        of its file (:meth:`~snapref.objects.ContentStore.view_async`)."""
        return await self._read(path, view=True)

    async def _read(
        self,
        path: str,
        start: int | None = None,
        end: int | None = None,
        view: bool = False,
        **kwargs: Any,
    ) -> BytesLike:
        path = self._strip_protocol(path)
        try:
            value = await self._staged.get_async(path, self._warehouse_fs)
        except KeyError as exc:
            raise FileNotFoundError(path) from exc
        if isinstance(value, ObjectRef):
            if view:
                return await self._objects.view_async(self._warehouse_fs, value.digest)
            data = await self._objects.get_async(self._warehouse_fs, value.digest)
            return data[start:end]
        if isinstance(value, bytes):
            return value[start:end]
        if isinstance(value, list):
            self._policy.check(path, value[0])
        try:
            return await super()._cat_file(path, start=start, end=end, **kwargs)
        except ReferenceNotReachable as exc:
            raise _unreachable(exc) from exc

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        return sync(self.loop, self._cat_file, path, start=start, end=end, **kwargs)

    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Any:
        """Read one key or many; virtual byte ranges of one file are merged into
        fewer requests (``ReferenceFileSystem.cat``), objects are checked."""
        if isinstance(path, str):
            return self.cat_file(path)
        paths = [self._strip_protocol(p) for p in path]
        out: dict[str, Any] = {}
        virtual = []
        for p in paths:
            try:
                value = self._staged[p]
            except KeyError:
                if on_error == "raise":
                    raise FileNotFoundError(p) from None
                if on_error != "omit":
                    out[p] = FileNotFoundError(p)
                continue
            if isinstance(value, ObjectRef):
                # a lost object is an IntegrityError whatever on_error says: returned
                # or omitted as FileNotFoundError, a mapping reads it as a key never
                # written (fill values)
                out[p] = self._objects.get(value.digest)
            elif isinstance(value, list):
                self._policy.check(p, value[0])
                virtual.append(p)
            else:
                out[p] = value
        if virtual:
            try:
                got = super().cat(virtual, on_error=on_error, **kwargs)
            except ReferenceNotReachable as exc:
                raise _unreachable(exc) from exc
            if not isinstance(got, dict):
                got = {virtual[0]: got}
            for value in got.values():
                if isinstance(value, ReferenceNotReachable):
                    # raised whatever on_error says, as for a lost object: returned or
                    # omitted, a mapping reads it as a key never written (fill values)
                    raise _unreachable(value)
            out.update(got)
        return out

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """Read ("rb") the whole value; or write ("wb"; "ab" appends to the value,
        "xb" refuses an existing key), staged when the file closes."""
        path = self._strip_protocol(path)
        if "+" in mode:
            raise InvalidInputError(
                f"Cannot open {path!r} in mode {mode!r}: a value is read whole or written "
                "whole. Open it with 'rb' to read, 'wb' (or 'ab', 'xb') to write."
            )
        if "r" in mode:
            return io.BytesIO(self.cat_file(path))
        self._check_writable(path)
        validate_key(path)
        if "x" in mode and path in self._staged:
            raise FileExistsError(path)
        file = _StagingFile(self, path)
        if "a" in mode and path in self._staged:
            file.write(self.cat_file(path))
        return file

    # -- listing -----------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        path = self._strip_protocol(path).strip("/")
        children = self._staged.list_dir(path)
        if not children:
            if path and path in self._staged:
                entries = [self.info(path)]
                return entries if detail else [path]
            if path and not self._staged.is_dir(path):
                raise FileNotFoundError(path)
        names = sorted(children)
        if not detail:
            return names
        return [
            {"name": n, "type": "directory", "size": 0} if is_dir else self._listed(n)
            for n, is_dir in sorted(children.items())
        ]

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.ls(path, detail, **kwargs)

    def isdir(self, path: str) -> bool:
        return self._staged.is_dir(self._strip_protocol(path).strip("/"))

    def isfile(self, path: str) -> bool:
        return self._strip_protocol(path) in self._staged

    async def _isdir(self, path: str) -> bool:
        return self.isdir(path)

    async def _isfile(self, path: str) -> bool:
        try:
            await self._staged.get_async(self._strip_protocol(path), self._warehouse_fs)
        except KeyError:
            return False
        return True

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        return self.exists(path)

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        if withdirs or maxdepth is not None:
            return AsyncFileSystem.find(
                self, path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs
            )
        path = self._strip_protocol(path).strip("/")
        keys = self._staged.keys_under(path)
        if detail:
            return {k: self._listed(k) for k in keys}
        return keys

    async def _find(
        self, path: str, maxdepth: int | None = None, withdirs: bool = False, **kwargs: Any
    ) -> Any:
        if withdirs or maxdepth is not None:
            return await super(ReferenceFileSystem, self)._find(
                path, maxdepth=maxdepth, withdirs=withdirs, **kwargs
            )
        return self.find(path, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path).strip("/")
        try:
            value = self._staged[path]
        except KeyError:
            if self._staged.is_dir(path):
                return {"name": path, "type": "directory", "size": 0}
            raise FileNotFoundError(path) from None
        entry = self._listed(path, value)
        if entry["size"] is None:  # a whole outside file: ask its filesystem
            self._policy.check(path, value[0])
            entry["size"] = self.fss[get_protocol(value[0])].size(value[0])
        return entry

    def _listed(self, path: str, value: Any = None) -> dict[str, Any]:
        """``path``'s entry in a listing (``ls``, ``find`` with ``detail``). The size of
        a reference to a whole outside file is None, as fsspec's ReferenceFileSystem
        lists it: a listing asks no other filesystem (thousands of requests on S3);
        ``info`` of that one key does."""
        if value is None:
            value = self._staged[path]
        size: int | None
        if isinstance(value, ObjectRef):
            size = value.size
        elif isinstance(value, list):
            size = value[2] if len(value) == 3 else None
        else:
            size = len(value)
        return {"name": path, "type": "file", "size": size}

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path).strip("/")
        try:
            value = await self._staged.get_async(path, self._warehouse_fs)
        except KeyError:
            return self.info(path)
        if isinstance(value, list) and len(value) == 1:
            self._policy.check(path, value[0])
            fs = self.fss[get_protocol(value[0])]
            return {"name": path, "type": "file", "size": await fs._size(value[0])}
        return self.info(path)

    # -- writes (staged) ---------------------------------------------------------------

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        sync(self.loop, self._pipe_file, path, value, mode=mode)

    async def _pipe_file(
        self, path: str, data: BytesLike, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        """Stage ``data`` as the value of ``path``; ``data`` may be any bytes-like
        object, read before this returns and not kept."""
        path = self._strip_protocol(path)
        self._check_writable(path)
        if mode == "create" and path in self._staged:
            raise FileExistsError(path)
        if is_metadata_key(path):
            self._staged[path] = bytes(data)  # small JSON, kept inline until the commit
            return
        self._staged.check_new_file(path)
        # chunks go to the warehouse now, as immutable content-addressed objects:
        # staging holds references only, so an edit of any size needs no memory, and
        # the commit writes just the manifest. A discarded edit leaves unreachable
        # objects, as a crash before the commit would (invariant 2).
        digest, written = await self._objects.put_async(
            self._warehouse_fs, data, stored=await self._stored_digest(path)
        )
        self._staged.stage_object(path, ObjectRef(digest, memoryview(data).nbytes), written)

    async def _stored_digest(self, key: str) -> str | None:
        """The digest of the warehouse object ``key`` holds now (staged, or in the
        version the transaction started from), if it holds one: that object is stored,
        so rewriting the same bytes needs no request to the warehouse."""
        try:
            value = await self._staged.get_async(key, self._warehouse_fs)
        except KeyError:
            return None
        return value.digest if isinstance(value, ObjectRef) else None

    async def _put_file(
        self, lpath: str, rpath: str, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        with open(lpath, "rb") as f:
            await self._pipe_file(rpath, f.read(), mode=mode)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        await self._rm(path)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Stage at ``path2`` the reference ``path1`` holds: copying (and ``mv``, a copy
        then a delete) reads and writes no bytes, so renaming an array is free."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        self._check_writable(path2)
        try:
            value = await self._staged.get_async(path1, self._warehouse_fs)
        except KeyError:
            if self._staged.is_dir(path1):
                return  # a folder exists through the keys below it, copied one by one
            raise FileNotFoundError(path1) from None
        self._staged.stage_copy(path2, value)

    async def _rm(self, path: Any, recursive: bool = False, **kwargs: Any) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        for p in paths:
            p = self._strip_protocol(p).strip("/")
            self._check_writable(p)
            if recursive:
                # the key ``p`` and everything below it, like rm -r
                keys = self._staged.keys_under(p)
                if not keys and p:
                    raise FileNotFoundError(p)
                for key in keys:
                    del self._staged[key]
            elif p in self._staged:
                del self._staged[p]
            elif self._staged.is_dir(p):
                raise IsADirectoryError(p)
            else:
                raise FileNotFoundError(p)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        sync(self.loop, self._rm, path, recursive=recursive)

    def save_json(self, url: str, **storage_options: Any) -> None:
        raise NotImplementedError(
            "Use Repository.checkout(...) to export a version as a reference set"
        )


def _source_filesystems(
    prefixes: tuple[str, ...],
    options: Mapping[str, Mapping[str, Any]],
    asynchronous: bool,
) -> dict[str | None, AsyncFileSystem]:
    """One filesystem per protocol of the allowed sources, async-capable."""
    protocols = {get_protocol(p) for p in prefixes} | {"file"}
    fss: dict[str | None, AsyncFileSystem] = {}
    for proto in protocols:
        opts = dict(options.get(proto, {}))
        cls = fsspec.get_filesystem_class(proto)
        if cls.async_impl:
            # async instances bind to the event loop they first run in: a new one each
            fss[proto] = (
                new_async_fs(cls, opts)
                if asynchronous
                else cls(**opts, asynchronous=False, skip_instance_cache=True)
            )
        else:
            fss[proto] = wrapped_fs(cls(**opts), asynchronous)
    fss[None] = fss["file"]
    return fss


def _unreachable(exc: ReferenceNotReachable) -> SourceUnavailableError:
    """fsspec's failure to read a virtual reference, said with the key, the source
    and what to do."""
    target = exc.target[0] if isinstance(exc.target, list) else exc.target
    cause = exc.__cause__ or exc.__context__
    why = f"{type(cause).__name__}: {cause}" if cause is not None else "it cannot be read"
    return SourceUnavailableError(
        f"Cannot read key {exc.reference!r} from its source {target} ({why}). The file "
        "was moved or deleted, or its server cannot be reached: restore the file, check "
        "the connection and credentials (storage options), or commit references to its "
        "new place."
    )
