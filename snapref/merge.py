"""Writing versions from other versions: reset, revert, merge, and the rebase of a
transaction whose branch moved.

A reset only moves a branch; revert and merge combine manifests three-way, key by key
(metadata documents member by member, an array whose definition differs taken whole
from one side); a transaction committed with ``rebase=True`` replays its edits onto a
moved branch with :func:`rebase_changeset`. Every new version is written through
:func:`snapref.transaction.commit_changes`, so the invariants of the core hold. The
manifest comparison and array geometry they use are :mod:`snapref.history`'s.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from snapref.catalog import MAIN_BRANCH, Snapshot
from snapref.errors import InvalidInputError, MergeConflictError
from snapref.history import array_info, changed_entries
from snapref.keys import array_path_of, canonical_json, is_metadata_key, node_path
from snapref.manifest import InlineRef, Manifest, Ref, array_of_section, section_of
from snapref.transaction import ChangeSet, commit_changes

if TYPE_CHECKING:
    from snapref.repository import Repository

__all__ = [
    "MergeResult",
    "merge",
    "merge_base",
    "rebase_changeset",
    "reset",
    "revert",
]

STRATEGIES = ("ours", "theirs")


# -- moving branches ---------------------------------------------------------------------


def reset(
    repo: Repository,
    name: str,
    branch: str,
    to: Snapshot,
    *,
    author: str | None = None,
    message: str | None = None,
) -> Snapshot:
    """Point ``branch`` of ``name`` at version ``to``; returns the old head (nothing
    is recorded if the branch points there already).

    The old head stays readable by id (and in ``snapref audit``); ``as_of`` keeps
    answering from the recorded history.

    Raises
    ------
    VersionNotFoundError, ConflictError
    """
    if to.dataset != name:
        raise InvalidInputError(f"Snapshot {to.id[:12]} is not a version of {name!r}")
    old = repo.head(name, branch)
    if old.id == to.id:
        return old  # already there: the audit log records moves, and this is none
    repo.db.move_branch(
        name, branch, old.id, to.id, author or repo.default_author(), "reset", message
    )
    return old


def revert(
    repo: Repository,
    snap: Snapshot,
    *,
    branch: str = MAIN_BRANCH,
    message: str | None = None,
    author: str | None = None,
) -> Snapshot | None:
    """Commit on ``branch`` a new version that undoes what ``snap`` changed relative
    to its first parent. Returns None if the branch already lacks those changes.

    Raises
    ------
    InvalidInputError
        If ``snap`` is a dataset's first version (it has nothing to go back to).
    MergeConflictError
        If a key ``snap`` changed was changed again later on ``branch``.
    """
    if not snap.parents:
        raise InvalidInputError(
            f"Version {snap.version} of {snap.dataset!r} is its first version; there is "
            "nothing to revert to. Use 'snapref reset' to move a branch instead."
        )
    parent = repo.db.snapshot(snap.parents[0])
    head = repo.head(snap.dataset, branch)
    mh = repo.manifest(head)
    # a three-way merge from ``snap`` of its parent's state into the head: what snap
    # changed goes back, unless the branch changed it again since
    changes, conflicts = three_way(repo.manifest(snap), mh, repo.manifest(parent))
    if conflicts:
        raise MergeConflictError(
            f"Cannot revert {snap.dataset} version {snap.version}: {len(conflicts)} keys it "
            f"changed were changed again on {branch!r} since: {', '.join(conflicts[:10])}. "
            "Revert those later versions first ('snapref blame' shows which), or restore "
            "the values you want in a new commit.",
            conflicts,
        )
    return commit_changes(
        repo,
        snap.dataset,
        branch,
        head,
        mh,
        ChangeSet(changes),
        message=message or f"Revert version {snap.version}: {snap.message}",
        author=author,
        properties={"reverts": snap.id},
        action="revert",
    )


# -- merge ---------------------------------------------------------------------------------


def merge_base(repo: Repository, a: Snapshot, b: Snapshot) -> Snapshot | None:
    """The newest common ancestor of ``a`` and ``b`` (None: no shared history)."""
    common = repo.db.ancestor_ids(a.id) & repo.db.ancestor_ids(b.id)
    if not common:
        return None
    nodes = repo.db.graph(a.dataset)
    return repo.db.snapshot(max(common, key=lambda s: nodes[s][0]))


def three_way(
    base: Manifest, ours: Manifest, theirs: Manifest, strategy: str | None = None
) -> tuple[dict[str, Ref | None], list[str]]:
    """The changes that bring ``theirs``' edits (since ``base``) onto ``ours``, and the
    keys both sides changed differently (resolved by ``strategy`` if given).

    Keys conflict one by one, except in an array whose definition (dtype, chunk grid,
    codecs, fill value; not its shape or attributes) the two sides left different
    while both changed something in it: chunk bytes are encoded by their array's
    definition, so such an array is taken whole from one side (``strategy``), never
    mixed.
    """
    mine = changed_entries(base, ours)
    other = changed_entries(base, theirs)
    arrays = base.arrays | ours.arrays | theirs.arrays
    redefined = _redefined_arrays(mine, other, arrays)
    changes: dict[str, Ref | None] = {}
    conflicts = []
    for key, (before, after) in other.items():
        if _array_of(key, arrays) in redefined:
            continue
        if key in mine:
            if mine[key][1] == after:
                continue
            document = merged_document(key, before, mine[key][1], after)
            if document is not None:
                changes[key] = document
                continue
            conflicts.append(key)
            if strategy == "theirs":
                changes[key] = after
            continue
        changes[key] = after
    for keys in redefined.values():
        conflicts.extend(keys)
        if strategy == "theirs":  # the array as theirs has it: their changes, our undone
            changes.update({k: other[k][1] if k in other else theirs.get(k) for k in keys})

    def merged(key: str) -> Ref | None:
        return changes[key] if key in changes else ours.get(key)

    cut = _cut_off(merged, ((mine, ours.get), (other, theirs.get)), arrays)
    conflicts.extend(k for k in cut if k not in conflicts)
    if strategy is not None:  # outside the array either way: dropped, as zarr's resize does
        for key in cut:
            if ours.get(key) is not None:
                changes[key] = None
            else:
                changes.pop(key, None)
    return changes, sorted(conflicts)


def merged_document(
    key: str, base: Ref | None, mine: Ref | None, theirs: Ref | None
) -> InlineRef | None:
    """The metadata document at ``key`` with both sides' edits since ``base``, member
    by member, or None if they changed one member differently (or a side is no JSON
    object). A zarr v3 array keeps its shape and its attributes in one ``zarr.json``:
    one side's append and the other's new attribute merge, as they do in v2, where
    they are two documents (``.zarray``, ``.zattrs``)."""
    if not is_metadata_key(key):
        return None
    docs = [_json_object(ref) for ref in (base, mine, theirs)]
    if docs[0] is None or docs[1] is None or docs[2] is None:
        return None
    merged = _merged_members(docs[0], docs[1], docs[2])
    return None if merged is None else InlineRef(json.dumps(merged, indent=2).encode())


def _json_object(ref: Ref | None) -> dict[str, Any] | None:
    if not isinstance(ref, InlineRef):
        return None
    try:
        doc = json.loads(ref.data)  # json, not ujson: floats (fill values) come back exact
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


_ABSENT = object()


def _merged_members(
    base: dict[str, Any], mine: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for name in {**base, **mine, **theirs}:  # every member, in a stable order
        b, m, t = (d.get(name, _ABSENT) for d in (base, mine, theirs))
        if _same_value(m, t) or _same_value(t, b):
            value = m
        elif _same_value(m, b):
            value = t
        elif isinstance(b, dict) and isinstance(m, dict) and isinstance(t, dict):
            value = _merged_members(b, m, t)  # e.g. attributes: each side set others
            if value is None:
                return None
        else:
            return None
        if value is not _ABSENT:
            out[name] = value
    return out


def _same_value(a: Any, b: Any) -> bool:
    """Equal JSON values (NaN, which JSON documents may hold, equals itself here)."""
    if a == b:
        return True
    if a is _ABSENT or b is _ABSENT:
        return False
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _cut_off(
    result: Callable[[str], Ref | None],
    sides: Iterable[
        tuple[Mapping[str, tuple[Ref | None, Ref | None]], Callable[[str], Ref | None]]
    ],
    arrays: frozenset[str],
) -> list[str]:
    """Chunks that one side wrote inside its array and that the combined ``result``
    leaves outside it, because the other side cut the array shorter: kept, such a
    chunk would come back as data when the array grows again."""
    final = functools.cache(lambda array: array_info(result, array))
    out = []
    for changes, get in sides:
        before = functools.cache(lambda array, get=get: array_info(get, array))
        for key, (_, after) in changes.items():
            array = None if after is None or is_metadata_key(key) else _array_of(key, arrays)
            if array is None or (info := final(array)) is None or (own := before(array)) is None:
                continue
            coords = info.coords(key)
            if coords is not None and not info.holds(coords) and own.holds(coords):
                out.append(key)
    return out


def _array_of(key: str, arrays: frozenset[str]) -> str | None:
    """The array ``key`` belongs to (a chunk or a metadata document of it), if any."""
    if is_metadata_key(key):
        path = node_path(key)
        return path if path in arrays else None
    return array_of_section(section_of(key, arrays))


#: fields of an array's metadata that do not change how its chunks are encoded: a
#: resize (an append) or new attributes leave every written chunk valid
_NOT_DEFINITION = ("shape", "attributes", "dimension_names")


def _definition(ref: Ref | None) -> Any:
    """What decides how an array's chunks are encoded, from its metadata document
    (dtype, chunk grid, codecs, fill value...); None: no array."""
    if not isinstance(ref, InlineRef):
        return None if ref is None else ref
    canonical = canonical_json(ref.data, leave_out=_NOT_DEFINITION)
    return ref.data if canonical is None else canonical


def _array_document(key: str, ref: Ref | None) -> str | None:
    """The array whose metadata document ``ref`` at ``key`` is, if it is one."""
    return array_path_of(key, ref.data) if isinstance(ref, InlineRef) else None


def _redefined_arrays(
    mine: Mapping[str, tuple[Ref | None, Ref | None]],
    other: Mapping[str, tuple[Ref | None, Ref | None]],
    arrays: frozenset[str],
) -> dict[str, list[str]]:
    """``{array: keys of it either side changed}`` for each array whose definition
    differs between the sides' results while both sides changed something in it."""
    definitions: dict[str, list[Any]] = {}  # array -> [definition after mine, after other]
    for side, changes in enumerate((mine, other)):
        for key, (before, after) in changes.items():
            path = _array_document(key, before) or _array_document(key, after)
            if path is None:
                continue
            pair = definitions.setdefault(path, [_definition(before)] * 2)
            pair[side] = _definition(after)
    differing = {a for a, (x, y) in definitions.items() if x != y}
    if not differing:
        return {}
    touched: dict[str, tuple[set[str], set[str]]] = {}
    for side, changes in enumerate((mine, other)):
        for key in changes:
            array = _array_of(key, arrays | differing)
            if array in differing:
                touched.setdefault(array, (set(), set()))[side].add(key)
    return {a: sorted(m | o) for a, (m, o) in touched.items() if m and o}


@dataclass(frozen=True)
class MergeResult:
    """The merge commit (None: nothing to merge) and the keys that conflicted."""

    snapshot: Snapshot | None
    base: Snapshot | None
    conflicts: list[str]
    strategy: str | None


def merge(
    repo: Repository,
    name: str,
    source: str,
    *,
    into: str = MAIN_BRANCH,
    message: str | None = None,
    strategy: str | None = None,
    author: str | None = None,
) -> MergeResult:
    """Merge branch ``source`` of ``name`` into branch ``into``: three-way, per chunk,
    from the newest common ancestor; the result has two parents.

    Raises
    ------
    MergeConflictError
        If both sides changed a key differently and no ``strategy`` (``"ours"`` or
        ``"theirs"``) is given; ``.keys`` lists them. Nothing is committed.
    ConflictError
        If ``into`` moved while merging.
    """
    if strategy not in (None, *STRATEGIES):
        raise InvalidInputError(f"Unknown strategy {strategy!r}: use 'ours' or 'theirs'")
    ours = repo.head(name, into)
    theirs = repo.resolve(name, source)
    base = merge_base(repo, ours, theirs)
    if base is not None and base.id == theirs.id:
        return MergeResult(None, base, [], strategy)
    m_ours = repo.manifest(ours)
    m_base = repo.manifest(base) if base is not None else Manifest.empty(repo.warehouse)
    changes, conflicts = three_way(m_base, m_ours, repo.manifest(theirs), strategy)
    if conflicts and strategy is None:
        raise MergeConflictError(
            f"Merging {source!r} into {into!r} of {name!r}: {len(conflicts)} keys were "
            f"changed on both sides since version {base.version if base else '-'}: "
            f"{', '.join(conflicts[:10])}{' ...' if len(conflicts) > 10 else ''}. "
            "Choose with --strategy ours|theirs, or edit one side first.",
            conflicts,
        )
    snap = commit_changes(
        repo,
        name,
        into,
        ours,
        m_ours,
        ChangeSet(changes),
        message=message or f"Merge {source} into {into}",
        author=author,
        properties={"merged": theirs.id, **({"strategy": strategy} if conflicts else {})},
        merged_parents=[theirs.id],
        action="merge",
    )
    return MergeResult(snap, base, conflicts, strategy)


def rebase_changeset(
    repo: Repository, dataset: str, branch: str, parent: Snapshot, changeset: ChangeSet
) -> tuple[Snapshot, Manifest, ChangeSet]:
    """For a transaction whose branch moved: the new head to commit onto and the edits
    to commit there, if the edits (``changeset``, relative to ``parent``) touch no key
    the branch changed since, or only metadata documents whose members merge
    (:func:`merged_document`).

    Raises
    ------
    MergeConflictError
        If some key was changed both by the transaction and on the branch.
    """
    head = repo.head(dataset, branch)
    m_parent, m_head = repo.manifest(parent), repo.manifest(head)
    theirs = changed_entries(m_parent, m_head)
    documents = {
        k: doc
        for k, ref in changeset.changes.items()
        if k in theirs
        and theirs[k][1] != ref
        and (doc := merged_document(k, theirs[k][0], ref, theirs[k][1])) is not None
    }
    edits = changeset.changes  # as the transaction made them: its own geometry
    if documents:  # both sides edited these documents, in different members
        changeset = replace(changeset, changes={**edits, **documents})
    mine = {
        k: (m_parent.get(k) if is_metadata_key(k) else None, ref)
        for k, ref in changeset.changes.items()
    }
    arrays = m_parent.arrays | m_head.arrays | _arrays_defined(changeset.changes)
    redefined = _redefined_arrays(mine, theirs, arrays)

    def rebased(key: str) -> Ref | None:
        return changeset.changes[key] if key in changeset.changes else m_head.get(key)

    def own(key: str) -> Ref | None:
        return edits[key] if key in edits else m_parent.get(key)

    written = {k: (None, ref) for k, ref in changeset.changes.items()}
    cut = _cut_off(rebased, ((written, own), (theirs, m_head.get)), arrays)
    overlap = sorted(
        {
            k
            for k, ref in changeset.changes.items()
            if k in theirs and theirs[k][1] != ref and k not in documents
        }
        | {k for keys in redefined.values() for k in keys}
        | set(cut)
    )
    if overlap:
        arrays_note = (
            f" (arrays {', '.join(sorted(redefined))} have another definition there than "
            "in your edit, and chunks written under one cannot join the other)"
            if redefined
            else ""
        )
        if cut:
            arrays_note += (
                f" ({', '.join(cut[:3])}{' ...' if len(cut) > 3 else ''} would lie outside "
                "an array that one side cut shorter)"
            )
        raise MergeConflictError(
            f"Branch {branch!r} of {dataset!r} moved while you worked, and its changes "
            f"conflict with yours in {len(overlap)} keys: {', '.join(overlap[:10])}"
            f"{' ...' if len(overlap) > 10 else ''}{arrays_note}. Nothing was committed; "
            "start again from the new head.",
            overlap,
        )
    return head, m_head, changeset


def _arrays_defined(changes: Mapping[str, Ref | None]) -> frozenset[str]:
    """Arrays that ``changes`` create or redefine (their new metadata documents)."""
    return frozenset(
        path for k, ref in changes.items() if (path := _array_document(k, ref)) is not None
    )
