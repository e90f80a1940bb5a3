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

import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import ujson
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from snapref.catalog import schema as t
from snapref.catalog.migrate import MIGRATIONS, migrate
from snapref.errors import (
    AlreadyExistsError,
    CatalogSchemaError,
    CatalogUnavailableError,
    ConflictError,
    DatasetNotFoundError,
    VersionNotFoundError,
)

__all__ = ["Catalog", "DatasetRecord", "RefLogEntry", "RefRecord", "Snapshot", "iso_now"]

BRANCH, TAG = "branch", "tag"
MAIN_BRANCH = "main"


def iso_now() -> str:
    """The current UTC time as ISO 8601 text with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    # fromisoformat is ~20x faster than strptime, which matters for a 10,000-version log
    return datetime.fromisoformat(text)


def format_time(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: The columns ``snapref log`` shows, in the order a :class:`Snapshot` keeps them.
SHOWN_COLUMNS = ("id", "version", "parents", "branch", "timestamp", "author", "message")
#: The other columns of a snapshot row; a log reads them only when one entry needs them.
REST_COLUMNS = ("dataset", "manifest", "snapref_version", "properties", "summary")


class Snapshot:
    """One immutable version of a dataset, with its provenance.

    Read-only attributes: ``id``, ``dataset``, ``version``, ``manifest`` (digest of
    the manifest list), ``parents`` (ids), ``branch``, ``timestamp`` (UTC datetime),
    ``author``, ``message``, ``snapref_version``, ``properties``, ``summary``.

    Made from a catalog row in two parts: ``shown`` holds the :data:`SHOWN_COLUMNS`,
    ``rest`` the :data:`REST_COLUMNS` or, in a log, a :class:`_Deferred` that reads
    them for every entry of the log at once when the first one asks. The JSON fields
    and the time are decoded when first read, so a log of 10,000 versions costs
    little more than fetching the columns it shows. Two snapshots are equal when
    their ids are.
    """

    __slots__ = ("_decoded", "_rest", "_shown")

    def __init__(self, shown: tuple[Any, ...], rest: tuple[Any, ...] | _Deferred) -> None:
        self._shown = shown
        self._rest = rest
        self._decoded: dict[str, Any] | None = None  # made on first use: logs are long

    def _rest_columns(self) -> tuple[Any, ...]:
        if isinstance(self._rest, _Deferred):
            self._rest = self._rest.rest(self._shown[0])
        return self._rest

    def _json(self, name: str, text: str) -> Any:
        if self._decoded is None:
            self._decoded = {}
        try:
            return self._decoded[name]
        except KeyError:
            value = self._decoded[name] = ujson.loads(text)
            return value

    id = property(lambda self: self._shown[0], doc="Unique id (32 hex digits).")
    version = property(lambda self: int(self._shown[1]), doc="1, 2, 3... per dataset.")
    branch = property(lambda self: self._shown[3], doc="Branch it was committed to.")
    author = property(lambda self: self._shown[5])
    message = property(lambda self: self._shown[6])
    dataset = property(lambda self: self._rest_columns()[0], doc="Name of the dataset.")
    manifest = property(lambda self: self._rest_columns()[1], doc="Digest of the manifest list.")
    snapref_version = property(lambda self: self._rest_columns()[2])

    @property
    def parents(self) -> tuple[str, ...]:
        """Ids of the parent snapshots (two for a merge, none for the first)."""
        return tuple(self._json("parents", self._shown[2]))

    @property
    def timestamp(self) -> datetime:
        """When it was committed (UTC)."""
        return datetime.fromisoformat(self._shown[4])

    @property
    def properties(self) -> dict[str, Any]:
        """User properties recorded with the commit."""
        return dict(self._json("properties", self._rest_columns()[3]))

    @property
    def summary(self) -> dict[str, int]:
        """chunks_added, chunks_modified, chunks_removed, bytes_written, ..."""
        return dict(self._json("summary", self._rest_columns()[4]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return (
            f"Snapshot(dataset={self.dataset!r}, version={self.version}, id={self.id!r}, "
            f"branch={self.branch!r}, message={self.message!r})"
        )

    def __reduce__(self) -> Any:
        return Snapshot, (self._shown, self._rest_columns())

    def to_json(self) -> dict[str, Any]:
        """The fields of ``snapref log --json``."""
        return {
            "version": self.version,
            "id": self.id,
            "dataset": self.dataset,
            "timestamp": self._shown[4],
            "author": self.author,
            "message": self.message,
            "parents": list(self.parents),
            "branch": self.branch,
            "properties": self.properties,
            "summary": self.summary,
            "snapref_version": self.snapref_version,
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class RefLogEntry:
    """One change of a ref: the audit log and the history ``as_of`` reads."""

    id: str
    dataset: str
    ref: str
    action: str
    old_snapshot: str | None
    new_snapshot: str | None
    timestamp: datetime
    author: str
    message: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "ref": self.ref,
            "action": self.action,
            "old": self.old_snapshot,
            "new": self.new_snapshot,
            "timestamp": format_time(self.timestamp),
            "author": self.author,
            "message": self.message,
        }


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    created_at: datetime
    description: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class RefRecord:
    """A branch or tag of a dataset."""

    dataset: str
    name: str
    kind: str
    snapshot_id: str


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


#: a snapshot row's columns in the order :func:`_snapshot` expects
_COLUMNS = [t.snapshots.c[n] for n in SHOWN_COLUMNS + REST_COLUMNS]


def _snapshot(row: Any) -> Snapshot:
    """A snapshot from a row selected with :data:`_COLUMNS`."""
    n = len(SHOWN_COLUMNS)
    return Snapshot(tuple(row[:n]), tuple(row[n:]))


def new_snapshot_id() -> str:
    return uuid.uuid4().hex


#: What to check when a catalog cannot be opened, per SQLAlchemy dialect.
_UNAVAILABLE_HINTS = {
    "sqlite": "Check the path and that you may read and write it.",
    "postgresql": (
        "Check that the server runs and that the host, port, database, user and password "
        "are right (a password is never recorded: pass it with --catalog or SNAPREF_CATALOG)."
    ),
    "duckdb": (
        "A duckdb catalog can be open in one process at a time: close the other process "
        "(or its Repository), or put the catalog on PostgreSQL for many writers."
    ),
}
#: The extra that installs each dialect's driver.
_DRIVER_EXTRAS = {"postgresql": "snapref[postgresql]", "duckdb": "snapref[duckdb]"}


class _Engines:
    """The engines of this process, one per catalog database, shared by every
    :class:`Catalog` open on it.

    SQLAlchemy's advice is one long-lived engine per database: it keeps compiled
    statements and pooled connections, so opening a repository again (every
    ``snapref.open(url, ...)`` does) costs no new connection or compilation. An engine
    is disposed when the last catalog using it is closed or garbage-collected, which
    also releases a duckdb file's lock. Keys hold the process id (pooled connections
    must not cross a fork) and, for a database file, its inode (a file deleted and
    made again is a new database).

    A catalog collected as garbage is released from inside the garbage collector,
    which may run while this very thread holds the lock: that release never waits
    for the lock, it is queued and done by whoever holds it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[tuple[Any, ...], tuple[Engine, int]] = {}
        self._queued: list[tuple[Any, ...]] = []  # releases from the garbage collector

    def acquire(self, url: str) -> tuple[tuple[Any, ...], Engine]:
        key = (os.getpid(), url, _file_identity(url))
        with self._lock:
            engine, users = self._engines.get(key) or (None, 0)
            if engine is not None:
                self._engines[key] = (engine, users + 1)
        if engine is None:
            fresh = _open_engine(url)  # slow, and may fail: not under the lock
            with self._lock:
                engine, users = self._engines.get(key) or (fresh, 0)
                self._engines[key] = (engine, users + 1)
            if engine is not fresh:  # another thread opened it meanwhile
                fresh.dispose()
        self._dispose(self._take_queued())
        return key, engine

    def release(self, key: tuple[Any, ...], *, collecting: bool = False) -> None:
        """One user fewer of ``key``'s engine; dispose it after the last one.
        ``collecting``: called by the garbage collector (never wait for the lock)."""
        if collecting and not self._lock.acquire(blocking=False):
            self._queued.append(key)  # list.append needs no lock
            return
        if not collecting:
            self._lock.acquire()
        try:
            done = [self._drop(k) for k in (key, *self._pop_queued())]
        finally:
            self._lock.release()
        self._dispose(done)

    def _take_queued(self) -> list[Engine | None]:
        if not self._queued:
            return []
        with self._lock:
            return [self._drop(k) for k in self._pop_queued()]

    def _pop_queued(self) -> list[tuple[Any, ...]]:
        out = []
        while self._queued:
            out.append(self._queued.pop())
        return out

    def _drop(self, key: tuple[Any, ...]) -> Engine | None:
        """Under the lock: one user fewer; the engine if that was the last one."""
        engine, users = self._engines.pop(key, (None, 0))
        if engine is not None and users > 1:
            self._engines[key] = (engine, users - 1)
            return None
        return engine if key[0] == os.getpid() else None

    @staticmethod
    def _dispose(engines: list[Engine | None]) -> None:
        for engine in engines:
            if engine is not None:
                engine.dispose()


_ENGINES = _Engines()


def _file_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite/duckdb database file, None for a server or no file."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or not parsed.database:
        return None
    try:
        st = os.stat(parsed.database)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _open_engine(url: str) -> Engine:
    """An engine for ``url`` that has connected once, or a clear error saying why not."""
    try:
        engine = _make_engine(url)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        extra = _DRIVER_EXTRAS.get(dialect)
        fix = f"pip install '{extra}'" if extra else "install the driver named there"
        raise CatalogUnavailableError(
            f"Cannot open the catalog {_safe_url(url)}: its database driver is not "
            f"installed ({exc}); {fix}"
        ) from exc
    except sa.exc.ArgumentError as exc:
        raise CatalogUnavailableError(
            f"{_safe_url(url)} is not a catalog URL ({exc}). Give an SQLAlchemy URL, e.g. "
            "sqlite:////abs/path/catalog.db, duckdb:////abs/path/catalog.duckdb or "
            "postgresql+psycopg://user@host/db."
        ) from exc
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        hint = _UNAVAILABLE_HINTS.get(engine.dialect.name, "Check the URL.")
        raise CatalogUnavailableError(
            f"Cannot open the catalog {_safe_url(url)}: {reason}. {hint}"
        ) from exc
    return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # let SQLAlchemy, not pysqlite, decide where transactions begin
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            # WAL: readers never block the writer. synchronous=NORMAL in WAL mode keeps
            # every commit atomic (a crash shows the old or the new version, never a
            # mix: invariant 2); a power cut may lose the latest commits, not corrupt.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # writers take the write lock up front, so two writers never deadlock
            # upgrading a read lock; readers take none
            write = conn.get_execution_options().get("snapref_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return sa.create_engine(url)


class Catalog:
    """Typed access to the catalog tables of one repository."""

    def __init__(self, url: str) -> None:
        self.url = url
        key, self.engine = _ENGINES.acquire(url)
        self._release_key = key
        # the engine is shared (see _Engines): give it back on close, or when collected
        self._release = weakref.finalize(self, _ENGINES.release, key, collecting=True)

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
                f"The database {_safe_url(url)} holds a snapref catalog already; "
                "connect to it instead of creating a new one"
            )
        t.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(t.schema_info).values(version=t.SCHEMA_VERSION))
        return catalog

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Connect to an existing catalog and check its schema version."""
        catalog = cls(url)
        engine = catalog.engine
        try:
            with engine.connect() as conn:
                version = conn.execute(sa.select(t.schema_info.c.version)).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            catalog.close()
            raise CatalogSchemaError(
                f"{_safe_url(url)} is not a snapref catalog ({exc.__class__.__name__}). "
                "Create one with 'snapref init'."
            ) from exc
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
                f"The catalog {_safe_url(url)} has schema version {version}; this snapref "
                f"uses version {t.SCHEMA_VERSION}. Upgrade snapref, or migrate the catalog "
                "with the scripts in catalog_schemas/."
            )
        return catalog

    def close(self) -> None:
        """Give the engine back; the last catalog open on a database disposes it."""
        if self._release.detach() is not None:  # not closed or collected before
            key = self._release_key
            _ENGINES.release(key)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(snapref_write=True)
            with conn.begin():
                yield conn

    # -- settings ----------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read() as conn:
            value = conn.execute(
                sa.select(t.settings.c.value).where(t.settings.c.key == key)
            ).scalar_one_or_none()
        return default if value is None else ujson.loads(value)

    def set_setting(self, key: str, value: Any) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(t.settings).where(t.settings.c.key == key))
            conn.execute(sa.insert(t.settings).values(key=key, value=ujson.dumps(value)))

    # -- datasets ----------------------------------------------------------------------

    def datasets(self) -> list[DatasetRecord]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.datasets).order_by(t.datasets.c.name)).all()
        return [_dataset(r) for r in rows]

    def dataset(self, name: str) -> DatasetRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(t.datasets).where(t.datasets.c.name == name)).one_or_none()
        if row is None:
            known = ", ".join(d.name for d in self.datasets()) or "none yet"
            raise DatasetNotFoundError(
                f"No dataset {name!r} in this repository (datasets: {known}). "
                "Create it with 'snapref import'."
            )
        return _dataset(row)

    def update_dataset(
        self,
        name: str,
        description: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> DatasetRecord:
        """Set a dataset's description and/or replace its properties."""
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

    def sources(self, dataset: str) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.dataset_sources.c.prefix)
                .where(t.dataset_sources.c.dataset == dataset)
                .order_by(t.dataset_sources.c.prefix)
            ).all()
        return [r.prefix for r in rows]

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

    def snapshot(self, snapshot_id: str) -> Snapshot:
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_COLUMNS).where(t.snapshots.c.id == snapshot_id)
            ).one_or_none()
        if row is None:
            raise VersionNotFoundError(f"No snapshot with id {snapshot_id!r}")
        return _snapshot(row)

    def snapshot_by_version(self, dataset: str, version: int) -> Snapshot | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_COLUMNS).where(
                    t.snapshots.c.dataset == dataset, t.snapshots.c.version == version
                )
            ).one_or_none()
        return None if row is None else _snapshot(row)

    def snapshots_by_id_prefix(self, dataset: str, prefix: str) -> list[Snapshot]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(*_COLUMNS).where(
                    t.snapshots.c.dataset == dataset,
                    t.snapshots.c.id.startswith(prefix, autoescape=True),
                )
            ).all()
        return [_snapshot(r) for r in rows]

    def all_snapshots(self, dataset: str) -> dict[str, Snapshot]:
        with self._read() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).where(t.snapshots.c.dataset == dataset)).all()
        return {r.id: _snapshot(r) for r in rows}

    def ancestry(self, head: str, dataset: str | None = None) -> list[Snapshot]:
        """``head`` and its first-parent ancestors, newest first.

        One indexed query reads the shown columns of the dataset's rows, newest
        first, and :func:`_first_parent_chain` picks the chain out of them in one
        pass. (On SQLite this is about twice as fast as a recursive query over
        ``snapshot_parents``; fetching the rows is most of the cost.) ``dataset``,
        the name of ``head``'s dataset if the caller knows it, saves a subquery.
        """
        s = t.snapshots
        of_dataset = (
            dataset
            if dataset is not None
            else sa.select(s.c.dataset).where(s.c.id == head).scalar_subquery()
        )
        query = sa.select(*(s.c[n] for n in SHOWN_COLUMNS)).where(s.c.dataset == of_dataset)
        rows = self._rows_newest_first(query)
        deferred = _Deferred(self, of_dataset)
        return [Snapshot(r, deferred) for r in _first_parent_chain(rows, head, 0, 2)]

    def chain_ids(self, head: str) -> list[str]:
        """Ids of ``head`` and its first-parent ancestors, newest first (light rows)."""
        s = t.snapshots
        dataset = sa.select(s.c.dataset).where(s.c.id == head).scalar_subquery()
        rows = self._rows_newest_first(sa.select(s.c.id, s.c.parents).where(s.c.dataset == dataset))
        return [r[0] for r in _first_parent_chain(rows, head, 0, 1)]

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
                ).all()
                for r in rows:
                    out[r.key][r.snapshot_id] = r.op
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

    def ref(self, dataset: str, name: str) -> RefRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.refs).where(t.refs.c.dataset == dataset, t.refs.c.name == name)
            ).one_or_none()
        return None if row is None else RefRecord(row.dataset, row.name, row.kind, row.snapshot_id)

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

        Raises
        ------
        ConflictError
            If the branch head is no longer ``expected_parent``. Nothing is recorded.
        """
        for _attempt in range(5):
            try:
                with self._write() as conn:
                    version = (
                        conn.execute(
                            sa.select(sa.func.max(t.snapshots.c.version)).where(
                                t.snapshots.c.dataset == dataset
                            )
                        ).scalar_one()
                        or 0
                    ) + 1
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
            except _Moved:
                head = self.ref(dataset, branch)
                if head is None or head.kind != BRANCH:
                    raise VersionNotFoundError(
                        f"Dataset {dataset!r} has no branch {branch!r}; nothing was "
                        f"committed. Create it with 'snapref branch {dataset} {branch}'."
                    ) from None
                raise ConflictError(
                    f"Branch {branch!r} of dataset {dataset!r} moved while you worked: it "
                    f"points at {head.snapshot_id[:12] if head else 'nothing'}, not at "
                    f"{expected_parent[:12]} where your changes started. Nothing was "
                    "committed. Start again from the new head (a new transaction, or "
                    "'snapref checkout') and re-apply your changes, or commit them to a "
                    "new branch."
                ) from None
            except SQLIntegrityError:
                # another branch took the same version number; count again
                continue
        raise ConflictError(
            f"Could not allocate a version number for dataset {dataset!r} after 5 tries; "
            "too many concurrent commits. Try again."
        )

    def _insert_snapshot(
        self,
        conn: Connection,
        dataset: str,
        version: int,
        snapshot: Mapping[str, Any],
        changes: Mapping[str, str],
    ) -> dict[str, Any]:
        row = {
            "id": snapshot.get("id") or new_snapshot_id(),
            "dataset": dataset,
            "version": version,
            "manifest": snapshot["manifest"],
            "parents": ujson.dumps(list(snapshot["parents"])),
            "branch": snapshot["branch"],
            "timestamp": snapshot.get("timestamp") or iso_now(),
            "author": snapshot["author"],
            "message": snapshot["message"],
            "snapref_version": snapshot["snapref_version"],
            "properties": ujson.dumps(dict(snapshot.get("properties") or {})),
            "summary": ujson.dumps(dict(snapshot.get("summary") or {})),
        }
        conn.execute(sa.insert(t.snapshots).values(**row))
        parents = list(snapshot["parents"])
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


def _first_parent_chain(
    rows: Iterable[tuple[Any, ...]], head: str, id_column: int, parents_column: int
) -> Iterator[tuple[Any, ...]]:
    """The rows on the first-parent chain from ``head``, from rows newest first.

    A parent always has a smaller version number than its child (it was committed
    before), so one pass in version order meets every row of the chain in turn.
    """
    want = head
    for row in rows:
        if row[id_column] == want:
            yield row
            # the JSON list written by _insert_snapshot: '["<32 hex>", ...]' or '[]'
            want = row[parents_column][2:34]
            if not want:
                return
    if want == head:
        raise VersionNotFoundError(f"No snapshot with id {head!r}")


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


class _Moved(Exception):
    """Internal: the compare-and-swap updated no row."""


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(
        name=row.name,
        created_at=parse_time(row.created_at),
        description=row.description,
        properties=ujson.loads(row.properties),
    )


def _safe_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
