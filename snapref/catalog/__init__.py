"""The SQL catalog of a repository: datasets, snapshots, refs and their history.

- ``schema.py``  the tables (SQLAlchemy Core), kept equal to catalog_schemas/
- ``migrate.py`` upgrades of older catalogs, one schema version at a time
- ``engine.py``  opening a catalog database: one shared engine per database
- ``records.py`` what the catalog hands out: Snapshot, RefRecord, RefLogEntry, ...
- ``lookups.py`` the reads that opening a version needs, as SQL text; also run
  without SQLAlchemy on a SQLite file (``SQLiteReader``)
- ``sql.py``     the Catalog class: every query, and the compare-and-swap commit

Importing this package does not import SQLAlchemy: ``Catalog`` loads it when first
named, so a process that only reads an embedded catalog never does.
"""

from typing import TYPE_CHECKING, Any

from snapref.catalog.lookups import BRANCH, MAIN_BRANCH, SCHEMA_VERSION, TAG, Lookups
from snapref.catalog.records import DatasetRecord, Log, RefLogEntry, RefRecord, Snapshot

if TYPE_CHECKING:
    from snapref.catalog.sql import Catalog

__all__ = [
    "BRANCH",
    "MAIN_BRANCH",
    "SCHEMA_VERSION",
    "TAG",
    "Catalog",
    "DatasetRecord",
    "Log",
    "Lookups",
    "RefLogEntry",
    "RefRecord",
    "Snapshot",
]


def __getattr__(name: str) -> Any:
    if name == "Catalog":
        from snapref.catalog.sql import Catalog

        return Catalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
