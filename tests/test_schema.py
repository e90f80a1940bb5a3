"""The catalog and warehouse formats in catalog_schemas/ are the ones the code uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import snapref
from snapref.catalog import schema
from snapref.catalog.migrate import MIGRATIONS
from snapref.catalog.schema import SCHEMA_VERSION, ddl
from snapref.manifest import _SCHEMA

SCHEMAS = Path(__file__).parent.parent / "catalog_schemas"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_ddl_files_match_code(dialect: str) -> None:
    path = SCHEMAS / f"v{SCHEMA_VERSION}.{dialect}.sql"
    assert path.read_text() == ddl(dialect), (
        f"{path.name} differs from snapref/catalog/schema.py: if the change is "
        "intended, raise SCHEMA_VERSION, write the new DDL file and a migration"
    )


def test_created_catalog_has_exactly_the_schema(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    inspector = sa.inspect(repo.db.engine)
    assert set(inspector.get_table_names()) == set(schema.metadata.tables)
    for name, table in schema.metadata.tables.items():
        assert [c["name"] for c in inspector.get_columns(name)] == [c.name for c in table.columns]
    with repo.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one() == 2


def test_catalog_of_another_version_is_refused(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    with repo.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE snapref_schema SET version = 99"))
    repo.close()
    with pytest.raises(snapref.CatalogSchemaError, match="schema version 99"):
        snapref.connect(str(tmp_path / "wh"))


def test_migration_files_match_code() -> None:
    for version, sql in MIGRATIONS.items():
        path = SCHEMAS / "migrations" / f"v{version}_to_v{version + 1}.sql"
        assert path.read_text() == sql
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def _schema_of(engine: sa.Engine) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)),
            inspector.get_pk_constraint(name)["constrained_columns"],
        )
        for name in sorted(inspector.get_table_names())
    }


def _make_version_1_repository(tmp_path: Path) -> Path:
    """A repository whose catalog has schema version 1, as snapref 0.1 wrote it: made
    from v1.sqlite.sql, holding an imported dataset with two commits and a branch."""
    import sqlite3

    wh = tmp_path / "old"
    db = sqlite3.connect(wh.parent / "v1.db")
    db.executescript((SCHEMAS / "v1.sqlite.sql").read_text())
    # the rows a version-1 snapref recorded for: import (v1), commit (v2), branch qc,
    # commit on qc (v3)
    ids = [f"{i:032x}" for i in (1, 2, 3)]
    ts = [
        "2025-01-01T00:00:00.000000Z",
        "2025-01-02T00:00:00.000000Z",
        "2025-01-03T00:00:00.000000Z",
    ]
    repo = snapref.init(str(wh))
    snaps = [repo.import_references("d", _refs(), "import")]
    repo.close()
    manifests = {}
    for i, value in enumerate((1, 2)):
        repo = snapref.connect(str(wh))
        with repo.transaction("d", message=f"set {value}") as tx:
            tx.fs.pipe("x/0", bytes([value]) * 3)
        snaps.append(tx.snapshot)
        repo.close()
        manifests[i] = tx.snapshot.manifest
    (wh / "catalog.db").unlink()
    db.execute("INSERT INTO snapref_schema VALUES (1)")
    db.execute("INSERT INTO datasets VALUES ('d', ?, '', '{}')", (ts[0],))
    parents = ["[]", f'["{ids[0]}"]', f'["{ids[1]}"]']
    for i, snap in enumerate(snaps):
        db.execute(
            "INSERT INTO snapshots VALUES (?, 'd', ?, ?, ?, ?, ?, 'Old <o@x>', ?, '0.1.0', '{}', '{}')",
            (
                ids[i],
                i + 1,
                snap.manifest,
                parents[i],
                "qc" if i == 2 else "main",
                ts[i],
                snap.message,
            ),
        )
    for i in (1, 2):
        db.execute("INSERT INTO snapshot_changes VALUES (?, 'x/0', 'M')", (ids[i],))
    db.execute("INSERT INTO refs VALUES ('d', 'main', 'branch', ?)", (ids[1],))
    db.execute("INSERT INTO refs VALUES ('d', 'qc', 'branch', ?)", (ids[2],))
    for n, (ref, action, old, new) in enumerate(
        [
            ("main", "create", None, ids[0]),
            ("main", "commit", ids[0], ids[1]),
            ("qc", "branch", None, ids[1]),
            ("qc", "commit", ids[1], ids[2]),
        ]
    ):
        db.execute(
            "INSERT INTO ref_log VALUES (?, 'd', ?, ?, ?, ?, ?, 'Old <o@x>')",
            (f"{n:032x}", ref, action, old, new, ts[min(n, 2)]),
        )
    db.commit()
    db.close()
    (wh.parent / "v1.db").rename(wh / "catalog.db")
    return wh


def test_a_version_1_repository_is_migrated_on_connect(tmp_path: Path) -> None:
    wh = _make_version_1_repository(tmp_path)
    repo = snapref.connect(str(wh))
    with repo.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one() == 2
    fresh = snapref.init(str(tmp_path / "fresh"))
    assert _schema_of(repo.db.engine) == _schema_of(fresh.db.engine)
    # the old history reads as before, through the new parents table
    assert [s.version for s in repo.log("d")] == [2, 1]
    assert [s.version for s in repo.log("d", "qc")] == [3, 2, 1]
    assert snapref.open(repo, "d", 3)["x"][:].tolist() == [2, 2, 2]
    assert repo.resolve("d", as_of="2025-01-01T12:00:00Z").version == 1
    # and the new features work on it
    (line,) = repo.blame("d", "x", (0,), version="qc", history=True)
    assert line.snapshot.version == 3 and [s.version for s in line.history] == [3, 2, 1]
    assert repo.merge("d", "qc").snapshot.parents[1] == f"{3:032x}"
    assert snapref.open(repo, "d")["x"][:].tolist() == [2, 2, 2]
    assert repo.audit("d")[-1].action == "merge"
    repo.close()
    # a second connect finds version 2 and changes nothing
    assert snapref.connect(str(wh)).log("d")[0].version == 4


def _refs() -> dict[str, Any]:
    return {".zgroup": '{"zarr_format": 2}', "x/.zarray": _zarray(), "x/0": "abc"}


def test_manifest_spec_matches_shard_schema() -> None:
    spec = json.loads((SCHEMAS / "manifest-v1.json").read_text())
    assert [tuple(c) for c in spec["shard"]["columns"]] == [(f.name, str(f.type)) for f in _SCHEMA]


def test_manifest_list_fields_match_what_is_written(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    snap = repo.import_references(
        "d", {".zgroup": '{"zarr_format": 2}', "x/.zarray": _zarray(), "x/0": "abc"}, "m"
    )
    spec = json.loads((SCHEMAS / "manifest-v1.json").read_text())["manifest_list"]
    doc = json.loads(repo.warehouse.content("manifests", ".json").get(snap.manifest).decode())
    assert sorted(doc) == sorted(spec["fields"])
    for infos in doc["sections"].values():
        for info in infos:
            assert sorted(info) == sorted(spec["section_fields"])
    assert doc["arrays"] == ["x"]


def _zarray() -> str:
    return json.dumps(
        {
            "zarr_format": 2,
            "shape": [3],
            "chunks": [3],
            "dtype": "|u1",
            "compressor": None,
            "fill_value": 0,
            "order": "C",
            "filters": None,
        }
    )
