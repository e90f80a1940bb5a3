"""Parquet reference sets (fsspec's LazyReferenceMapper layout): import what kerchunk
writes, check out complete directories plain fsspec reads, commit what the lazy
mapper's flush() wrote."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from fsspec.implementations.reference import LazyReferenceMapper
from kerchunk.df import refs_to_dataframe

import snapref
from snapref.refs_parquet import is_parquet_references
from tests.conftest import temp_values

# fsspec reads parquet references through pandas' fastparquet engine, which pandas 3
# deprecates; that is fsspec's business, not what these tests check
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _fsspec_group(path: Path | str, mode: str = "r") -> tuple[Any, zarr.Group]:
    fs = fsspec.filesystem(
        "reference",
        fo=str(path),
        remote_protocol="file",
        skip_instance_cache=True,
        asynchronous=True,
    )
    store = zarr.storage.FsspecStore(fs, path="", read_only=mode == "r")
    return fs, zarr.open_group(store, mode=mode, zarr_format=2)


def test_import_a_kerchunk_parquet_set(
    repo: snapref.Repository, kerchunk_refs: dict[str, Any], tmp_path: Path
) -> None:
    refs_to_dataframe(kerchunk_refs, str(tmp_path / "air.parq"), record_size=10)
    assert is_parquet_references(str(tmp_path / "air.parq"))
    snap = repo.import_references("air", str(tmp_path / "air.parq"), message="from parquet")
    repo.import_references("air_json", kerchunk_refs, message="from json")
    g = snapref.open(repo, "air")
    np.testing.assert_array_equal(g["temp"][:], temp_values())
    np.testing.assert_array_equal(g["lat"][:], snapref.open(repo, "air_json")["lat"][:])
    assert set(repo.manifest(snap)) == set(repo.manifest(repo.head("air_json")))
    # virtual chunks stayed virtual: nothing but inline data became objects
    assert snap.summary["objects_written"] < 5
    assert repo.sources("air") == repo.sources("air_json")


def test_checkout_is_complete_and_plain_fsspec_reads_it(
    air: snapref.Repository, tmp_path: Path
) -> None:
    with air.transaction("air", message="edit") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][0, 0, 0] = -5.0  # one chunk becomes a warehouse object
    out = tmp_path / "work.parq"
    air.checkout("air", None, str(out), format="parquet", record_size=5)
    # every record of every array, even those a lazy writer would leave out
    n_chunks = 4 * 2 * 3
    assert sorted(p.name for p in (out / "temp").iterdir()) == sorted(
        f"refs.{i}.parq" for i in range(-(-n_chunks // 5))
    )
    for coord in ("lat", "lon", "time"):
        assert [p.name for p in (out / coord).iterdir()] == ["refs.0.parq"]
    _, g = _fsspec_group(out)
    expected = temp_values()
    expected[0, 0, 0] = -5.0
    np.testing.assert_array_equal(g["temp"][:], expected)
    np.testing.assert_array_equal(g["lat"][:], snapref.open(air, "air")["lat"][:])
    assert g["temp"].attrs["units"] == "K"
    record = json.loads((out / ".snapref").read_text())
    assert record["version"] == 2 and record["dataset"] == "air"
    assert json.loads((tmp_path / "work.parq.snapref").read_text()) == record


def test_missing_chunks_read_as_fill_values(repo: snapref.Repository, tmp_path: Path) -> None:
    zarray = {
        "zarr_format": 2,
        "shape": [4, 4],
        "chunks": [2, 2],
        "dtype": "<i2",
        "compressor": None,
        "fill_value": 7,
        "order": "C",
        "filters": None,
    }
    refs = {
        ".zgroup": '{"zarr_format": 2}',
        "v/.zarray": json.dumps(zarray),
        "v/1.1": "base64:" + base64.b64encode(np.arange(4, dtype="<i2").tobytes()).decode(),
    }
    repo.import_references("sparse", {"version": 1, "refs": refs})
    repo.checkout("sparse", None, str(tmp_path / "s.parq"), format="parquet")
    _, g = _fsspec_group(tmp_path / "s.parq")
    expected = np.full((4, 4), 7, dtype="<i2")
    expected[2:, 2:] = np.arange(4).reshape(2, 2)
    np.testing.assert_array_equal(g["v"][:], expected)
    # and back in: the same three keys, nothing invented for the missing chunks
    snap = repo.import_references("sparse2", str(tmp_path / "s.parq"))
    assert sorted(repo.manifest(snap)) == [".zgroup", "v/.zarray", "v/1.1"]
    np.testing.assert_array_equal(snapref.open(repo, "sparse2")["v"][:], expected)


def test_commit_what_the_lazy_mapper_flushed(air: snapref.Repository, tmp_path: Path) -> None:
    out = tmp_path / "work.parq"
    air.checkout("air", None, str(out), format="parquet", record_size=7)
    fs, g = _fsspec_group(out, mode="r+")
    g["temp"][1, 0:4, 0:4] = -1.0
    assert isinstance(fs.references, LazyReferenceMapper)
    fs.references.flush()
    (tmp_path / "work.parq.snapref").unlink()  # the record inside the directory suffices
    snap = air.commit_references("air", str(out), "Mask a patch")
    assert snap is not None and snap.version == 2
    # only the edited chunk changed; metadata re-encoded by the layout is not a change
    assert air.changes(snap) == {"temp/0.0.0": "M"}
    assert snap.summary["objects_written"] == 1
    expected = temp_values()
    expected[1, 0:4, 0:4] = -1.0
    np.testing.assert_array_equal(snapref.open(air, "air")["temp"][:], expected)
    # the records follow the new version: committing again changes nothing
    assert json.loads((out / ".snapref").read_text())["version"] == 2
    assert air.commit_references("air", str(out), "again") is None


@pytest.mark.parametrize("record_size", [7, 100_000])
def test_an_array_grown_through_the_lazy_mapper_commits(
    air: snapref.Repository, tmp_path: Path, record_size: int
) -> None:
    # fsspec writes the chunks of a grown array into the empty rows that pad an array's
    # last record file, and into new record files after it
    out = tmp_path / "grow.parq"
    air.checkout("air", None, str(out), format="parquet", record_size=record_size)
    fs, g = _fsspec_group(out, mode="r+")
    more = np.full((2, 40, 60), 300.0, dtype="float32")
    g["temp"].append(more)
    fs.references.flush()
    snap = air.commit_references("air", str(out), "Two more time steps")
    assert snap is not None
    assert snap.summary["chunks_added"] == 6 and snap.summary["metadata_changed"] == 1
    temp = snapref.open(air, "air")["temp"]
    np.testing.assert_array_equal(temp[:], np.concatenate([temp_values(), more]))


def test_consolidated_metadata_zarr_writes_into_the_layout_is_not_kept(
    air: snapref.Repository, tmp_path: Path
) -> None:
    # zarr may consolidate into the layout's metadata; kept, that copy would hide the
    # next version's changes from every reader that trusts consolidated metadata
    out = tmp_path / "work.parq"
    air.checkout("air", None, str(out), format="parquet")
    fs, g = _fsspec_group(out, mode="r+")
    g.attrs["edited"] = True
    zarr.consolidate_metadata(g.store, zarr_format=2)
    fs.references.flush()
    assert ".zmetadata" in json.loads((out / ".zmetadata").read_text())["metadata"]
    snap = air.commit_references("air", str(out), "Edit attributes")
    assert snap is not None and air.changes(snap) == {".zattrs": "M"}
    assert ".zmetadata" not in snapref.open(air, "air").store.fs.ls("", detail=False)


def test_cli_checkout_edit_commit(run: Any, tmp_path: Path, kerchunk_refs: Any) -> None:
    refs_to_dataframe(kerchunk_refs, str(tmp_path / "in.parq"), record_size=100)
    run("init")
    assert "Imported air version 1" in run("import", "air", "in.parq").output
    run("checkout", "air", "--format", "parquet", "-o", "work.parq", "--record-size", "6")
    fs, g = _fsspec_group(tmp_path / "work.parq", mode="r+")
    g["temp"][7, 39, 59] = 0.0  # the last chunk
    fs.references.flush()
    out = run("commit", "air", "work.parq", "-m", "Zero a corner", "--json").output
    assert json.loads(out)["summary"]["chunks_modified"] == 1
    repo = snapref.connect(str(tmp_path / "wh"))
    assert repo.changes(repo.head("air")) == {"temp/3.1.2": "M"}
    assert snapref.open(repo, "air")["temp"][7, 39, 59] == 0.0
    assert snapref.open(repo, "air", 1)["temp"][7, 39, 59] == temp_values()[7, 39, 59]


def test_layouts_parquet_cannot_hold_are_refused(repo: snapref.Repository, tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "v3.zarr"), mode="w", zarr_format=3)
    group.create_array("a", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    from snapref.ingest import ingest

    ingest(repo, "v3", str(tmp_path / "v3.zarr"))
    with pytest.raises(snapref.InvalidInputError, match="zarr v3"):
        repo.checkout("v3", None, str(tmp_path / "x.parq"), format="parquet")
    with pytest.raises(snapref.InvalidInputError, match="Unknown reference format"):
        repo.checkout("v3", None, str(tmp_path / "x.parq"), format="csv")
    (tmp_path / "bad.parq").mkdir()
    (tmp_path / "bad.parq" / ".zmetadata").write_text("{}")
    assert not is_parquet_references(str(tmp_path / "bad.parq"))
    # a checkout never deletes a folder that is not a parquet reference set
    repo.import_references("v2", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}})
    with pytest.raises(snapref.InvalidInputError, match=r"exists already.*--force"):
        repo.checkout("v2", None, str(tmp_path / "bad.parq"), format="parquet")
    with pytest.raises(snapref.InvalidInputError, match="not a parquet reference set"):
        repo.checkout("v2", None, str(tmp_path / "bad.parq"), format="parquet", overwrite=True)
    assert (tmp_path / "bad.parq" / ".zmetadata").read_text() == "{}"


def test_a_large_set_imports_lazily_written_records(
    repo: snapref.Repository, tmp_path: Path
) -> None:
    """90,000 references in 3 record files, as a generator would write them."""
    side, record_size = 300, 30_000
    blob = tmp_path / "blob.bin"
    blob.write_bytes(np.arange(side * side, dtype="<u2").tobytes())
    root = tmp_path / "big.parq"
    (root / "v").mkdir(parents=True)
    zarray = {
        "zarr_format": 2,
        "shape": [side, side],
        "chunks": [1, 1],
        "dtype": "<u2",
        "compressor": None,
        "fill_value": 0,
        "order": "C",
        "filters": None,
    }
    meta = {
        "metadata": {".zgroup": {"zarr_format": 2}, "v/.zarray": zarray},
        "record_size": record_size,
    }
    (root / ".zmetadata").write_text(json.dumps(meta))
    for r in range(side * side // record_size):
        k = np.arange(r * record_size, (r + 1) * record_size)
        table = pa.table(
            {
                "path": pa.array([str(blob)] * len(k)),
                "offset": pa.array(2 * k),
                "size": pa.array(np.full(len(k), 2)),
                "raw": pa.nulls(len(k), pa.binary()),
            }
        )
        pq.write_table(table, root / "v" / f"refs.{r}.parq")
    snap = repo.import_references("big", str(root))
    assert snap.summary["chunks_added"] == side * side
    v = snapref.open(repo, "big")["v"]
    assert v[123, 234] == 123 * side + 234
    assert v[side - 1, side - 1] == (side * side - 1) % 2**16  # the blob wraps at uint16


def test_a_parquet_import_streams_into_the_same_manifest_as_parsing_it(
    repo: snapref.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path (records -> shards, bounded memory) stores exactly what the
    key-by-key parse describes: virtual ranges, whole files, inline chunks as objects,
    missing chunks absent; shards cut at MAX_SHARD_REFS."""
    import snapref.manifest as manifest_module
    from snapref.manifest import InlineRef, ObjectRef, SectionWriter
    from snapref.objects import content_hash
    from snapref.refs_parquet import load_parquet_references

    monkeypatch.setattr(SectionWriter.__init__, "__defaults__", (3,))  # tiny shards
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(40)))
    root = tmp_path / "mixed.parq"
    (root / "v").mkdir(parents=True)
    zarray = {
        "zarr_format": 2,
        "shape": [4, 5],
        "chunks": [1, 1],
        "dtype": "|u1",
        "compressor": None,
        "fill_value": 0,
        "order": "C",
        "filters": None,
    }
    meta = {"metadata": {".zgroup": {"zarr_format": 2}, "v/.zarray": zarray}, "record_size": 7}
    (root / ".zmetadata").write_text(json.dumps(meta))
    for r in range(3):  # 20 chunks in records of 7, 7, 6
        k = list(range(r * 7, min((r + 1) * 7, 20)))
        paths = [None if i in (3, 11) else str(blob) for i in k]  # 3: inline, 11: missing
        raws = [b"\x07" if i == 3 else None for i in k]
        offsets = [0 if i == 19 else i for i in k]  # 19: the whole file
        sizes = [0 if i == 19 else 1 for i in k]
        pq.write_table(
            pa.table(
                {
                    "path": paths,
                    "offset": offsets,
                    "size": sizes,
                    "raw": pa.array(raws, pa.binary()),
                }
            ),
            root / "v" / f"refs.{r}.parq",
        )
    snap = repo.import_references("mixed", str(root))
    manifest = repo.manifest(snap)
    assert snap.summary["chunks_added"] == 19
    assert len(manifest.sections["array:v"]) == 7  # 19 references, 3 per shard
    expected = {}
    for key, value in load_parquet_references(str(root)).items():
        if isinstance(value, bytes):
            is_meta = key.endswith((".zarray", ".zgroup"))
            expected[key] = (
                InlineRef(value) if is_meta else ObjectRef(content_hash(value), len(value))
            )
        else:
            expected[key] = value
    assert dict(manifest.items()) == expected
    v = snapref.open(repo, "mixed")["v"]
    assert v[0, 3] == 7  # the inline chunk, now an object
    assert v[2, 1] == 0  # the missing chunk reads as the fill value
    assert v[1, 2] == 7  # chunk 7 is byte 7 of the blob
    assert manifest_module.MAX_SHARD_REFS == 5000  # the patch touched only the writer


def test_bulk_sections_must_come_in_chunk_order(repo: snapref.Repository) -> None:
    from snapref.manifest import SectionWriter, chunk_table

    writer = SectionWriter(repo.warehouse, "v")
    writer.add(chunk_table(["v/1.0"], [None], ["file:///x"], [0], [1]))
    with pytest.raises(snapref.InvalidReferenceError, match="not in chunk-grid order"):
        writer.add(chunk_table(["v/0.5"], [None], ["file:///x"], [0], [1]))


def test_damaged_parquet_sets_are_named_not_half_imported(
    repo: snapref.Repository, kerchunk_refs: dict[str, Any], tmp_path: Path
) -> None:
    """A record file with a negative offset, without the reference columns, or that is
    a folder, and a .zmetadata that is no JSON: each is an error naming the file (a
    negative offset was recorded, and the version could not be read)."""
    import shutil

    good = tmp_path / "good.parq"
    refs_to_dataframe(kerchunk_refs, str(good), record_size=10)
    record = good / "temp" / "refs.0.parq"

    def damaged(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        return copy

    negative = damaged("negative")
    table = pq.read_table(record)
    offsets = table.column("offset").to_pylist()
    offsets[3] = -5
    table = table.set_column(table.column_names.index("offset"), "offset", pa.array(offsets))
    pq.write_table(table, negative / "temp" / "refs.0.parq")
    no_columns = damaged("no-columns")
    pq.write_table(pa.table({"a": [1, 2]}), no_columns / "temp" / "refs.0.parq")
    folder = damaged("folder")
    (folder / "temp" / "refs.0.parq").unlink()
    (folder / "temp" / "refs.0.parq").mkdir()
    bad_json = damaged("bad-json")
    (bad_json / ".zmetadata").write_text('{"record_size": 10,')
    for path, match in (
        (negative, r"refs\.0\.parq, row 3 \(key 'temp/0\.1\.0'\): offset -5 is negative"),
        (no_columns, r"refs\.0\.parq lacks the column\(s\) 'path', 'offset', 'size'"),
        (folder, r"refs\.0\.parq is a folder, not a parquet record file"),
        (bad_json, r"\.zmetadata is not valid JSON"),
    ):
        with pytest.raises(snapref.InvalidReferenceError, match=match):
            repo.import_references("air", str(path), message="damaged")
        assert repo.datasets() == []
    assert repo.import_references("air", str(good), message="whole").version == 1


@pytest.mark.parametrize("record_size", [2, 10_000])
def test_keys_zarr_never_reads_stay_out_of_the_parquet_layout(
    repo: snapref.Repository, tmp_path: Path, record_size: int
) -> None:
    """Chunk keys outside the grid (left when a shape is cut shorter by editing the
    .zarray) or spelt otherwise ('0/1', '00.0') are read by nobody; the parquet export
    put them into the rows of other chunks (wrong data) or refused the version."""
    zarray = {
        "zarr_format": 2,
        "shape": [4, 12],
        "chunks": [2, 2],
        "dtype": "<i4",
        "compressor": None,
        "fill_value": -1,
        "order": "C",
        "filters": None,
    }

    def chunk(value: int) -> str:
        return "base64:" + base64.b64encode(np.full((2, 2), value, "<i4").tobytes()).decode()

    refs = {".zgroup": '{"zarr_format": 2}', "x/.zarray": json.dumps(zarray)}
    refs |= {f"x/0.{j}": chunk(j) for j in range(6)}  # row 1 of the grid never written
    refs |= {"x/1.0": chunk(100), "x/0/1": chunk(7), "x/00.0": chunk(8)}
    repo.import_references("d", {"version": 1, "refs": refs}, message="sparse")
    with repo.transaction("d", message="keep 6 columns") as tx:
        tx.fs.pipe_file("x/.zarray", json.dumps({**zarray, "shape": [4, 6]}).encode())
    expected = snapref.open(repo, "d")["x"][:]
    assert expected[0, 0] == 0 and expected[0, 2] == 1 and expected[2, 0] == 100
    assert (expected[2:, 2:] == -1).all()
    out = tmp_path / "v.parq"
    repo.checkout("d", None, str(out), format="parquet", record_size=record_size)
    _, g = _fsspec_group(out)
    np.testing.assert_array_equal(g["x"][:], expected)
