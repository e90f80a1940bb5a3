"""The catalog's tables (SQLAlchemy Core), version :data:`SCHEMA_VERSION`.

The DDL these tables produce is kept in ``catalog_schemas/v{N}.sql``; a test fails when
the two disagree, so a change here must come with a new file and a migration there.

Types are kept to what SQLite, duckdb and PostgreSQL share: text, integers, ISO 8601
UTC timestamps as text (they sort as time does) and JSON documents as text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from snapref.catalog.lookups import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "metadata"]

metadata = MetaData()

#: One row: the schema version of this catalog.
schema_info = Table(
    "snapref_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

#: Repository-wide settings (JSON values), e.g. ``allowed_sources``.
settings = Table(
    "settings",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("created_at", String(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("properties", Text, nullable=False),
)

#: Locations (URL prefixes) that a dataset's virtual references may point into.
dataset_sources = Table(
    "dataset_sources",
    metadata,
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("prefix", Text, nullable=False),
    PrimaryKeyConstraint("dataset", "prefix"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("manifest", String(64), nullable=False),
    Column("parents", Text, nullable=False),
    Column("branch", String(255), nullable=False),
    Column("timestamp", String(32), nullable=False),
    Column("author", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("snapref_version", String(32), nullable=False),
    Column("properties", Text, nullable=False),
    Column("summary", Text, nullable=False),
    # what a log reads (records.log_entry; schema version 4): the id, the first
    # parent's id (or 32 spaces), then a JSON array [parents, version, branch,
    # timestamp, author, message]. Written with the row and never changed, like the
    # row. Nullable only because duckdb cannot add a NOT NULL column to an existing
    # table; every row has one.
    Column("log_entry", Text, nullable=True),
    UniqueConstraint("dataset", "version"),
)

#: On SQLite, ``log`` reads ``log_entry`` from this index alone, in version order,
#: instead of looking every row up in the table (schema version 3 held the shown
#: columns; version 4 ``log_entry``). Not on PostgreSQL, whose B-tree entries are
#: limited to ~2.7 KB (a long commit message would fail the insert), nor on duckdb.
Index("ix_snapshots_log", snapshots.c.dataset, snapshots.c.version, snapshots.c.log_entry).ddl_if(
    dialect="sqlite"
)

#: The keys each snapshot changed: A(dded), M(odified), D(eleted).
snapshot_changes = Table(
    "snapshot_changes",
    metadata,
    Column("snapshot_id", String(32), ForeignKey("snapshots.id"), nullable=False),
    Column("key", Text, nullable=False),
    Column("op", String(1), nullable=False),
    PrimaryKeyConstraint("snapshot_id", "key"),
    CheckConstraint("op IN ('A', 'M', 'D')", name="ck_snapshot_changes_op"),
    # blame: every change of one key is an index-only range scan (schema version 2)
    Index("ix_snapshot_changes_key_snapshot", "key", "snapshot_id"),
)

#: The parents of each snapshot, relationally (``snapshots.parents`` holds the same as
#: JSON): ordinal 0 is the first parent, 1 the merged branch. Ancestry is one recursive
#: query over this table (schema version 2).
snapshot_parents = Table(
    "snapshot_parents",
    metadata,
    Column("snapshot_id", String(32), ForeignKey("snapshots.id"), nullable=False),
    Column("ordinal", Integer, nullable=False, autoincrement=False),
    Column("parent_id", String(32), ForeignKey("snapshots.id"), nullable=False),
    PrimaryKeyConstraint("snapshot_id", "ordinal"),
    Index("ix_snapshot_parents_parent", "parent_id"),
)

#: Branches (movable) and tags (fixed), per dataset.
refs = Table(
    "refs",
    metadata,
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("snapshot_id", String(32), ForeignKey("snapshots.id"), nullable=False),
    PrimaryKeyConstraint("dataset", "name"),
    CheckConstraint("kind IN ('branch', 'tag')", name="ck_refs_kind"),
)

#: Every change of a ref: the history that ``as_of`` reads and the audit trail.
ref_log = Table(
    "ref_log",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("ref", String(255), nullable=False),
    Column("action", String(16), nullable=False),
    Column("old_snapshot", String(32), nullable=True),
    Column("new_snapshot", String(32), nullable=True),
    Column("timestamp", String(32), nullable=False),
    Column("author", Text, nullable=False),
    # why the ref moved (reset, merge, revert); added in schema version 2
    Column("message", Text, nullable=True),
    Index("ix_ref_log_dataset_ref_time", "dataset", "ref", "timestamp"),
)


def ddl(dialect: str = "sqlite") -> str:
    """The CREATE statements of this schema for ``dialect`` (``sqlite``, ``postgresql``),
    as kept in ``catalog_schemas/v{SCHEMA_VERSION}.{dialect}.sql``: each table, then its
    indexes by name, leaving out the indexes that ``create_all`` skips on ``dialect``."""
    from sqlalchemy import create_mock_engine
    from sqlalchemy.schema import CreateIndex, CreateTable

    made: list[Any] = []
    engine = create_mock_engine(f"{dialect}://", lambda statement, *a, **kw: made.append(statement))
    metadata.create_all(engine, checkfirst=False)
    created = {id(statement.element) for statement in made}
    d = engine.dialect
    parts = [f"-- snapref catalog schema version {SCHEMA_VERSION} ({dialect})"]
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=d)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if id(index) in created:
                parts.append(str(CreateIndex(index).compile(dialect=d)).strip() + ";")
    text = "\n\n".join(parts) + "\n"
    return "\n".join(line.rstrip() for line in text.split("\n"))
