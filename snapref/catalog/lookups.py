"""The catalog reads that opening a version needs, written once as portable SQL.

Opening one version of a dataset reads a few rows: the schema version, the dataset,
a ref or a snapshot, and the source prefixes the repository allows. Those queries
live here as plain SQL text with ``:name`` parameters, decoded into the records of
:mod:`snapref.catalog.records`, and two executors run the same text:

- :class:`~snapref.catalog.sql.Catalog`, through SQLAlchemy, on every database;
- :class:`SQLiteReader`, through Python's own ``sqlite3`` module, on a SQLite catalog
  file (the embedded default), so that a process that only reads -- a script opening
  one version, a dask worker, a web service -- never imports SQLAlchemy. In a fresh
  process that is ~200 ms (import and interpreter teardown) and ~12 MB of the whole
  "import, open, read one chunk" (W2 in ``benchmarks/``).

Everything else -- writes, logs, merges, migrations -- goes through the Catalog,
which a :class:`~snapref.Repository` opens on first need.
"""

from __future__ import annotations

import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import ujson

from snapref.catalog.records import (
    REST_COLUMNS,
    SHOWN_COLUMNS,
    DatasetRecord,
    RefRecord,
    Snapshot,
    parse_time,
)
from snapref.errors import CatalogUnavailableError, DatasetNotFoundError, VersionNotFoundError

if TYPE_CHECKING:
    from snapref.catalog.sql import Catalog

__all__ = ["BRANCH", "MAIN_BRANCH", "SCHEMA_VERSION", "TAG", "Lookups", "SQLiteReader"]

#: The catalog schema this code reads and writes (``catalog_schemas/v{N}.*.sql``).
SCHEMA_VERSION = 4

BRANCH, TAG = "branch", "tag"
MAIN_BRANCH = "main"

_SNAPSHOT = f"SELECT {', '.join(SHOWN_COLUMNS + REST_COLUMNS)} FROM snapshots"
_DATASET = "SELECT name, created_at, description, properties FROM datasets"

SCHEMA_VERSION_SQL = "SELECT version FROM snapref_schema"
DATASETS_SQL = f"{_DATASET} ORDER BY name"
DATASET_SQL = f"{_DATASET} WHERE name = :name"
SNAPSHOT_SQL = f"{_SNAPSHOT} WHERE id = :id"
SNAPSHOT_BY_VERSION_SQL = f"{_SNAPSHOT} WHERE dataset = :dataset AND version = :version"
# ids are lowercase hex, so a prefix needs no escaping for LIKE (see by_id_prefix)
SNAPSHOTS_BY_ID_PREFIX_SQL = f"{_SNAPSHOT} WHERE dataset = :dataset AND id LIKE :pattern"
REF_SQL = (
    "SELECT dataset, name, kind, snapshot_id FROM refs WHERE dataset = :dataset AND name = :name"
)
BRANCH_NAMES_SQL = (
    f"SELECT name FROM refs WHERE dataset = :dataset AND kind = '{BRANCH}' ORDER BY name"
)
SETTING_SQL = "SELECT value FROM settings WHERE key = :key"
SOURCES_SQL = "SELECT prefix FROM dataset_sources WHERE dataset = :dataset ORDER BY prefix"


def snapshot_of(row: Sequence[Any]) -> Snapshot:
    """A snapshot from a row of ``SHOWN_COLUMNS + REST_COLUMNS``."""
    n = len(SHOWN_COLUMNS)
    return Snapshot(tuple(row[:n]), tuple(row[n:]))


def dataset_of(row: Sequence[Any]) -> DatasetRecord:
    name, created_at, description, properties = row
    return DatasetRecord(name, parse_time(created_at), description, ujson.loads(properties))


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of the SQLite file ``path``. The path is percent-encoded, as
    SQLAlchemy decodes it: a ``?`` would otherwise start the URL's options and a
    ``%20`` stand for a space."""
    return "sqlite:///" + quote(path, safe="/")


def missing_catalog_file(path: str) -> CatalogUnavailableError:
    return CatalogUnavailableError(
        f"The catalog file {path} does not exist: it was moved or deleted. Restore "
        "it from a backup (a repository without its catalog has no versions), or give "
        "its new place with --catalog URL ($SNAPREF_CATALOG)."
    )


class Lookups(ABC):
    """The reads above, on whatever runs :meth:`_rows`."""

    url: str

    @abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """All rows of one SELECT, as tuples."""

    @abstractmethod
    def full(self) -> Catalog:
        """The whole catalog behind these reads (opening it if need be)."""

    def schema_version(self) -> int:
        return int(self._rows(SCHEMA_VERSION_SQL, {})[0][0])

    def close(self) -> None:  # noqa: B027 - nothing to release unless a subclass holds it
        """Release what these reads hold."""

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._rows(SETTING_SQL, {"key": key})
        return ujson.loads(rows[0][0]) if rows else default

    def datasets(self) -> list[DatasetRecord]:
        return [dataset_of(r) for r in self._rows(DATASETS_SQL, {})]

    def dataset(self, name: str) -> DatasetRecord:
        rows = self._rows(DATASET_SQL, {"name": name})
        if not rows:
            known = ", ".join(d.name for d in self.datasets()) or "none yet"
            raise DatasetNotFoundError(
                f"No dataset {name!r} in this repository (datasets: {known}). "
                "Create it with 'snapref import'."
            )
        return dataset_of(rows[0])

    def sources(self, dataset: str) -> list[str]:
        return [r[0] for r in self._rows(SOURCES_SQL, {"dataset": dataset})]

    def snapshot(self, snapshot_id: str) -> Snapshot:
        rows = self._rows(SNAPSHOT_SQL, {"id": snapshot_id})
        if not rows:
            raise VersionNotFoundError(f"No snapshot with id {snapshot_id!r}")
        return snapshot_of(rows[0])

    def snapshot_by_version(self, dataset: str, version: int) -> Snapshot | None:
        rows = self._rows(SNAPSHOT_BY_VERSION_SQL, {"dataset": dataset, "version": version})
        return snapshot_of(rows[0]) if rows else None

    def snapshots_by_id_prefix(self, dataset: str, prefix: str) -> list[Snapshot]:
        """Snapshots of ``dataset`` whose id starts with ``prefix`` (any case)."""
        prefix = prefix.lower()
        if not prefix or prefix.strip("0123456789abcdef"):
            return []  # not hex: no id starts with it (and LIKE needs no escapes)
        rows = self._rows(SNAPSHOTS_BY_ID_PREFIX_SQL, {"dataset": dataset, "pattern": prefix + "%"})
        return [snapshot_of(r) for r in rows]

    def ref(self, dataset: str, name: str) -> RefRecord | None:
        rows = self._rows(REF_SQL, {"dataset": dataset, "name": name})
        return RefRecord(*rows[0]) if rows else None

    def branch(self, dataset: str, name: str, *, committing: bool = False) -> RefRecord:
        """The branch ``name`` of ``dataset``.

        Raises
        ------
        DatasetNotFoundError
            If there is no dataset ``dataset``.
        VersionNotFoundError
            If ``name`` is a tag or no ref at all, naming the branches there are;
            ``committing`` adds that nothing was committed.
        """
        ref = self.ref(dataset, name)
        if ref is not None and ref.kind == BRANCH:
            return ref
        self.dataset(dataset)  # DatasetNotFoundError first, if that is what is wrong
        branches = ", ".join(r[0] for r in self._rows(BRANCH_NAMES_SQL, {"dataset": dataset}))
        if ref is not None:  # a tag: it names one version forever
            raise VersionNotFoundError(
                f"{name!r} is a tag of dataset {dataset!r}, not a branch: tags never move"
                f"{', and nothing was committed' if committing else ''}. Use a branch "
                f"({branches}), or start one from the tag with "
                f"'snapref branch {dataset} NEW --from {name}'."
            )
        raise VersionNotFoundError(
            f"Dataset {dataset!r} has no branch {name!r} (branches: {branches})"
            f"{'; nothing was committed' if committing else ''}. Create it with "
            f"'snapref branch {dataset} {name}'."
        )


def read_only_storage(path: str) -> bool:
    """Whether ``path`` (a catalog file with no WAL file beside it, that is not in the
    middle of a write) lies where this process can write neither it nor its folder."""
    if not os.path.isfile(path) or os.path.exists(path + "-wal"):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    return not os.access(folder, os.W_OK) and not os.access(path, os.W_OK)


class SQLiteReader(Lookups):
    """The reads above on a SQLite catalog file, through Python's ``sqlite3``.

    Holds no connection: each read opens the file (about 0.1 ms), so a reader can be
    used from any thread and survives a fork. The file is opened in ``mode=rw``, never
    created, and only SELECTs run on it; the catalog's WAL mode (set when it was
    created) lets these reads proceed while another process commits.
    """

    def __init__(self, path: str) -> None:
        # absolute: a process that changes directory, or a copy of a filesystem sent
        # to another process, still finds this file (and the Catalog opens this one)
        self._path = os.path.abspath(path)
        self.url = sqlite_url(self._path)
        self._uri = Path(self._path).as_uri() + "?mode=rw"
        if read_only_storage(self._path):
            # a WAL catalog needs its -shm file to be read; on read-only storage (an
            # archive, a read-only mount) SQLite cannot make one, but nobody can write
            # there either: the file is read as immutable
            self._uri = Path(self._path).as_uri() + "?mode=ro&immutable=1"

    @classmethod
    def open(cls, url: str) -> SQLiteReader | None:
        """A reader of the catalog at ``url``, or None where a full
        :class:`~snapref.catalog.sql.Catalog` must open it: not a plain
        ``sqlite:///PATH`` URL (one with options), a missing file, an older schema to
        migrate (or a newer one), or a file that is not a snapref catalog. The Catalog
        then migrates, or says what is wrong."""
        prefix = "sqlite:///"
        if not url.startswith(prefix) or "?" in url:
            return None
        path = unquote(url[len(prefix) :])  # as SQLAlchemy reads the database part
        if not path or not os.path.isfile(path):
            return None
        reader = cls(path)
        try:
            version = reader.schema_version()
        except (CatalogUnavailableError, IndexError, ValueError):
            return None
        return reader if version == SCHEMA_VERSION else None

    def full(self) -> Catalog:
        from snapref.catalog.sql import Catalog

        return Catalog.open(self.url)

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        try:
            conn = sqlite3.connect(self._uri, uri=True, timeout=60)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if not os.path.exists(self._path):
                raise missing_catalog_file(self._path) from None
            raise CatalogUnavailableError(
                f"Cannot read the catalog {self._path}: {exc}. Check the path and that "
                "you may read and write it."
            ) from exc
