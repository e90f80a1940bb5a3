"""Metadata tables and SQL over every version: the questions of issue 4, one query each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zarr

import snapref

# every test here runs on SQLite, PostgreSQL and duckdb catalogs (tests/conftest.py)
pytestmark = pytest.mark.all_catalogs


@pytest.fixture
def two(air: snapref.Repository, kerchunk_refs: dict[str, Any]) -> snapref.Repository:
    """air: v1 import, v2 edits chunk temp/3.1.2 (on branch main), v3 edits it again on
    branch qc; dataset copy: the same references imported a second time."""
    repo = air
    with repo.transaction("air", message="edit") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][7, 39, 59] = 1
    repo.branch("air", "qc")
    with repo.transaction("air", message="edit on qc", branch="qc") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][7, 39, 59] = 2
    with repo.transaction("air", message="other chunk") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    repo.import_references("copy", kerchunk_refs, message="copy")
    return repo


def test_which_versions_changed_a_chunk(two: snapref.Repository) -> None:
    t = two.inspect.query(
        "SELECT version, op FROM changes WHERE dataset = 'air' AND key = 'temp/3.1.2' "
        "ORDER BY version"
    )
    assert t.to_pylist() == [
        {"version": 1, "op": "A"},
        {"version": 2, "op": "M"},
        {"version": 3, "op": "M"},
    ]


def test_bytes_stored_per_dataset_counting_shared_objects_once(two: snapref.Repository) -> None:
    t = two.inspect.query(
        "SELECT dataset, sum(length)::BIGINT AS bytes FROM "
        "(SELECT DISTINCT dataset, digest, length FROM entries WHERE kind = 'object') "
        "GROUP BY dataset ORDER BY dataset"
    )
    rows = {r["dataset"]: r["bytes"] for r in t.to_pylist()}
    objects = two.warehouse.content("objects")
    air = {
        ref.digest
        for s in two.db.all_snapshots("air").values()
        for _, ref in two.manifest(s).items()
        if isinstance(ref, snapref.manifest.ObjectRef)
    }
    assert rows["air"] == sum(len(objects.get(d)) for d in air)
    assert rows["copy"] < rows["air"]  # the copy has only the inline coordinate objects


def test_versions_depending_on_a_source(two: snapref.Repository, hdf5_file: Path) -> None:
    url = "file://" + str(hdf5_file)
    t = two.inspect.query(
        f"SELECT DISTINCT dataset, version FROM entries WHERE url = '{url}' "
        "ORDER BY dataset, version"
    )
    assert [(r["dataset"], r["version"]) for r in t.to_pylist()] == [
        ("air", 1),
        ("air", 2),
        ("air", 3),
        ("air", 4),
        ("copy", 1),
    ]


def test_tables(two: snapref.Repository) -> None:
    ins = two.inspect
    snaps = ins.snapshots()
    assert snaps.num_rows == 5 and snaps.schema.field("timestamp").type == pa.timestamp("us", "UTC")
    assert ins.snapshots("air").column("version").to_pylist() == [1, 2, 3, 4]
    assert ins.datasets().column("name").to_pylist() == ["air", "copy"]
    assert ins.datasets().column("versions").to_pylist() == [4, 1]
    refs = {(r["dataset"], r["name"]): r["version"] for r in ins.refs().to_pylist()}
    assert refs == {("air", "main"): 4, ("air", "qc"): 3, ("copy", "main"): 1}
    entries = ins.entries("air", 2)
    by_key = {r["key"]: r for r in entries.to_pylist()}
    assert by_key["temp/3.1.2"]["kind"] == "object" and by_key["temp/3.1.2"]["digest"]
    assert by_key["temp/0.0.0"]["kind"] == "virtual" and by_key["temp/0.0.0"]["offset"] > 0
    assert by_key["temp/.zarray"]["kind"] == "inline"
    assert entries.num_rows == len(two.manifest(two.resolve("air", 2)))
    manifests = ins.manifests("air")
    assert set(manifests.column("version").to_pylist()) == {1, 2, 3, 4}
    audit = ins.audit()
    assert audit.column("action").to_pylist() == [
        "create",
        "commit",
        "branch",
        "commit",
        "commit",
        "create",
    ]
    hist = ins.history().to_pylist()
    assert [
        (h["branch"], h["version"], h["is_current_ancestor"]) for h in hist if h["dataset"] == "air"
    ] == [("main", 1, True), ("main", 2, True), ("qc", 2, True), ("qc", 3, True), ("main", 4, True)]


def test_bad_sql_is_an_input_error(two: snapref.Repository) -> None:
    with pytest.raises(snapref.InvalidInputError, match="Query failed"):
        two.inspect.query("SELECT nope FROM snapshots")
