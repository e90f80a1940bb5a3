"""What the catalog hands out: snapshots, refs, ref-log entries and datasets, as
plain Python objects made from its rows, and the time format it stores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import ujson

__all__ = [
    "LOG_COLUMNS",
    "LOG_ENTRY_FIELDS",
    "REST_COLUMNS",
    "SHOWN_COLUMNS",
    "DatasetRecord",
    "RefLogEntry",
    "RefRecord",
    "Snapshot",
    "format_time",
    "iso_now",
    "log_entry",
    "parse_time",
]


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


#: The fields of a log entry besides id and parents, packed as one JSON array in the
#: column ``log_entry`` (schema version 4): a log reads one text per version instead
#: of five columns, which halves the time of fetching a long log.
LOG_ENTRY_FIELDS = ("version", "branch", "timestamp", "author", "message")
#: What a log reads of each snapshot: ``parents`` to follow the first-parent chain
#: without decoding anything, ``log_entry`` decoded when an entry is first read.
LOG_COLUMNS = ("id", "parents", "log_entry")
#: The columns ``snapref log`` shows, in the order a :class:`Snapshot` keeps them.
SHOWN_COLUMNS = ("id", "parents", *LOG_ENTRY_FIELDS)
#: The other columns of a snapshot row; a log reads them only when one entry needs them.
REST_COLUMNS = ("dataset", "manifest", "snapref_version", "properties", "summary")


def log_entry(version: int, branch: str, timestamp: str, author: str, message: str) -> str:
    """The ``log_entry`` column of a snapshot row: its :data:`LOG_ENTRY_FIELDS` as JSON."""
    return ujson.dumps([version, branch, timestamp, author, message])


class RestColumns(Protocol):
    """Where a snapshot of a log finds its :data:`REST_COLUMNS` (read on first need)."""

    def rest(self, snapshot_id: str) -> tuple[Any, ...]: ...


class Snapshot:
    """One immutable version of a dataset, with its provenance.

    Read-only attributes: ``id``, ``dataset``, ``version``, ``manifest`` (digest of
    the manifest list), ``parents`` (ids), ``branch``, ``timestamp`` (UTC datetime),
    ``author``, ``message``, ``snapref_version``, ``properties``, ``summary``.

    Made from a catalog row in two parts: ``shown`` holds the :data:`SHOWN_COLUMNS`
    or, in a log, the :data:`LOG_COLUMNS`, whose packed entry is decoded when a field
    of it is first read; ``rest`` holds the :data:`REST_COLUMNS` or, in a log, a
    :class:`RestColumns` that reads them for every entry of the log at once when the
    first one asks. The JSON fields and the time are also decoded when first read, so
    a log of 10,000 versions costs little more than fetching one text per version.
    Two snapshots are equal when their ids are.
    """

    __slots__ = ("_decoded", "_rest", "_shown")

    def __init__(self, shown: tuple[Any, ...], rest: tuple[Any, ...] | RestColumns) -> None:
        self._shown = shown
        self._rest = rest
        self._decoded: dict[str, Any] | None = None  # made on first use: logs are long

    def _fields(self) -> tuple[Any, ...]:
        shown = self._shown
        if len(shown) == len(LOG_COLUMNS):  # a log's row: unpack its entry once
            shown = self._shown = (shown[0], shown[1], *ujson.loads(shown[2]))
        return shown

    def _rest_columns(self) -> tuple[Any, ...]:
        if not isinstance(self._rest, tuple):
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
    version = property(lambda self: int(self._fields()[2]), doc="1, 2, 3... per dataset.")
    branch = property(lambda self: self._fields()[3], doc="Branch it was committed to.")
    author = property(lambda self: self._fields()[5])
    message = property(lambda self: self._fields()[6])
    dataset = property(lambda self: self._rest_columns()[0], doc="Name of the dataset.")
    manifest = property(lambda self: self._rest_columns()[1], doc="Digest of the manifest list.")
    snapref_version = property(lambda self: self._rest_columns()[2])

    @property
    def parents(self) -> tuple[str, ...]:
        """Ids of the parent snapshots (two for a merge, none for the first)."""
        return tuple(self._json("parents", self._shown[1]))

    @property
    def timestamp(self) -> datetime:
        """When it was committed (UTC)."""
        return datetime.fromisoformat(self._fields()[4])

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
        return Snapshot, (self._fields(), self._rest_columns())

    def to_json(self) -> dict[str, Any]:
        """The fields of ``snapref log --json``."""
        return {
            "version": self.version,
            "id": self.id,
            "dataset": self.dataset,
            "timestamp": self._fields()[4],
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
