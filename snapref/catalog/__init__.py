"""The SQL catalog of a repository: datasets, snapshots, refs and their history."""

from snapref.catalog.schema import SCHEMA_VERSION
from snapref.catalog.sql import (
    BRANCH,
    MAIN_BRANCH,
    TAG,
    Catalog,
    DatasetRecord,
    RefLogEntry,
    RefRecord,
    Snapshot,
)

__all__ = [
    "BRANCH",
    "MAIN_BRANCH",
    "SCHEMA_VERSION",
    "TAG",
    "Catalog",
    "DatasetRecord",
    "RefLogEntry",
    "RefRecord",
    "Snapshot",
]
