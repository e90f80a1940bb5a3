"""Metadata tables: the catalog and the manifests as Arrow tables, and SQL over them.

``repo.inspect`` returns an :class:`Inspector`, in the spirit of PyIceberg's
``table.inspect``: each method returns a :class:`pyarrow.Table`. :meth:`Inspector.query`
runs DuckDB SQL over all of them; a table is built only when the query names it.

Tables for SQL (columns as in the methods of the same name):

==============  ==========================================================================
datasets        one row per dataset
snapshots       one row per version of every dataset (with provenance and summary)
refs            branches and tags
history         every time a branch head moved (Iceberg's snapshot log), per branch
audit           every ref change: who, when, old and new target, why
changes         the keys each version changed (a dataset's first version: all its keys)
manifests       the shards of each version's manifest
shard_entries   one row per key of each distinct shard (shared shards listed once)
entries         view: ``manifests`` joined with ``shard_entries``: every key of every
                version (dataset, version, snapshot_id, key, kind, digest, url, offset,
                length)
==============  ==========================================================================
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from snapref.catalog import BRANCH
from snapref.errors import InvalidInputError
from snapref.manifest import read_shard_table

if TYPE_CHECKING:
    from snapref.repository import Repository, VersionSpec

__all__ = ["TABLES", "Inspector"]

TABLES = (
    "datasets",
    "snapshots",
    "refs",
    "history",
    "audit",
    "changes",
    "manifests",
    "shard_entries",
    "entries",
)

# -- the tables' columns ---------------------------------------------------------------

_TS = pa.timestamp("us", tz="UTC")

#: one key of a manifest shard, as the tables show it (kind as text, not the shard's code)
_ENTRY_FIELDS = [
    ("key", pa.string()),
    ("kind", pa.string()),  # inline, object or virtual
    ("digest", pa.string()),  # objects
    ("url", pa.string()),  # virtual
    ("offset", pa.int64()),  # virtual
    ("length", pa.int64()),  # virtual; the size for inline and objects
]

#: The columns of every table, in order: each Inspector method returns its table with
#: the schema of its name. (``entries`` is the method's table, one version's keys; the
#: table ``entries`` of SQL is the view :data:`_ENTRIES_VIEW`.)
_SCHEMAS: dict[str, pa.Schema] = {
    "datasets": pa.schema(
        [
            ("name", pa.string()),
            ("description", pa.string()),
            ("created_at", _TS),
            ("versions", pa.int64()),
            ("head_version", pa.int64()),  # of main
            ("head_id", pa.string()),
        ]
    ),
    "snapshots": pa.schema(
        [
            ("dataset", pa.string()),
            ("version", pa.int64()),
            ("snapshot_id", pa.string()),
            ("parent_id", pa.string()),
            ("parents", pa.list_(pa.string())),
            ("branch", pa.string()),
            ("timestamp", _TS),
            ("author", pa.string()),
            ("message", pa.string()),
            ("properties", pa.string()),  # JSON
            ("chunks_added", pa.int64()),
            ("chunks_modified", pa.int64()),
            ("chunks_removed", pa.int64()),
            ("metadata_changed", pa.int64()),
            ("bytes_written", pa.int64()),
            ("manifest", pa.string()),
        ]
    ),
    "refs": pa.schema(
        [
            ("dataset", pa.string()),
            ("name", pa.string()),
            ("kind", pa.string()),  # branch or tag
            ("snapshot_id", pa.string()),
            ("version", pa.int64()),
        ]
    ),
    "history": pa.schema(
        [
            ("dataset", pa.string()),
            ("branch", pa.string()),
            ("made_current_at", _TS),
            ("snapshot_id", pa.string()),
            ("version", pa.int64()),
            ("action", pa.string()),
            ("is_current_ancestor", pa.bool_()),
        ]
    ),
    "audit": pa.schema(
        [
            ("dataset", pa.string()),
            ("ref", pa.string()),
            ("action", pa.string()),
            ("old_snapshot", pa.string()),
            ("old_version", pa.int64()),
            ("new_snapshot", pa.string()),
            ("new_version", pa.int64()),
            ("timestamp", _TS),
            ("author", pa.string()),
            ("message", pa.string()),
        ]
    ),
    "changes": pa.schema(
        [
            ("dataset", pa.string()),
            ("version", pa.int64()),
            ("snapshot_id", pa.string()),
            ("key", pa.string()),
            ("op", pa.string()),  # A, M or D
        ]
    ),
    "manifests": pa.schema(
        [
            ("dataset", pa.string()),
            ("version", pa.int64()),
            ("snapshot_id", pa.string()),
            ("section", pa.string()),
            ("shard", pa.string()),  # the shard's digest
            ("entries", pa.int64()),
            ("first_key", pa.string()),
            ("last_key", pa.string()),
        ]
    ),
    "shard_entries": pa.schema([("shard", pa.string()), *_ENTRY_FIELDS]),
    "entries": pa.schema(_ENTRY_FIELDS),
}

#: SQL's ``entries``: every key of every version (``manifests`` joined with
#: ``shard_entries``)
_ENTRIES_VIEW = (
    "CREATE VIEW entries AS SELECT m.dataset, m.version, m.snapshot_id, "
    'e.key, e.kind, e.digest, e.url, e."offset", e.length '
    "FROM manifests m JOIN shard_entries e ON e.shard = m.shard"
)

#: the text of a shard's kind codes (manifest.KIND_INLINE, KIND_OBJECT, KIND_VIRTUAL)
_KINDS = pa.array(["inline", "object", "virtual"])


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Table ``name`` of these rows, with its schema from :data:`_SCHEMAS`."""
    return pa.Table.from_pylist(rows, schema=_SCHEMAS[name])


# -- the tables ------------------------------------------------------------------------


class Inspector:
    """Arrow tables over one repository's catalog and manifests."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def _snaps(self, dataset: str | None = None) -> list[Any]:
        if dataset is not None:
            self.repo.db.dataset(dataset)  # DatasetNotFoundError, naming those there are
        names = [dataset] if dataset is not None else self.repo.datasets()
        out = []
        for name in names:
            out.extend(sorted(self.repo.db.all_snapshots(name).values(), key=lambda s: s.version))
        return out

    def datasets(self) -> pa.Table:
        """name, description, created_at, versions, head_version (of main), head_id."""
        rows = []
        for d in self.repo.db.datasets():
            snaps = self.repo.db.graph(d.name)
            head = self.repo.head(d.name)
            rows.append(
                {
                    "name": d.name,
                    "description": d.description,
                    "created_at": d.created_at,
                    "versions": len(snaps),
                    "head_version": head.version,
                    "head_id": head.id,
                }
            )
        return _table("datasets", rows)

    def snapshots(self, dataset: str | None = None) -> pa.Table:
        """One row per version: dataset, version, snapshot_id, parent_id, parents,
        branch, timestamp, author, message, properties (JSON), chunks_added,
        chunks_modified, chunks_removed, metadata_changed, bytes_written, manifest."""
        import ujson

        rows = []
        for s in self._snaps(dataset):
            sm = s.summary
            rows.append(
                {
                    "dataset": s.dataset,
                    "version": s.version,
                    "snapshot_id": s.id,
                    "parent_id": s.parents[0] if s.parents else None,
                    "parents": list(s.parents),
                    "branch": s.branch,
                    "timestamp": s.timestamp,
                    "author": s.author,
                    "message": s.message,
                    "properties": ujson.dumps(s.properties),
                    "chunks_added": sm.get("chunks_added", 0),
                    "chunks_modified": sm.get("chunks_modified", 0),
                    "chunks_removed": sm.get("chunks_removed", 0),
                    "metadata_changed": sm.get("metadata_changed", 0),
                    "bytes_written": sm.get("bytes_written", 0),
                    "manifest": s.manifest,
                }
            )
        return _table("snapshots", rows)

    def refs(self) -> pa.Table:
        """dataset, name, kind (branch/tag), snapshot_id, version."""
        rows = []
        for name in self.repo.datasets():
            nodes = self.repo.db.graph(name)
            for r in self.repo.db.refs(name):
                rows.append(
                    {
                        "dataset": name,
                        "name": r.name,
                        "kind": r.kind,
                        "snapshot_id": r.snapshot_id,
                        "version": nodes[r.snapshot_id][0],
                    }
                )
        return _table("refs", rows)

    def audit(self) -> pa.Table:
        """Every ref change, oldest first: dataset, ref, action, old/new snapshot id
        and version, timestamp, author, message."""
        rows = []
        versions: dict[str, int] = {}
        for name in self.repo.datasets():
            versions.update({k: v[0] for k, v in self.repo.db.graph(name).items()})
        for e in self.repo.db.ref_log():
            rows.append(
                {
                    "dataset": e.dataset,
                    "ref": e.ref,
                    "action": e.action,
                    "old_snapshot": e.old_snapshot,
                    "old_version": versions.get(e.old_snapshot or ""),
                    "new_snapshot": e.new_snapshot,
                    "new_version": versions.get(e.new_snapshot or ""),
                    "timestamp": e.timestamp,
                    "author": e.author,
                    "message": e.message,
                }
            )
        return _table("audit", rows)

    def history(self) -> pa.Table:
        """Every time a branch head moved (commit, merge, revert, reset, create):
        dataset, branch, made_current_at, snapshot_id, version, action,
        is_current_ancestor (reachable from the branch's head by first parents)."""
        audit = self.audit()
        rows = []
        heads: dict[tuple[str, str], set[str]] = {}
        for r in audit.to_pylist():
            if r["new_snapshot"] is None:
                continue
            ref = self.repo.db.ref(r["dataset"], r["ref"])
            if ref is None or ref.kind != BRANCH:
                continue
            key = (r["dataset"], r["ref"])
            if key not in heads:
                heads[key] = {s.id for s in self.repo.db.ancestry(ref.snapshot_id)}
            rows.append(
                {
                    "dataset": r["dataset"],
                    "branch": r["ref"],
                    "made_current_at": r["timestamp"],
                    "snapshot_id": r["new_snapshot"],
                    "version": r["new_version"],
                    "action": r["action"],
                    "is_current_ancestor": r["new_snapshot"] in heads[key],
                }
            )
        return _table("history", rows)

    def changes(self, dataset: str | None = None) -> pa.Table:
        """dataset, version, snapshot_id, key, op (A/M/D) for every version; a
        dataset's first version added all of its keys."""
        schema = _SCHEMAS["changes"]
        cols: dict[str, list[Any]] = {k: [] for k in schema.names}
        for s in self._snaps(dataset):
            ch = self.repo.changes(s)
            n = len(ch)
            cols["dataset"] += [s.dataset] * n
            cols["version"] += [s.version] * n
            cols["snapshot_id"] += [s.id] * n
            cols["key"] += list(ch)
            cols["op"] += list(ch.values())
        return pa.table(cols, schema=schema)

    def manifests(self, dataset: str | None = None) -> pa.Table:
        """The shards of every version: dataset, version, snapshot_id, section, shard
        (digest), entries, first_key, last_key."""
        rows = []
        for s in self._snaps(dataset):
            m = self.repo.manifest(s)
            for section, infos in sorted(m.sections.items()):
                for info in infos:
                    rows.append(
                        {
                            "dataset": s.dataset,
                            "version": s.version,
                            "snapshot_id": s.id,
                            "section": section,
                            "shard": info.digest,
                            "entries": info.count,
                            "first_key": info.first,
                            "last_key": info.last,
                        }
                    )
        return _table("manifests", rows)

    def _shard_table(self, digest: str) -> pa.Table:
        shards = self.repo.warehouse.shards
        table = read_shard_table(shards.get(digest), _SCHEMAS["entries"].names)
        kinds = pc.take(_KINDS, table.column("kind").cast(pa.int32()))
        table = table.set_column(1, "kind", kinds)
        url = table.column("url")
        if pa.types.is_dictionary(url.type):
            table = table.set_column(3, "url", url.cast(pa.string()))
        dig = table.column("digest")
        if pa.types.is_dictionary(dig.type):
            table = table.set_column(2, "digest", dig.cast(pa.string()))
        return table

    def entries(self, name: str, version: VersionSpec = None) -> pa.Table:
        """One row per key of one version: key, kind (inline/object/virtual), digest
        (objects), url, offset, length (virtual; size for inline and objects)."""
        snap = self.repo.resolve(name, version)
        m = self.repo.manifest(snap)
        parts = [
            self._shard_table(info.digest)
            for _, infos in sorted(m.sections.items())
            for info in infos
        ]
        if not parts:
            return _table("entries", [])
        return pa.concat_tables(parts)

    def shard_entries(self) -> pa.Table:
        """Every key of every distinct shard reachable from a version, with the
        shard's digest; a shard shared by many versions is listed once."""
        manifests = self.manifests()
        parts = []
        for digest in sorted(set(manifests.column("shard").to_pylist())):
            t = self._shard_table(digest)
            parts.append(t.add_column(0, "shard", pa.array([digest] * len(t), pa.string())))
        if not parts:
            return _table("shard_entries", [])
        return pa.concat_tables(parts)

    def query(self, sql: str) -> pa.Table:
        """Run one DuckDB ``SELECT`` over the metadata tables (see the module doc);
        only the tables the query names are built.

        The query runs read-only in a private in-memory DuckDB: it may read the
        metadata tables and nothing else. Files, URLs, other databases and
        extensions are refused (DuckDB's ``enable_external_access`` is off and the
        configuration locked), and so is any statement but a query: ``COPY``,
        ``CREATE``, ``ATTACH``, ``INSTALL``, ``SET`` and the like.

        Example: ``repo.inspect.query("SELECT version FROM changes WHERE dataset =
        'air' AND key = 'temp/3.4'")``.

        Raises
        ------
        InvalidInputError
            If the SQL is empty, holds more than one statement, is not a query,
            reaches outside the metadata tables, or does not parse or run. The
            message is one line: DuckDB's error without its source excerpt, and
            the query.
        """
        import duckdb

        con = duckdb.connect(
            config={"autoload_known_extensions": False, "autoinstall_known_extensions": False}
        )
        try:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as exc:
                raise InvalidInputError(_query_error(exc, sql)) from exc
            if not statements:
                raise InvalidInputError(
                    f"Query failed: the query is empty; give one SELECT over the metadata "
                    f"tables ({', '.join(TABLES)})"
                )
            if len(statements) > 1:
                raise InvalidInputError(
                    f"Query failed: give one query, not {len(statements)} statements "
                    f"(only one result can be shown); query: {_shorten(sql)}"
                )
            kind = statements[0].type
            if kind != duckdb.StatementType.SELECT:
                if kind == duckdb.StatementType.MULTI:
                    what = "a query that runs as several statements (PIVOT needs ON ... IN (...))"
                elif kind == duckdb.StatementType.LOAD:  # DuckDB's type of INSTALL too
                    what = "INSTALL or LOAD, not a query"
                else:
                    what = f"{kind.name}, not a query"
                raise InvalidInputError(
                    f"Query refused: {what}; queries may only read the metadata tables "
                    f"({', '.join(TABLES)}); query: {_shorten(sql)}"
                )
            words = {w.lower() for w in re.findall(r"[A-Za-z_]+", sql)}
            needed = [t for t in TABLES if t in words]
            if "entries" in needed:
                needed += [t for t in ("manifests", "shard_entries") if t not in needed]
            for name in needed:
                if name == "entries":
                    continue
                con.register(name, getattr(self, name)())
            if "entries" in needed:
                con.execute(_ENTRIES_VIEW)
            # From here on the query sees the registered tables and nothing else: no
            # files, URLs, databases, extensions or Python objects, and no SET undoes it.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            try:
                table: pa.Table = con.sql(sql).to_arrow_table()
            except duckdb.Error as exc:
                raise InvalidInputError(_query_error(exc, sql)) from exc
            return table
        finally:
            con.close()


def _shorten(sql: str, limit: int = 100) -> str:
    """The query on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _query_error(exc: Exception, sql: str) -> str:
    """A DuckDB error as one line: its message lines joined, without the source
    excerpt (``LINE 1: ...`` and the ``^^^`` under it), suggestions kept."""
    import duckdb

    lines = [line.strip() for line in str(exc).splitlines()]
    useful = [
        line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}
    ]
    message = " ".join(useful) or type(exc).__name__
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in message:
        return (
            f"Query refused: {message}; queries may only read the metadata tables "
            f"({', '.join(TABLES)}), not files, URLs, databases, extensions or settings; "
            f"query: {_shorten(sql)}"
        )
    if isinstance(exc, duckdb.CatalogException) and "Table with name" in message:
        message += f" (the metadata tables are {', '.join(TABLES)})"
    return f"Query failed: {message}; query: {_shorten(sql)}"
