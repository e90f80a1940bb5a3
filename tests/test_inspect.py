"""Metadata tables and SQL over every version: the questions of issue 4, one query each."""

from __future__ import annotations

import json
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
    objects = two.warehouse.objects
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


# ---- query is read-only, one statement, one-line errors; output of every column type ----

# A SELECT that reads a file, one that writes one, and statements that are not queries:
# each must be refused. "{dir}" is the test's own folder (a file there holds "secret").
OUTSIDE = [
    "SELECT * FROM read_text('{dir}/secret.csv')",
    "SELECT * FROM read_csv('{dir}/secret.csv')",
    "SELECT * FROM read_blob('{dir}/secret.csv')",
    "SELECT * FROM '{dir}/secret.csv'",
    "SELECT * FROM glob('{dir}/*')",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT * FROM enable_logging()",
    "COPY (SELECT 42) TO '{dir}/out.csv'",
    "COPY snapshots TO '{dir}/out.csv'",
    "EXPORT DATABASE '{dir}/out'",
    "ATTACH '{dir}/out.db' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE t (a INT)",
    "CREATE VIEW v AS SELECT 1",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "PRAGMA enable_profiling",
    "pivot snapshots on author",
]


def one_line_error(exc: pytest.ExceptionInfo[snapref.InvalidInputError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "^^" not in message and "LINE 1" not in message, message
    return message


def test_query_reads_only_the_metadata_tables(two: snapref.Repository, tmp_path: Path) -> None:
    (tmp_path / "secret.csv").write_text("secret\n")
    for template in OUTSIDE:
        sql = template.format(dir=tmp_path)
        with pytest.raises(snapref.InvalidInputError) as exc:
            two.inspect.query(sql)
        message = one_line_error(exc)
        assert message.startswith("Query refused: "), message
        assert "queries may only read the metadata tables (datasets, snapshots," in message
        # the query is named, cut to 100 characters (tmp_path's length varies)
        named = message.rsplit("; query: ", 1)[1]
        assert sql.startswith(named.removesuffix("...")) and len(named) <= 100, message
    assert not any((tmp_path / name).exists() for name in ("out.csv", "out", "out.db"))
    # the registered tables (Arrow scans) still read, and so does the entries view, and
    # the catalog (a duckdb database on the duckdb run) still works after a locked query
    assert two.inspect.query("SELECT count(*) AS n FROM snapshots").to_pylist() == [{"n": 5}]
    keys = two.inspect.query("SELECT count(*) AS n FROM entries WHERE dataset = 'copy'")
    assert keys.to_pylist() == [{"n": len(two.manifest(two.resolve("copy")))}]
    with two.transaction("air", message="after the queries") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][1, 1, 1] = 3
    t = two.inspect.query("SELECT max(version) AS v FROM snapshots WHERE dataset = 'air'")
    assert t.to_pylist() == [{"v": 5}]


def test_query_is_one_statement(two: snapref.Repository) -> None:
    for sql in ("SELECT 1; SELECT 2", "SELECT 1 AS a;\nSELECT * FROM snapshots;"):
        with pytest.raises(snapref.InvalidInputError) as exc:
            two.inspect.query(sql)
        assert "give one query, not 2 statements" in one_line_error(exc)
    for sql in ("", "   ", "\n", ";", "-- only a comment"):
        with pytest.raises(snapref.InvalidInputError) as exc:
            two.inspect.query(sql)
        assert one_line_error(exc).startswith("Query failed: the query is empty")
    # one statement with a trailing semicolon, or a ';' inside a string, is one query
    assert two.inspect.query("SELECT 'a;b' AS s;").to_pylist() == [{"s": "a;b"}]


def test_bad_sql_is_one_line(two: snapref.Repository) -> None:
    cases = {
        "selec 1": 'Query failed: Parser Error: syntax error at or near "selec"; query: selec 1',
        "SELECT versoin FROM snapshots": 'not found in FROM clause! Candidate bindings: "version"',
        "SELECT * FROM snapshot": "the metadata tables are datasets, snapshots, refs,",
        "SELECT 'a'::INT": "Conversion Error: Could not convert string 'a' to INT32",
    }
    for sql, expected in cases.items():
        with pytest.raises(snapref.InvalidInputError) as exc:
            two.inspect.query(sql)
        message = one_line_error(exc)
        assert message.startswith("Query failed: ") and expected in message, message
    long = "SELECT nope,\n" + "  version,\n" * 30 + "FROM snapshots"
    with pytest.raises(snapref.InvalidInputError) as exc:
        two.inspect.query(long)
    shown = one_line_error(exc).split("; query: ")[1]  # whitespace collapsed, cut short
    assert shown.startswith("SELECT nope, version, version,") and shown.endswith("...")
    assert len(shown) == 100


TYPES_SQL = (
    "SELECT DATE '2024-01-01' AS d, TIME '10:00' AS t, "
    "TIMESTAMP '2024-01-01 10:00:00.5' AS ts, TIMESTAMPTZ '2024-01-01 10:00+02' AS tstz, "
    "'infinity'::TIMESTAMP AS inf_ts, "
    "INTERVAL '1 month 2 days 3.5 seconds' AS i, -INTERVAL '1 day 3 hours' AS neg_i, "
    "1.10 AS dec, sum(length(message)) AS hugeint, 'x'::BLOB AS b, '\\xAA\\x00'::BLOB AS b2, "
    "'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, '-inf'::FLOAT AS minf, 0.5 :: DOUBLE AS half, "
    "[1.5, 'nan'::DOUBLE] AS l, {'day': DATE '2024-01-02', 'raw': 'y'::BLOB} AS st, "
    "MAP {1: TIME '12:30:00'} AS m, 'é' AS u, true AS yes, NULL AS nothing "
    "FROM snapshots WHERE dataset = 'copy'"
)
TYPES_JSON = {
    "d": "2024-01-01",
    "t": "10:00:00",
    "ts": "2024-01-01T10:00:00.500000",
    "tstz": "2024-01-01T08:00:00.000000Z",
    "inf_ts": "infinity",
    "i": "P1M2DT3.5S",
    "neg_i": "P-1DT-3H",
    "dec": 1.1,
    "hugeint": 4,
    "b": "78",
    "b2": "aa00",
    "nan": None,
    "inf": None,
    "minf": None,
    "half": 0.5,
    "l": [1.5, None],
    "st": {"day": "2024-01-02", "raw": "79"},
    "m": {"1": "12:30:00"},
    "u": "é",
    "yes": True,
    "nothing": None,
}


def strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_text_rows_stay_one_line_each(two: snapref.Repository) -> None:
    from snapref.cli._query_output import rows_as_json, rows_as_text

    table = two.inspect.query(
        "SELECT 'first line' || chr(10) || 'second' || chr(9) || 'x' AS m, 1 AS n"
    )
    assert rows_as_text(table)[2] == "first line\\nsecond\\tx  1"
    assert rows_as_json(table) == [{"m": "first line\nsecond\tx", "n": 1}]  # JSON: as is


def test_json_and_text_of_every_column_type(two: snapref.Repository) -> None:
    from snapref.cli._query_output import rows_as_json, rows_as_text

    table = two.inspect.query(TYPES_SQL)
    assert rows_as_json(table) == [TYPES_JSON]
    header, rule, row = rows_as_text(table)
    cells = row.split()
    assert header.split() == list(TYPES_JSON)
    assert cells == [
        "2024-01-01",
        "10:00:00",
        "2024-01-01T10:00:00.500000",
        "2024-01-01T08:00:00.000000Z",
        "infinity",
        "P1M2DT3.5S",
        "P-1DT-3H",
        "1.10",
        "4",
        "78",
        "aa00",
        "nan",
        "inf",
        "-inf",
        "0.5",
        "[1.5,",
        "null]",
        '{"day":',
        '"2024-01-02",',
        '"raw":',
        '"79"}',
        '{"1":',
        '"12:30:00"}',
        "é",
        "True",
    ]
    assert len(rule.split()) == len(TYPES_JSON)
    # a repeated column name keeps both values; nanoseconds are kept
    dup = two.inspect.query(
        "SELECT 1 AS a, 2 AS a, '2024-01-01 00:00:00.123456789'::TIMESTAMP_NS AS ns"
    )
    assert rows_as_json(dup) == [{"a": 1, "a_1": 2, "ns": "2024-01-01T00:00:00.123456789"}]
    assert rows_as_text(dup)[2].split() == ["1", "2", "2024-01-01T00:00:00.123456789"]


@pytest.fixture
def cli(run: Any, tmp_path: Path, kerchunk_refs: dict[str, Any]) -> Any:
    """``run`` (tests/conftest.py) on a repository holding dataset ``air``."""
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("air", kerchunk_refs, message="Import")
    repo.close()
    return run


def test_cli_query_refuses_files_statements_and_bad_sql(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "secret.csv").write_text("secret\n")
    out = tmp_path / "out.csv"
    r = cli("query", f"COPY (SELECT 42) TO '{out}'", code=1)
    assert r.stderr.startswith("Error: Query refused: COPY, not a query; queries may only read")
    assert r.stderr.count("\n") == 1 and not out.exists()
    r = cli("query", f"SELECT * FROM read_text('{tmp_path}/secret.csv')", code=1)
    assert r.stderr.startswith("Error: Query refused: Permission Error: Cannot access file")
    assert r.stderr.count("\n") == 1 and "secret\n" not in r.output
    r = cli("query", "SELECT 1; SELECT 2", code=1)
    assert r.stderr == (
        "Error: Query failed: give one query, not 2 statements (only one result can be "
        "shown); query: SELECT 1; SELECT 2\n"
    )
    assert cli("query", " ", code=1).stderr.startswith("Error: Query failed: the query is empty")
    r = cli("query", "selec 1", code=1)
    assert (
        r.stderr
        == 'Error: Query failed: Parser Error: syntax error at or near "selec"; query: selec 1\n'
    )


def test_cli_query_prints_every_type(cli: Any) -> None:
    sql = TYPES_SQL.replace("'copy'", "'air'")  # message 'Import': length 6
    assert strict_json(cli("query", sql, "--json").output) == [{**TYPES_JSON, "hugeint": 6}]
    lines = cli("query", sql).output.splitlines()
    assert lines[0].split() == list(TYPES_JSON) and len(lines) == 3
    assert lines[2].split()[:4] == [
        "2024-01-01",
        "10:00:00",
        "2024-01-01T10:00:00.500000",
        "2024-01-01T08:00:00.000000Z",
    ]
    assert "'datetime" not in lines[2] and "b'" not in lines[2]


def test_a_misspelt_dataset_is_not_an_empty_table(two: snapref.Repository) -> None:
    # snapshots/changes/manifests of 'ari' were empty tables, as if it had no versions
    for table in ("snapshots", "changes", "manifests"):
        with pytest.raises(snapref.DatasetNotFoundError, match="No dataset 'ari'"):
            getattr(two.inspect, table)("ari")
