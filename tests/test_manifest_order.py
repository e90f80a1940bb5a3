"""A new section's shards hold its keys in section order (``_sort_key``): lookups
bisect on that order, so shards written in another would lose keys."""

from __future__ import annotations

import json
import random

import pytest

import snapref
from snapref.manifest import (
    META,
    InlineRef,
    Manifest,
    ManifestWriter,
    Ref,
    VirtualRef,
    _sort_key,
    encode_shard,
    section_of,
)
from snapref.objects import content_hash


def _zarray(shape: list[int], **extra: str) -> InlineRef:
    doc = {
        "zarr_format": 2,
        "shape": shape,
        "chunks": [1] * len(shape),
        "dtype": "|u1",
        "compressor": None,
        "fill_value": 0,
        "order": "C",
        "filters": None,
        **extra,
    }
    return InlineRef(json.dumps(doc).encode())


def _zarr3(shape: list[int]) -> InlineRef:
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1] * len(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "codecs": [{"name": "bytes"}],
        "fill_value": 0,
    }
    return InlineRef(json.dumps(doc).encode())


def _grid(prefix: str, shape: tuple[int, ...], sep: str) -> list[str]:
    keys = [""]
    for n in shape:
        keys = [f"{k}{sep if k else ''}{i}" for k in keys for i in range(n)]
    return [prefix + k for k in keys]


CASES = {
    "2-D": ({"v/.zarray": _zarray([30, 40])}, _grid("v/", (30, 40), ".")),
    "3-D": ({"a/.zarray": _zarray([9, 11, 13])}, _grid("a/", (9, 11, 13), ".")),
    "v2 '/' separator": (
        {"d/.zarray": _zarray([25, 25], dimension_separator="/")},
        _grid("d/", (25, 25), "/"),
    ),
    "v3 c/ keys": ({"w/zarr.json": _zarr3([20, 30])}, _grid("w/c/", (20, 30), "/")),
    "root array": ({".zarray": _zarray([17, 19])}, _grid("", (17, 19), ".")),
    # keys that coordinates alone do not order: equal ones, unequal numbers, > int64
    "odd keys": (
        {"e/.zarray": _zarray([10, 10])},
        [*_grid("e/", (10, 10), "."), "e/c/3/4", "e/5/6", "e/7", "e/99999999999999999999.0"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_new_sections_are_written_in_section_order(repo: snapref.Repository, case: str) -> None:
    meta, chunk_keys = CASES[case]
    changes: dict[str, Ref] = {
        ".zattrs": InlineRef(b'{"title": "t"}'),
        "README": InlineRef(b"hello"),
        **({".zgroup": InlineRef(b'{"zarr_format": 2}')} if ".zarray" not in meta else {}),
        **meta,
    }
    changes.update(
        (key, VirtualRef("file:///data/blob.bin", i if i % 5 else None, 1 if i % 5 else None))
        for i, key in enumerate(chunk_keys)
    )
    items = list(changes.items())
    random.Random(7).shuffle(items)
    max_refs = 7
    manifest = ManifestWriter(Manifest.empty(repo.warehouse), max_refs).write(dict(items)).manifest
    # the shards the writer made, against shards cut from a sort by _sort_key
    arrays = manifest.arrays
    assert len(arrays) == 1
    by_section: dict[str, list[tuple[str, Ref]]] = {}
    for key, ref in items:
        by_section.setdefault(section_of(key, arrays), []).append((key, ref))
    assert set(by_section) == set(manifest.sections) and META in by_section
    for section, entries in by_section.items():
        entries.sort(key=lambda kv: _sort_key(section, kv[0]))
        expected = [
            content_hash(encode_shard(entries[i : i + max_refs]))
            for i in range(0, len(entries), max_refs)
        ]
        assert [s.digest for s in manifest.sections[section]] == expected, section
    assert len(manifest.sections[f"array:{next(iter(arrays))}"]) > 2
    # and every key is found where a lookup looks for it
    assert all(manifest.get(key) == ref for key, ref in items)
    assert len(manifest) == len(items)
