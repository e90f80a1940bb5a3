"""The main journey on the embedded default: adopt kerchunk references to an HDF5
file nobody may change, edit with zarr and xarray, commit, and travel in time."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import FsspecStore

import snapref
from snapref.manifest import ObjectRef
from tests.conftest import TEMP_SHAPE, temp_values

# every test here runs on SQLite, PostgreSQL and duckdb catalogs (tests/conftest.py)
pytestmark = pytest.mark.all_catalogs


def _objects(repo: snapref.Repository) -> set[str]:
    root = Path(repo.warehouse.root) / "objects"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_keeps_references_virtual(air: snapref.Repository, hdf5_file: Path) -> None:
    snap = air.head("air")
    assert snap.version == 1
    assert snap.summary["chunks_added"] == 24 + 3  # temp chunks + time/lat/lon
    g = snapref.open(air, "air")
    np.testing.assert_array_equal(g["temp"][:], temp_values())
    np.testing.assert_array_equal(g["lat"][:], np.linspace(-10, 10, TEMP_SHAPE[1]))
    assert g["temp"].attrs["units"] == "K"
    # the big chunks were not copied: only the small inline coordinate arrays are objects
    manifest = air.manifest(snap)
    kinds = {
        type(manifest[k]).__name__ for k in manifest if k.startswith("temp/") and "/." not in k
    }
    assert kinds == {"VirtualRef"}
    assert air.sources("air") == [f"file://{hdf5_file.parent}/"]


def test_blog_scenario_edit_commit_time_travel(air: snapref.Repository, hdf5_file: Path) -> None:
    h5_before = _sha(hdf5_file)
    objects_before = _objects(air)
    with air.transaction("air", message="Halve a bad patch") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][1, 5, 10:14] /= 2  # inside one chunk
        g["temp"][7, 39, 59] = -1.0  # the last chunk
    assert tx.snapshot is not None and tx.snapshot.version == 2
    assert tx.snapshot.summary["chunks_modified"] == 2
    new_objects = _objects(air) - objects_before
    assert len(new_objects) == 2  # exactly the changed chunks

    expected = temp_values()
    expected[1, 5, 10:14] /= 2
    expected[7, 39, 59] = -1.0
    np.testing.assert_array_equal(snapref.open(air, "air")["temp"][:], expected)
    np.testing.assert_array_equal(snapref.open(air, "air", version=1)["temp"][:], temp_values())
    # the HDF5 file was never touched
    assert _sha(hdf5_file) == h5_before
    with h5py.File(hdf5_file) as f:
        np.testing.assert_array_equal(f["temp"][:], temp_values())


def test_versions_read_back_bit_identical(air: snapref.Repository) -> None:
    for i in range(5):
        with air.transaction("air", message=f"edit {i}") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][i % 8, 0, 0] = 1000 + i
    for version in range(1, 7):
        values = snapref.open(air, "air", version=version)["temp"][:, 0, 0]
        expected = temp_values()[:, 0, 0].copy()
        for i in range(version - 1):
            expected[i % 8] = 1000 + i
        np.testing.assert_array_equal(values, expected)
    assert [s.version for s in air.log("air")] == [6, 5, 4, 3, 2, 1]


def test_exception_discards_everything(air: snapref.Repository) -> None:
    objects_before = _objects(air)
    with pytest.raises(RuntimeError, match="boom"):
        with air.transaction("air", message="never") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0] = 1
            raise RuntimeError("boom")
    assert air.head("air").version == 1
    np.testing.assert_array_equal(snapref.open(air, "air")["temp"][:], temp_values())
    # chunks were stored while staging; nothing reaches them (garbage collection's job)
    orphans = _objects(air) - objects_before
    assert len(orphans) == 6  # temp[0] lies in 2 x 3 chunks
    manifest = air.manifest(air.head("air"))
    reachable = {r.digest for r in manifest.values() if isinstance(r, ObjectRef)}
    assert not orphans & reachable


def test_create_and_delete_arrays_and_attributes(air: snapref.Repository) -> None:
    with air.transaction("air", message="Add a mask, drop lon, tag attrs") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        mask = g.create_array("mask", shape=(40, 60), chunks=(20, 20), dtype="bool")
        mask[:] = True
        mask[0:20, 0:20] = False
        del g["lon"]
        g["temp"].attrs["qc"] = "v1"
    g2 = snapref.open(air, "air")
    assert "mask" in g2 and "lon" not in g2
    assert g2["mask"][:].sum() == 40 * 60 - 400
    assert g2["temp"].attrs["qc"] == "v1"
    g1 = snapref.open(air, "air", version=1)
    assert "lon" in g1 and "mask" not in g1 and "qc" not in g1["temp"].attrs


def test_identical_bytes_are_stored_once(air: snapref.Repository) -> None:
    with air.transaction("air", message="two equal chunks") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][0:2, 0:20, 0:20] = 1
        g["temp"][2:4, 0:20, 0:20] = 1
    assert tx.snapshot is not None
    assert tx.snapshot.summary["chunks_modified"] == 2
    assert tx.snapshot.summary["objects_written"] == 1
    # writing the same values again changes nothing: no version, no object
    before = _objects(air)
    with air.transaction("air", message="again") as tx2:
        zarr.open_group(tx2.store, mode="r+")["temp"][0:2, 0:20, 0:20] = 1
    assert tx2.snapshot is None
    assert air.head("air").version == 2
    assert _objects(air) == before


def test_xarray_reads_old_and_new(air: snapref.Repository, kerchunk_refs: dict[str, Any]) -> None:
    with air.transaction("air", message="warm") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0] += 10
    ds_new = snapref.open_dataset(air, "air")
    ds_old = snapref.open_dataset(air, "air", version=1)
    assert ds_new["temp"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(ds_new["temp"].values[0], temp_values()[0] + 10)
    np.testing.assert_allclose(ds_old["temp"].values, temp_values())
    # exactly what xarray makes of the plain kerchunk references (CF decoding included)
    plain = fsspec.filesystem("reference", fo=kerchunk_refs, asynchronous=True)
    ds_plain = xr.open_dataset(FsspecStore(plain, path=""), engine="zarr", consolidated=False)
    xr.testing.assert_identical(ds_old, ds_plain)


def test_transaction_commit_and_discard_without_with(air: snapref.Repository) -> None:
    tx = air.transaction("air", message="explicit")
    zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    snap = tx.commit()
    assert snap is not None and snap.version == 2
    with pytest.raises(snapref.TransactionClosedError):
        tx.commit()
    tx2 = air.transaction("air", message="dropped")
    zarr.open_group(tx2.store, mode="r+")["temp"][0, 0, 0] = 2
    tx2.discard()
    assert air.head("air").version == 2
    assert snapref.open(air, "air")["temp"][0, 0, 0] == 1


def test_tx_fs_is_a_sync_fsspec_view_of_the_staged_state(air: snapref.Repository) -> None:
    with air.transaction("air", message="via fs") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"].attrs["via"] = "store"
        attrs: Any = tx.fs.cat_file("temp/.zattrs")
        assert b'"via"' in attrs
        assert "temp/0.0.0" in tx.fs.ls("temp", detail=False)
        tx.fs.pipe_file("notes.txt", b"hello")
        assert tx.fs.cat_file("notes.txt") == b"hello"
    fs = air.filesystem("air")
    assert fs.cat_file("notes.txt") == b"hello"
    with pytest.raises(snapref.ReadOnlyError):
        fs.pipe_file("notes.txt", b"nope")


def test_files_written_with_open_are_staged(air: snapref.Repository) -> None:
    with air.transaction("air", message="notes") as tx:
        with tx.fs.open("notes/readme.txt", "wb") as f:
            f.write(b"calibrated ")
            f.write(b"2026-11")
    assert air.filesystem("air").cat_file("notes/readme.txt") == b"calibrated 2026-11"


def test_writes_after_the_commit_are_refused(air: snapref.Repository) -> None:
    with air.transaction("air", message="edit") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][0, 0, 0] = 1
    with pytest.raises(snapref.TransactionClosedError, match="closed"):
        tx.fs.pipe_file("temp/0.0.0", b"late")
    with pytest.raises(snapref.TransactionClosedError):
        g["temp"][0, 0, 0] = 2
    assert air.head("air").version == 2
