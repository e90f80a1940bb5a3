"""Commits: staged changes -> objects -> manifest shards -> compare-and-swap.

Every way of making a version (a zarr/xarray transaction, a committed reference file,
an import) ends in :func:`commit_changes`, which writes in this order:

1. new chunk objects (content-addressed; existing ones are skipped),
2. the manifest shards that hold changed keys, and the manifest list,
3. one catalog transaction: snapshot row, changed keys, branch head moved only if it
   still points at the parent (invariant 2).

A crash before step 3 leaves the old version visible and only unreachable files
behind; a crash during it is rolled back by the database.
"""

from __future__ import annotations

import functools
import posixpath
import random
import time
import types
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapref.catalog import MAIN_BRANCH, Snapshot
from snapref.catalog.records import check_text
from snapref.errors import (
    ConflictError,
    DisallowedSourceError,
    InvalidInputError,
    TransactionClosedError,
)
from snapref.fs import SnapshotFileSystem, StagedReferences
from snapref.keys import check_metadata, is_metadata_key, same_document, without_consolidated
from snapref.manifest import (
    InlineRef,
    Manifest,
    ManifestWriter,
    ObjectRef,
    Ref,
    ShardInfo,
    VirtualRef,
)
from snapref.objects import content_hash
from snapref.refs import allowed_prefix

if TYPE_CHECKING:
    from snapref.manifest import WriteResult
    from snapref.objects import PutResult
    from snapref.repository import Repository
    from snapref.store import SnapshotStore

__all__ = ["ChangeSet", "Transaction", "commit_changes"]


@dataclass
class ChangeSet:
    """What a new version changes relative to its parent.

    ``changes`` maps keys to their new reference (``None`` deletes the key);
    ``objects`` holds the bytes of new chunk objects by digest.
    """

    changes: dict[str, Ref | None] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    #: objects (count, bytes) already stored while staging, for the summary
    staged_written: tuple[int, int] = (0, 0)
    #: array sections written in bulk by SectionWriters (new arrays only), and the
    #: (shards, bytes) those wrote
    sections: dict[str, list[ShardInfo]] = field(default_factory=dict)
    sections_written: tuple[int, int] = (0, 0)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Stage ``data`` at ``key``: inline for zarr metadata, an object otherwise."""
        if is_metadata_key(key):
            self.changes[key] = InlineRef(data)
        else:
            digest = content_hash(data)
            self.objects[digest] = data
            self.changes[key] = ObjectRef(digest, len(data))

    def delete(self, key: str) -> None:
        self.changes[key] = None

    def without_noops(self, base: Manifest) -> ChangeSet:
        """The changes that really differ from ``base`` (and only their objects); a
        metadata document rewritten with the same JSON value is no change, and zarr's
        consolidated metadata is not recorded (:func:`~snapref.keys.without_consolidated`)."""
        changes = _without_consolidated(self.changes)
        real: dict[str, Ref | None]
        if base.is_empty:
            real = {k: r for k, r in changes.items() if r is not None}
        else:
            real = {k: r for k, r in changes.items() if not _same(k, base.get(k), r)}
            if any(is_metadata_key(k) for k in real):
                real.update(_stale_consolidated(base, real))
        needed = {r.digest for r in real.values() if isinstance(r, ObjectRef)}
        return ChangeSet(
            real,
            {d: b for d, b in self.objects.items() if d in needed},
            self.staged_written,
            self.sections,
            self.sections_written,
        )

    def virtual_refs(self) -> Iterable[tuple[str, VirtualRef]]:
        return ((k, r) for k, r in self.changes.items() if isinstance(r, VirtualRef))


def check_message(dataset: str, message: str) -> None:
    if not isinstance(message, str) or not message.strip():
        raise InvalidInputError(
            f"A version of {dataset!r} needs a message saying why it was made "
            f"(-m TEXT, message= in Python), not {message!r}"
        )
    check_text("message", message)


def check_provenance(
    dataset: str,
    message: str,
    author: str | None = None,
    properties: Mapping[str, Any] | None = None,
    description: str = "",
) -> None:
    """Refuse what a version could not record: run before any work, so that a mistake
    here costs no staged edits."""
    check_message(dataset, message)
    for what, text in (("author", author), ("description", description)):
        if text is not None and not isinstance(text, str):
            raise InvalidInputError(f"The {what} must be text, not {text!r}")
    if properties is not None and not isinstance(properties, Mapping):
        raise InvalidInputError(
            f"Properties must be a mapping of names to JSON values, not {properties!r}"
        )
    if properties and not all(isinstance(k, str) for k in properties):
        raise InvalidInputError(
            f"Property names must be text, not {[k for k in properties if not isinstance(k, str)]!r}"
        )
    recorded: tuple[tuple[str, Any], ...] = (
        ("author", author),
        ("properties", properties),
        ("description", description),
    )
    for what, value in recorded:
        if value:
            check_text(what, value)


#: the longest dataset, branch or tag name, in UTF-8 bytes: a file name's limit, and
#: the width of the catalog's name columns
MAX_NAME_BYTES = 255


def check_name(name: str, what: str = "ref") -> None:
    if not isinstance(name, str):
        raise InvalidInputError(f"A {what} name must be text, not {name!r}")
    # URLs (snapref://NAME@REF), shells and Intake's templates ({{ }}) all take these
    bad = (
        not name
        or name.isdigit()
        or name.startswith((".", "-"))
        or not all(c.isalnum() or c in "-_." for c in name)
    )
    if bad:
        raise InvalidInputError(
            f"Invalid {what} name {name!r}: use letters, digits, '-', '_' and '.' ('.' "
            "and '-' not first), and not only digits (those are version numbers)"
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInputError(
            f"Invalid {what} name {name[:40]!r}...: {len(name)} characters; a name has at "
            f"most {MAX_NAME_BYTES} bytes in UTF-8 (it names folders of checkouts and "
            "catalogues, and the catalog's columns hold that much)"
        )
    if not unicodedata.is_normalized("NFKC", name):
        # names are compared exactly: two spellings that look alike would be two datasets
        raise InvalidInputError(
            f"Invalid {what} name {name!r}: it has characters with a simpler standard "
            f"form (Unicode NFKC); use {unicodedata.normalize('NFKC', name)!r}"
        )


def check_new_dataset(dataset: str, branch: str) -> None:
    """Every new dataset passes here (import, ingest, a first commit) before anything
    is written: a usable name, and ``main`` as its first branch, which listings and
    every 'latest version' read."""
    check_name(dataset, what="dataset")
    if branch != MAIN_BRANCH:
        raise InvalidInputError(
            f"Dataset {dataset!r} does not exist yet, and a new dataset starts on branch "
            f"{MAIN_BRANCH!r}, not {branch!r}. Create it without a branch, then "
            f"'snapref branch {dataset} {branch}' and work there."
        )


def _without_consolidated(changes: dict[str, Ref | None]) -> dict[str, Ref | None]:
    """``changes`` less zarr's consolidated metadata (:func:`keys.without_consolidated`;
    a deletion of a ``.zmetadata`` key stays)."""
    dropped: list[str] = []
    replaced: dict[str, Ref] = {}
    for key, ref in changes.items():
        if not is_metadata_key(key):
            continue
        if isinstance(ref, InlineRef):
            data = without_consolidated(key, ref.data)
            if data is None:
                dropped.append(key)
            elif data is not ref.data:
                replaced[key] = InlineRef(data)
        elif ref is not None and posixpath.basename(key) == ".zmetadata":
            dropped.append(key)
    if not (dropped or replaced):
        return changes
    out = {k: replaced.get(k, r) for k, r in changes.items()}
    for key in dropped:
        del out[key]
    return out


def _stale_consolidated(base: Manifest, changes: Mapping[str, Ref | None]) -> dict[str, Ref | None]:
    """The removal of consolidated metadata that a version recorded before snapref left
    it out, and that ``changes`` (to metadata) would leave stale for plain kerchunk
    readers: ``.zmetadata`` keys deleted, group ``zarr.json`` documents stripped."""
    out: dict[str, Ref | None] = {}
    for key in base.meta_keys():
        if key in changes or posixpath.basename(key) not in (".zmetadata", "zarr.json"):
            continue
        before = base.get(key)
        if isinstance(before, InlineRef):
            data = without_consolidated(key, before.data)
            if data is not before.data:
                out[key] = None if data is None else InlineRef(data)
    return out


def _same(key: str, before: Ref | None, after: Ref | None) -> bool:
    if before == after:
        return True
    return (
        is_metadata_key(key)
        and isinstance(before, InlineRef)
        and isinstance(after, InlineRef)
        and same_document(before.data, after.data)
    )


def commit_changes(
    repo: Repository,
    dataset: str,
    branch: str,
    parent: Snapshot | None,
    base: Manifest,
    changeset: ChangeSet,
    *,
    message: str,
    author: str | None = None,
    properties: Mapping[str, Any] | None = None,
    allow_sources: Iterable[str] = (),
    new_sources: Iterable[str] = (),
    description: str = "",
    merged_parents: Sequence[str] = (),
    action: str = "commit",
    noop_on_branch: bool = False,
) -> Snapshot | None:
    """Write ``changeset`` as a new version of ``dataset`` on ``branch``.

    ``parent`` None creates the dataset. Returns the new snapshot, or None when the
    changes turn out to change nothing. ``merged_parents`` are further parents (a
    merge commit, recorded even when it changes no key: it says the other branch's
    history is merged); ``action`` is what the ref log records. With
    ``noop_on_branch`` (a committed reference file), changes that turn out to be none
    still need ``branch`` to hold ``parent``: the file's state is not on a branch that
    points elsewhere, and saying "nothing changed" would leave it there unsaid.

    The steps are those of docs/layout.md's commit protocol; every file is written
    before the catalog transaction that makes it reachable.

    Raises
    ------
    DisallowedSourceError
        If a virtual reference points outside the allowed sources.
    ConflictError
        If ``branch`` moved away from ``parent`` meanwhile; nothing is recorded.
    """
    check_provenance(dataset, message, author, properties, description)
    changeset = changeset.without_noops(base)
    if parent is not None and not (changeset.changes or changeset.sections or merged_parents):
        _check_nothing_to_record(repo, dataset, branch, parent, noop_on_branch)
        return None
    _check_metadata(changeset)
    sources = _check_sources(repo, dataset, parent, changeset, allow_sources, new_sources)
    objects_put = repo.objects.put_many(changeset.objects)
    # the shards that hold changed keys, then the manifest list
    manifest_written = ManifestWriter(base).write(changeset.changes, changeset.sections)
    ops, summary = _summarize(base, changeset, objects_put, manifest_written)
    row = _snapshot_row(
        repo,
        branch,
        parent,
        merged_parents,
        manifest_written,
        summary,
        message=message,
        author=author,
        properties=properties,
    )
    return _record(
        repo, dataset, branch, parent, row, ops, sources, action=action, description=description
    )


def _check_nothing_to_record(
    repo: Repository, dataset: str, branch: str, parent: Snapshot, noop_on_branch: bool
) -> None:
    """Nothing to record: fine if ``branch`` exists and (``noop_on_branch``) holds ``parent``."""
    # a branch, not a tag; for a reference file, one that holds the version the
    # changes start from (its head or behind it)
    head = repo.head(dataset, branch)
    if noop_on_branch and head.id != parent.id and parent.id not in repo.db.ancestor_ids(head.id):
        raise ConflictError(
            f"Branch {branch!r} of dataset {dataset!r} does not hold version "
            f"{parent.version} ({parent.id[:12]}), where these changes start: it "
            f"points at version {head.version}. Nothing was committed. Commit to the "
            "branch the changes came from, or start a new branch from that version."
        )


def _check_metadata(changeset: ChangeSet) -> None:
    """Refuse a metadata document zarr cannot open: such a version is never recorded."""
    for key, ref in changeset.changes.items():
        if type(ref) is InlineRef and is_metadata_key(key):
            check_metadata(key, ref.data)


def _check_sources(
    repo: Repository,
    dataset: str,
    parent: Snapshot | None,
    changeset: ChangeSet,
    allow_sources: Iterable[str],
    new_sources: Iterable[str],
) -> list[str]:
    """Refuse virtual references outside the allowed sources; return the sources to record."""
    new = list(new_sources)
    allowed = [allowed_prefix(p) for p in allow_sources]
    sources = [*allowed, *new]
    policy = repo._policy(dataset if parent is not None else None, sources)
    checked: set[str] = set()  # a kerchunk import points its 10^6 chunks into a few files
    for key, ref in changeset.virtual_refs():
        if ref.url not in checked:
            policy.check(key, ref.url)
            checked.add(ref.url)
    return sources


def _summarize(
    base: Manifest, changeset: ChangeSet, objects_put: PutResult, manifest_written: WriteResult
) -> tuple[dict[str, str], dict[str, int]]:
    """The change rows (key -> A, M or D) and the snapshot's summary of changes and writes."""
    ops, summary = _count_changes(base, changeset.changes)
    summary["chunks_added"] += sum(s.count for infos in changeset.sections.values() for s in infos)
    staged_objects, staged_bytes = changeset.staged_written
    bulk_shards, bulk_bytes = changeset.sections_written
    summary["bytes_written"] = (
        objects_put.bytes_written + manifest_written.bytes_written + staged_bytes + bulk_bytes
    )
    summary["objects_written"] = objects_put.written + staged_objects
    summary["shards_written"] = manifest_written.shards_written + bulk_shards
    return ops, summary


def _count_changes(
    base: Manifest, changes: Mapping[str, Ref | None]
) -> tuple[dict[str, str], dict[str, int]]:
    """Each changed key's op against ``base``, and the counts of chunk and metadata changes."""
    ops: dict[str, str] = {}
    counts = {"chunks_added": 0, "chunks_modified": 0, "chunks_removed": 0, "metadata_changed": 0}
    if base.is_empty:  # nothing to look up (an import: 10^6 keys)
        ops = {key: "A" for key, ref in changes.items() if ref is not None}
        meta = sum(1 for key in ops if is_metadata_key(key))
        counts["metadata_changed"] = meta
        counts["chunks_added"] = len(ops) - meta
        return ops, counts
    for key, ref in changes.items():
        op = "D" if ref is None else ("A" if base.get(key) is None else "M")
        ops[key] = op
        if is_metadata_key(key):
            counts["metadata_changed"] += 1
        else:
            counts[{"A": "chunks_added", "M": "chunks_modified", "D": "chunks_removed"}[op]] += 1
    return ops, counts


def _snapshot_row(
    repo: Repository,
    branch: str,
    parent: Snapshot | None,
    merged_parents: Sequence[str],
    manifest_written: WriteResult,
    summary: dict[str, int],
    *,
    message: str,
    author: str | None,
    properties: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The new version's snapshot row, as the catalog records it."""
    from snapref import __version__

    return {
        "manifest": manifest_written.manifest.digest or "",
        "parents": [parent.id, *merged_parents] if parent else [],
        "branch": branch,
        "author": author or repo.default_author(),
        "message": message,
        "snapref_version": __version__,
        "properties": dict(properties or {}),
        "summary": summary,
    }


def _record(
    repo: Repository,
    dataset: str,
    branch: str,
    parent: Snapshot | None,
    row: dict[str, Any],
    ops: dict[str, str],
    sources: list[str],
    *,
    action: str,
    description: str,
) -> Snapshot:
    """The one catalog transaction: create the dataset, or compare-and-swap ``branch``'s head."""
    if parent is None:
        check_new_dataset(dataset, branch)
        # a dataset's first version added every key of its manifest: no rows needed
        # (Repository.changes derives them), which keeps big imports fast
        return repo.db.create_dataset(dataset, row, {}, sources=sources, description=description)
    return repo.db.commit(dataset, branch, parent.id, row, ops, sources=sources, action=action)


#: How long ``commit`` with ``rebase=True`` keeps replaying onto a branch that other
#: writers keep moving, in seconds.
REBASE_TIMEOUT = 60.0


class Transaction:
    """Staged edits of one dataset on one branch, committed atomically.

    Use it as a context manager: leaving the block commits, an exception discards.

    Attributes
    ----------
    fs : SnapshotFileSystem
        Writable reference filesystem (synchronous fsspec API).
    store : SnapshotStore
        zarr 3 store over the same staged state, for zarr and xarray (made on first
        use).
    parent : Snapshot
        The version the edits start from.
    snapshot : Snapshot | None
        The committed version, once committed (None if nothing changed).
    """

    def __init__(
        self,
        repo: Repository,
        dataset: str,
        *,
        message: str,
        branch: str = "main",
        author: str | None = None,
        properties: Mapping[str, Any] | None = None,
        allow_sources: Iterable[str] = (),
        rebase: bool = False,
    ) -> None:
        self.repo = repo
        #: On commit, replay the edits onto a branch that moved, if they do not overlap.
        self.rebase = rebase
        self.dataset = dataset
        self.branch = branch
        check_provenance(dataset, message, author, properties)  # now, not after the work
        self.message = message
        self.author = author
        self.properties = dict(properties or {})
        self.allow_sources = [allowed_prefix(p) for p in allow_sources]
        self.parent = repo.head(dataset, branch)
        self.base = repo.manifest(self.parent)
        self.staged = StagedReferences(self.base)
        self.fs: SnapshotFileSystem = repo._filesystem(
            self.staged, dataset, asynchronous=False, extra_sources=self.allow_sources
        )
        self._afs = repo._filesystem(
            self.staged, dataset, asynchronous=True, extra_sources=self.allow_sources
        )
        self.snapshot: Snapshot | None = None
        self._closed = False

    @functools.cached_property
    def store(self) -> SnapshotStore:
        """zarr 3 store over the staged state (made on first use: it imports zarr, which
        a transaction written through :attr:`fs` alone does without)."""
        from snapref.store import SnapshotStore

        return SnapshotStore(self._afs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.staged.staged)} staged keys"
        return f"<Transaction {self.dataset}@{self.branch} from v{self.parent.version}, {state}>"

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def _check_open(self) -> None:
        if self._closed:
            raise TransactionClosedError(
                f"The transaction on {self.dataset}@{self.branch} is closed already; "
                "open a new one with repo.transaction(...)"
            )

    def changeset(self) -> ChangeSet:
        """The staged edits as a :class:`ChangeSet`."""
        cs = ChangeSet()
        for key, data in self.staged.staged.items():
            if data is None:
                cs.delete(key)
            elif isinstance(data, ObjectRef | VirtualRef):
                cs.changes[key] = data  # stored while staging, or copied from a key
            else:
                cs.put_bytes(key, data)
        cs.staged_written = (self.staged.objects_written, self.staged.bytes_written)
        return cs

    def commit(self) -> Snapshot | None:
        """Record the staged edits as a new version; returns it (None: nothing changed).

        Raises
        ------
        ConflictError
            If the branch moved since the transaction started (with ``rebase=True``: and
            changed a key this transaction changed too — a
            :class:`~snapref.errors.MergeConflictError` naming the keys). Nothing is
            recorded and the transaction is closed.
        InvalidInputError, DisallowedSourceError
            If a staged value cannot be recorded (a metadata document that is not
            JSON, a reference outside the allowed sources, ...). Nothing is recorded,
            and the transaction stays open: fix the value and commit again.
        RepositoryClosedError
            If its repository was closed meanwhile. Nothing is recorded, and the
            transaction is closed.
        """
        self._check_open()
        self._close()
        try:
            return self._commit()
        except (InvalidInputError, DisallowedSourceError):
            self._reopen()
            raise

    def _commit(self) -> Snapshot | None:
        changeset = self.changeset()
        parent, base = self.parent, self.base
        # with rebase=True, a writer that keeps losing the race to others backs off
        # (random, growing waits) and tries again until REBASE_TIMEOUT has passed
        started, wait = time.monotonic(), 0.005
        while True:
            try:
                self.snapshot = commit_changes(
                    self.repo,
                    self.dataset,
                    self.branch,
                    parent,
                    base,
                    changeset,
                    message=self.message,
                    author=self.author,
                    properties=self.properties,
                    allow_sources=self.allow_sources,
                )
                return self.snapshot
            except ConflictError as exc:
                if not self.rebase:
                    raise
                if time.monotonic() - started > REBASE_TIMEOUT:
                    raise ConflictError(
                        f"{exc} (Gave up replaying the changes onto the moving branch "
                        f"after {REBASE_TIMEOUT:.0f} s.)"
                    ) from exc
            time.sleep(random.uniform(0, wait))
            wait = min(2 * wait, 1.0)
            # the branch moved: replay the edits onto its new head if they do not overlap
            from snapref.merge import rebase_changeset

            changeset = changeset.without_noops(base)
            parent, base, changeset = rebase_changeset(
                self.repo, self.dataset, self.branch, parent, changeset
            )

    def discard(self) -> None:
        """Drop every staged edit; nothing is recorded. (Chunks staged so far were
        stored as objects; nothing reaches them, as after a crash.)"""
        self._check_open()
        self._close()
        self.staged.discard_all()

    def _reopen(self) -> None:
        """Take writes again after a commit refused the staged state."""
        self._closed = False
        self.fs.close_for_writes(None)
        self._afs.close_for_writes(None)

    def _close(self) -> None:
        self._closed = True
        # later writes through tx.store or tx.fs would be lost: refuse them
        message = (
            f"The transaction on {self.dataset}@{self.branch} is closed; open a new one "
            "with repo.transaction(...) to make more changes"
        )
        self.fs.close_for_writes(message)
        self._afs.close_for_writes(message)
