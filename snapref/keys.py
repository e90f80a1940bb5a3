"""Rules for the keys of a dataset: which are safe, which are metadata, which are chunks.

A key is a ``/``-separated path relative to the dataset root, as zarr and kerchunk use
them: ``.zgroup``, ``temp/.zarray``, ``temp/3.4``, ``temp/zarr.json``, ``temp/c/3/4``.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Collection
from typing import Any

import ujson

from snapref.errors import InvalidKeyError, InvalidReferenceError

__all__ = [
    "METADATA_NAMES",
    "array_path_of",
    "check_metadata",
    "chunk_coords",
    "chunk_index",
    "file_and_folder",
    "is_metadata_key",
    "node_path",
    "validate_key",
    "without_consolidated",
]

#: File names that hold zarr metadata (v2 and v3). They are small JSON documents kept
#: inline in the manifest; everything else under an array is a chunk.
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})


_CHUNK_INDEX = re.compile(r"[0-9]+(?:[./][0-9]+)*", re.ASCII)
#: keys that need no closer look (validate_key): components that are not empty and do
#: not start with '.', but the last, which is not '.' or '..'
_PLAIN_KEY = re.compile(
    r"(?:[^/.\\\x00][^/\\\x00]*/)*(?:[^/.\\\x00][^/\\\x00]*|\.[^/.\\\x00][^/\\\x00]*)"
)


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe dataset-relative key, else raise.

    Raises
    ------
    InvalidKeyError
        If the key is empty, absolute, contains a backslash or NUL, has empty
        components (``a//b``) or ``.``/``..`` components that could escape the dataset,
        or goes below a metadata document (``a/.zarray/b``).
    """
    if type(key) is str and _PLAIN_KEY.fullmatch(key) and "zarr.json/" not in key:
        return key  # the common case, in one scan: no component is empty or starts
        # with '.' but the last (so none is '.', '..' or .zarray), no backslash or NUL
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"Invalid key {key!r}: keys must be non-empty strings")
    if key.startswith("/"):
        raise InvalidKeyError(
            f"Invalid key {key!r}: keys are relative to the dataset root; remove the leading '/'"
        )
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"Invalid key {key!r}: backslashes and NUL are not allowed")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(
                f"Invalid key {key!r}: empty, '.' and '..' path components are not "
                "allowed (a key may not escape its dataset)"
            )
    for part in parts[:-1]:
        if part in METADATA_NAMES:
            raise InvalidKeyError(
                f"Invalid key {key!r}: {part!r} is a zarr metadata document, not a folder"
            )
    return key


def file_and_folder(keys: Collection[str]) -> str | None:
    """A key of ``keys`` that is also the folder of another key (``x`` beside
    ``x/y``), or None. A store's key is a file or a folder, never both: fsspec would
    list only one of them. Each folder is looked at once."""
    folders: set[str] = set()
    for key in keys:
        i = key.rfind("/")
        while i > 0:
            folder = key[:i]
            if folder in folders:
                break
            folders.add(folder)
            i = key.rfind("/", 0, i)
    return next((f for f in sorted(folders) if f in keys), None)


def is_metadata_key(key: str) -> bool:
    """True for zarr metadata documents (``.zarray``, ``zarr.json``, ...)."""
    return key.rpartition("/")[2] in METADATA_NAMES


def canonical_json(data: bytes | str, leave_out: tuple[str, ...] = ()) -> str | None:
    """One spelling of the JSON value in ``data`` (keys sorted, no spacing), without
    the top-level members named in ``leave_out``; None if ``data`` is not JSON."""
    try:
        doc = ujson.loads(data)
        if leave_out and isinstance(doc, dict):
            for name in leave_out:
                doc.pop(name, None)
        return str(ujson.dumps(doc, sort_keys=True))
    except (ValueError, OverflowError):
        return None


def same_document(a: bytes, b: bytes) -> bool:
    """Whether two JSON documents hold the same value, written differently (key order,
    spacing): zarr rewrites kerchunk's compact metadata in its own style when it
    saves an array's attributes, and that is no change of the array."""
    canonical = canonical_json(a)
    return canonical is not None and canonical == canonical_json(b)


def without_consolidated(key: str, data: bytes) -> bytes | None:
    """What snapref records of the metadata document ``data`` at ``key``: nothing of
    zarr v2's consolidated ``.zmetadata``, and a v3 group's ``zarr.json`` without its
    ``consolidated_metadata``. Both are copies of the documents beside them: the next
    edit that does not consolidate again leaves them stale (zarr would then read the
    old shapes and append over data), and two branches that each consolidate would
    conflict on them in every merge. The manifest lists metadata quickly anyway."""
    name = posixpath.basename(key)
    if name == ".zmetadata":
        return None
    if name != "zarr.json" or b"consolidated_metadata" not in data:
        return data
    try:
        doc = json.loads(data)  # json, not ujson: floats (fill values) come back exact
    except ValueError:
        return data
    if not isinstance(doc, dict) or doc.get("consolidated_metadata") is None:
        return data
    del doc["consolidated_metadata"]
    return json.dumps(doc, indent=2).encode()


def check_metadata(key: str, data: bytes) -> dict[str, Any]:
    """The zarr metadata document ``data`` at ``key``, decoded; an
    :class:`InvalidReferenceError` unless zarr can read it: a JSON object, and for an
    array a shape and a chunk shape of as many non-negative integers. Checked before a
    version records it: a version whose metadata zarr cannot read cannot be opened,
    diffed or blamed."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReferenceError(
            f"Metadata key {key!r} does not hold JSON ({exc}): {bytes(data[:60])!r}. "
            "Write the zarr metadata document there."
        ) from None
    if not isinstance(doc, dict):
        raise InvalidReferenceError(
            f"Metadata key {key!r} holds a JSON {type(doc).__name__}, not an object: "
            "zarr metadata documents are JSON objects."
        )
    name = posixpath.basename(key)
    if name == ".zarray":
        _check_grid(key, doc.get("shape"), doc.get("chunks"))
    elif name == "zarr.json" and doc.get("node_type") == "array":
        grid = doc.get("chunk_grid")
        config = grid.get("configuration") if isinstance(grid, dict) else None
        chunks = config.get("chunk_shape") if isinstance(config, dict) else None
        _check_grid(key, doc.get("shape"), doc.get("shape") if chunks is None else chunks)
    return doc


def _check_grid(key: str, shape: Any, chunks: Any) -> None:
    def counts(value: Any) -> bool:
        return isinstance(value, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
        )

    if not (counts(shape) and counts(chunks) and len(shape) == len(chunks)):
        raise InvalidReferenceError(
            f"Metadata key {key!r}: an array needs a shape and a chunk shape of as many "
            f"non-negative integers, not {shape!r} and {chunks!r}."
        )


def node_path(key: str) -> str:
    """The group or array path a metadata key belongs to (``""`` for the root)."""
    return posixpath.dirname(key)


def array_path_of(key: str, value: bytes) -> str | None:
    """If ``key``/``value`` is the metadata document of an array, return the array's path.

    ``.zarray`` always describes an array (zarr v2); ``zarr.json`` does when its
    ``node_type`` is ``"array"`` (zarr v3). Unreadable JSON is not an array: such a key
    is then kept like any other file, and zarr will report the problem when read.
    """
    name = posixpath.basename(key)
    if name == ".zarray":
        return node_path(key)
    if name == "zarr.json":
        try:
            doc = ujson.loads(value)
        except ValueError:
            return None
        if isinstance(doc, dict) and doc.get("node_type") == "array":
            return node_path(key)
    return None


def chunk_coords(array: str, key: str) -> tuple[int, ...] | None:
    """Chunk grid coordinates of ``key`` inside array ``array``, or None if not a chunk.

    Understands the zarr v2 encodings (``3.4``, ``3/4``, ``0`` for 0-d arrays) and the
    v3 ones (``c/3/4``, ``c.3.4``, ``c`` for 0-d arrays, and v2-style keys).
    """
    if not array:
        return chunk_index(key)
    if not key.startswith(array) or key[len(array) : len(array) + 1] != "/":
        return None
    return chunk_index(key[len(array) + 1 :])


def chunk_index(name: str) -> tuple[int, ...] | None:
    """Chunk grid coordinates of the key ``name`` relative to its array's folder (see
    :func:`chunk_coords`), or None if it is no chunk key."""
    if name == "c":
        return ()
    if name.startswith(("c/", "c.")):
        name = name[2:]
    if _CHUNK_INDEX.fullmatch(name) is None:
        return None
    if "/" in name:
        name = name.replace("/", ".")
    return tuple(map(int, name.split(".")))
