"""The SQL catalog of a repository: datasets, snapshots, refs and their history.

- ``schema.py``  the tables (SQLAlchemy Core), kept equal to catalog_schemas/
- ``migrate.py`` upgrades of older catalogs, one schema version at a time
- ``engine.py``  opening a catalog database: one shared engine per database
- ``records.py`` what the catalog hands out: Snapshot, RefRecord, RefLogEntry, ...
- ``sql.py``     the Catalog class: every query, and the compare-and-swap commit
"""

from snapref.catalog.records import DatasetRecord, Log, RefLogEntry, RefRecord, Snapshot
from snapref.catalog.schema import SCHEMA_VERSION
from snapref.catalog.sql import BRANCH, MAIN_BRANCH, TAG, Catalog

__all__ = [
    "BRANCH",
    "MAIN_BRANCH",
    "SCHEMA_VERSION",
    "TAG",
    "Catalog",
    "DatasetRecord",
    "Log",
    "RefLogEntry",
    "RefRecord",
    "Snapshot",
]
