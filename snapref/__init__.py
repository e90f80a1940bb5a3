"""snapref: versioned snapshots of Zarr / kerchunk datasets, with a SQL catalog.

Typical use::

    import snapref

    repo = snapref.init("./warehouse")                   # or snapref.connect(...)
    repo.import_references("air", "air.json", message="Adopt kerchunk refs")
    with repo.transaction("air", message="Fix bad values") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["air"][0, :] = 0
    old = snapref.open(repo, "air", version=1)           # time travel
"""

from snapref._version import __version__
from snapref.aio import open_async, open_snapshot_async
from snapref.catalog import Log, Snapshot
from snapref.errors import (
    AlreadyExistsError,
    CatalogSchemaError,
    CatalogUnavailableError,
    ConflictError,
    DatasetNotFoundError,
    DisallowedSourceError,
    IntegrityError,
    InvalidInputError,
    InvalidKeyError,
    InvalidReferenceError,
    MergeConflictError,
    NotFoundError,
    ReadOnlyError,
    RepositoryClosedError,
    RepositoryNotFoundError,
    SnapRefError,
    SourceUnavailableError,
    TransactionClosedError,
    VersionNotFoundError,
)
from snapref.repository import Repository, connect, init, open, open_dataset  # noqa: A004
from snapref.transaction import Transaction

__all__ = [
    "AlreadyExistsError",
    "CatalogSchemaError",
    "CatalogUnavailableError",
    "ConflictError",
    "DatasetNotFoundError",
    "DisallowedSourceError",
    "IntegrityError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidReferenceError",
    "Log",
    "MergeConflictError",
    "NotFoundError",
    "ReadOnlyError",
    "Repository",
    "RepositoryClosedError",
    "RepositoryNotFoundError",
    "SnapRefError",
    "Snapshot",
    "SourceUnavailableError",
    "Transaction",
    "TransactionClosedError",
    "VersionNotFoundError",
    "__version__",
    "connect",
    "init",
    "open",
    "open_async",
    "open_dataset",
    "open_snapshot_async",
]
