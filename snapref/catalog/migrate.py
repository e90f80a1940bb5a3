"""Upgrading a catalog made by an older snapref, one schema step at a time.

Each step is portable SQL kept verbatim in ``catalog_schemas/migrations/vN_to_vN+1.sql``,
sometimes preceded by a script for one kind of database only
(``vN_to_vN+1.<dialect>.sql``, e.g. an index only SQLite has); a test keeps the files
and this module equal. :meth:`Catalog.open` runs the missing steps in one transaction,
so a crash mid-way leaves the catalog at its old version.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["DIALECT_MIGRATIONS", "MIGRATIONS", "migrate", "statements"]

#: ``{from_version: SQL text}``; the text is the file ``v{N}_to_v{N+1}.sql``.
MIGRATIONS: dict[int, str] = {
    1: """\
-- snapref catalog schema migration: version 1 -> version 2
-- Portable SQL (SQLite, PostgreSQL, duckdb). snapref runs it in one transaction when it
-- connects to a version-1 catalog (Catalog.open); statements are separated by ';' at
-- the end of a line.

-- 1. Parents as rows, for ancestry in one recursive query. Version 1 has no merge
--    commits, so every snapshot has at most one parent, stored as '["<32 hex>"]'.
CREATE TABLE snapshot_parents (
	snapshot_id VARCHAR(32) NOT NULL,
	ordinal INTEGER NOT NULL,
	parent_id VARCHAR(32) NOT NULL,
	PRIMARY KEY (snapshot_id, ordinal),
	FOREIGN KEY(snapshot_id) REFERENCES snapshots (id),
	FOREIGN KEY(parent_id) REFERENCES snapshots (id)
);
CREATE INDEX ix_snapshot_parents_parent ON snapshot_parents (parent_id);
INSERT INTO snapshot_parents (snapshot_id, ordinal, parent_id)
	SELECT id, 0, substr(parents, 3, 32) FROM snapshots WHERE parents <> '[]';

-- 2. Why a ref moved (reset, merge, revert), for the audit log.
ALTER TABLE ref_log ADD COLUMN message TEXT;

-- 3. Blame reads every change of one key from the index alone.
DROP INDEX ix_snapshot_changes_key;
CREATE INDEX ix_snapshot_changes_key_snapshot ON snapshot_changes ("key", snapshot_id);

UPDATE snapref_schema SET version = 2;
""",
    2: """\
-- snapref catalog schema migration: version 2 -> version 3
-- Portable SQL (SQLite, PostgreSQL, duckdb), run after v2_to_v3.<dialect>.sql where
-- there is one for the catalog's database (v2_to_v3.sqlite.sql: the log's index).

UPDATE snapref_schema SET version = 3;
""",
    3: """\
-- snapref catalog schema migration: version 3 -> version 4
-- Portable SQL (SQLite, PostgreSQL, duckdb), run after v3_to_v4.<dialect>.sql, which
-- adds and fills snapshots.log_entry with its database's JSON function.

UPDATE snapref_schema SET version = 4;
""",
}

#: ``{(from_version, dialect): SQL text}``, run before the portable step on that kind of
#: database only; the text is the file ``v{N}_to_v{N+1}.{dialect}.sql``.
DIALECT_MIGRATIONS: dict[tuple[int, str], str] = {
    (2, "sqlite"): """\
-- snapref catalog schema migration: version 2 -> version 3, SQLite only
-- The log reads the columns it shows from this index alone, in version order.
-- (PostgreSQL limits B-tree entries to ~2.7 KB, which a long message would exceed.)

CREATE INDEX ix_snapshots_log ON snapshots (dataset, version, id, parents, branch, timestamp, author, message);
""",
    (3, "sqlite"): """\
-- snapref catalog schema migration: version 3 -> version 4, SQLite
-- A log reads one text per version (snapshots.log_entry): the id, the first parent's
-- id or 32 spaces, then a JSON array [parents, version, branch, timestamp, author,
-- message]; from the log's index, rebuilt around it.

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = id || CASE WHEN parents = '[]' THEN '                                ' ELSE substr(parents, 3, 32) END || json_array(json(parents), version, branch, timestamp, author, message);
DROP INDEX ix_snapshots_log;
CREATE INDEX ix_snapshots_log ON snapshots (dataset, version, log_entry);
""",
    (3, "postgresql"): """\
-- snapref catalog schema migration: version 3 -> version 4, PostgreSQL
-- A log reads one text per version (snapshots.log_entry): the id, the first parent's
-- id or 32 spaces, then a JSON array [parents, version, branch, timestamp, author,
-- message].

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = id || CASE WHEN parents = '[]' THEN '                                ' ELSE substr(parents, 3, 32) END || json_build_array(parents::json, version, branch, timestamp, author, message)::text;
""",
    (3, "duckdb"): """\
-- snapref catalog schema migration: version 3 -> version 4, duckdb
-- A log reads one text per version (snapshots.log_entry): the id, the first parent's
-- id or 32 spaces, then a JSON array [parents, version, branch, timestamp, author,
-- message].

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = id || CASE WHEN parents = '[]' THEN '                                ' ELSE substr(parents, 3, 32) END || json_array(parents::JSON, version, branch, timestamp, author, message);
""",
}


def statements(sql: str) -> list[str]:
    """The statements of a migration script (comments dropped)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    text = "\n".join(lines)
    return [s.strip() for s in text.split(";\n") if s.strip().rstrip(";")]


def migrate(conn: Connection, from_version: int, to_version: int) -> None:
    """Run the steps from ``from_version`` to ``to_version`` on ``conn`` (inside the
    caller's transaction)."""
    dialect = conn.dialect.name
    for version in range(from_version, to_version):
        script = DIALECT_MIGRATIONS.get((version, dialect), "") + MIGRATIONS[version]
        for stmt in statements(script):
            conn.exec_driver_sql(stmt.rstrip(";"))
    check = conn.execute(sa.text("SELECT version FROM snapref_schema")).scalar_one()
    assert check == to_version, check
