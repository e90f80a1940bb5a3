"""The error tree of snapref.

Every error snapref raises on purpose derives from :class:`SnapRefError`, so callers
can catch one type. Subclasses say *what kind* of thing went wrong; their messages say
*which* dataset, version, key or URL, and how to fix it. The CLI turns any of them
into ``Error: <message>`` and exit code 1.
"""

from __future__ import annotations

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
    "MergeConflictError",
    "NotFoundError",
    "ReadOnlyError",
    "RepositoryNotFoundError",
    "SnapRefError",
    "SourceUnavailableError",
    "TransactionClosedError",
    "VersionNotFoundError",
]


class SnapRefError(Exception):
    """Root of every error snapref raises on purpose."""


class NotFoundError(SnapRefError, LookupError):
    """Something named by the caller does not exist."""


class RepositoryNotFoundError(NotFoundError):
    """No snapref repository at the given URL."""


class DatasetNotFoundError(NotFoundError):
    """No dataset of that name in the repository."""


class VersionNotFoundError(NotFoundError):
    """No version, snapshot id, tag or branch matches the given reference."""


class AlreadyExistsError(SnapRefError):
    """A repository, dataset, tag or branch of that name exists already."""


class ConflictError(SnapRefError):
    """The branch moved since the transaction started (compare-and-swap failed)."""


class MergeConflictError(ConflictError):
    """A merge, revert or rebase found keys changed on both sides.

    ``keys`` lists them, sorted; resolve with ``strategy="ours"`` or ``"theirs"``.
    """

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


class IntegrityError(SnapRefError):
    """A stored file a version needs is missing, or its bytes do not match their
    content hash."""


class InvalidInputError(SnapRefError, ValueError):
    """The caller passed something snapref cannot accept."""


class InvalidKeyError(InvalidInputError):
    """A key is empty, absolute, or escapes its dataset (``..``)."""


class InvalidReferenceError(InvalidInputError):
    """A reference set or one of its entries is malformed."""


class DisallowedSourceError(SnapRefError):
    """A reference points at a location the repository does not allow."""


class SourceUnavailableError(SnapRefError):
    """The file a virtual reference points into cannot be read: it was moved or
    deleted, its server cannot be reached, or access is denied. (Never read as the
    fill value, as a key that does not exist would be.)"""


class ReadOnlyError(SnapRefError, PermissionError):
    """A write was attempted on a read-only view of a version."""


class TransactionClosedError(SnapRefError):
    """The transaction was committed or discarded already."""


class RepositoryClosedError(SnapRefError):
    """The repository was closed (``close()``, or its ``with`` block ended): it holds
    no catalog connection any more. Connect again to go on."""


class CatalogSchemaError(SnapRefError):
    """The catalog's schema version is not one this snapref can use."""


class CatalogUnavailableError(SnapRefError):
    """The catalog database cannot be reached: server down, wrong URL or password,
    a duckdb file open in another process, or its driver is not installed."""
