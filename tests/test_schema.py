"""The catalog and warehouse formats in catalog_schemas/ are the ones the code uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import snapref
from snapref.catalog import schema
from snapref.catalog.migrate import DIALECT_MIGRATIONS, MIGRATIONS
from snapref.catalog.records import LOG_COLUMNS, format_time
from snapref.catalog.schema import SCHEMA_VERSION, ddl
from snapref.manifest import _COLUMNS, _shard_schema
from tests.conftest import one_array_refs

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
        assert conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one() == 4


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
    for (version, dialect), sql in DIALECT_MIGRATIONS.items():
        path = SCHEMAS / "migrations" / f"v{version}_to_v{version + 1}.{dialect}.sql"
        assert path.read_text() == sql
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    files = {p.name for p in (SCHEMAS / "migrations").glob("*.sql")}
    assert len(files) == len(MIGRATIONS) + len(DIALECT_MIGRATIONS)


def test_sqlite_log_reads_only_its_index(tmp_path: Path) -> None:
    """The log's query (id, parents and the packed entry, newest first) is answered
    from ix_snapshots_log alone, without a table lookup per version."""
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("d", _refs(), "import")
    with repo.db.engine.connect() as conn:
        plan = conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN SELECT {', '.join(LOG_COLUMNS)} FROM snapshots "
            "WHERE dataset = 'd' ORDER BY version DESC"
        ).all()
    assert [row[-1] for row in plan] == [
        "SEARCH snapshots USING COVERING INDEX ix_snapshots_log (dataset=?)"
    ]
    repo.close()


def _schema_of(engine: sa.Engine) -> dict[str, Any]:
    """Tables -> (columns, indexes, primary key), as the database reports them."""
    if engine.dialect.name == "duckdb":
        # duckdb-engine's reflection does not reach columns; ask duckdb itself
        with engine.connect() as conn:
            columns = conn.exec_driver_sql(
                "SELECT table_name, column_name, data_type, is_nullable "
                "FROM information_schema.columns ORDER BY table_name, ordinal_position"
            ).all()
            indexes = conn.exec_driver_sql(
                "SELECT table_name, index_name, expressions FROM duckdb_indexes() "
                "ORDER BY table_name, index_name"
            ).all()
            keys = conn.exec_driver_sql(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                "WHERE constraint_type = 'PRIMARY KEY'"
            ).all()
        return {
            table: (
                [c[1:] for c in columns if c[0] == table],
                [i[1:] for i in indexes if i[0] == table],
                [list(k[1]) for k in keys if k[0] == table],
            )
            for table in sorted({c[0] for c in columns})
        }
    inspector = sa.inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)),
            inspector.get_pk_constraint(name)["constrained_columns"],
        )
        for name in sorted(inspector.get_table_names())
    }


#: a message the migration's JSON functions must escape as snapref's own encoder does
TRICKY_MESSAGE = 'set 1: "quoted", a \\ backslash,\na second line, \u00e9 and \U0001f30d'


def _make_old_repository(tmp_path: Path, catalog_url: str | None, version: int) -> Path:
    """A repository whose catalog has schema ``version`` (1 to 3), as the snapref of
    that version wrote it: made from catalog_schemas/v{version}.*.sql, holding an
    imported dataset with two commits and a branch. ``catalog_url`` is an empty
    database (None: an SQLite file)."""
    from snapref.catalog.migrate import statements

    wh = tmp_path / "old"
    # real manifests first, from a throwaway catalog of the current version
    repo = snapref.init(str(wh), catalog=f"sqlite:///{tmp_path / 'scratch.db'}")
    snaps = [repo.import_references("d", _refs(), "import")]
    for value, message in ((1, TRICKY_MESSAGE), (2, "set 2")):
        with repo.transaction("d", message=message) as tx:
            tx.fs.pipe("x/0", bytes([value]) * 3)
        snaps.append(tx.snapshot)
    repo.close()
    # then the old catalog, from its DDL file, holding the rows that snapref recorded
    # for: import (v1), commit (v2), branch qc, commit on qc (v3)
    url = catalog_url or f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    dialect = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"
    ids = [f"{i:032x}" for i in (1, 2, 3)]
    ts = [
        "2025-01-01T00:00:00.000000Z",
        "2025-01-02T00:00:00.000000Z",
        "2025-01-03T00:00:00.000000Z",
    ]
    parents = ["[]", f'["{ids[0]}"]', f'["{ids[1]}"]']
    with engine.begin() as db:
        for stmt in statements((SCHEMAS / f"v{version}.{dialect}.sql").read_text()):
            db.exec_driver_sql(stmt.rstrip(";"))

        def insert(table: str, *values: Any) -> None:
            names = ", ".join(f":p{i}" for i in range(len(values)))
            db.execute(
                sa.text(f"INSERT INTO {table} VALUES ({names})"),
                {f"p{i}": v for i, v in enumerate(values)},
            )

        insert("snapref_schema", version)
        insert("datasets", "d", ts[0], "", "{}")
        for i, snap in enumerate(snaps):
            branch = "qc" if i == 2 else "main"
            insert(
                "snapshots",
                *(ids[i], "d", i + 1, snap.manifest, parents[i], branch, ts[i]),
                *("Old <o@x>", snap.message, "0.1.0", "{}", "{}"),
            )
            if version >= 2 and i > 0:
                insert("snapshot_parents", ids[i], 0, ids[i - 1])
        for i in (1, 2):
            insert("snapshot_changes", ids[i], "x/0", "M")
        insert("refs", "d", "main", "branch", ids[1])
        insert("refs", "d", "qc", "branch", ids[2])
        for n, (ref, action, old, new) in enumerate(
            [
                ("main", "create", None, ids[0]),
                ("main", "commit", ids[0], ids[1]),
                ("qc", "branch", None, ids[1]),
                ("qc", "commit", ids[1], ids[2]),
            ]
        ):
            row = (f"{n:032x}", "d", ref, action, old, new, ts[min(n, 2)], "Old <o@x>")
            insert("ref_log", *row, *([None] if version >= 2 else []))
    engine.dispose()
    (wh / "snapref.json").write_text(json.dumps({"format": 1, "catalog": url}))
    return wh


@pytest.mark.parametrize("old_version", [1, 2, 3])
@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql", "duckdb"])
def test_an_older_repository_is_migrated_on_connect(
    tmp_path: Path,
    catalog_url: str | None,
    catalog_kind: str,
    old_version: int,
    request: pytest.FixtureRequest,
) -> None:
    wh = _make_old_repository(tmp_path, catalog_url, old_version)
    repo = snapref.connect(str(wh))
    assert repo.db.engine.dialect.name == catalog_kind
    with repo.db.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one()
    assert version == SCHEMA_VERSION
    # the migrated catalog has the tables, columns and indexes of a new one
    fresh_url = {
        "sqlite": None,
        "postgresql": lambda: request.getfixturevalue("postgres").new_database(),
        "duckdb": lambda: f"duckdb:///{tmp_path / 'fresh.duckdb'}",
    }[catalog_kind]
    fresh = snapref.init(str(tmp_path / "fresh"), catalog=fresh_url and fresh_url())
    assert _schema_of(repo.db.engine) == _schema_of(fresh.db.engine)
    fresh.close()
    # the old history reads as before, every field of it
    log = repo.log("d")
    assert [s.version for s in log] == [2, 1]
    assert [(s.message, s.author, s.branch) for s in log] == [
        (TRICKY_MESSAGE, "Old <o@x>", "main"),
        ("import", "Old <o@x>", "main"),
    ]
    assert [format_time(s.timestamp) for s in log] == [
        "2025-01-02T00:00:00.000000Z",
        "2025-01-01T00:00:00.000000Z",
    ]
    assert log[0] == repo.resolve("d", 2) and log[0].to_json() == repo.resolve("d", 2).to_json()
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
    # a second connect finds the current version and changes nothing
    assert snapref.connect(str(wh)).log("d")[0].version == 4


def _refs() -> dict[str, str]:
    return {**one_array_refs("x", 3, 3, "|u1"), "x/0": "abc"}


def test_manifest_spec_matches_shard_schema() -> None:
    spec = json.loads((SCHEMAS / "manifest-v1.json").read_text())
    schema = _shard_schema()
    assert [tuple(c) for c in spec["shard"]["columns"]] == [(f.name, str(f.type)) for f in schema]
    assert tuple(schema.names) == _COLUMNS  # what shards are read by


def test_manifest_list_fields_match_what_is_written(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    snap = repo.import_references("d", _refs(), "m")
    spec = json.loads((SCHEMAS / "manifest-v1.json").read_text())["manifest_list"]
    doc = json.loads(repo.warehouse.manifest_lists.get(snap.manifest).decode())
    assert sorted(doc) == sorted(spec["fields"])
    for infos in doc["sections"].values():
        for info in infos:
            assert sorted(info) == sorted(spec["section_fields"])
    assert doc["arrays"] == ["x"]


def test_a_manifest_of_a_newer_format_is_refused_by_sync_and_async_opens(
    tmp_path: Path,
) -> None:
    """A version whose manifest list a newer snapref wrote (another "format") is a
    CatalogSchemaError that says to upgrade, on both read paths, not a misreading."""
    import asyncio
    import sqlite3

    from snapref.objects import content_hash

    repo = snapref.init(str(tmp_path / "wh"))
    snap = repo.import_references("d", _refs(), "m")
    doc = json.loads(repo.warehouse.manifest_lists.get(snap.manifest))
    data = json.dumps({**doc, "format": 2}).encode()
    digest = content_hash(data)
    repo.warehouse.manifest_lists.put_many({digest: data})
    repo.close()
    with sqlite3.connect(tmp_path / "wh" / "catalog.db") as db:
        db.execute("UPDATE snapshots SET manifest = ? WHERE id = ?", (digest, snap.id))
    with pytest.raises(
        snapref.CatalogSchemaError, match=f"Manifest {digest} has format 2.*Upgrade"
    ):
        snapref.open(str(tmp_path / "wh"), "d")
    with pytest.raises(snapref.CatalogSchemaError, match=f"Manifest {digest} has format 2"):
        asyncio.run(snapref.open_async(str(tmp_path / "wh"), "d"))
