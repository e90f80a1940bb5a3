"""kerchunk reference sets in and out: JSON versions 0 and 1 (invariant 4).

A reference set maps each key to inline data (a string, ``base64:``-prefixed for
binary) or to ``[url]`` / ``[url, offset, length]``. Version 1 wraps the map in
``{"version": 1, "refs": ..., "templates": ..., "gen": ...}``; templates and
generators are expanded on import, so a manifest only ever holds plain references.
"""

from __future__ import annotations

import base64
import functools
import gc
import itertools
import math
import os
import posixpath
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import fsspec
import ujson

from snapref.errors import InvalidInputError, InvalidReferenceError
from snapref.keys import file_and_folder, validate_key
from snapref.manifest import Manifest, VirtualRef

__all__ = [
    "bulk",
    "check_protocol",
    "decode_inline",
    "encode_inline",
    "load_reference_file",
    "normalize_url",
    "parse_references",
    "read_reference_set",
    "source_prefix",
]

#: What a parsed entry is: inline bytes or a reference to an outside file.
Parsed = bytes | VirtualRef


def check_protocol(url: str, what: str) -> None:
    """Refuse ``url`` if fsspec has no filesystem for its protocol (each protocol of a
    chained URL); ``what`` names the URL in the message. A protocol fsspec knows but
    whose package is not installed passes: fsspec's ImportError says what to install."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"Give the {what} (a path or an fsspec URL), not {url!r}")
    known = set(fsspec.available_protocols())
    for part in url.split("::"):
        protocol = fsspec.core.split_protocol(part)[0]
        if protocol is not None and protocol not in known:
            raise InvalidInputError(
                f"No fsspec filesystem reads {protocol}:// URLs, as the {what} {url!r} is: "
                "check the URL, or install the package that provides that protocol"
            )


def load_reference_file(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Read a kerchunk JSON reference file from any fsspec URL.

    Raises
    ------
    InvalidReferenceError
        If the file is missing or is not JSON.
    """
    if url != "-":
        check_protocol(url, "reference file")
    try:
        if url == "-":
            data = sys.stdin.buffer.read()
        elif "://" not in url:
            with open(url, "rb") as f:  # also pipes, which fsspec would try to seek
                data = f.read()
        else:
            with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
                data = f.read()
    except FileNotFoundError as exc:
        # fsspec's HTTP filesystem says FileNotFoundError for a server it cannot reach
        maybe = " or cannot be reached" if url.startswith(("http://", "https://")) else ""
        raise InvalidReferenceError(f"Reference file {url!r} does not exist{maybe}") from exc
    except IsADirectoryError as exc:
        from snapref.refs_parquet import check_reference_folder

        check_reference_folder(url, storage_options)  # says what is wrong, if it can
        raise InvalidReferenceError(
            f"{url!r} is a folder, and not a parquet reference set (one holds a "
            "'.zmetadata' with 'metadata' and 'record_size'): give a JSON reference file "
            "or a parquet reference directory"
        ) from exc
    try:
        return ujson.loads(data)
    except ValueError as exc:
        raise InvalidReferenceError(
            f"Reference file {url!r} is not valid JSON ({exc}); expected a kerchunk reference set"
        ) from exc


def decode_inline(key: str, value: str) -> bytes:
    """Bytes of an inline JSON value (``base64:`` prefix for binary data)."""
    if value.startswith("base64:"):
        try:
            return base64.b64decode(value[7:], validate=True)
        except ValueError as exc:
            raise InvalidReferenceError(f"Key {key!r} holds invalid base64 data") from exc
    return value.encode()


def encode_inline(data: bytes) -> str:
    """Inverse of :func:`decode_inline`: text when it is ASCII, else ``base64:``."""
    if not data.startswith(b"base64:"):
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            pass
    return "base64:" + base64.b64encode(data).decode()


@functools.lru_cache(maxsize=4096)  # reference sets repeat a few URLs many times
def normalize_url(url: str, base: str | None = None) -> str:
    """A comparable form of a reference URL: local paths become ``file://`` URLs,
    without ``.`` or ``..`` segments.

    Relative local paths (also ``file:x``) are resolved against ``base`` (the folder
    of the reference file); without one they are an error, since they would mean
    different files from different working directories. ``~`` is the home folder, as
    fsspec reads it.
    """
    if url.startswith("file:/"):
        # file:/x, file:///x/../y -> file:///y: a local path means one file
        return "file://" + posixpath.normpath("/" + url[5:].lstrip("/"))
    if url.startswith("file:"):
        url = url[5:]  # file:x is the relative path x
    if "://" in url or url.startswith("memory:"):
        return url
    if url.startswith("~"):
        url = os.path.expanduser(url)  # the home folder, as fsspec reads it
    if not posixpath.isabs(url):
        if base is None:
            raise InvalidReferenceError(
                f"Reference URL {url!r} is a relative path; make it absolute, or import "
                "the reference file by its path so snapref can resolve it"
            )
        url = posixpath.join(base, url)
    return "file://" + posixpath.normpath(os.path.abspath(url))


def has_dot_segments(url: str) -> bool:
    """Whether the path of ``url`` has a ``.`` or ``..`` segment (also percent-encoded),
    which a prefix check cannot judge: ``file:///allowed/../etc`` starts with
    ``file:///allowed/`` but names ``/etc``."""
    path = url.split("://", 1)[-1]
    return any(seg in (".", "..") for seg in unquote(path).split("/"))


def allowed_prefix(prefix: str) -> str:
    """An allowed-source prefix as the policy compares it: local paths (relative ones
    against the working directory) become ``file://`` URLs, keeping a final ``/``.

    Raises
    ------
    InvalidInputError
        For a prefix that would allow everything (empty, or a bare ``s3://``) or
        that has ``.``/``..`` segments.
    """
    text = prefix.strip()
    url = normalize_url(text, base=os.getcwd()) if text else ""
    if text.endswith("/") and not url.endswith("/"):
        url += "/"
    path = url.split("://", 1)[-1] if "://" in url else url
    if not path.strip("/") or has_dot_segments(url):
        raise InvalidInputError(
            f"Cannot allow sources under {prefix!r}: give the URL of a folder, ending in "
            "'/' (e.g. s3://bucket/data/ or /data/climate/); an empty or bare prefix "
            "would allow every location"
        )
    check_protocol(url, "allowed source")
    return url


def source_prefix(url: str) -> str:
    """The allowed-source prefix an imported URL grants: its folder, with a slash."""
    return url.rsplit("/", 1)[0] + "/"


def parse_references(refs: Any, base: str | None = None) -> dict[str, Parsed]:
    """Validate and expand a kerchunk reference set.

    Parameters
    ----------
    refs
        A decoded JSON reference set (version 0 or 1).
    base
        Folder that relative local paths in it are relative to, if any.

    Returns
    -------
    dict
        key -> inline bytes, or key -> :class:`~snapref.manifest.VirtualRef` with a
        normalized URL.

    Raises
    ------
    InvalidReferenceError
        Naming the first malformed entry.
    InvalidKeyError
        For a key that is absolute or contains ``..``.
    """
    if not isinstance(refs, Mapping):
        raise InvalidReferenceError(
            f"A reference set must be a JSON object, not {type(refs).__name__}"
        )
    version = refs.get("version")
    if version is None:
        entries: Mapping[str, Any] = refs
        templates: Mapping[str, str] = {}
        gens: list[Any] = []
    elif version == 1:
        entries = refs.get("refs", {})
        templates = refs.get("templates", {}) or {}
        gens = refs.get("gen", []) or []
        if not isinstance(entries, Mapping) or not isinstance(templates, Mapping):
            raise InvalidReferenceError("'refs' and 'templates' must be JSON objects")
    else:
        raise InvalidReferenceError(
            f"Unknown reference set version {version!r}; snapref reads versions 0 and 1"
        )
    out: dict[str, Parsed] = {}
    urls: dict[str, str] = {}  # as written -> as recorded: most chunks share a few files
    for key, value in itertools.chain(entries.items(), _expand_gen(gens, templates)):
        validate_key(key)
        out[key] = _parse_entry(key, value, templates, base, urls)
    if (both := file_and_folder(out)) is not None:
        below = next(k for k in out if k.startswith(both + "/"))
        raise InvalidReferenceError(
            f"Key {both!r} is a file, and also the folder of {below!r}: a key cannot be "
            "both (fsspec would list only one of them). Rename or remove one of them."
        )
    return out


def _parse_entry(
    key: str,
    value: Any,
    templates: Mapping[str, str],
    base: str | None,
    urls: dict[str, str],
) -> Parsed:
    if isinstance(value, str):
        return decode_inline(key, value)
    if isinstance(value, dict):  # version 0 allows JSON documents inline
        return ujson.dumps(value).encode()
    if isinstance(value, list) and len(value) in (1, 3):
        written = value[0]
        url = urls.get(written) if type(written) is str else None
        if url is None:
            if not isinstance(written, str) or not written:
                raise InvalidReferenceError(f"Key {key!r}: the URL must be a non-empty string")
            url = urls[written] = normalize_url(_render(written, templates, f"Key {key!r}"), base)
        if len(value) == 1:
            return VirtualRef(url)
        offset, length = value[1], value[2]
        if not (_is_count(offset) and _is_count(length)):
            raise InvalidReferenceError(
                f"Key {key!r}: offset and length must be integers from 0 to 2^63 - 1, "
                f"got {offset!r} and {length!r}"
            )
        return VirtualRef(url, int(offset), int(length))
    raise InvalidReferenceError(
        f"Key {key!r}: a reference must be a string or [url] or [url, offset, length], "
        f"got {value!r}"
    )


def _is_count(value: Any) -> bool:
    """A byte offset or length: an integer from 0 to 2^63 - 1 (what the manifest's
    int64 columns, and every filesystem, can hold)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _render(text: str, variables: Mapping[str, Any], where: str) -> str:
    """``text`` with its ``{{ name }}`` templates filled from ``variables``; a name
    that is not defined is an error (as in fsspec), never an empty string."""
    if "{{" not in text:
        return text
    if all(isinstance(v, str) and "{{" not in v for v in variables.values()):
        # kerchunk writes only simple templates like "{{u}}": plain substitution
        out = text
        for name, value in variables.items():
            out = out.replace("{{" + name + "}}", str(value)).replace(
                "{{ " + name + " }}", str(value)
            )
        if "{{" not in out:
            return out
    import jinja2.sandbox

    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    try:
        return env.from_string(text).render(**variables)
    except jinja2.TemplateError as exc:
        fix = (
            "Define each {{ name }} it uses in the reference set's 'templates'."
            if isinstance(exc, jinja2.UndefinedError)
            else "Fix its {{ }} syntax."
        )
        raise InvalidReferenceError(
            f"{where}: cannot fill in the template {text!r} ({exc}). {fix}"
        ) from None


#: The most keys one ``gen`` entry may make: each takes memory (~400 bytes) while an
#: import holds the whole reference set.
MAX_GEN_KEYS = 10**8


def _expand_gen(gens: Any, templates: Mapping[str, str]) -> Iterable[tuple[str, Any]]:
    """Entries of the ``gen`` section: one per point of each generator's dimensions."""
    if not isinstance(gens, list):
        raise InvalidReferenceError(f"'gen' must be a list of generator objects, not {gens!r}")
    for gen in gens:
        try:
            specs = gen["dimensions"].items()
            key_t, url_t = gen["key"], gen["url"]
        except (KeyError, TypeError, AttributeError):
            raise InvalidReferenceError(
                f"Malformed 'gen' entry {gen!r}: needs 'key', 'url' and 'dimensions'"
            ) from None
        dims = {name: _gen_values(gen, name, spec) for name, spec in specs}
        count = math.prod(len(v) for v in dims.values())
        if count > MAX_GEN_KEYS:
            raise InvalidReferenceError(
                f"The 'gen' entry for keys {gen['key']!r} makes {count:,} keys, more than "
                f"snapref imports from one reference set ({MAX_GEN_KEYS:,}); check its "
                "dimensions"
            )
        if ("offset" in gen) != ("length" in gen):
            raise InvalidReferenceError(
                f"Malformed 'gen' entry {gen!r}: give both 'offset' and 'length', or neither"
            )
        where = f"'gen' entry {gen!r}"
        for values in itertools.product(*dims.values()):
            env = {**templates, **dict(zip(dims, values, strict=True))}
            key = _render(str(key_t), env, where)
            url = _render(str(url_t), env, where)
            if "offset" in gen:
                offset, length = (_render(str(gen[n]), env, where) for n in ("offset", "length"))
                if not all(v.isascii() and v.isdigit() for v in (offset, length)):
                    raise InvalidReferenceError(
                        f"Key {key!r} of {where}: offset and length must be non-negative "
                        f"integers, got {offset!r} and {length!r}"
                    )
                yield key, [url, int(offset), int(length)]
            else:
                yield key, [url]


def _gen_values(gen: Any, name: str, spec: Any) -> Sequence[Any]:
    """The values of dimension ``name`` of a ``gen`` entry: a list as given, or the
    integers of ``{"start", "stop", "step"}`` (start 0 and step 1 by default)."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, Mapping) and "stop" in spec:
        bounds = (spec.get("start", 0), spec["stop"], spec.get("step", 1))
        if all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) and bounds[2]:
            return range(*bounds)
    raise InvalidReferenceError(
        f"Malformed 'gen' entry {gen!r}: dimension {name!r} must be a list of values or "
        "{'start': INT, 'stop': INT, 'step': INT} (start and step optional, step not 0), "
        f"not {spec!r}"
    )


def read_reference_set(
    refs: Mapping[str, Any] | str,
    storage_options: Mapping[str, Any] | None = None,
    parent_manifest: Manifest | None = None,
) -> dict[str, Any]:
    """A reference set as ``{key: bytes | VirtualRef}``, from a dict made in this
    process (kerchunk's ``translate()``), a JSON reference file or a parquet reference
    directory; ``parent_manifest`` lets a parquet set's unchanged records be taken
    from the version it was checked out from."""
    # that module reads parquet sets with this one's helpers
    from snapref.refs_parquet import is_parquet_references, load_parquet_references

    if isinstance(refs, str) and is_parquet_references(refs, storage_options):
        return load_parquet_references(refs, storage_options, parent_manifest)
    if isinstance(refs, str):
        base = None if "://" in refs else os.path.dirname(os.path.abspath(refs))
        return parse_references(load_reference_file(refs, storage_options), base)
    # a reference set made in this process names local files as it was given them:
    # relative paths mean the working directory, as fsspec would read them now
    return parse_references(refs, os.getcwd())


@contextmanager
def bulk() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a reference set of up to millions
    of entries is read and recorded: those objects hold no cycles, yet every few
    thousand of them made the collector walk all that were alive (an import of 10^6
    references spent ~2 s of its ~10 s there)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
