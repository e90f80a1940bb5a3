"""Shared fixtures: real HDF5 files made with h5py, kerchunk references to them,
repositories on local disk and on a real S3 API (a moto server on loopback), with
their catalog in SQLite or, for modules marked ``all_catalogs``, also in a real
PostgreSQL server and in duckdb."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from kerchunk.hdf import SingleHdf5ToZarr

import snapref
from tests.pg_server import PostgresServer, postgres_server
from tests.s3_fixtures import *  # noqa: F403

# Never let a test pick up credentials or a repository from the environment.
for _var in ("SNAPREF_REPO", "SNAPREF_CATALOG", "AWS_PROFILE"):
    os.environ.pop(_var, None)
os.environ["SNAPREF_AUTHOR"] = "Test Author <test@example.org>"

TEMP_SHAPE = (8, 40, 60)  # time, lat, lon
TEMP_CHUNKS = (2, 20, 20)  # 4 x 2 x 3 = 24 chunks


def without_root_powers() -> list[str]:
    """A command prefix under which file modes bind, as for any user: root reads and
    writes every file whatever its mode (the tests may run as root)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def one_array_refs(array: str, shape: int, chunk: int, dtype: str) -> dict[str, str]:
    """The references (key -> JSON text) of a group holding one empty 1-D zarr v2 array,
    uncompressed: what many tests import before writing chunks themselves."""
    zarray = {"zarr_format": 2, "shape": [shape], "chunks": [chunk], "dtype": dtype}
    zarray |= {"compressor": None, "fill_value": 0, "order": "C", "filters": None}
    return {".zgroup": json.dumps({"zarr_format": 2}), f"{array}/.zarray": json.dumps(zarray)}


def temp_values() -> np.ndarray:
    """The values written to ``temp`` in the HDF5 fixture."""
    rng = np.random.default_rng(42)  # noisy, so chunks compress poorly and stay virtual
    return (250 + 30 * rng.random(TEMP_SHAPE)).astype("float32")


def make_hdf5(path: Path) -> Path:
    """A small netCDF4-style HDF5 file: a compressed 3-D variable and coordinates."""
    with h5py.File(path, "w") as f:
        temp = f.create_dataset(
            "temp",
            data=temp_values(),
            chunks=TEMP_CHUNKS,
            compression="gzip",
            shuffle=True,
        )
        temp.attrs["units"] = "K"
        temp.attrs["long_name"] = "air temperature"
        f.create_dataset("time", data=np.arange(TEMP_SHAPE[0], dtype="int64"))
        f.create_dataset("lat", data=np.linspace(-10, 10, TEMP_SHAPE[1]))
        f.create_dataset("lon", data=np.linspace(0, 30, TEMP_SHAPE[2]))
        for name, dim in (("time", 0), ("lat", 1), ("lon", 2)):
            f[name].make_scale(name)
            temp.dims[dim].attach_scale(f[name])
    return path


@pytest.fixture
def hdf5_file(tmp_path: Path) -> Path:
    (tmp_path / "source").mkdir()
    return make_hdf5(tmp_path / "source" / "air.h5")


@pytest.fixture
def kerchunk_refs(hdf5_file: Path) -> dict[str, Any]:
    """kerchunk references to ``hdf5_file``: chunks virtual, small arrays inline."""
    return SingleHdf5ToZarr(str(hdf5_file), inline_threshold=500).translate()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the ``snapref`` command line in ``tmp_path`` with ``SNAPREF_REPO=tmp_path/wh``:
    ``run("log", "air", code=0)`` asserts the exit code and returns click's result."""
    from click.testing import CliRunner

    from snapref.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPREF_REPO", str(tmp_path / "wh"))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output + result.stderr
        return result

    return invoke


CATALOG_KINDS = ("sqlite", "postgresql", "duckdb")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # tests of modules marked all_catalogs run once per catalog kind
    if "catalog_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "all_catalogs"
    ):
        metafunc.parametrize("catalog_kind", CATALOG_KINDS)


@pytest.fixture
def catalog_kind() -> str:
    """The catalog of the ``repo`` fixture: SQLite unless the module is ``all_catalogs``."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (see tests/pg_server.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def catalog_url(catalog_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
    """The SQLAlchemy URL of a new, empty catalog of ``catalog_kind``; None for the
    embedded SQLite default."""
    if catalog_kind == "sqlite":
        return None
    if catalog_kind == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    assert catalog_kind == "duckdb", catalog_kind
    return f"duckdb:///{tmp_path / 'catalog.duckdb'}"


@pytest.fixture
def repo(tmp_path: Path, catalog_url: str | None) -> Iterator[snapref.Repository]:
    r = snapref.init(str(tmp_path / "warehouse"), catalog=catalog_url)
    yield r
    r.close()


@pytest.fixture
def air(repo: snapref.Repository, kerchunk_refs: dict[str, Any]) -> snapref.Repository:
    """A repository holding dataset ``air``, imported from the kerchunk references."""
    repo.import_references("air", kerchunk_refs, message="Import air.h5")
    return repo
