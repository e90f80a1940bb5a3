"""zarr's own store conformance suite (``zarr.testing.store.StoreTests``), run on the
store a transaction hands out, with keys staged in the transaction and with keys that
live in the committed version underneath: inline, warehouse objects, virtual byte
ranges of outside files, and chunks in the manifest sections of arrays."""

from __future__ import annotations

import functools
import inspect
import mmap
import os
import pickle
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import SupportsDeleteSync, SupportsGetSync, SupportsSetSync
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import _collect_aiterator, sync
from zarr.testing.store import StoreTests
from zarr.testing.utils import assert_bytes_equal

import snapref
from snapref import objects
from snapref.fs import StagedReferences
from snapref.keys import is_metadata_key
from snapref.manifest import InlineRef, ManifestWriter, ObjectRef, Ref, VirtualRef
from snapref.store import SnapshotStore
from snapref.transaction import Transaction


def _on_zarr_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)  # keeps its marks (parametrize) and signature (fixtures)
    def run(*args: Any, **kwargs: Any) -> None:
        sync(test(*args, **kwargs))

    return run


class _RunsOnZarrLoop:
    """Runs the async tests of a subclass on zarr's event loop, where zarr's sync API
    runs every store call (the project does not use pytest-asyncio)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            test = getattr(cls, name)
            if name.startswith("test_") and inspect.iscoroutinefunction(test):
                setattr(cls, name, _on_zarr_loop(test))


@pytest.fixture
def empty_repo(tmp_path: Path) -> Iterator[snapref.Repository]:
    """A fresh repository with dataset ``ds``, holding only a root ``.zgroup``."""
    r = snapref.init(str(tmp_path / "wh"))
    r.import_references(
        "ds", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}}, message="empty"
    )
    yield r
    r.close()


@pytest.fixture
def tx(empty_repo: snapref.Repository, tmp_path: Path) -> Transaction:
    source = tmp_path / "source"
    source.mkdir()
    tx = empty_repo.transaction("ds", message="conformance", allow_sources=[f"file://{source}/"])
    # StoreTests starts from an empty store. The dataset's only key is deleted in the
    # staging layer, so every listing must also hide a committed key deleted since.
    del tx.staged[".zgroup"]
    return tx


def _commit_below(staged: StagedReferences, changes: dict[str, Ref]) -> None:
    """Make ``changes`` part of the version under the staging layer."""
    staged.base = ManifestWriter(staged.base).write(changes).manifest
    for key in changes:
        staged.unstage(key)


class TestTransactionStore(_RunsOnZarrLoop, StoreTests[SnapshotStore, cpu.Buffer]):
    """``set`` stages bytes in the transaction, as a write through zarr would."""

    store_cls = SnapshotStore
    buffer_cls = cpu.Buffer

    async def set(self, store: SnapshotStore, key: str, value: Buffer) -> None:
        store.fs.staged[key] = value.to_bytes()

    async def get(self, store: SnapshotStore, key: str) -> Buffer:
        data = store.fs.staged[key]
        if isinstance(data, ObjectRef):  # chunks are stored as objects while staging
            data = store.fs._objects.get(data.digest)
        assert isinstance(data, bytes), f"{key!r} is not staged: {data!r}"
        return self.buffer_cls.from_bytes(data)

    @pytest.fixture
    def store_kwargs(self, tx: Transaction) -> dict[str, Any]:
        return {"fs": tx.store.fs, "path": tx.store.path}

    @pytest.fixture
    def store(self, tx: Transaction) -> SnapshotStore:
        return tx.store

    @pytest.fixture
    def store_not_open(self, store_kwargs: dict[str, Any]) -> SnapshotStore:
        return self.store_cls(**store_kwargs)

    def test_store_repr(self, store: SnapshotStore) -> None:
        assert repr(store) == "<SnapshotStore(writable, path='')>"
        assert repr(store.with_read_only(True)) == "<SnapshotStore(read-only, path='')>"

    def test_store_supports_writes(self, store: SnapshotStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SnapshotStore) -> None:
        assert store.supports_listing

    async def test_serializable_store(self, store: SnapshotStore) -> None:
        # Overridden: the transaction's staged edits live in this process. A pickled
        # copy of its writable store (on a dask worker, say) could write, but nothing
        # it wrote would ever be committed, so snapref refuses to pickle it. A
        # read-only view pickles to a copy of the state it shows, equal to the view.
        with pytest.raises(TypeError, match="would never be committed"):
            pickle.dumps(store)
        data = self.buffer_cls.from_bytes(b"\x01\x02\x03\x04")
        await store.set("foo", data)
        reader = store.with_read_only(True)
        copy = pickle.loads(pickle.dumps(reader))
        assert copy == reader
        assert copy.read_only
        assert_bytes_equal(await copy.get("foo", prototype=default_buffer_prototype()), data)
        # the view follows the transaction; the copy keeps what it was given
        await store.set("foo", self.buffer_cls.from_bytes(b"\x05"))
        assert copy != reader
        assert_bytes_equal(await copy.get("foo", prototype=default_buffer_prototype()), data)
        with pytest.raises(snapref.ReadOnlyError):
            copy.with_read_only(False)

    async def test_exists_is_about_keys_not_folders(self, store: SnapshotStore) -> None:
        await self.set(store, "foo/c/0", self.buffer_cls.from_bytes(b"\x01"))
        assert await store.exists("foo/c/0")
        assert not await store.exists("foo")
        assert not await store.exists("foo/c")
        with pytest.raises(FileNotFoundError):
            await store.getsize("foo")
        assert await store.getsize_prefix("foo") == 1

    # zarr's synchronous IO (get_sync/set_sync/delete_sync) is an optional fast path
    # for local and in-memory stores, used only when a store has all three. This store
    # reads manifests and virtual references through fsspec's async API and has none,
    # like zarr's own FsspecStore, so zarr takes the async path. Overridden to check
    # exactly that, instead of skipping.

    def test_get_sync(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_get_sync_missing(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_set_sync(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_delete_sync(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_delete_sync_missing(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_sync_async_set_get_parity(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_delete_sync_visible_to_async_get(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)

    def test_get_sync_byte_range_parity(self, store: SnapshotStore) -> None:
        _assert_no_sync_io(store)


def _assert_no_sync_io(store: SnapshotStore) -> None:
    for protocol in (SupportsGetSync, SupportsSetSync, SupportsDeleteSync):
        assert not isinstance(store, protocol)


class _CommittedKeys(TestTransactionStore):
    """``set`` puts keys into the committed version under the transaction instead of
    the staging layer, so that every store method also runs on manifest references."""

    @pytest.fixture(autouse=True)
    def _bind(self, tx: Transaction, tmp_path: Path) -> None:
        self.tx = tx
        self.source = tmp_path / "source"

    def ref(self, key: str, data: bytes) -> Ref:
        raise NotImplementedError

    async def set(self, store: SnapshotStore, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        ref = InlineRef(data) if is_metadata_key(key) else self.ref(key, data)
        _commit_below(store.fs.staged, {key: ref})


class TestTransactionStoreOverObjects(_CommittedKeys):
    def ref(self, key: str, data: bytes) -> Ref:
        digest, _ = self.tx.repo.objects.put(data)
        return ObjectRef(digest, len(data))


class TestTransactionStoreOverVirtualReferences(_CommittedKeys):
    def ref(self, key: str, data: bytes) -> Ref:
        path = self.source / key.replace("/", "_")
        if not data:
            path.write_bytes(b"")
            return VirtualRef(f"file://{path}")
        # padding on both sides: no byte range may reach outside the reference
        path.write_bytes(b"<before>" + data + b"<after>")
        return VirtualRef(f"file://{path}", len(b"<before>"), len(data))


class TestTransactionStoreOverArrayChunks(TestTransactionStoreOverObjects):
    """The committed version has arrays at the root and at ``foo``, so keys such as
    ``c/0``, ``7`` and ``foo/c/0.0`` go to the arrays' manifest sections. Their
    metadata is staged as deleted, which leaves the store empty to begin with."""

    @pytest.fixture(autouse=True)
    def _arrays(self, _bind: None) -> None:
        array = b'{"zarr_format": 3, "node_type": "array"}'
        staged = self.tx.staged
        _commit_below(staged, {"zarr.json": InlineRef(array), "foo/zarr.json": InlineRef(array)})
        assert staged.base.arrays == {"", "foo"}
        del staged["zarr.json"], staged["foo/zarr.json"]


# -- what StoreTests does not reach: real arrays committed by zarr ------------------------


def _list(it: Any) -> list[str]:
    return sorted(sync(_collect_aiterator(it)))


def test_an_array_stays_listed_while_any_chunk_remains(empty_repo: snapref.Repository) -> None:
    with empty_repo.transaction("ds", message="array") as tx:
        a = zarr.create_array(tx.store, name="temp", shape=(4,), chunks=(1,), dtype="int8")
        a[:] = [1, 2, 3, 4]
    tx = empty_repo.transaction("ds", message="drop the first chunk and the metadata")
    del tx.staged["temp/c/0"], tx.staged["temp/zarr.json"]
    assert _list(tx.store.list_dir("")) == [".zgroup", "temp", "zarr.json"]
    assert tx.fs.ls("", detail=False) == [".zgroup", "temp", "zarr.json"]
    assert _list(tx.store.list_prefix("temp/")) == ["temp/c/1", "temp/c/2", "temp/c/3"]


def test_folders_inside_a_root_array(empty_repo: snapref.Repository) -> None:
    with empty_repo.transaction("ds", message="a root array") as tx:
        del tx.staged[".zgroup"]
        zarr.create_array(tx.store, shape=(3,), chunks=(1,), dtype="int8")[:] = [1, 2, 3]
    tx = empty_repo.transaction("ds", message="drop its chunks")
    assert tx.fs.isdir("c")
    assert tx.fs.ls("c", detail=False) == ["c/0", "c/1", "c/2"]
    sync(tx.store.delete_dir("c"))
    assert _list(tx.store.list()) == ["zarr.json"]
    np.testing.assert_array_equal(zarr.open_array(tx.store, mode="r")[:], [0, 0, 0])


def test_version_store_pickles_for_dask_workers(empty_repo: snapref.Repository) -> None:
    with empty_repo.transaction("ds", message="attrs") as tx:
        zarr.open_group(tx.store, mode="r+").attrs["title"] = "air"
    store = empty_repo.store("ds")
    copy = pickle.loads(pickle.dumps(store))
    assert copy == store
    assert copy != empty_repo.store("ds", version=1)
    assert zarr.open_group(copy, mode="r").attrs["title"] == "air"
    with pytest.raises(snapref.ReadOnlyError, match="Open a transaction"):
        store.with_read_only(False)


# -- the writable filesystem as fsspec users drive it --------------------------------------


def test_open_appends_creates_and_refuses_read_write(empty_repo: snapref.Repository) -> None:
    # "ab" started from nothing and "xb" replaced an existing file (both committed
    # what they wrote); "r+b" dropped every write
    with empty_repo.transaction("ds", message="notes") as tx:
        tx.fs.pipe_file("notes.txt", b"hello")
        with tx.fs.open("notes.txt", "ab") as f:
            f.write(b" world")
        assert tx.fs.cat_file("notes.txt") == b"hello world"
        with tx.fs.open("new.txt", "ab") as f:
            f.write(b"first")
        with pytest.raises(FileExistsError):
            tx.fs.open("notes.txt", "xb")
        with tx.fs.open("other.txt", "xb") as f:
            f.write(b"x")
        with pytest.raises(snapref.InvalidInputError, match="mode 'r\\+b'"):
            tx.fs.open("notes.txt", "r+b")
    with empty_repo.transaction("ds", message="more notes") as tx:
        with tx.fs.open("notes.txt", "ab") as f:  # from the committed version
            f.write(b"!")
    fs = empty_repo.filesystem("ds")
    assert [fs.cat_file(k) for k in ("notes.txt", "new.txt", "other.txt")] == [
        b"hello world!",
        b"first",
        b"x",
    ]


def test_a_key_is_never_a_file_and_a_folder(empty_repo: snapref.Repository) -> None:
    with empty_repo.transaction("ds", message="files") as tx:
        tx.fs.pipe_file("docs/readme", b"r")
        tx.fs.pipe_file("data.bin", b"d")
    tx = empty_repo.transaction("ds", message="clash")
    with pytest.raises(snapref.InvalidKeyError, match="'docs': it is a folder"):
        tx.fs.pipe_file("docs", b"x")
    with pytest.raises(snapref.InvalidKeyError, match=r"'data\.bin' is a file"):
        tx.fs.pipe_file("data.bin/part", b"x")
    tx.fs.pipe_file("docs/more", b"m")  # beside a file, inside a folder: fine
    assert tx.fs.find("") == [".zgroup", "data.bin", "docs/more", "docs/readme"]
    assert tx.fs.isfile("data.bin") and not tx.fs.isdir("data.bin")
    # below a group or a deleted array, made in this transaction, the same rule holds
    # (only an array's own folder is left to zarr)
    zarr.open_group(tx.store, mode="r+").create_group("new")
    tx.fs.pipe_file("new/notes", b"n")
    with pytest.raises(snapref.InvalidKeyError, match="'new/notes' is a file"):
        tx.fs.pipe_file("new/notes/more", b"x")
    # a file removed frees its name for a folder, in the same transaction
    tx.fs.rm("data.bin")
    tx.fs.pipe_file("data.bin/part", b"p")
    assert tx.commit() is not None
    assert empty_repo.filesystem("ds").cat_file("data.bin/part") == b"p"
    with empty_repo.transaction("ds", message="an array") as tx:
        zarr.create_array(tx.store, name="arr", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    with empty_repo.transaction("ds", message="its folder as files") as tx:
        tx.fs.rm("arr", recursive=True)
        tx.fs.pipe_file("arr/f", b"f")
        with pytest.raises(snapref.InvalidKeyError, match="'arr/f' is a file"):
            tx.fs.pipe_file("arr/f/g", b"g")
    # inside an array's folder, a key below a chunk (which is no chunk key) too
    with empty_repo.transaction("ds", message="below a chunk") as tx:
        zarr.create_array(tx.store, name="b", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    tx = empty_repo.transaction("ds", message="below a chunk")
    with pytest.raises(snapref.InvalidKeyError, match=r"'b/c/0' is a file"):
        tx.fs.pipe_file("b/c/0/extra", b"x")
    tx.fs.pipe_file("b/c/1", b"\0" * 8)  # chunks stay zarr's: no lookups of their parents


def test_rm_file_of_a_missing_key_or_a_folder_says_so(empty_repo: snapref.Repository) -> None:
    tx = empty_repo.transaction("ds", message="rm")
    tx.fs.pipe_file("sub/a", b"a")
    with pytest.raises(FileNotFoundError):
        tx.fs.rm_file("nope")
    with pytest.raises(IsADirectoryError):
        tx.fs.rm_file("sub")
    tx.fs.rm_file("sub/a")
    assert not tx.fs.exists("sub/a")


def test_listing_while_another_thread_stages(empty_repo: snapref.Repository) -> None:
    # zarr and fsspec stage from their own threads: a listing that read the staged
    # keys lazily failed with 'dictionary changed size during iteration'
    tx = empty_repo.transaction("ds", message="busy")
    for i in range(3):
        tx.fs.pipe_file(f"f{i}", b"x")
    listing = tx.staged._visible("")
    first = next(listing)
    tx.fs.pipe_file("f3", b"x")  # what another thread does meanwhile
    assert sorted([first, *listing]) == [".zgroup", "f0", "f1", "f2"]


def test_mv_renames_an_array_without_reading_or_writing_chunks(air: snapref.Repository) -> None:
    before = snapref.open(air, "air")["temp"][:]
    with air.transaction("air", message="rename temp") as tx:
        tx.fs.mv("temp", "temperature", recursive=True)
        with pytest.raises(FileNotFoundError):
            tx.fs.copy("nothing", "else")
    assert tx.snapshot is not None and tx.snapshot.summary["objects_written"] == 0
    group = snapref.open(air, "air")
    assert "temp" not in group and sorted(group) == ["lat", "lon", "temperature", "time"]
    np.testing.assert_array_equal(group["temperature"][:], before)
    manifest = air.manifest(tx.snapshot)
    chunks = [k for k in manifest if k.startswith("temperature/") and "/." not in k]
    assert len(chunks) == 24 and {type(manifest[k]) for k in chunks} == {VirtualRef}
    np.testing.assert_array_equal(snapref.open(air, "air", 1)["temp"][:], before)


def _write_uncompressed(repo: snapref.Repository, values: np.ndarray, chunks: Any) -> None:
    """Commit ``values`` to dataset ``ds`` as array ``v`` (zarr v2, no compressor), so
    each chunk object holds exactly its values' bytes."""
    with repo.transaction("ds", message="write") as tx:
        zarr.create_array(
            tx.store,
            name="v",
            shape=values.shape,
            chunks=chunks,
            dtype=values.dtype,
            compressors=None,
            zarr_format=2,
        )[:] = values


def test_large_chunks_reach_zarr_as_a_checked_map_of_their_file(
    empty_repo: snapref.Repository,
) -> None:
    """A chunk object of 256 KiB or more in a local warehouse is handed to zarr as a
    memory map of its file (no copy): the same values, the same checks, and an edit
    of part of it leaves the committed object as it was."""
    values = np.arange(512 * 1024, dtype="float64").reshape(512, 1024)  # 2 chunks, 2 MiB
    _write_uncompressed(empty_repo, values, (512, 512))
    group = snapref.open(empty_repo, "ds")
    ref = empty_repo.manifest(empty_repo.head("ds")).get("v/0.1")
    assert isinstance(ref, ObjectRef)
    path = Path(empty_repo.objects.path(ref.digest))
    assert path.stat().st_size >= objects._MAP_AT
    view = sync(group.store.fs._cat_view("v/0.1"))
    assert isinstance(view, mmap.mmap) == (sys.version_info >= (3, 13))  # mapped, not read
    assert np.array_equal(group["v"][:], values)
    with empty_repo.transaction("ds", message="edit") as tx:
        zarr.open_group(tx.store, mode="r+")["v"][0, 512] = -1.0
    assert snapref.open(empty_repo, "ds")["v"][0, 512] == -1.0
    assert np.array_equal(snapref.open(empty_repo, "ds", version=2)["v"][:], values)
    # one byte changed in place: an IntegrityError, never the changed value
    with path.open("r+b") as f:
        f.seek(8 * 7)
        f.write(b"\x01")
    with pytest.raises(snapref.IntegrityError, match="damaged"):
        snapref.open(empty_repo, "ds", version=2)["v"][0, 512 + 7]


def test_large_chunks_are_read_where_files_cannot_be_mapped(
    empty_repo: snapref.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.arange(512 * 512, dtype="float64").reshape(512, 512)  # one 2 MiB chunk
    _write_uncompressed(empty_repo, values, values.shape)

    def cannot_map(*args: Any, **kwargs: Any) -> Any:
        raise OSError(19, "No such device")  # what mmap says on a FUSE mount without it

    monkeypatch.setattr(mmap, "mmap", cannot_map)
    group = snapref.open(empty_repo, "ds")
    assert isinstance(sync(group.store.fs._cat_view("v/0.0")), bytes)
    assert np.array_equal(group["v"][:], values)


def test_a_listing_asks_no_source_for_the_size_of_whole_file_references(
    tmp_path: Path,
) -> None:
    """As fsspec's ReferenceFileSystem: ``ls``/``find`` with details list a reference
    to a whole outside file with size None, so listing a folder of them sends no
    request to their filesystem; ``info`` of one key asks for its size."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.bin").write_bytes(b"x" * (10 + i))
    refs = {"d/.zgroup": '{"zarr_format":2}'} | {
        f"d/f{i}": [str(src / f"{i}.bin")] for i in range(3)
    }
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("ds", {"version": 1, "refs": refs}, message="whole files")
    fs = repo.filesystem("ds")
    assert fs.info("d/f2")["size"] == 12
    (src / "1.bin").unlink()  # a listing does not notice: it stats nothing
    listed = {e["name"]: e["size"] for e in fs.ls("d", detail=True)}
    assert listed == {"d/.zgroup": 17, "d/f0": None, "d/f1": None, "d/f2": None}
    assert {k: v["size"] for k, v in fs.find("d", detail=True).items()} == listed
    assert fs.info("d/f0")["size"] == 10
    with pytest.raises(FileNotFoundError):
        fs.info("d/f1")
    repo.close()


def test_mapped_chunks_hold_no_file_descriptors(empty_repo: snapref.Repository) -> None:
    """A map kept a duplicate of its file's descriptor until freed, so a server with
    a thousand chunk reads in flight ran out of descriptors ("Too many open files")."""
    values = np.arange(40 * 32768, dtype="float64").reshape(40, 32768)  # 40 chunks, 256 KiB
    _write_uncompressed(empty_repo, values, (1, 32768))
    fs = snapref.open(empty_repo, "ds").store.fs
    before = len(os.listdir("/proc/self/fd"))
    held = [sync(fs._cat_view(f"v/{i}.0")) for i in range(40)]
    assert all(isinstance(b, mmap.mmap) for b in held) == (sys.version_info >= (3, 13))
    assert len(os.listdir("/proc/self/fd")) - before < 5
    assert np.frombuffer(held[7], dtype="float64")[0] == values[7, 0]
