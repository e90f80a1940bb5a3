"""The catalog and warehouse formats in catalog_schemas/ are the ones the code uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

import snapref
from snapref.catalog import schema
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
        assert conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one() == 1


def test_catalog_of_another_version_is_refused(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    with repo.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE snapref_schema SET version = 99"))
    repo.close()
    with pytest.raises(snapref.CatalogSchemaError, match="schema version 99"):
        snapref.connect(str(tmp_path / "wh"))


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
