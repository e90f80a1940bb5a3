"""The whole journey with the warehouse and the source file on S3 (a moto server on
loopback): init with an SQL catalog elsewhere, connect from the warehouse alone,
import kerchunk references to an HDF5 object nobody may change, edit, commit, travel
in time — in Python and through the CLI — and never store a credential."""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import xarray as xr
import zarr
from blake3 import blake3
from click.testing import CliRunner, Result
from kerchunk.hdf import SingleHdf5ToZarr
from zarr.storage import FsspecStore

import snapref
from snapref.cli import cli
from snapref.manifest import VirtualRef
from tests.conftest import TEMP_SHAPE, make_hdf5, one_array_refs, temp_values
from tests.s3_fixtures import BUCKET

REPO = f"s3://{BUCKET}/wh"
SOURCE = f"s3://{BUCKET}/source/air.h5"
SOURCE_KEY = f"{BUCKET}/source/air.h5"
OBJECTS = f"{BUCKET}/wh/objects"


def _catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"  # tmp_path is absolute: sqlite:////...


def _objects(fs: s3fs.S3FileSystem) -> dict[str, bytes]:
    """Every chunk object of the warehouse: path -> bytes."""
    paths = fs.find(OBJECTS)
    return {p: fs.cat_file(p) for p in paths}


def _digest(data: bytes) -> str:
    return blake3(data).hexdigest()


@pytest.fixture
def s3_source(s3_bucket: dict[str, Any], s3_fs: s3fs.S3FileSystem, tmp_path: Path) -> str:
    """The HDF5 test file, uploaded to :data:`SOURCE`."""
    local = make_hdf5(tmp_path / "air.h5")
    s3_fs.put_file(str(local), SOURCE_KEY)
    return SOURCE


@pytest.fixture
def s3_refs(s3_source: str, s3_bucket: dict[str, Any]) -> dict[str, Any]:
    """kerchunk references to the HDF5 object on S3: chunks virtual, small arrays inline."""
    return SingleHdf5ToZarr(s3_source, storage_options=s3_bucket, inline_threshold=500).translate()


def _expected_after_edit() -> np.ndarray:
    expected = temp_values()
    expected[1, 5, 10:14] /= 2  # inside chunk temp/0.0.0
    expected[7, 39, 59] = -1.0  # the last chunk, temp/3.1.2
    return expected


def test_init_then_connect_from_the_warehouse_stores_no_credentials(
    s3_bucket: dict[str, Any],
    s3_fs: s3fs.S3FileSystem,
    s3_refs: dict[str, Any],
    tmp_path: Path,
) -> None:
    catalog = _catalog_url(tmp_path)
    with snapref.init(REPO, catalog=catalog, storage_options=s3_bucket) as repo:
        assert repo.url == REPO
        repo.import_references("air", s3_refs, message="Import air.h5 from S3")
        with repo.transaction("air", message="Edit on S3") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1.0
    with pytest.raises(snapref.AlreadyExistsError):
        snapref.init(REPO, catalog=catalog, storage_options=s3_bucket)
    config = json.loads(s3_fs.cat_file(f"{BUCKET}/wh/snapref.json"))
    assert config == {"format": 1, "catalog": catalog, "id": config["id"]}
    assert re.fullmatch("[0-9a-f]{32}", config["id"])

    # the warehouse URL and the storage options are all connect needs
    with snapref.connect(REPO, storage_options=s3_bucket) as repo:
        assert repo.datasets() == ["air"]
        assert [s.message for s in repo.log("air")] == ["Edit on S3", "Import air.h5 from S3"]
        assert snapref.open(repo, "air")["temp"][0, 0, 0] == 1.0

    secrets = {
        s3_bucket["key"].encode(),
        s3_bucket["secret"].encode(),
        s3_bucket["endpoint_url"].removeprefix("http://").encode(),  # host:port
    }
    files = {p: s3_fs.cat_file(p) for p in s3_fs.find(BUCKET)}
    assert f"{BUCKET}/wh/snapref.json" in files
    assert any(p.endswith(".parquet") for p in files)
    for path, data in files.items():
        texts = [data]
        if path.endswith(".parquet"):  # compressed: look at the decoded rows too
            texts.append(repr(pq.read_table(io.BytesIO(data)).to_pylist()).encode())
        for text in texts:
            for secret in secrets:
                assert secret not in text, f"{secret!r} is stored in s3://{path}"
    catalog_files = list(tmp_path.glob("catalog.db*"))
    assert tmp_path / "catalog.db" in catalog_files
    for path in catalog_files:
        data = path.read_bytes()
        assert b"s3://bucket/source/" in data  # the scan sees the catalog's text
        for secret in secrets:
            assert secret not in data, f"{secret!r} is stored in {path}"


def test_failed_init_leaves_nothing_behind(
    s3_options: dict[str, Any], s3_fs: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    catalog = _catalog_url(tmp_path)
    with pytest.raises(snapref.NotFoundError, match=f"{REPO}.*Create the bucket"):
        snapref.init(REPO, catalog=catalog, storage_options=s3_options)
    assert list(tmp_path.iterdir()) == []  # no catalog that would block a retry
    s3_fs.mkdir(BUCKET)
    snapref.init(REPO, catalog=catalog, storage_options=s3_options).close()
    # a second warehouse cannot take over the catalog, and is not half-created
    with pytest.raises(snapref.AlreadyExistsError):
        snapref.init(f"{REPO}2", catalog=catalog, storage_options=s3_options)
    assert s3_fs.find(BUCKET) == [f"{BUCKET}/wh/snapref.json"]


def test_storage_options_that_s3_does_not_take_are_named_in_one_line(
    s3_bucket: dict[str, Any], tmp_path: Path
) -> None:
    # each was a traceback from deep inside botocore (ValueError, TypeError)
    catalog = _catalog_url(tmp_path)
    snapref.init(REPO, catalog=catalog, storage_options=s3_bucket).close()
    host = s3_bucket["endpoint_url"].removeprefix("http://")
    for option, value, error in (
        ("endpoint_url", host, "Invalid endpoint"),
        ("endpoint", s3_bucket["endpoint_url"], "unexpected keyword argument 'endpoint'"),
    ):
        options = {k: v for k, v in s3_bucket.items() if k != "endpoint_url"} | {option: value}
        with pytest.raises(snapref.InvalidInputError, match=f"({option}, key, secret).*{error}"):
            snapref.connect(REPO, storage_options=options)
        with pytest.raises(snapref.InvalidInputError, match=error):
            snapref.init(f"{REPO}-new", catalog=catalog, storage_options=options)
        result = CliRunner().invoke(
            cli, ["-R", REPO, "--storage-option", f"{option}={value}", "ls"]
        )
        assert result.exit_code == 1 and "Traceback" not in result.output + result.stderr
        assert (
            result.stderr.startswith("Error: Cannot use the warehouse") and error in result.stderr
        )


def test_open_async_keeps_nothing_of_closed_loops_and_reuses_a_url(
    s3_bucket: dict[str, Any], s3_refs: dict[str, Any], tmp_path: Path
) -> None:
    # every asyncio.run left its loop, S3 session and filesystems alive for good, and
    # every open_async(URL) on a server's loop kept one more repository (~1 MB each)
    import asyncio
    import gc

    from snapref import aio

    snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=s3_bucket).close()
    with snapref.connect(REPO, storage_options=s3_bucket) as repo:
        repo.import_references("air", s3_refs, message="Import air.h5 from S3")
    expected = float(temp_values()[3, 4, 5])

    async def read(repo: Any) -> float:
        group = await snapref.open_async(repo, "air", storage_options=s3_bucket)
        return float(await (await group.getitem("temp")).getitem((3, 4, 5)))

    async def server() -> list[float]:
        values = [await read(REPO) for _ in range(10)]
        assert len(aio._PER_LOOP[asyncio.get_running_loop()]) == 1
        return values

    with warnings.catch_warnings():  # aiohttp's note on sessions of closed loops
        warnings.simplefilter("ignore", ResourceWarning)
        assert asyncio.run(server()) == [expected] * 10
        with snapref.connect(REPO, storage_options=s3_bucket) as repo:
            for _ in range(5):
                assert asyncio.run(read(repo)) == expected
            gc.collect()
            assert len(aio._PER_LOOP) <= 1  # at most the last loop, until the next call


def test_journey_on_s3(
    s3_bucket: dict[str, Any],
    s3_fs: s3fs.S3FileSystem,
    s3_refs: dict[str, Any],
    tmp_path: Path,
) -> None:
    source_before = s3_fs.cat_file(SOURCE_KEY)
    snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=s3_bucket).close()
    repo = snapref.connect(REPO, storage_options=s3_bucket)

    # import: the chunks stay virtual, pointing into the source bucket
    snap = repo.import_references("air", s3_refs, message="Import air.h5 from S3")
    assert snap.version == 1
    assert snap.summary["chunks_added"] == 24 + 3  # temp chunks + time/lat/lon
    assert repo.sources("air") == [f"s3://{BUCKET}/source/"]
    manifest = repo.manifest(snap)
    temp_chunks = {k: manifest[k] for k in manifest if k.startswith("temp/") and "/." not in k}
    assert len(temp_chunks) == 24
    assert {type(r) for r in temp_chunks.values()} == {VirtualRef}
    assert {r.url for r in temp_chunks.values() if isinstance(r, VirtualRef)} == {SOURCE}
    objects_before = _objects(s3_fs)
    assert len(objects_before) == 3  # only the small inline time/lat/lon arrays
    g1 = snapref.open(repo, "air")
    np.testing.assert_array_equal(g1["temp"][:], temp_values())
    np.testing.assert_array_equal(g1["lat"][:], np.linspace(-10, 10, TEMP_SHAPE[1]))

    # edit in a transaction with zarr, commit
    with repo.transaction("air", message="Halve a bad patch") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][1, 5, 10:14] /= 2
        g["temp"][7, 39, 59] = -1.0
    assert tx.snapshot is not None and tx.snapshot.version == 2
    assert tx.snapshot.summary["chunks_modified"] == 2
    new_objects = {p: b for p, b in _objects(s3_fs).items() if p not in objects_before}
    assert len(new_objects) == 2  # exactly the changed chunks
    for path, data in new_objects.items():
        head, tail = path.split("/")[-2:]
        assert head + tail == _digest(data)  # content-addressed

    # log
    log = repo.log("air")
    assert [s.version for s in log] == [2, 1]
    assert [s.message for s in log] == ["Halve a bad patch", "Import air.h5 from S3"]
    assert log[0].parents == (log[1].id,)

    # the synchronous fsspec view reads objects and virtual byte ranges from S3
    fs = repo.filesystem("air")
    chunk = manifest["temp/0.0.1"]
    assert isinstance(chunk, VirtualRef) and chunk.offset is not None and chunk.length
    raw = source_before[chunk.offset : chunk.offset + chunk.length]
    assert fs.cat_file("temp/0.0.1") == raw
    both = fs.cat(["temp/0.0.0", "temp/0.0.1"])
    assert both["temp/0.0.1"] == raw
    assert (
        f"{OBJECTS}/{_digest(both['temp/0.0.0'])[:2]}/{_digest(both['temp/0.0.0'])[2:]}"
        in new_objects
    )

    # time travel, by repository and by URL
    expected = _expected_after_edit()
    latest = snapref.open(REPO, "air", storage_options=s3_bucket)
    np.testing.assert_array_equal(latest["temp"][:], expected)
    np.testing.assert_array_equal(snapref.open(repo, "air", version=1)["temp"][:], temp_values())
    ds_new = snapref.open_dataset(repo, "air")
    ds_old = snapref.open_dataset(repo, "air", version=1)
    assert ds_new["temp"].dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(ds_new["temp"].values, expected)
    np.testing.assert_array_equal(ds_old["temp"].values, temp_values())
    assert ds_old["temp"].attrs["units"] == "K"
    xr.testing.assert_identical(ds_old.drop_vars("temp"), ds_new.drop_vars("temp"))

    # the source object was never touched, and nothing was written beside it
    assert s3_fs.cat_file(SOURCE_KEY) == source_before
    assert s3_fs.find(f"{BUCKET}/source") == [SOURCE_KEY]
    repo.close()


def test_cli_journey_on_s3(
    s3_bucket: dict[str, Any],
    s3_fs: s3fs.S3FileSystem,
    s3_refs: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("air.json").write_text(json.dumps(s3_refs))
    source_before = s3_fs.cat_file(SOURCE_KEY)
    runner = CliRunner()
    repo_args = ["-R", REPO]
    for key in ("endpoint_url", "key", "secret"):
        repo_args += ["--storage-option", f"{key}={s3_bucket[key]}"]

    def run(*args: str) -> Result:
        result = runner.invoke(cli, [*repo_args, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    run("init", "--catalog", _catalog_url(tmp_path))
    imported = json.loads(run("import", "air", "air.json", "-m", "Adopt air.h5", "--json").stdout)
    assert imported["version"] == 1
    objects_before = set(_objects(s3_fs))
    run("checkout", "air", "-o", "work.json")
    assert b"testing" not in Path("work.json").read_bytes()
    assert b"testing" not in Path("work.json.snapref").read_bytes()

    # edit the checked-out references with plain fsspec + zarr 3 (an asynchronous
    # reference filesystem needs an asynchronous remote one: fsspec's rule)
    remote = {**s3_bucket, "asynchronous": True}
    fs = fsspec.filesystem(
        "reference", fo="work.json", remote_protocol="s3", remote_options=remote, asynchronous=True
    )
    g = zarr.open_group(FsspecStore(fs, path=""), mode="r+", zarr_format=2)
    np.testing.assert_array_equal(g["temp"][:], temp_values())
    g["temp"][0, 0, 0:3] = [1.0, 2.0, 3.0]  # chunk temp/0.0.0
    g["temp"][4:6, 20:40, 40:60] = 7.5  # all of chunk temp/2.1.2
    fs.save_json("work.json")

    committed = json.loads(
        run(
            "commit", "air", "work.json", "-m", "Fix pixels", "--prop", "ticket=QC-1", "--json"
        ).stdout
    )
    assert committed["version"] == 2
    new_objects = {p: b for p, b in _objects(s3_fs).items() if p not in objects_before}
    assert len(new_objects) == 2  # exactly the changed chunks

    log = json.loads(run("log", "air", "--json").stdout)
    fields = {"version", "id", "timestamp", "author", "message", "parents", "branch"}
    fields |= {"properties", "summary"}
    assert all(fields <= set(entry) for entry in log)
    v2, v1 = log
    assert [v2["version"], v1["version"]] == [2, 1]
    assert v2["id"] == committed["id"]
    assert [v2["message"], v1["message"]] == ["Fix pixels", "Adopt air.h5"]
    assert v2["parents"] == [v1["id"]] and v1["parents"] == []
    assert v2["branch"] == v1["branch"] == "main"
    assert v2["author"] == "Test Author <test@example.org>"
    assert v2["properties"] == {"ticket": "QC-1"} and v1["properties"] == {}
    assert datetime.fromisoformat(v2["timestamp"]) >= datetime.fromisoformat(v1["timestamp"])
    assert v2["summary"]["chunks_added"] == 0
    assert v2["summary"]["chunks_modified"] == 2
    assert v2["summary"]["chunks_removed"] == 0
    assert v2["summary"]["bytes_written"] >= sum(len(b) for b in new_objects.values())
    assert v1["summary"]["chunks_added"] == 24 + 3

    # time travel through checkouts that plain fsspec opens
    expected = temp_values()
    expected[0, 0, 0:3] = [1.0, 2.0, 3.0]
    expected[4:6, 20:40, 40:60] = 7.5
    for version, values in (("1", temp_values()), ("2", expected)):
        out = f"v{version}.json"
        run("checkout", f"air@{version}", "-o", out)
        plain = fsspec.filesystem(
            "reference", fo=out, remote_protocol="s3", remote_options=remote, asynchronous=True
        )
        old = zarr.open_group(FsspecStore(plain, path="", read_only=True), mode="r")
        np.testing.assert_array_equal(old["temp"][:], values)
    with snapref.connect(REPO, storage_options=s3_bucket) as repo:
        np.testing.assert_array_equal(snapref.open(repo, "air")["temp"][:], expected)
    assert s3_fs.cat_file(SOURCE_KEY) == source_before


def test_cli_says_in_one_line_when_s3_refuses_credentials(
    s3_bucket: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    endpoint = ["--storage-option", f"endpoint_url={s3_bucket['endpoint_url']}"]
    keys = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    init = ["-R", REPO, *endpoint, *keys, "init", "--catalog", _catalog_url(tmp_path)]
    assert runner.invoke(cli, init).exit_code == 0
    catalog = ["--catalog", _catalog_url(tmp_path)]
    # anonymous: the server says Forbidden
    anon = runner.invoke(
        cli, ["-R", REPO, *endpoint, "--storage-option", "anon=true", *catalog, "ls"]
    )
    assert anon.exit_code == 1 and "Traceback" not in anon.output
    assert anon.stderr.startswith("Error: Access denied") and anon.stderr.count("\n") == 1
    # no credentials anywhere: botocore's NoCredentialsError, with what to set
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    none = runner.invoke(cli, ["-R", REPO, *endpoint, *catalog, "ls"])
    assert none.exit_code == 1 and "AWS_ACCESS_KEY_ID" in none.stderr, none.output


def test_cli_checkout_and_commit_a_reference_file_on_s3(
    s3_bucket: dict[str, Any], s3_refs: dict[str, Any], tmp_path: Path
) -> None:
    work = f"s3://{BUCKET}/work/air.json"
    options = [f"--storage-option={k}={v}" for k, v in s3_bucket.items()]
    runner = CliRunner()

    def run(*args: str) -> Result:
        result = runner.invoke(cli, ["-R", REPO, *options, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    (tmp_path / "air.json").write_text(json.dumps(s3_refs))
    run("init", "--catalog", _catalog_url(tmp_path))
    run("import", "air", str(tmp_path / "air.json"))
    run("checkout", "air", "-o", work)
    remote = {**s3_bucket, "asynchronous": True}
    expected = temp_values()
    for i in range(2):  # the second commit continues from the first (sidecar on S3)
        fs = fsspec.filesystem(
            "reference",
            fo=work,
            target_options=s3_bucket,
            remote_protocol="s3",
            remote_options=remote,
            asynchronous=True,
        )
        g = zarr.open_group(FsspecStore(fs, path=""), mode="r+", zarr_format=2)
        g["temp"][i, 0, 0] = 100.0 + i
        expected[i, 0, 0] = 100.0 + i
        fs.save_json(work, **s3_bucket)
        committed = json.loads(run("commit", "air", work, "-m", f"edit {i}", "--json").stdout)
        assert committed["version"] == 2 + i
    with snapref.connect(REPO, storage_options=s3_bucket) as repo:
        assert [s.message for s in repo.log("air")] == ["edit 1", "edit 0", "Import references"]
        np.testing.assert_array_equal(snapref.open(repo, "air")["temp"][:], expected)


def test_a_relative_sqlite_catalog_is_recorded_absolute(
    s3_bucket: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    snapref.init("s3://bucket/rel", catalog="sqlite:///cat.db", storage_options=s3_bucket).close()
    monkeypatch.chdir(tmp_path.parent)  # another working directory
    repo = snapref.connect("s3://bucket/rel", storage_options=s3_bucket)
    assert repo.db.url == f"sqlite:///{tmp_path}/cat.db"
    assert repo.datasets() == []


@contextmanager
def _obstore_for_s3() -> Iterator[None]:
    """fsspec's ``s3`` protocol served by obstore's adapter (Rust's object_store) while
    inside, s3fs again after: what a user does with ``obstore.fsspec.register("s3")``."""
    import obstore.fsspec

    obstore.fsspec.register("s3", asynchronous=True)
    try:
        yield
    finally:
        fsspec.register_implementation("s3", s3fs.S3FileSystem, clobber=True)


def _obstore_options(s3_options: dict[str, Any]) -> dict[str, Any]:
    """The same moto server, in obstore's option names."""
    return {
        "config": {
            "endpoint": s3_options["endpoint_url"],
            "access_key_id": s3_options["key"],
            "secret_access_key": s3_options["secret"],
            "region": "us-east-1",
        },
        "client_options": {"allow_http": True},
    }


def test_a_warehouse_on_obstores_s3_client(
    s3_bucket: dict[str, Any], s3_refs: dict[str, Any], tmp_path: Path
) -> None:
    options = _obstore_options(s3_bucket)
    catalog = _catalog_url(tmp_path)
    expected = _expected_after_edit()
    with _obstore_for_s3():
        with snapref.init(REPO, catalog=catalog, storage_options=options) as repo:
            assert type(repo.warehouse.fs).__module__.startswith("obstore")
            repo.import_references("air", s3_refs, message="Import air.h5 from S3")
            with repo.transaction("air", message="Edit through obstore") as tx:
                temp = zarr.open_group(tx.store, mode="r+")["temp"]
                temp[1, 5, 10:14] = temp[1, 5, 10:14] / 2
                temp[7, 39, 59] = -1.0
            assert tx.snapshot is not None and tx.snapshot.summary["objects_written"] == 2
            # version 1 reads the HDF5 object's byte ranges, version 2 the new objects
            np.testing.assert_array_equal(snapref.open(repo, "air", 1)["temp"][:], temp_values())
            np.testing.assert_array_equal(snapref.open(repo, "air")["temp"][:], expected)
    # what obstore wrote are plain S3 objects: s3fs reads the same repository
    with snapref.connect(REPO, storage_options=s3_bucket) as repo:
        assert [s.message for s in repo.log("air")] == [
            "Edit through obstore",
            "Import air.h5 from S3",
        ]
        np.testing.assert_array_equal(snapref.open(repo, "air")["temp"][:], expected)


def test_chunks_read_through_obstore_are_not_copied_by_its_adapter(
    s3_bucket: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zarr gets each chunk as the buffer obstore's client received: the adapter's
    ``_cat_file`` (which copies every chunk into ``bytes``) is not used for them. The
    bytes are checked all the same, and fsspec's ``cat`` still gives ``bytes``."""
    import obstore.fsspec

    payloads = [bytes([i]) * (512 << 10) for i in range(3)]  # hashed in a worker thread
    refs = one_array_refs("x", 3 * len(payloads[0]), len(payloads[0]), "|u1")
    adapter_reads: list[str] = []
    cat_file = obstore.fsspec.FsspecStore._cat_file

    async def counted(self: Any, path: str, *args: Any, **kw: Any) -> Any:
        adapter_reads.append(path)
        return await cat_file(self, path, *args, **kw)

    with _obstore_for_s3():
        options = _obstore_options(s3_bucket)
        with snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=options) as repo:
            repo.import_references("a", refs, message="empty")
            with repo.transaction("a", message="three chunks") as tx:
                for i, payload in enumerate(payloads):
                    tx.fs.pipe_file(f"x/{i}", payload)
            monkeypatch.setattr(obstore.fsspec.FsspecStore, "_cat_file", counted)
            values = snapref.open(repo, "a")["x"][:]
            assert values.tobytes() == b"".join(payloads)
            assert not [p for p in adapter_reads if "/objects/" in p]
            fs = fsspec.filesystem("snapref", repo=repo, dataset="a")
            assert fs.cat_file("x/1") == payloads[1]
            assert type(fs.cat_file("x/1")) is bytes


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_damaged_or_lost_object_read_through_obstore_is_an_integrity_error(
    damage: str, s3_bucket: dict[str, Any], s3_fs: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    """Through obstore's client as through s3fs: a chunk object whose bytes changed,
    or that is gone, is an IntegrityError naming it, never wrong values or fill
    values."""
    payload = bytes(range(256)) * 2048  # 512 KiB
    refs = one_array_refs("x", len(payload), len(payload), "|u1")
    with _obstore_for_s3():
        options = _obstore_options(s3_bucket)
        with snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=options) as repo:
            repo.import_references("a", refs, message="empty")
            with repo.transaction("a", message="one chunk") as tx:
                tx.fs.pipe_file("x/0", payload)
            [path] = s3_fs.find(OBJECTS)
            if damage == "changed":
                s3_fs.pipe_file(path, payload[:-1] + b"!")
            else:
                s3_fs.rm_file(path)
            s3_fs.invalidate_cache()
            fs = fsspec.filesystem("snapref", repo=repo, dataset="a")
            for read in (lambda: snapref.open(repo, "a")["x"][:], lambda: fs.cat_file("x/0")):
                with pytest.raises(snapref.IntegrityError, match=path.rsplit("/", 1)[1]):
                    read()


@contextmanager
def _warehouse(client: str, s3_bucket: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    """A new repository whose warehouse is local, or on S3 through s3fs or obstore."""
    from contextlib import nullcontext

    if client == "local":
        with snapref.init(str(tmp_path / "wh")) as repo:
            yield repo
        return
    options = s3_bucket if client == "s3fs" else _obstore_options(s3_bucket)
    with _obstore_for_s3() if client == "obstore" else nullcontext():
        with snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=options) as repo:
            yield repo


@pytest.mark.parametrize("client", ["local", "s3fs", "obstore"])
def test_any_buffer_can_be_written_through_the_filesystem(
    client: str, s3_bucket: dict[str, Any], tmp_path: Path
) -> None:
    """``pipe_file`` takes any bytes-like object, as its bytes in memory order: typed
    and non-contiguous buffers too (they used to fail on local disk with a bare
    BufferError)."""
    import array

    values = {
        "float64": np.arange(4.0),
        "int32": array.array("i", [1, -2, 3]),
        "strided": np.arange(16, dtype="u1")[::2],
        "2-d": np.arange(6, dtype="<u2").reshape(2, 3),
    }
    with _warehouse(client, s3_bucket, tmp_path) as repo:
        repo.import_references("d", {".zgroup": json.dumps({"zarr_format": 2})}, "empty")
        with repo.transaction("d", message="buffers") as tx:
            for name, value in values.items():
                tx.fs.pipe_file(f"blob/{name}", value)
        fs = fsspec.filesystem("snapref", repo=repo, dataset="d")
        for name, value in values.items():
            assert fs.cat_file(f"blob/{name}") == memoryview(value).tobytes(), name


@pytest.mark.parametrize("client", ["s3fs", "obstore"])
def test_a_buffer_changed_while_it_is_uploaded_stores_what_was_hashed(
    client: str,
    s3_bucket: dict[str, Any],
    s3_fs: s3fs.S3FileSystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object holds the bytes its name is the hash of, even if the caller changes
    its buffer after it was hashed: obstore's client reads the buffer it is given while
    the request is in flight, and a stored object is never rewritten. Here the buffer
    changes right after the hash, as another thread of the caller's could."""
    import snapref.objects

    buffer = bytearray(bytes(range(256)) * 2048)  # 512 KiB
    original = bytes(buffer)
    hash_of = snapref.objects.content_hash

    def hash_then_change(data: Any) -> str:
        digest = hash_of(data)
        if memoryview(data).nbytes == len(buffer):  # the chunk's hash, not a shard's
            buffer[:4] = b"XXXX"
        return digest

    with _warehouse(client, s3_bucket, tmp_path) as repo:
        repo.import_references("d", one_array_refs("x", len(buffer), len(buffer), "|u1"), "e")
        monkeypatch.setattr(snapref.objects, "content_hash", hash_then_change)
        with repo.transaction("d", message="the buffer changes") as tx:
            tx.fs.pipe_file("x/0", buffer)
        monkeypatch.undo()
        [path] = s3_fs.find(OBJECTS)
        assert s3_fs.cat_file(path) == original
        assert path.endswith(blake3(original).hexdigest()[2:])  # objects/ab/cdef...
        assert snapref.open(repo, "d")["x"][:].tobytes() == original


@pytest.mark.parametrize("client", ["s3fs", "obstore"])
def test_bytes_already_stored_are_not_written_again(
    client: str, s3_bucket: dict[str, Any], s3_fs: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    """Invariant 1 on S3: a chunk whose bytes are stored already (here by another
    dataset) creates no object and leaves the stored one untouched, with either client's
    conditional PUT (s3fs through fsspec, obstore through its own client)."""
    import time
    from contextlib import nullcontext

    options = s3_bucket if client == "s3fs" else _obstore_options(s3_bucket)
    payload = bytes(range(256)) * 1024  # 256 KiB, hashed in a worker thread
    refs = one_array_refs("x", len(payload), len(payload), "|u1")
    with _obstore_for_s3() if client == "obstore" else nullcontext():
        with snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=options) as repo:
            written = []
            for name in ("a", "b"):
                repo.import_references(name, refs, message="empty")
                with repo.transaction(name, message="the same bytes") as tx:
                    tx.fs.pipe_file("x/0", payload)
                assert tx.snapshot is not None
                written.append(tx.snapshot.summary["objects_written"])
                if name == "a":
                    stored = {p: s3_fs.info(p)["LastModified"] for p in s3_fs.find(OBJECTS)}
                    time.sleep(1.1)  # S3 times have whole seconds: a rewrite would show
            assert written == [1, 0]
            after = {p: s3_fs.info(p)["LastModified"] for p in s3_fs.find(OBJECTS)}
            assert after == stored and len(stored) == 1
            assert snapref.open(repo, "b")["x"][:].tobytes() == payload


def test_rewriting_a_chunk_with_its_own_bytes_sends_nothing(
    s3_bucket: dict[str, Any], s3_refs: dict[str, Any], tmp_path: Path, monkeypatch: Any
) -> None:
    """Writing a whole array again where only a few values changed (as
    ``ds.to_zarr(tx.store, mode="a")`` does) uploads only the changed chunks: a chunk
    whose bytes are those of the object it holds costs no request at all."""
    uploads: list[str] = []
    put = s3fs.S3FileSystem._pipe_file

    async def counted(self: s3fs.S3FileSystem, path: str, data: Any, **kw: Any) -> Any:
        uploads.append(path)
        return await put(self, path, data, **kw)

    with snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=s3_bucket) as repo:
        repo.import_references("air", s3_refs, message="Import air.h5 from S3")
        with repo.transaction("air", message="Stored as objects") as tx:
            temp = zarr.open_group(tx.store, mode="r+")["temp"]
            temp[:] = temp[:]  # every chunk becomes a warehouse object
        objects = tx.snapshot.summary["objects_written"] if tx.snapshot else 0
        assert objects == 24
        monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", counted)
        with repo.transaction("air", message="One value") as tx:
            temp = zarr.open_group(tx.store, mode="r+")["temp"]
            values = temp[:]
            values[7, 39, 59] = -1.0
            temp[:] = values  # all 24 chunks written, one of them changed
        assert tx.snapshot is not None and tx.snapshot.summary["chunks_modified"] == 1
        chunk_uploads = [p for p in uploads if "/objects/" in p]
        assert len(chunk_uploads) == 1 and tx.snapshot.summary["objects_written"] == 1
        assert snapref.open(repo, "air")["temp"][7, 39, 59] == -1.0


def test_intake_catalogue_of_plain_references_reads_from_s3(
    s3_bucket: dict[str, Any],
    s3_refs: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import intake
    import yaml

    snapref.init(REPO, catalog=_catalog_url(tmp_path), storage_options=s3_bucket).close()
    repo = snapref.connect(REPO, storage_options=s3_bucket)
    repo.import_references("air", s3_refs, message="Import air.h5 from S3")
    with repo.transaction("air", message="Halve a bad patch") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][1, 5, 10:14] /= 2
        g["temp"][7, 39, 59] = -1.0
    path = tmp_path / "cat" / "catalog.yaml"
    path.parent.mkdir()
    repo.to_intake(str(path), route="references")
    doc = yaml.safe_load(path.read_text())
    options = doc["sources"]["air"]["args"]["storage_options"]
    assert options["remote_protocol"] == "s3"
    assert "key" not in str(options) and "secret" not in str(options)  # no credentials

    # a reader with no snapref: the endpoint and credentials come from the environment
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket["endpoint_url"])
    s3fs.S3FileSystem.clear_instance_cache()
    cat = intake.open_catalog(str(path))
    np.testing.assert_array_equal(cat["air"].read()["temp"].values, _expected_after_edit())
    np.testing.assert_array_equal(cat["air@1"].read()["temp"].values, temp_values())

    # virtual chunks in a local file beside objects on S3: plain reference:// reaches
    # one protocol under zarr 3, so that catalogue is refused before anything is written
    local = make_hdf5(tmp_path / "local.h5")
    repo.import_references("local", SingleHdf5ToZarr(str(local)).translate(), message="Local")
    before = path.read_text()
    with pytest.raises(
        snapref.InvalidInputError, match=r"'local' references files through file and s3"
    ):
        repo.to_intake(str(path), route="references")
    assert path.read_text() == before
    assert not (tmp_path / "cat" / "catalog.refs" / "local").exists()
    repo.to_intake(str(path))  # the snapref route reads both
    repo.close()
