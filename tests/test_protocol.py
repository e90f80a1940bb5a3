"""``snapref://`` URLs, as users of xarray, zarr, fsspec and dask type them: every
``@REF`` form of the CLI, ``as_of``, pinned versions, cheap pickles for dask workers,
and the same on a warehouse on S3."""

from __future__ import annotations

import importlib.metadata
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import fsspec
import numpy as np
import pytest
import s3fs
import xarray as xr
import zarr
from kerchunk.hdf import SingleHdf5ToZarr

import snapref
from snapref.protocol import SnaprefFileSystem, parse_url
from tests.conftest import make_hdf5, temp_values
from tests.s3_fixtures import BUCKET


@pytest.fixture
def versions(air: snapref.Repository) -> snapref.Repository:
    """``air`` with three versions: 1 imported, 2 and 3 each set ``temp[0, 0, 0]``
    (to 2.0 and 3.0); version 2 is tagged ``v2025-qc``, branch ``fix`` points at 1."""
    for value in (2.0, 3.0):
        with air.transaction("air", message=f"set {value}") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = value
    air.tag("air", 2, "v2025-qc")
    air.branch("air", "fix", 1)
    return air


def _first(version: int) -> float:
    return float(temp_values()[0, 0, 0]) if version == 1 else float(version)


def test_installed_package_registers_the_protocol() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="fsspec.specs")}
    assert names["snapref"] == "snapref.protocol:SnaprefFileSystem"
    assert fsspec.get_filesystem_class("snapref") is SnaprefFileSystem


def test_parse_url() -> None:
    assert parse_url("snapref://air@3") == ("air", "3", "")
    assert parse_url("snapref://air@v2025-qc/temp/0.0.0") == ("air", "v2025-qc", "temp/0.0.0")
    assert parse_url("snapref://air/") == ("air", None, "")
    assert parse_url("temp/.zarray") == (None, None, "temp/.zarray")
    for bad in ("snapref://", "snapref://@3", "snapref://air@"):
        with pytest.raises(snapref.InvalidInputError, match="snapref://NAME"):
            parse_url(bad)


def test_xarray_opens_every_ref_form_of_the_cli(versions: snapref.Repository) -> None:
    opts = {"repo": versions.url}
    snap2 = versions.resolve("air", 2)
    cases = {
        "snapref://air@1": 1,
        "snapref://air@3": 3,
        "snapref://air": 3,  # head of main
        "snapref://air@main": 3,
        "snapref://air@v2025-qc": 2,  # tag
        "snapref://air@fix": 1,  # branch
        f"snapref://air@{snap2.id[:8]}": 2,  # id prefix
        f"snapref://air@{snap2.id}": 2,
    }
    for url, version in cases.items():
        ds = xr.open_zarr(url, storage_options=opts, consolidated=False)
        assert float(ds["temp"][0, 0, 0]) == _first(version), url
        np.testing.assert_array_equal(ds["temp"][1:].values, temp_values()[1:])


def test_zarr_and_fsspec_forms(versions: snapref.Repository, tmp_path: Path) -> None:
    opts = {"repo": str(tmp_path / "warehouse")}  # a plain path works as well as a URL
    g = zarr.open_group("snapref://air@v2025-qc", mode="r", storage_options=opts)
    assert g["temp"][0, 0, 0] == 2.0
    assert g["temp"].attrs["units"] == "K"
    assert sorted(g.array_keys()) == ["lat", "lon", "temp", "time"]
    # a path inside the dataset
    temp = zarr.open_array("snapref://air@1/temp", mode="r", storage_options=opts)
    np.testing.assert_array_equal(temp[:], temp_values())

    fs = fsspec.filesystem("snapref", repo=versions.url, dataset="air", version=3)
    assert fs.ls("", detail=False) == [".zattrs", ".zgroup", "lat", "lon", "temp", "time"]
    assert fs.cat_file("snapref://air@3/temp/.zattrs") == fs.cat_file("temp/.zattrs")
    mapper = fs.get_mapper("")
    assert zarr.open_group(mapper, mode="r")["temp"][0, 0, 0] == 3.0
    with fsspec.open("snapref://air@1/temp/.zattrs", "rb", repo=versions.url) as f:
        assert b"air temperature" in f.read()
    assert fs.unstrip_protocol("temp/0.0.0") == f"snapref://air@{fs.snapshot.id}/temp/0.0.0"


def test_as_of_picks_the_version_current_then(versions: snapref.Repository) -> None:
    time.sleep(0.01)
    between = datetime.now(UTC)  # version 3 is the head of main
    time.sleep(0.01)
    with versions.transaction("air", message="set 4") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 4.0
    opts = {"repo": versions.url, "as_of": between}
    ds = xr.open_zarr("snapref://air", storage_options=opts, consolidated=False)
    assert float(ds["temp"][0, 0, 0]) == 3.0
    iso = {"repo": versions.url, "as_of": between.isoformat()}
    assert zarr.open_group("snapref://air", mode="r", storage_options=iso)["temp"][0, 0, 0] == 3.0
    with pytest.raises(snapref.InvalidInputError, match="either a version or as_of"):
        zarr.open_group("snapref://air@3", mode="r", storage_options=opts)
    with pytest.raises(snapref.VersionNotFoundError):
        fsspec.filesystem(
            "snapref", repo=versions.url, dataset="air", as_of=datetime(2000, 1, 1, tzinfo=UTC)
        )


def test_a_filesystem_stays_on_the_version_it_resolved(versions: snapref.Repository) -> None:
    fs = fsspec.filesystem("snapref", repo=versions.url, dataset="air")  # main, now 3
    with versions.transaction("air", message="set 4") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 4.0
    assert zarr.open_group(fs.get_mapper(""), mode="r")["temp"][0, 0, 0] == 3.0
    # zarr rebuilds an async twin from storage_options: it must not move to 4
    assert fs.storage_options["version"] == fs.snapshot.id
    opened = xr.open_zarr(
        "snapref://air", storage_options={"repo": versions.url}, consolidated=False
    )
    assert float(opened["temp"][0, 0, 0]) == 4.0


def test_errors_say_what_to_do(versions: snapref.Repository, monkeypatch: Any) -> None:
    monkeypatch.delenv("SNAPREF_REPO", raising=False)
    with pytest.raises(snapref.InvalidInputError, match="storage_options=\\{'repo': URL\\}"):
        zarr.open_group("snapref://air", mode="r", storage_options={})
    with pytest.raises(snapref.InvalidInputError, match="Name the dataset"):
        fsspec.filesystem("snapref", repo=versions.url)
    with pytest.raises(snapref.VersionNotFoundError, match="no version '9'"):
        zarr.open_group("snapref://air@9", mode="r", storage_options={"repo": versions.url})
    with pytest.raises(snapref.DatasetNotFoundError):
        zarr.open_group("snapref://sea", mode="r", storage_options={"repo": versions.url})
    # the URL and the options may both name the version, if they agree
    both = {"repo": versions.url, "version": 1}
    assert zarr.open_group("snapref://air@1", mode="r", storage_options=both)["temp"][0, 0, 0] == (
        _first(1)
    )
    with pytest.raises(snapref.InvalidInputError, match=r"URL names version '1'.*version=2"):
        zarr.open_group("snapref://air@1", mode="r", storage_options={**both, "version": 2})
    # the repository may also come from the environment, like the CLI's
    monkeypatch.setenv("SNAPREF_REPO", versions.url)
    g = zarr.open_group("snapref://air@1", mode="r", storage_options={})
    assert g["temp"][0, 0, 0] == _first(1)
    # read-only: writes through a URL never stage or commit anything
    g = zarr.open_group("snapref://air", mode="a", storage_options={"repo": versions.url})
    with pytest.raises(snapref.ReadOnlyError, match="Open a transaction"):
        g["temp"][0, 0, 0] = 99.0
    assert versions.head("air").version == 3


def test_pickles_small_and_reconnects(versions: snapref.Repository) -> None:
    fs = fsspec.filesystem("snapref", repo=versions.url, dataset="air", version="v2025-qc")
    payload = pickle.dumps(fs)
    assert len(payload) < 600  # URL, options, dataset, snapshot id: never the manifest
    assert b"temp/0.0.0" not in payload and b"PAR1" not in payload
    copy = pickle.loads(payload)
    assert copy is not fs and copy == fs and copy.snapshot == fs.snapshot
    keys = fs.find("temp")
    assert copy.cat(keys) == fs.cat(keys)

    # the zarr store xarray builds from a URL pickles the same way
    ds = xr.open_zarr(
        "snapref://air@2", storage_options={"repo": versions.url}, consolidated=False, chunks={}
    )
    store = zarr.open_group("snapref://air@2", mode="r", storage_options={"repo": versions.url})
    assert len(pickle.dumps(store.store)) < 800
    # a lazy dataset, as a dask worker receives its tasks: unpickled, then computed
    lazy = pickle.loads(pickle.dumps(ds))
    assert isinstance(lazy["temp"].data, dask.array.Array)
    with dask.config.set(scheduler="sync"):
        values = lazy["temp"].values
    expected = temp_values()
    expected[0, 0, 0] = 2.0
    np.testing.assert_array_equal(values, expected)


def test_repository_filesystems_pickle_the_same_way(versions: snapref.Repository) -> None:
    fs = versions.filesystem("air", 3)
    assert isinstance(fs, SnaprefFileSystem)
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.cat_file("temp/0.0.0") == fs.cat_file("temp/0.0.0")
    store = pickle.loads(pickle.dumps(versions.store("air", 1)))
    assert zarr.open_group(store, mode="r")["temp"][0, 0, 0] == _first(1)


def test_dask_threads_read_many_chunks_through_one_url(versions: snapref.Repository) -> None:
    ds = xr.open_zarr(
        "snapref://air@3", storage_options={"repo": versions.url}, consolidated=False, chunks={}
    )
    assert ds["temp"].data.npartitions == 24
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=4):
        total = ds["temp"].sum().compute()
    assert time.perf_counter() - start < 10
    expected = temp_values()
    expected[0, 0, 0] = 3.0
    assert float(total) == pytest.approx(float(expected.sum(dtype="float64")), rel=1e-6)


def test_s3_warehouse_by_url(
    s3_bucket: dict[str, Any], s3_fs: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    local = make_hdf5(tmp_path / "air.h5")
    s3_fs.put_file(str(local), f"{BUCKET}/source/air.h5")
    refs = SingleHdf5ToZarr(
        f"s3://{BUCKET}/source/air.h5", storage_options=s3_bucket, inline_threshold=500
    ).translate()
    url = f"s3://{BUCKET}/wh"
    with snapref.init(
        url, catalog=f"sqlite:///{tmp_path / 'c.db'}", storage_options=s3_bucket
    ) as r:
        r.import_references("air", refs, message="import")
        with r.transaction("air", message="edit") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][7, 39, 59] = -1.0
        r.tag("air", 1, "original")

    opts = {"repo": url, "repo_options": s3_bucket}  # sources on s3 share these options
    edited = xr.open_zarr("snapref://air", storage_options=opts, consolidated=False)
    assert float(edited["temp"][7, 39, 59]) == -1.0
    original = zarr.open_group("snapref://air@original", mode="r", storage_options=opts)
    np.testing.assert_array_equal(original["temp"][:], temp_values())

    fs = fsspec.filesystem("snapref", dataset="air", version=2, **opts)
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.cat_file("temp/3.1.2") == fs.cat_file("temp/3.1.2")  # a warehouse object
    assert copy.cat_file("temp/0.0.0") == fs.cat_file("temp/0.0.0")  # a virtual range on S3
