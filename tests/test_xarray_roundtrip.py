"""xarray in and out of a transaction: ``ds.to_zarr(tx.store)`` writes a new dataset or
appends along ``time``, each commit records exactly the new and changed chunks, and
versions read back lazily through dask.

Choices (see docs/integrations.md): ``consolidated=False`` always — snapref lists
metadata from the manifest, and a consolidated copy would be one more key to rewrite
and to let go stale; ``zarr_format`` 2 or 3 both work (appends keep the format of the
existing dataset), 2 stays readable by kerchunk tooling and zarr-python 2.
"""

from __future__ import annotations

import dask
import dask.array
import numpy as np
import pytest
import xarray as xr
import zarr

import snapref
from tests.conftest import TEMP_SHAPE, temp_values

EMPTY_ROOT = {
    2: {".zgroup": '{"zarr_format": 2}'},
    3: {"zarr.json": '{"zarr_format": 3, "node_type": "group", "attributes": {}}'},
}


def _chunks(changes: dict[str, str]) -> dict[str, str]:
    names = (".zarray", ".zattrs", ".zgroup", "zarr.json", ".zmetadata")
    return {k: op for k, op in changes.items() if not k.endswith(names)}


def _grid(ds_values: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"t": (("time", "x"), ds_values)},
        coords={"time": np.arange(len(ds_values)), "x": np.arange(ds_values.shape[1])},
    )


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_new_dataset_then_append(repo: snapref.Repository, zarr_format: int) -> None:
    repo.import_references("grid", {"version": 1, "refs": EMPTY_ROOT[zarr_format]}, "empty")
    first = _grid(np.arange(40, dtype="float32").reshape(4, 10))
    with repo.transaction("grid", message="write with xarray") as tx:
        first.chunk({"time": 2, "x": 5}).to_zarr(
            tx.store, mode="w", consolidated=False, zarr_format=zarr_format
        )
    snap = tx.snapshot
    assert snap is not None and snap.version == 2
    assert snap.summary["chunks_added"] == 4 + 1 + 1  # t: 2x2, time: 1, x: 1
    assert snap.summary["chunks_modified"] == snap.summary["chunks_removed"] == 0
    sep = "." if zarr_format == 2 else "/"
    pre = "" if zarr_format == 2 else "c/"
    t_chunks = {f"t/{pre}{i}{sep}{j}" for i in (0, 1) for j in (0, 1)}
    assert set(_chunks(repo.changes(snap))) == t_chunks | {f"time/{pre}0", f"x/{pre}0"}

    more = _grid(np.full((2, 10), -1, dtype="float32")).assign_coords(time=[4, 5])
    with repo.transaction("grid", message="append two steps") as tx:
        more.drop_vars("x").to_zarr(tx.store, append_dim="time", consolidated=False)
    snap = tx.snapshot
    assert snap is not None
    # only the new chunks of t and time; the shapes in their metadata
    assert _chunks(repo.changes(snap)) == {
        f"t/{pre}2{sep}0": "A",
        f"t/{pre}2{sep}1": "A",
        f"time/{pre}1": "A",
    }
    assert snap.summary["chunks_added"] == 3 and snap.summary["chunks_modified"] == 0
    meta = {k for k in repo.changes(snap) if k not in _chunks(repo.changes(snap))}
    assert meta == (
        {"t/.zarray", "time/.zarray"} if zarr_format == 2 else {"t/zarr.json", "time/zarr.json"}
    )

    out = snapref.open_dataset(repo, "grid")
    np.testing.assert_array_equal(out["t"].values[:4], first["t"].values)
    np.testing.assert_array_equal(out["t"].values[4:], -1)
    np.testing.assert_array_equal(out["time"].values, np.arange(6))
    before = snapref.open_dataset(repo, "grid", version=2)
    assert before.sizes["time"] == 4


def test_append_to_imported_kerchunk_dataset(air: snapref.Repository) -> None:
    base = snapref.open_dataset(air, "air")
    new = xr.Dataset(
        {"temp": (("time", "lat", "lon"), np.full((2, *TEMP_SHAPE[1:]), 300, "float32"))},
        coords={"time": np.array([8, 9])},
    )
    with air.transaction("air", message="append two days") as tx:
        new.to_zarr(tx.store, append_dim="time", consolidated=False)
    snap = tx.snapshot
    assert snap is not None
    added = {f"temp/4.{i}.{j}" for i in range(2) for j in range(3)} | {"time/1"}
    assert _chunks(air.changes(snap)) == dict.fromkeys(sorted(added), "A")
    assert snap.summary["chunks_added"] == 7
    assert snap.summary["chunks_modified"] == snap.summary["chunks_removed"] == 0

    out = snapref.open_dataset(air, "air")
    assert out.sizes == {"time": 10, "lat": TEMP_SHAPE[1], "lon": TEMP_SHAPE[2]}
    np.testing.assert_array_equal(out["temp"].values[:8], temp_values())
    np.testing.assert_array_equal(out["temp"].values[8:], 300)
    np.testing.assert_array_equal(out["lat"].values, base["lat"].values)
    assert snapref.open_dataset(air, "air", version=1).sizes["time"] == 8


def test_open_dataset_with_chunks_is_lazy_and_dask_backed(air: snapref.Repository) -> None:
    ds = snapref.open_dataset(air, "air", chunks={})
    temp = ds["temp"].data
    assert isinstance(temp, dask.array.Array)
    assert temp.chunksize == (2, 20, 20) and temp.npartitions == 24
    with air.transaction("air", message="edit after opening") as tx:  # ds stays on v1
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = -5
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(ds["temp"].values, temp_values())
        mean = ds["temp"].mean("time").compute()
    np.testing.assert_allclose(mean.values, temp_values().mean(axis=0), rtol=1e-6)
    assert float(snapref.open_dataset(air, "air", chunks={})["temp"][0, 0, 0]) == -5
