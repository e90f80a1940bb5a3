"""Opening catalog databases: one SQLAlchemy engine per database in a process.

SQLite (the embedded default) gets the settings that make every commit atomic and
readers never wait; PostgreSQL and duckdb are used as SQLAlchemy opens them. A
database that cannot be opened is a :class:`~snapref.errors.CatalogUnavailableError`
saying what to check.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from snapref.catalog.lookups import read_only_storage
from snapref.errors import CatalogUnavailableError

__all__ = ["ENGINES", "Engines", "safe_url"]


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


class Engines:
    """The engines of this process, one per catalog database, shared by every
    :class:`Catalog` open on it.

    SQLAlchemy's advice is one long-lived engine per database: it keeps compiled
    statements and pooled connections, so opening a repository again (every
    ``snapref.open(url, ...)`` on PostgreSQL or duckdb does; on a SQLite file it
    reads through :class:`~snapref.catalog.lookups.SQLiteReader` until more is needed)
    costs no new connection or compilation. An engine
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


ENGINES = Engines()


_NEW_FILES = itertools.count()


def _file_identity(url: str) -> tuple[Any, ...] | None:
    """(device, inode) of a SQLite/duckdb database file, None for a server. A file that
    does not exist yet gets an identity of its own: an engine kept for a file of that
    name that was deleted (a repository removed and made again by init) must not serve
    the new one."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or not parsed.database:
        return None
    try:
        st = os.stat(parsed.database)
    except OSError:
        return ("new", next(_NEW_FILES))
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
            f"Cannot open the catalog {safe_url(url)}: its database driver is not "
            f"installed ({exc}); {fix}"
        ) from exc
    except sa.exc.ArgumentError as exc:
        raise CatalogUnavailableError(
            f"{safe_url(url)} is not a catalog URL ({exc}). Give an SQLAlchemy URL, e.g. "
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
            f"Cannot open the catalog {safe_url(url)}: {reason}. {hint}"
        ) from exc
    return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database or ""
        read_only = bool(database) and read_only_storage(database)
        if read_only:  # as SQLiteReader reads it (see read_only_storage)
            uri = Path(database).as_uri() + "?mode=ro&immutable=1"
            engine = sa.create_engine(
                url, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
            )
        else:
            engine = sa.create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # let SQLAlchemy, not pysqlite, decide where transactions begin
            dbapi_connection.isolation_level = None
            if read_only:
                return
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


def safe_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
