"""What the catalog hands out: snapshots, refs, ref-log entries and datasets, as
plain Python objects made from its rows, and the time format it stores."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, overload

import ujson

from snapref.errors import InvalidInputError

__all__ = [
    "LOG_COLUMNS",
    "REST_COLUMNS",
    "SHOWN_COLUMNS",
    "DatasetRecord",
    "Log",
    "RefLogEntry",
    "RefRecord",
    "Snapshot",
    "check_text",
    "first_parent_chain",
    "format_time",
    "iso_now",
    "log_entry",
    "parse_time",
    "printable",
]


def iso_now() -> str:
    """The current UTC time as ISO 8601 text with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    # fromisoformat is ~20x faster than strptime, which matters for a 10,000-version log
    return datetime.fromisoformat(text)


def format_time(when: datetime) -> str:
    """``when`` as the catalog's UTC text, which sorts as time does: the year has four
    digits (strftime's %Y writes 999, after 2026 as text), and a time whose UTC falls
    outside years 1-9999 is written as the first or last instant that has one."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        return "0000-01-01T00:00:00.000000Z" if when.year == 1 else "9999-12-31T23:59:59.999999Z"
    return f"{when.year:04d}-{when:%m-%dT%H:%M:%S.%f}Z"


#: Bidirectional-text controls: shown raw, they reorder what a terminal shows
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, keep: str = "") -> str:
    """``text`` as it may be printed on one line of a terminal: control characters
    (``\\x1b``, ``\\r``, NUL...), line and paragraph separators and bidirectional
    controls are written as escapes (``\\x1b``, ``\\n``, ``\\u2028``), so that
    what someone recorded (a message, an author, a description) can neither move the
    cursor, recolour or clear the terminal, nor break a one-line format. Characters in
    ``keep`` (e.g. a tab) stay as they are; everything else printable, emoji
    sequences included, is unchanged."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in keep or (
            ch not in _BIDI_CONTROLS and unicodedata.category(ch) not in ("Cc", "Cs", "Zl", "Zp")
        ):
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


def check_text(what: str, value: Any) -> None:
    """Refuse recorded text (a message, an author, a description, properties) that is
    not valid Unicode: a lone surrogate, as a shell argument in another encoding
    becomes (``$'\\xff'``), can be neither stored as UTF-8 nor printed. Properties
    must be standard JSON: NaN or a date would print as invalid JSON, or not at all."""
    try:
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, ensure_ascii=False, allow_nan=False)
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"The {what} {value!r} cannot be recorded: {exc}. Give JSON values (text, "
            "finite numbers, true/false/null, lists and objects of them), e.g. a date as "
            "ISO text and NaN as null"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"The {what} {value!r} is not valid Unicode text ({exc}); give it in UTF-8"
        ) from None


#: The columns ``snapref log`` shows, in the order a :class:`Snapshot` keeps them.
SHOWN_COLUMNS = ("id", "parents", "version", "branch", "timestamp", "author", "message")
#: What a log reads of each snapshot: one text, :func:`log_entry` (schema version 4).
LOG_COLUMNS = ("log_entry",)
#: The other columns of a snapshot row; a log reads them only when one entry needs them.
REST_COLUMNS = ("dataset", "manifest", "snapref_version", "properties", "summary")

# Where a Snapshot finds each column in its two tuples, looked up by name once, here:
# a column added to SHOWN_COLUMNS or REST_COLUMNS shifts no other column's reads (a
# log entry decodes to the SHOWN_COLUMNS order too: see log_entry).
_ID, _PARENTS, _VERSION, _BRANCH, _TIMESTAMP, _AUTHOR, _MESSAGE = map(
    SHOWN_COLUMNS.index, ("id", "parents", "version", "branch", "timestamp", "author", "message")
)
_DATASET, _MANIFEST, _SNAPREF_VERSION, _PROPERTIES, _SUMMARY = map(
    REST_COLUMNS.index, ("dataset", "manifest", "snapref_version", "properties", "summary")
)

_NO_PARENT = " " * 32


def log_entry(
    snapshot_id: str,
    parents: list[str],
    version: int,
    branch: str,
    timestamp: str,
    author: str,
    message: str,
) -> str:
    """The ``log_entry`` column of a snapshot row: the :data:`SHOWN_COLUMNS` as one text,
    the form a log reads them in. The snapshot id (32 characters), the first parent's
    id (or 32 spaces), then a JSON array of parents, version, branch, timestamp, author
    and message. The fixed-width start lets a log follow the first-parent chain
    without decoding anything; the rest is decoded when an entry is read."""
    first = parents[0] if parents else _NO_PARENT
    return snapshot_id + first + ujson.dumps([parents, version, branch, timestamp, author, message])


def first_parent_chain(entries: Iterable[tuple[str]], head: str) -> list[str]:
    """The log entries on the first-parent chain from ``head``, from a dataset's
    entries newest first (rows of :data:`LOG_COLUMNS`). A parent always has a smaller
    version than its child (it was committed before), so one pass meets the chain's
    entries in turn. Empty if ``head`` is not among them."""
    chain = []
    want = head
    for (entry,) in entries:
        if entry.startswith(want):
            chain.append(entry)
            want = entry[32:64]
            if want == _NO_PARENT:
                break
    return chain


class RestColumns(Protocol):
    """Where a snapshot of a log finds its :data:`REST_COLUMNS` (read on first need)."""

    def rest(self, snapshot_id: str) -> tuple[Any, ...]: ...


class Snapshot:
    """One immutable version of a dataset, with its provenance.

    Read-only attributes: ``id``, ``dataset``, ``version``, ``manifest`` (digest of
    the manifest list), ``parents`` (ids), ``branch``, ``timestamp`` (UTC datetime),
    ``author``, ``message``, ``snapref_version``, ``properties``, ``summary``.

    Made from a catalog row in two parts: ``shown`` holds the :data:`SHOWN_COLUMNS`
    or, in a log, the row's :func:`log_entry` text, decoded when a field other than
    the id is first read; ``rest`` holds the :data:`REST_COLUMNS` or, in a log, a
    :class:`RestColumns` that reads them for every entry of the log at once when the
    first one asks. The JSON fields and the time are also decoded when first read, so
    a log of 10,000 versions costs little more than fetching one text per version.
    Two snapshots are equal when their ids are.
    """

    __slots__ = ("_decoded", "_rest", "_shown")

    def __init__(self, shown: tuple[Any, ...] | str, rest: tuple[Any, ...] | RestColumns) -> None:
        self._shown = shown  # SHOWN_COLUMNS values, or a log_entry text
        self._rest = rest
        self._decoded: dict[str, Any] | None = None  # made on first use: logs are long

    def _fields(self) -> tuple[Any, ...]:
        shown = self._shown
        if isinstance(shown, str):  # a log entry: decode it once, on first need
            shown = self._shown = (shown[:32], *ujson.loads(shown[64:]))
        return shown

    def _rest_columns(self) -> tuple[Any, ...]:
        if not isinstance(self._rest, tuple):
            self._rest = self._rest.rest(self.id)
        return self._rest

    def _json(self, name: str, text: str) -> Any:
        if self._decoded is None:
            self._decoded = {}
        try:
            return self._decoded[name]
        except KeyError:
            value = self._decoded[name] = ujson.loads(text)
            return value

    @property
    def id(self) -> str:
        """Unique id (32 hex digits)."""
        shown = self._shown
        return shown[:32] if isinstance(shown, str) else shown[_ID]

    version = property(lambda self: int(self._fields()[_VERSION]), doc="1, 2, 3... per dataset.")
    branch = property(lambda self: self._fields()[_BRANCH], doc="Branch it was committed to.")
    author = property(lambda self: self._fields()[_AUTHOR])
    message = property(lambda self: self._fields()[_MESSAGE])
    dataset = property(lambda self: self._rest_columns()[_DATASET], doc="Name of the dataset.")
    manifest = property(
        lambda self: self._rest_columns()[_MANIFEST], doc="Digest of the manifest list."
    )
    snapref_version = property(lambda self: self._rest_columns()[_SNAPREF_VERSION])

    @property
    def parents(self) -> tuple[str, ...]:
        """Ids of the parent snapshots (two for a merge, none for the first)."""
        parents = self._fields()[_PARENTS]  # JSON text from the column, a list from a log entry
        return tuple(self._json("parents", parents) if isinstance(parents, str) else parents)

    @property
    def timestamp(self) -> datetime:
        """When it was committed (UTC)."""
        return datetime.fromisoformat(self._fields()[_TIMESTAMP])

    @property
    def properties(self) -> dict[str, Any]:
        """User properties recorded with the commit."""
        return dict(self._json("properties", self._rest_columns()[_PROPERTIES]))

    @property
    def summary(self) -> dict[str, int]:
        """chunks_added, chunks_modified, chunks_removed, bytes_written, ..."""
        return dict(self._json("summary", self._rest_columns()[_SUMMARY]))

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
            "timestamp": self._fields()[_TIMESTAMP],
            "author": self.author,
            "message": self.message,
            "parents": list(self.parents),
            "branch": self.branch,
            "properties": self.properties,
            "summary": self.summary,
            "snapref_version": self.snapref_version,
            "manifest": self.manifest,
        }


class Log(Sequence[Snapshot]):
    """The versions of a branch, newest first: a read-only sequence of
    :class:`Snapshot`, each made from its log entry when it is read (a log of 10,000
    versions is one list of texts until then). Equal to another log or a list
    holding the same snapshots in the same order."""

    __slots__ = ("_entries", "_rest")

    def __init__(self, entries: list[str], rest: RestColumns) -> None:
        self._entries = entries  # log_entry texts, newest first
        self._rest = rest

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Snapshot: ...
    @overload
    def __getitem__(self, index: slice) -> list[Snapshot]: ...
    def __getitem__(self, index: int | slice) -> Snapshot | list[Snapshot]:
        if isinstance(index, slice):
            return [Snapshot(entry, self._rest) for entry in self._entries[index]]
        return Snapshot(self._entries[index], self._rest)

    def __iter__(self) -> Iterator[Snapshot]:
        rest = self._rest
        for entry in self._entries:
            yield Snapshot(entry, rest)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Log):
            return [e[:32] for e in self._entries] == [e[:32] for e in other._entries]
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (like a list)

    def __add__(self, other: object) -> list[Snapshot]:
        if isinstance(other, (Log, list)):
            return [*self, *other]
        return NotImplemented

    def __radd__(self, other: object) -> list[Snapshot]:
        if isinstance(other, list):
            return [*other, *self]
        return NotImplemented

    def __reduce__(self) -> Any:
        # pickled (and deep-copied) as the list of its snapshots, each with all its
        # fields: the catalog connection behind a log does not travel
        return list, (list(self),)

    def __repr__(self) -> str:
        shown = ", ".join(f"v{s.version}" for s in self[:5])
        more = f", ... ({len(self)} versions)" if len(self) > 5 else ""
        return f"Log([{shown}{more}])"


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
