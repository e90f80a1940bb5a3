"""The zarr 3 store of a version or of a transaction, held to zarr's store
conformance suite (tests/test_store_conformance.py).

Its own module, so that zarr is imported only by what opens arrays: ``import
snapref`` and the commands that only read the catalog (``snapref log``, ``tag``,
``diff``, ...) do without it (~250 ms of a process's start).
"""

from __future__ import annotations

from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore

from snapref.fs import SnapshotFileSystem

__all__ = ["SnapshotStore"]


class SnapshotStore(FsspecStore):
    """The zarr store of a version (read-only) or of a transaction (writable).

    An ``FsspecStore`` over a :class:`SnapshotFileSystem`, which differs in five ways:

    - a read-only store reads through a read-only view of the filesystem, so nothing
      can be written through ``store.fs`` either, and pickling the store (for dask
      workers) copies exactly the state it shows; ``with_read_only(False)`` returns to
      the transaction's writable filesystem;
    - a writable store cannot be pickled (see :meth:`SnapshotFileSystem.__reduce__`);
    - ``exists`` and ``getsize`` are about keys, not folders, as in ``LocalStore``;
    - ``clear`` stages the deletion of every key at once;
    - ``set`` hands zarr's buffer to the filesystem without copying it.

    Raises
    ------
    ReadOnlyError
        When asked for a writable store over a view of a committed version.
    """

    fs: SnapshotFileSystem

    def __init__(
        self,
        fs: SnapshotFileSystem,
        read_only: bool = False,
        path: str = "",
        allowed_exceptions: tuple[type[Exception], ...] = (
            FileNotFoundError,
            IsADirectoryError,
            NotADirectoryError,
        ),
    ) -> None:
        fs = fs.read_only_view() if read_only else fs.writable()
        super().__init__(fs, read_only=read_only, path=path, allowed_exceptions=allowed_exceptions)

    @property
    def supports_consolidated_metadata(self) -> bool:
        """False: a version's metadata is listed from its manifest, and a consolidated
        copy would go stale with the next edit (see
        :func:`snapref.keys.without_consolidated`). zarr and xarray then neither write
        nor look for it, as with Icechunk's store."""
        return False

    def with_read_only(self, read_only: bool = False) -> SnapshotStore:
        return type(self)(
            self.fs, read_only=read_only, path=self.path, allowed_exceptions=self.allowed_exceptions
        )

    def __reduce__(self) -> Any:
        return type(self), (self.fs, self.read_only, self.path, self.allowed_exceptions)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"<SnapshotStore({mode}, path={self.path!r})>"

    def _fs_path(self, key: str) -> str:
        root = self.path.rstrip("/")
        return (f"{root}/{key}" if root else key).rstrip("/")

    async def set(self, key: str, value: Buffer, byte_range: tuple[int, int] | None = None) -> None:
        """As ``FsspecStore.set``, without its copy of every chunk (``to_bytes()``, on
        the event loop's thread): the filesystem hashes and writes zarr's own buffer,
        which zarr keeps unchanged until this returns."""
        if byte_range is not None or not isinstance(value, Buffer):
            return await super().set(key, value, byte_range)
        if not self._is_open:
            await self._open()
        self._check_writable()
        await self.fs._pipe_file(self._fs_path(key), value.as_buffer_like())

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """As ``FsspecStore.get``; a whole chunk stored as a large local object is
        handed to zarr as a memory map of its file, not a copy (``_cat_view``)."""
        if byte_range is not None:
            return await super().get(key, prototype, byte_range)
        if not self._is_open:
            await self._open()
        try:
            data = await self.fs._cat_view(self._fs_path(key))
            return prototype.buffer.from_bytes(memoryview(data))
        except self.allowed_exceptions:
            return None

    async def exists(self, key: str) -> bool:
        return await self.fs._isfile(self._fs_path(key))

    async def getsize(self, key: str) -> int:
        info = await self.fs._info(self._fs_path(key))
        if info["type"] != "file":
            raise FileNotFoundError(key)
        return int(info["size"])

    async def clear(self) -> None:
        await self.delete_dir("")
