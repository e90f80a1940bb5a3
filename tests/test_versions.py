"""Time travel, branches and tags, and reference-set formats (kerchunk v0/v1)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr

import snapref
from tests.conftest import one_array_refs, temp_values

# every test here runs on SQLite, PostgreSQL and duckdb catalogs (tests/conftest.py)
pytestmark = pytest.mark.all_catalogs


def _edit(repo: snapref.Repository, value: float, branch: str = "main") -> snapref.Snapshot:
    with repo.transaction("air", message=f"set {value}", branch=branch) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = value
    assert tx.snapshot is not None
    return tx.snapshot


def _first(repo: snapref.Repository, version: Any = None, **kw: Any) -> float:
    return float(snapref.open(repo, "air", version, **kw)["temp"][0, 0, 0])


def test_every_form_of_version(air: snapref.Repository) -> None:
    s2 = _edit(air, 2.0)
    _edit(air, 3.0)
    air.tag("air", 2, "qc-passed")
    assert _first(air) == 3.0
    assert _first(air, 2) == 2.0
    assert _first(air, "2") == 2.0
    assert _first(air, "qc-passed") == 2.0
    assert _first(air, s2.id) == 2.0
    assert _first(air, s2.id[:8]) == 2.0
    assert _first(air, "main") == 3.0
    assert _first(air, 1) == temp_values()[0, 0, 0]
    # numbers from numpy, pandas or Arrow are version numbers too
    assert _first(air, np.int64(2)) == 2.0
    with pytest.raises(snapref.InvalidInputError, match=r"Invalid version 2\.5"):
        _first(air, 2.5)


def test_as_of_picks_the_head_at_that_time(air: snapref.Repository) -> None:
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    _edit(air, 5.0)
    assert _first(air, as_of=between) == temp_values()[0, 0, 0]
    assert _first(air, as_of=datetime.now(UTC)) == 5.0
    assert _first(air, as_of=between.isoformat()) == temp_values()[0, 0, 0]
    with pytest.raises(snapref.VersionNotFoundError, match="had no version"):
        _first(air, as_of=between - timedelta(days=1))
    with pytest.raises(snapref.InvalidInputError, match="either a version or as_of"):
        _first(air, 1, as_of=between)
    # a numpy time, or a date (its midnight, UTC)
    assert _first(air, as_of=np.datetime64(between.replace(tzinfo=None))) == _first(air, 1)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert _first(air, as_of=tomorrow) == 5.0
    with pytest.raises(snapref.VersionNotFoundError, match="had no version"):
        _first(air, as_of=tomorrow - timedelta(days=2))
    with pytest.raises(snapref.InvalidInputError, match="Invalid time 12"):
        _first(air, as_of=12)


def test_branches_are_independent_and_tags_never_move(air: snapref.Repository) -> None:
    air.tag("air", 1, "original")
    air.branch("air", "qc", 1)
    _edit(air, 7.0, branch="qc")
    _edit(air, 8.0)
    assert _first(air, "qc") == 7.0
    assert _first(air, "main") == 8.0
    assert _first(air, "original") == temp_values()[0, 0, 0]
    assert [s.version for s in air.log("air", branch="qc")] == [2, 1]
    assert [s.version for s in air.log("air")] == [3, 1]
    assert air.log("air", branch="qc")[0].branch == "qc"
    refs = {r.name: (r.kind, r.snapshot_id) for r in air.refs("air")}
    assert refs["original"] == ("tag", air.resolve("air", 1).id)
    with pytest.raises(snapref.VersionNotFoundError, match=r"'original' is a tag.*--from original"):
        air.transaction("air", message="tags are not branches", branch="original")
    with pytest.raises(
        snapref.VersionNotFoundError, match=r"no branch 'nope' \(branches: main, qc\)"
    ):
        air.log("air", branch="nope")


def test_provenance_is_recorded(air: snapref.Repository) -> None:
    with air.transaction(
        "air", message="Fix QC-12", author="Ada <ada@example.org>", properties={"ticket": "QC-12"}
    ) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    snap = air.head("air")
    assert snap.author == "Ada <ada@example.org>"
    assert snap.message == "Fix QC-12"
    assert snap.properties == {"ticket": "QC-12"}
    assert snap.parents == (air.resolve("air", 1).id,)
    assert snap.snapref_version == snapref.__version__
    assert snap.timestamp.tzinfo is not None
    assert abs((datetime.now(UTC) - snap.timestamp).total_seconds()) < 60
    assert air.db.changes(snap.id) == {"temp/0.0.0": "M"}
    # the default author comes from SNAPREF_AUTHOR (set by the test suite)
    assert air.resolve("air", 1).author == "Test Author <test@example.org>"


def test_new_attributes_change_only_the_attributes(air: snapref.Repository) -> None:
    # zarr saves the array's .zarray again, in its own JSON style: the same document
    with air.transaction("air", message="units") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"].attrs["units"] = "degK"
    assert tx.snapshot is not None
    assert air.changes(tx.snapshot) == {"temp/.zattrs": "M"}
    assert tx.snapshot.summary["metadata_changed"] == 1
    assert snapref.open(air, "air")["temp"].attrs["units"] == "degK"


def test_a_long_message_is_recorded_whole(air: snapref.Repository) -> None:
    """Messages of any length commit on every catalog (a PostgreSQL B-tree entry holds
    ~2.7 KB, so no index there may include the message) and come back whole."""
    import random

    message = "".join(random.choices("abcdefghij klmnopqrstuvwxyz", k=20_000))
    with air.transaction("air", message=message) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 2
    assert [s.message for s in air.log("air")] == [message, "Import air.h5"]


def test_templates_and_generators_are_expanded(repo: snapref.Repository, tmp_path: Any) -> None:
    data = tmp_path / "blob.bin"
    data.write_bytes(bytes(range(40)))
    zarray = (
        '{"zarr_format":2,"shape":[40],"chunks":[10],"dtype":"|u1","compressor":null,'
        '"fill_value":0,"order":"C","filters":null}'
    )
    refs = {
        "version": 1,
        "templates": {"u": str(data)},
        "refs": {".zgroup": '{"zarr_format":2}', "x/.zarray": zarray, "x/0": ["{{u}}", 0, 10]},
        "gen": [
            {
                "key": "x/{{i}}",
                "url": "{{u}}",
                "offset": "{{i * 10}}",
                "length": "10",
                "dimensions": {"i": {"start": 1, "stop": 4}},
            }
        ],
    }
    repo.import_references("x", refs, message="templated")
    np.testing.assert_array_equal(snapref.open(repo, "x")["x"][:], np.arange(40, dtype="u1"))


@pytest.mark.parametrize(
    ("url", "gen_dims", "offset", "error"),
    [
        # a misspelt name once became "" and read the file beside the reference set
        ("{{dta}}", {"stop": 1}, "0", r"Key 'x/0'.*'dta' is undefined.*Define each"),
        ("{{u}", {"stop": 1}, "0", r"Key 'x/0'.*template '\{\{u\}'.*Fix its"),
        ("{{u}}", {"stop": "2"}, "0", r"dimension 'i' must be a list of values"),
        ("{{u}}", {"stop": 2, "step": 0}, "0", r"dimension 'i' must be a list"),
        ("{{u}}", {"stop": 2}, "{{i * 10}}x", r"Key 'x/1'.*offset and length.*'0x'"),
        ("{{u}}", {"stop": 2}, "{{i}}\u00b2", r"Key 'x/1'.*offset and length.*'0\u00b2'"),
    ],
)
def test_bad_templates_and_generators_are_named(
    repo: snapref.Repository, tmp_path: Any, url: str, gen_dims: Any, offset: str, error: str
) -> None:
    (tmp_path / "blob.bin").write_bytes(bytes(range(40)))
    refs = {
        "version": 1,
        "templates": {"u": str(tmp_path / "blob.bin")},
        "refs": {".zgroup": '{"zarr_format":2}', "x/0": [url, 0, 10]},
        "gen": [
            {
                "key": "x/{{i + 1}}",
                "url": "{{u}}",
                "offset": offset,
                "length": "10",
                "dimensions": {"i": gen_dims},
            }
        ],
    }
    with pytest.raises(snapref.InvalidReferenceError, match=error):
        repo.import_references("x", refs, message="templated")
    assert repo.datasets() == []


def test_version_0_references_with_inline_documents(repo: snapref.Repository) -> None:
    refs = {
        ".zgroup": {"zarr_format": 2},
        "x/.zarray": {
            "zarr_format": 2,
            "shape": [4],
            "chunks": [4],
            "dtype": "<i2",
            "compressor": None,
            "fill_value": 0,
            "order": "C",
            "filters": None,
        },
        "x/0": "base64:" + "AQACAAMABAA=",
    }
    repo.import_references("v0", refs)
    np.testing.assert_array_equal(snapref.open(repo, "v0")["x"][:], [1, 2, 3, 4])


def test_exported_references_open_with_plain_fsspec(air: snapref.Repository) -> None:
    with air.transaction("air", message="edit") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][3] = 42
    for version in (1, 2):
        refs = air.to_references("air", version)
        assert "snapref" not in refs  # a plain kerchunk reference set
        fs = fsspec.filesystem("reference", fo=refs, asynchronous=True)
        g = zarr.open_group(zarr.storage.FsspecStore(fs, path=""), mode="r", zarr_format=2)
        np.testing.assert_array_equal(g["temp"][:], snapref.open(air, "air", version)["temp"][:])
    assert (g["temp"][3] == 42).all()


def test_groups_can_be_created_and_deleted(air: snapref.Repository) -> None:
    with air.transaction("air", message="add a group") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        qc = g.create_group("qc")
        qc.attrs["method"] = "manual"
        flags = qc.create_array("flags", shape=(8,), chunks=(4,), dtype="u1")
        flags[:] = np.arange(8)
    g2 = snapref.open(air, "air")
    assert g2["qc"].attrs["method"] == "manual"
    np.testing.assert_array_equal(g2["qc/flags"][:], np.arange(8))
    with air.transaction("air", message="drop it") as tx:
        del zarr.open_group(tx.store, mode="r+")["qc"]
    assert "qc" not in snapref.open(air, "air")
    assert "qc" in snapref.open(air, "air", 2)
    assert air.changes(air.head("air")) == {
        "qc/.zattrs": "D",
        "qc/.zgroup": "D",
        "qc/flags/.zarray": "D",
        "qc/flags/.zattrs": "D",
        "qc/flags/0": "D",
        "qc/flags/1": "D",
    }


def test_as_of_a_snapshots_own_time_finds_it(air: snapref.Repository) -> None:
    s2 = _edit(air, 2.0)
    _edit(air, 3.0)
    assert air.resolve("air", as_of=s2.timestamp) == s2
    assert air.resolve("air", as_of=air.resolve("air", 1).timestamp).version == 1


def test_as_of_before_any_version_finds_none_in_any_century(air: snapref.Repository) -> None:
    # the year 999 was written '999-', which sorts after '2026-' as text: the head came
    # back; year 1 at +05:00 overflowed
    from datetime import datetime, timedelta, timezone

    for when in (
        datetime(999, 1, 1),
        "0999-01-01T00:00:00Z",
        np.datetime64("0300-01-01"),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    ):
        with pytest.raises(snapref.VersionNotFoundError, match="had no version"):
            air.resolve("air", as_of=when)
    far = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    assert air.resolve("air", as_of=far) == air.head("air")


def test_relative_paths_in_a_reference_dict_mean_the_working_directory(
    repo: snapref.Repository, hdf5_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kerchunk.hdf import SingleHdf5ToZarr

    monkeypatch.chdir(hdf5_file.parent)
    refs = SingleHdf5ToZarr("air.h5", inline_threshold=500).translate()
    repo.import_references("air", refs)
    assert repo.sources("air") == [f"file://{hdf5_file.parent}/"]
    np.testing.assert_array_equal(snapref.open(repo, "air")["temp"][:], temp_values())


def test_home_and_file_relative_urls_mean_what_fsspec_reads(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # '~/x' was taken as a path relative to the reference file's folder
    from fsspec.implementations.local import LocalFileSystem

    from snapref.refs import normalize_url

    monkeypatch.setenv("HOME", str(tmp_path))
    assert normalize_url("~/data/a.h5", "/refs") == f"file://{tmp_path}/data/a.h5"
    assert LocalFileSystem._strip_protocol("~/data/a.h5") == f"{tmp_path}/data/a.h5"
    assert normalize_url("file:a.h5", "/refs") == "file:///refs/a.h5"  # not /a.h5
    assert normalize_url("file:///x/../y") == "file:///y"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_same_bytes_are_stored_once_on_any_warehouse(where: str, tmp_path: Any) -> None:
    """Invariant 1 on a local folder (a stat) and on a filesystem that cannot write
    conditionally (fsspec's memory://: exists, then a PUT): a second dataset writing the
    same chunk bytes creates no object, and rewriting a chunk with its own bytes is no
    change."""
    import uuid

    url = str(tmp_path / "wh") if where == "local" else f"memory://wh-{uuid.uuid4().hex}"
    refs = one_array_refs("x", 4, 4, "|u1")
    with snapref.init(url, catalog=f"sqlite:///{tmp_path / 'catalog.db'}") as repo:
        written = []
        for name in ("a", "b"):
            repo.import_references(name, refs, message="empty")
            with repo.transaction(name, message="the same bytes") as tx:
                tx.fs.pipe_file("x/0", b"\x01\x02\x03\x04")
            assert tx.snapshot is not None
            written.append(tx.snapshot.summary["objects_written"])
        assert written == [1, 0]
        with repo.transaction("b", message="its own bytes again") as tx:
            tx.fs.pipe_file("x/0", b"\x01\x02\x03\x04")
        assert tx.snapshot is None  # nothing changed, nothing recorded
        assert snapref.open(repo, "b")["x"][:].tolist() == [1, 2, 3, 4]
        objects = repo.warehouse.fs.find(repo.warehouse.path("objects"))
        assert len(objects) == 1


def test_racing_writers_of_the_same_bytes_create_one_object(tmp_path: Any) -> None:
    # zarr writes chunks concurrently: identical ones race to store the same object,
    # and exactly one of them may report it written (summaries count objects)
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from snapref.objects import Warehouse

    store = Warehouse(str(tmp_path)).objects
    data = np.random.default_rng(0).bytes(1 << 20)
    start = threading.Barrier(8)

    def put(_: int) -> bool:
        start.wait()  # all at once, as zarr's concurrent writes do
        return store.put(data)[1]

    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(put, range(8)))
    assert sum(written) == 1
    files = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert [p.read_bytes() == data for p in files] == [True]  # no temporary file left


@pytest.mark.parametrize("spec", ["9" * 25, 10**30, "²", "①", "٣"])
def test_numbers_no_version_can_have_are_not_found(
    air: snapref.Repository, spec: str | int
) -> None:
    # beyond SQL's integers (an OverflowError from the driver before), or digits that
    # str.isdigit() takes and int() refuses ('²') or reads as another number ('٣' = 3)
    with pytest.raises(snapref.VersionNotFoundError, match="has no version"):
        air.resolve("air", spec)


def test_text_that_is_not_unicode_is_refused_before_anything_is_written(
    air: snapref.Repository,
) -> None:
    # a lone surrogate (a shell argument in another encoding) could not be stored, or
    # was stored and then broke every printing of it
    head = air.head("air")
    bad = "bad\udcff"
    for kwargs in ({"message": bad}, {"message": "ok", "author": bad}):
        with pytest.raises(snapref.InvalidInputError, match="not valid Unicode"):
            with air.transaction("air", **kwargs) as tx:
                zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    with pytest.raises(snapref.InvalidInputError, match=r"properties .* not valid Unicode"):
        with air.transaction("air", message="ok", properties={"k": bad}) as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    with pytest.raises(snapref.InvalidInputError, match=r"description .* not valid Unicode"):
        air.db.update_dataset("air", description=bad)
    assert air.head("air") == head and air.db.dataset("air").description == ""


def test_properties_that_are_not_standard_json_are_refused(air: snapref.Repository) -> None:
    # NaN was stored and printed by 'ls --json' as NaN (not JSON); a date raised a
    # bare TypeError
    import datetime

    head = air.head("air")
    for value, reason in (
        (float("nan"), "Out of range float"),
        (float("-inf"), "Out of range float"),
        (datetime.date(2020, 1, 1), "not JSON serializable"),
    ):
        with pytest.raises(snapref.InvalidInputError, match=f"properties .*{reason}.*ISO text"):
            with air.transaction("air", message="ok", properties={"k": value}) as tx:
                zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
        with pytest.raises(snapref.InvalidInputError, match=reason):
            air.db.update_dataset("air", properties={"k": [1, value]})
    assert air.head("air") == head and air.db.dataset("air").properties == {}
    record = air.db.update_dataset("air", properties={"k": None, "n": 1.5, "url": "s3://b/x"})
    assert record.properties == {"k": None, "n": 1.5, "url": "s3://b/x"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"author": ["Ada"]}, "author must be text"),
        ({"properties": "ticket=1"}, "Properties must be a mapping"),
        ({"properties": {1: "a"}}, "Property names must be text"),
        ({"properties": {"k": float("nan")}}, "properties .* cannot be recorded"),
    ],
)
def test_provenance_a_version_cannot_record_is_refused_before_any_edit(
    air: snapref.Repository, kwargs: dict[str, Any], match: str
) -> None:
    # these were found at commit, after the transaction had closed: every staged edit
    # was lost (and a list as author was a bare SQLAlchemy error)
    with pytest.raises(snapref.InvalidInputError, match=match):
        air.transaction("air", message="ok", **kwargs)
    assert air.head("air").version == 1


def test_a_commit_refused_for_a_staged_value_keeps_the_edits(air: snapref.Repository) -> None:
    """A metadata document that is not JSON is found at commit; the transaction stays
    open, so the user fixes the document and commits the same edits."""
    with pytest.raises(snapref.InvalidReferenceError, match=r"'temp/\.zattrs' does not hold JSON"):
        with air.transaction("air", message="fix and annotate") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = -1.0
            tx.fs.pipe_file("temp/.zattrs", b'{"units": "K",}')  # a trailing comma
    assert air.head("air").version == 1
    tx.fs.pipe_file("temp/.zattrs", b'{"units": "K"}')
    snap = tx.commit()
    assert snap is not None and snap.version == 2
    assert snap.summary["chunks_modified"] == 1 and snap.summary["metadata_changed"] == 1
    temp = snapref.open(air, "air")["temp"]
    assert temp[0, 0, 0] == -1.0 and temp.attrs["units"] == "K"
    with pytest.raises(snapref.TransactionClosedError):
        tx.commit()  # committed now: closed for good


def test_a_committed_checkout_records_exactly_its_edits(air: snapref.Repository, tmp_path) -> None:
    _edit(air, 7.0)  # temp/0.0.0 becomes a warehouse object
    with air.transaction("air", message="another object") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 20] = 8.0  # temp/0.0.1
    before = snapref.open(air, "air")["temp"][:]
    path = tmp_path / "air.json"
    air.checkout("air", None, str(path))
    doc = json.loads(path.read_text())
    refs = doc["refs"]
    # the same JSON spelt otherwise is no change
    refs["temp/.zattrs"] = json.dumps(json.loads(refs["temp/.zattrs"]), indent=4)
    # two objects swapped, a virtual chunk pointed at another's bytes, one chunk deleted
    refs["temp/0.0.0"], refs["temp/0.0.1"] = refs["temp/0.0.1"], refs["temp/0.0.0"]
    refs["temp/0.1.0"] = refs["temp/0.1.1"]
    del refs["temp/3.1.2"]
    path.write_text(json.dumps(doc))

    snap = air.commit_references("air", str(path), message="edited by hand")

    assert snap is not None
    assert {k: snap.summary[k] for k in ("chunks_modified", "chunks_removed", "chunks_added")} == {
        "chunks_modified": 3,
        "chunks_removed": 1,
        "chunks_added": 0,
    }
    assert snap.summary["metadata_changed"] == 0
    assert snap.summary["objects_written"] == 0  # the objects were stored already
    temp = snapref.open(air, "air")["temp"]
    expected = before.copy()
    expected[0:2, 0:20, 0:20] = before[0:2, 0:20, 20:40]
    expected[0:2, 0:20, 20:40] = before[0:2, 0:20, 0:20]
    expected[0:2, 20:40, 0:20] = before[0:2, 20:40, 20:40]
    expected[6:8, 20:40, 40:60] = temp.fill_value
    np.testing.assert_array_equal(temp[:], expected)
    # the file now matches the new version: committing it again records nothing
    assert air.commit_references("air", str(path), message="again") is None


def test_a_misspelt_branch_is_said_with_a_version_or_a_time(air: snapref.Repository) -> None:
    # resolve("air", 1, branch="mian") ignored the branch; with as_of it said "no
    # version on branch 'mian'" instead of that there is no such branch
    for kwargs in ({"version": 1}, {"as_of": "2100-01-01"}):
        with pytest.raises(snapref.VersionNotFoundError, match=r"no branch 'mian' \(branches"):
            air.resolve("air", branch="mian", **kwargs)
    assert air.resolve("air", 1, branch="main").version == 1
