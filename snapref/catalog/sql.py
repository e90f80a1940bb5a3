"""The SQL catalog: the only mutable state of a repository (invariant 6).

It records datasets, snapshots (one row per version, pointing at an immutable manifest
in the warehouse), branches and tags, and a log of every ref change. A commit is one
SQL transaction that inserts the snapshot and moves the branch head with
``UPDATE refs ... WHERE snapshot_id = :expected_parent`` (invariant 2); when no row
is updated someone else committed first and :class:`~snapref.errors.ConflictError` is
raised with nothing written.

Only portable SQL is used (SQLAlchemy Core), so the same code runs on SQLite (the
embedded default), PostgreSQL and duckdb.
"""

from __future__ import annotations

import functools
import os
import random
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import ujson
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from snapref.catalog import schema as t
from snapref.catalog.engine import ENGINES, safe_url
from snapref.catalog.lookups import (
    BRANCH,
    MAIN_BRANCH,
    SNAPSHOT_SQL,
    TAG,
    Lookups,
    missing_catalog_file,
    snapshot_of,
)
from snapref.catalog.migrate import MIGRATIONS, migrate
from snapref.catalog.records import (
    LOG_COLUMNS,
    REST_COLUMNS,
    SHOWN_COLUMNS,
    DatasetRecord,
    Log,
    RefLogEntry,
    RefRecord,
    Snapshot,
    check_text,
    first_parent_chain,
    format_time,
    iso_now,
    log_entry,
    parse_time,
)
from snapref.errors import (
    AlreadyExistsError,
    CatalogSchemaError,
    CatalogUnavailableError,
    ConflictError,
    RepositoryClosedError,
    VersionNotFoundError,
)

__all__ = ["BRANCH", "MAIN_BRANCH", "TAG", "Catalog"]


class _Deferred:
    """The :data:`REST_COLUMNS` of every snapshot of a log, read on first need."""

    __slots__ = ("_catalog", "_dataset", "_rest")

    def __init__(self, catalog: Catalog, dataset: Any) -> None:
        self._catalog = catalog
        self._dataset = dataset  # a name, or the scalar subquery that finds it
        self._rest: dict[str, tuple[Any, ...]] | None = None

    def rest(self, snapshot_id: str) -> tuple[Any, ...]:
        if self._rest is None:
            s = t.snapshots
            cols = [s.c.id, *(s.c[n] for n in REST_COLUMNS)]
            with self._catalog._read() as conn:
                rows = conn.execute(sa.select(*cols).where(s.c.dataset == self._dataset))
                self._rest = {r[0]: tuple(r[1:]) for r in rows.cursor.fetchall()}
        return self._rest[snapshot_id]


#: a snapshot row's columns in the order :func:`~snapref.catalog.lookups.snapshot_of` expects
_COLUMNS = [t.snapshots.c[n] for n in SHOWN_COLUMNS + REST_COLUMNS]


def new_snapshot_id() -> str:
    return uuid.uuid4().hex


class Catalog(Lookups):
    """Typed access to the catalog tables of one repository. The reads that opening a
    version needs are :class:`~snapref.catalog.lookups.Lookups`' SQL, run here through
    SQLAlchemy."""

    def __init__(self, url: str) -> None:
        self.url = url
        key, self.engine = ENGINES.acquire(url)
        # the engine is shared (see engine.Engines): give it back on close, or when collected
        self._release = weakref.finalize(self, ENGINES.release, key, collecting=True)

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(cls, url: str) -> Catalog:
        """Create the tables at ``url`` (an SQLAlchemy URL) and record the version.

        Raises
        ------
        AlreadyExistsError
            If the database holds a snapref catalog already.
        """
        catalog = cls(url)
        engine = catalog.engine
        if sa.inspect(engine).has_table(t.schema_info.name):
            catalog.close()
            raise AlreadyExistsError(
                f"The database {safe_url(url)} holds a snapref catalog already; "
                "connect to it instead of creating a new one"
            )
        t.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(t.schema_info).values(version=t.SCHEMA_VERSION))
        return catalog

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Connect to an existing catalog and check its schema version."""
        _check_file_exists(url)  # SQLite and duckdb would create an empty one
        _check_sqlite_file_is_catalog(url)  # before the engine switches it to WAL
        catalog = cls(url)
        engine = catalog.engine
        try:
            with engine.connect() as conn:
                version = conn.execute(sa.select(t.schema_info.c.version)).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            catalog.close()
            raise _not_a_catalog(url, exc.__class__.__name__) from exc
        if version in MIGRATIONS and version < t.SCHEMA_VERSION:
            # an older catalog is upgraded in place, in one transaction
            # (catalog_schemas/migrations/README.md)
            with engine.connect() as conn:
                conn = conn.execution_options(snapref_write=True)
                with conn.begin():
                    again = conn.execute(sa.select(t.schema_info.c.version)).scalar_one()
                    if again < t.SCHEMA_VERSION:
                        migrate(conn, again, t.SCHEMA_VERSION)
            version = t.SCHEMA_VERSION
        if version != t.SCHEMA_VERSION:
            catalog.close()
            raise CatalogSchemaError(
                f"The catalog {safe_url(url)} has schema version {version}; this snapref "
                f"uses version {t.SCHEMA_VERSION}. Upgrade snapref, or migrate the catalog "
                "with the scripts in catalog_schemas/."
            )
        return catalog

    def close(self) -> None:
        """Give the engine back; the last catalog open on a database disposes it."""
        detached = self._release.detach()  # None: closed or collected before
        if detached is not None:
            _obj, _func, (key,), _kw = detached
            ENGINES.release(key)

    def full(self) -> Catalog:
        return self

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        with self._read() as conn:
            return list(conn.execute(_text(sql), params).cursor.fetchall())

    def _connect(self) -> Connection:
        if not self._release.alive:  # closed: its engine may serve others, not this
            raise RepositoryClosedError(
                f"The catalog {safe_url(self.url)} was closed (close(), or the with block "
                "of its repository ended). Connect to the repository again."
            )
        return self.engine.connect()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        try:
            with self._connect() as conn:
                conn = conn.execution_options(snapref_write=True)
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            if "readonly" not in str(exc.orig).replace("read-only", "readonly"):
                raise
            raise CatalogUnavailableError(
                f"Cannot write the catalog {safe_url(self.url)}: it is read-only "
                f"({exc.orig}). Nothing was recorded. Check that you may write the catalog "
                "file, its -wal and -shm files and their folder (or the database user's "
                "rights)."
            ) from None

    # -- settings ----------------------------------------------------------------------

    def set_setting(self, key: str, value: Any) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(t.settings).where(t.settings.c.key == key))
            conn.execute(sa.insert(t.settings).values(key=key, value=ujson.dumps(value)))

    # -- datasets ----------------------------------------------------------------------

    def update_dataset(
        self,
        name: str,
        description: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> DatasetRecord:
        """Set a dataset's description and/or replace its properties."""
        check_text("description", description or "")
        check_text("properties", dict(properties or {}))
        self.dataset(name)
        values: dict[str, Any] = {}
        if description is not None:
            values["description"] = description
        if properties is not None:
            values["properties"] = ujson.dumps(dict(properties))
        if values:
            with self._write() as conn:
                conn.execute(
                    sa.update(t.datasets).where(t.datasets.c.name == name).values(**values)
                )
        return self.dataset(name)

    def add_sources(self, dataset: str, prefixes: Iterable[str]) -> None:
        with self._write() as conn:
            self._add_sources(conn, dataset, prefixes)

    def _add_sources(self, conn: Connection, dataset: str, prefixes: Iterable[str]) -> None:
        have = {
            r.prefix
            for r in conn.execute(
                sa.select(t.dataset_sources.c.prefix).where(t.dataset_sources.c.dataset == dataset)
            )
        }
        new = sorted(set(prefixes) - have)
        if new:
            conn.execute(
                sa.insert(t.dataset_sources), [{"dataset": dataset, "prefix": p} for p in new]
            )

    # -- snapshots ---------------------------------------------------------------------

    def all_snapshots(self, dataset: str) -> dict[str, Snapshot]:
        with self._read() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).where(t.snapshots.c.dataset == dataset)).all()
        return {r.id: snapshot_of(r) for r in rows}

    def ancestry(self, head: str, dataset: str | None = None) -> Log:
        """``head`` and its first-parent ancestors, newest first.

        One indexed query reads the log entries of the dataset's rows, newest first,
        and :func:`first_parent_chain` picks the chain out of them in one pass. (On
        SQLite this is about twice as fast as a recursive query over
        ``snapshot_parents``; fetching the rows is most of the cost.) ``dataset``,
        the name of ``head``'s dataset if the caller knows it, saves a subquery.
        """
        of_dataset = dataset if dataset is not None else self._dataset_of(head)
        return Log(self._chain(head, of_dataset), _Deferred(self, of_dataset))

    def chain_ids(self, head: str) -> list[str]:
        """Ids of ``head`` and its first-parent ancestors, newest first."""
        return [entry[:32] for entry in self._chain(head, self._dataset_of(head))]

    @staticmethod
    def _dataset_of(snapshot_id: str) -> Any:
        s = t.snapshots
        return sa.select(s.c.dataset).where(s.c.id == snapshot_id).scalar_subquery()

    def _chain(self, head: str, dataset: Any) -> list[str]:
        """The log entries of ``head``'s first-parent chain, newest first."""
        s = t.snapshots
        query = sa.select(*(s.c[n] for n in LOG_COLUMNS)).where(s.c.dataset == dataset)
        chain = first_parent_chain(self._rows_newest_first(query), head)
        if not chain:
            raise VersionNotFoundError(f"No snapshot with id {head!r}")
        return chain

    def _rows_newest_first(self, query: sa.Select[Any]) -> Sequence[tuple[Any, ...]]:
        with self._read() as conn:
            # plain DB-API rows: SQLAlchemy's Row objects cost more than the query here
            return conn.execute(query.order_by(t.snapshots.c.version.desc())).cursor.fetchall()

    def ancestor_ids(self, head: str) -> set[str]:
        """``head`` and every snapshot reachable through any parent (one query)."""
        p = t.snapshot_parents
        anc = sa.select(sa.literal(head, sa.String).label("id")).cte("anc", recursive=True)
        anc = anc.union(sa.select(p.c.parent_id).where(p.c.snapshot_id == anc.c.id))
        with self._read() as conn:
            return {r.id for r in conn.execute(sa.select(anc.c.id))}

    def graph(self, dataset: str) -> dict[str, tuple[int, tuple[str, ...]]]:
        """``{snapshot id: (version, parent ids)}`` of every snapshot of ``dataset``,
        from light rows (no provenance decoded)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.snapshots.c.id, t.snapshots.c.version, t.snapshots.c.parents).where(
                    t.snapshots.c.dataset == dataset
                )
            ).all()
        return {r.id: (r.version, tuple(ujson.loads(r.parents))) for r in rows}

    def key_changes(self, dataset: str, keys: Iterable[str]) -> dict[str, dict[str, str]]:
        """``{key: {snapshot id: op}}``: every recorded change of ``keys`` in
        ``dataset`` (an index range scan per key; first versions record none)."""
        keys = list(keys)
        out: dict[str, dict[str, str]] = {k: {} for k in keys}
        c = t.snapshot_changes
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(
                    sa.select(c.c.key, c.c.snapshot_id, c.c.op)
                    .join(t.snapshots, t.snapshots.c.id == c.c.snapshot_id)
                    .where(c.c.key.in_(keys[start : start + 500]), t.snapshots.c.dataset == dataset)
                ).cursor.fetchall()  # plain rows: a key may have 10^4 changes (blame)
                for key, snapshot_id, op in rows:
                    out[key][snapshot_id] = op
        return out

    def changed_keys_under(self, dataset: str, prefix: str) -> dict[str, dict[str, str]]:
        """Like :meth:`key_changes`, for every key starting with ``prefix``."""
        c = t.snapshot_changes
        out: dict[str, dict[str, str]] = {}
        with self._read() as conn:
            rows = conn.execute(
                sa.select(c.c.key, c.c.snapshot_id, c.c.op)
                .join(t.snapshots, t.snapshots.c.id == c.c.snapshot_id)
                .where(
                    c.c.key.startswith(prefix, autoescape=True), t.snapshots.c.dataset == dataset
                )
            ).all()
        for r in rows:
            out.setdefault(r.key, {})[r.snapshot_id] = r.op
        return out

    def changes(self, snapshot_id: str) -> dict[str, str]:
        """The keys a snapshot changed, with their op (A, M or D)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.snapshot_changes.c.key, t.snapshot_changes.c.op)
                .where(t.snapshot_changes.c.snapshot_id == snapshot_id)
                .order_by(t.snapshot_changes.c.key)
            ).all()
        return {r.key: r.op for r in rows}

    # -- refs --------------------------------------------------------------------------

    def refs(self, dataset: str) -> list[RefRecord]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.refs).where(t.refs.c.dataset == dataset).order_by(t.refs.c.name)
            ).all()
        return [RefRecord(r.dataset, r.name, r.kind, r.snapshot_id) for r in rows]

    def create_ref(self, dataset: str, name: str, kind: str, snapshot_id: str, author: str) -> None:
        """Create a branch or tag; a name is unique among both in one dataset."""
        try:
            with self._write() as conn:
                conn.execute(
                    sa.insert(t.refs).values(
                        dataset=dataset, name=name, kind=kind, snapshot_id=snapshot_id
                    )
                )
                self._log_ref(conn, dataset, name, kind, None, snapshot_id, author)
        except SQLIntegrityError as exc:
            existing = self.ref(dataset, name)
            what = existing.kind if existing else "ref"
            raise AlreadyExistsError(
                f"Dataset {dataset!r} has a {what} named {name!r} already; choose another name"
            ) from exc

    def move_branch(
        self,
        dataset: str,
        branch: str,
        expected: str,
        new: str,
        author: str,
        action: str = "reset",
        message: str | None = None,
    ) -> None:
        """Point ``branch`` at ``new`` if it still points at ``expected``; logged.

        Raises
        ------
        ConflictError
            If the branch moved meanwhile; nothing changes.
        """
        with self._write() as conn:
            if not _swap_head(conn, dataset, branch, expected, new):
                raise ConflictError(
                    f"Branch {branch!r} of dataset {dataset!r} moved meanwhile (it no "
                    f"longer points at {expected[:12]}); nothing changed. Look at "
                    f"'snapref log {dataset} --branch {branch}' and try again."
                )
            self._log_ref(conn, dataset, branch, action, expected, new, author, message)

    def ref_log(self, dataset: str | None = None, ref: str | None = None) -> list[RefLogEntry]:
        """Every recorded ref change, oldest first (optionally of one dataset/ref)."""
        q = sa.select(t.ref_log)
        if dataset is not None:
            q = q.where(t.ref_log.c.dataset == dataset)
        if ref is not None:
            q = q.where(t.ref_log.c.ref == ref)
        with self._read() as conn:
            rows = conn.execute(q.order_by(t.ref_log.c.timestamp, t.ref_log.c.id)).all()
        return [
            RefLogEntry(
                r.id,
                r.dataset,
                r.ref,
                r.action,
                r.old_snapshot,
                r.new_snapshot,
                parse_time(r.timestamp),
                r.author,
                r.message,
            )
            for r in rows
        ]

    def head_at(self, dataset: str, branch: str, when: datetime) -> str | None:
        """The snapshot ``branch`` pointed at, at time ``when`` (from the ref log)."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.ref_log.c.new_snapshot)
                .where(
                    t.ref_log.c.dataset == dataset,
                    t.ref_log.c.ref == branch,
                    t.ref_log.c.timestamp <= format_time(when),
                )
                .order_by(t.ref_log.c.timestamp.desc(), t.ref_log.c.id.desc())
                .limit(1)
            ).one_or_none()
        return None if row is None else row.new_snapshot

    def _log_ref(
        self,
        conn: Connection,
        dataset: str,
        ref: str,
        action: str,
        old: str | None,
        new: str | None,
        author: str,
        message: str | None = None,
        timestamp: str | None = None,
    ) -> None:
        conn.execute(
            sa.insert(t.ref_log).values(
                message=message,
                id=uuid.uuid4().hex,
                dataset=dataset,
                ref=ref,
                action=action,
                old_snapshot=old,
                new_snapshot=new,
                # a commit's entry carries the snapshot's own time, so that
                # as_of=snapshot.timestamp finds that snapshot
                timestamp=timestamp or iso_now(),
                author=author,
            )
        )

    # -- commits -----------------------------------------------------------------------

    def create_dataset(
        self,
        name: str,
        snapshot: Mapping[str, Any],
        changes: Mapping[str, str],
        sources: Iterable[str],
        description: str = "",
        properties: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Create dataset ``name`` with its first snapshot on branch ``main``, atomically.

        Raises
        ------
        AlreadyExistsError
            If a dataset of that name exists.
        """
        try:
            with self._write() as conn:
                conn.execute(
                    sa.insert(t.datasets).values(
                        name=name,
                        created_at=iso_now(),
                        description=description,
                        properties=ujson.dumps(dict(properties or {})),
                    )
                )
                self._add_sources(conn, name, sources)
                row = self._insert_snapshot(conn, name, 1, snapshot, changes)
                conn.execute(
                    sa.insert(t.refs).values(
                        dataset=name, name=snapshot["branch"], kind=BRANCH, snapshot_id=row["id"]
                    )
                )
                self._log_ref(
                    conn,
                    name,
                    snapshot["branch"],
                    "create",
                    None,
                    row["id"],
                    snapshot["author"],
                    timestamp=row["timestamp"],
                )
        except SQLIntegrityError as exc:
            raise AlreadyExistsError(
                f"A dataset named {name!r} exists already; choose another name, or commit "
                "a new version of it instead"
            ) from exc
        return self.snapshot(row["id"])

    def commit(
        self,
        dataset: str,
        branch: str,
        expected_parent: str,
        snapshot: Mapping[str, Any],
        changes: Mapping[str, str],
        sources: Sequence[str] = (),
        action: str = "commit",
    ) -> Snapshot:
        """Record a new snapshot and move ``branch`` to it if it still points at
        ``expected_parent`` — all in one transaction. ``action`` is what the ref log
        records (``commit``, ``merge``, ``revert``).

        Each try is :meth:`_commit_once`. The threads of one process take turns
        (:func:`_writer_lock`), so only other processes race it; a try that lost a
        race to another writer for the version number is retried after a random wait
        that doubles each time, up to ``_COMMIT_TRIES`` times.

        Raises
        ------
        ConflictError
            If the branch head is no longer ``expected_parent``. Nothing is recorded.
        """
        last = ""
        for attempt in range(_COMMIT_TRIES):
            if attempt:  # let the other writer finish
                time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
            try:
                with _writer_lock(self.engine):
                    return self._commit_once(
                        dataset, branch, expected_parent, snapshot, changes, sources, action
                    )
            except _Moved:
                raise self._moved(dataset, branch, expected_parent) from None
            except SQLIntegrityError as exc:
                # another branch took the same version number (count again), unless a
                # parent is not in this catalog at all: then no retry can help
                self._check_parents_exist(dataset, [expected_parent, *snapshot["parents"]])
                last = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                continue
            except sa.exc.OperationalError as exc:
                # duckdb's optimistic concurrency: a writer that took the same version
                # number, or moved the head, first makes this one's COMMIT fail; the
                # next try counts again or sees the head (threads of this process no
                # longer race, but a connection made outside snapref may)
                if type(exc.orig).__name__ != "TransactionException":
                    raise
                last = str(exc.orig).strip().splitlines()[0]
                continue
        raise ConflictError(
            f"Could not allocate a version number for dataset {dataset!r} after "
            f"{_COMMIT_TRIES} tries; "
            f"too many concurrent commits ({last}). Try again."
        )

    def _commit_once(
        self,
        dataset: str,
        branch: str,
        expected_parent: str,
        snapshot: Mapping[str, Any],
        changes: Mapping[str, str],
        sources: Sequence[str],
        action: str,
    ) -> Snapshot:
        """One try of :meth:`commit`, one SQL transaction; raises _Moved if the branch moved."""
        with self._write() as conn:
            version = _next_version(conn, dataset)
            row = self._insert_snapshot(conn, dataset, version, snapshot, changes)
            if not _swap_head(conn, dataset, branch, expected_parent, row["id"]):
                raise _Moved()
            self._add_sources(conn, dataset, sources)
            self._log_ref(
                conn,
                dataset,
                branch,
                action,
                expected_parent,
                row["id"],
                snapshot["author"],
                snapshot["message"] if action != "commit" else None,
                timestamp=row["timestamp"],
            )
        return self.snapshot(row["id"])

    def _moved(self, dataset: str, branch: str, expected_parent: str) -> ConflictError:
        """The error of a lost compare-and-swap, naming the branch's new head."""
        head = self.branch(dataset, branch, committing=True)
        return ConflictError(
            f"Branch {branch!r} of dataset {dataset!r} moved while you worked: it "
            f"points at {head.snapshot_id[:12]}, not at "
            f"{expected_parent[:12]} where your changes started. Nothing was "
            "committed. Start again from the new head (a new transaction, or "
            "'snapref checkout') and re-apply your changes, or commit them to a "
            "new branch."
        )

    def _check_parents_exist(self, dataset: str, parents: Iterable[str]) -> None:
        for parent in dict.fromkeys(parents):
            if not self._rows(SNAPSHOT_SQL, {"id": parent}):
                raise VersionNotFoundError(
                    f"The version this commit starts from ({parent[:12]}) is not in the "
                    f"catalog {safe_url(self.url)}, so nothing was committed to "
                    f"{dataset!r}: was the catalog file replaced or restored since it was "
                    "read? Open the repository again and start from its current head."
                )

    def _insert_snapshot(
        self,
        conn: Connection,
        dataset: str,
        version: int,
        snapshot: Mapping[str, Any],
        changes: Mapping[str, str],
    ) -> dict[str, Any]:
        timestamp = snapshot.get("timestamp") or iso_now()
        snapshot_id = snapshot.get("id") or new_snapshot_id()
        parents = list(snapshot["parents"])
        if len(snapshot_id) != 32:  # log_entry's fixed-width start relies on it
            raise ValueError(f"snapshot ids have 32 characters, not {snapshot_id!r}")
        shown = (version, snapshot["branch"], timestamp, snapshot["author"], snapshot["message"])
        row = {
            "id": snapshot_id,
            "dataset": dataset,
            "version": version,
            "manifest": snapshot["manifest"],
            "parents": ujson.dumps(parents),
            "branch": snapshot["branch"],
            "timestamp": timestamp,
            "author": snapshot["author"],
            "message": snapshot["message"],
            "snapref_version": snapshot["snapref_version"],
            "properties": ujson.dumps(dict(snapshot.get("properties") or {})),
            "summary": ujson.dumps(dict(snapshot.get("summary") or {})),
            "log_entry": log_entry(snapshot_id, parents, *shown),
        }
        conn.execute(sa.insert(t.snapshots).values(**row))
        if parents:
            conn.execute(
                sa.insert(t.snapshot_parents),
                [
                    {"snapshot_id": row["id"], "ordinal": i, "parent_id": p}
                    for i, p in enumerate(parents)
                ],
            )
        if changes:
            conn.execute(
                sa.insert(t.snapshot_changes),
                [{"snapshot_id": row["id"], "key": k, "op": op} for k, op in changes.items()],
            )
        return row


def _next_version(conn: Connection, dataset: str) -> int:
    """The dataset's next version number: one more than its highest so far."""
    if conn.dialect.name == "postgresql":
        # writers of one dataset take turns for its next version number (SQLite's
        # writers already do: BEGIN IMMEDIATE); without it, six processes committing
        # to six branches ran out of retries
        conn.execute(
            sa.select(t.datasets.c.name)
            .where(t.datasets.c.name == dataset)
            # FOR NO KEY UPDATE: a reset's ref_log insert takes KEY SHARE on this row
            # for its foreign key, which FOR UPDATE blocks (a reset and a commit then
            # deadlocked)
            .with_for_update(key_share=True)
        )
    highest = conn.execute(
        sa.select(sa.func.max(t.snapshots.c.version)).where(t.snapshots.c.dataset == dataset)
    ).scalar_one()
    return (highest or 0) + 1


def _swap_head(conn: Connection, dataset: str, branch: str, expected: str, new: str) -> bool:
    """The compare-and-swap of invariant 2: move ``branch`` to ``new`` only if it still
    points at ``expected``. False when another writer moved it first."""
    updated = conn.execute(
        sa.update(t.refs)
        .where(
            t.refs.c.dataset == dataset,
            t.refs.c.name == branch,
            t.refs.c.kind == BRANCH,
            t.refs.c.snapshot_id == expected,
        )
        .values(snapshot_id=new)
    )
    return updated.rowcount == 1


def _check_file_exists(url: str) -> None:
    """Raise CatalogUnavailableError if ``url`` names a catalog file that is missing."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return  # Catalog() reports a malformed URL
    database = parsed.database
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or not database:
        return
    if database == ":memory:" or database.startswith("file:") or os.path.exists(database):
        return
    raise missing_catalog_file(database)


def _check_sqlite_file_is_catalog(url: str) -> None:
    """Refuse a SQLite file without snapref's tables before opening it for writing:
    the engine's first connection switches the file to WAL, a change to someone
    else's database (or a new header in an empty file)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return  # Catalog() reports a malformed URL
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or not os.path.isfile(path):
        return  # not a SQLite file: the engine's connection says what is wrong
    try:
        conn = sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute(f"SELECT version FROM {t.schema_info.name}").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise _not_a_catalog(url, str(exc)) from exc
        # locked, unreadable, ...: the engine's connection reports it as before
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        raise _not_a_catalog(url, str(exc)) from exc


def _not_a_catalog(url: str, reason: str) -> CatalogSchemaError:
    return CatalogSchemaError(
        f"{safe_url(url)} is not a snapref catalog ({reason}). "
        "Check the --catalog URL; a new repository gets its catalog from 'snapref init'."
    )


#: how often a commit retries when another commit took its version number
_COMMIT_TRIES = 10

_WRITER_LOCKS: weakref.WeakKeyDictionary[sa.Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(engine: sa.Engine) -> threading.Lock:
    """One lock per database engine of this process, held while a commit's catalog
    transaction runs: its threads (an ASGI service, a dask job on threads) take turns
    instead of racing each other for the version number. Losing that race ten times
    in a row was possible on a loaded machine (four threads committing to four
    branches of one duckdb catalog: 2 of 25 trials lost a commit)."""
    with _WRITER_LOCKS_GUARD:
        lock = _WRITER_LOCKS.get(engine)
        if lock is None:
            lock = _WRITER_LOCKS[engine] = threading.Lock()
        return lock


class _Moved(Exception):
    """Internal: the compare-and-swap updated no row."""


@functools.cache
def _text(sql: str) -> sa.TextClause:
    """The SQLAlchemy form of one of :mod:`~snapref.catalog.lookups`' queries (made
    once, so SQLAlchemy's statement cache finds it)."""
    return sa.text(sql)
