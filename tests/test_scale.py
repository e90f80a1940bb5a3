"""Commit cost follows the change, not the dataset (invariant 3), and opening a version
reads only the shards it needs. Behaviour, not timing: we count what is written/read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

import snapref
from snapref.manifest import MAX_SHARD_REFS, SHARD_CACHE


def _virtual_dataset(tmp_path: Path, side: int) -> dict:
    """A side x side grid of 1-element uint16 chunks, all virtual into one file."""
    blob = tmp_path / f"blob{side}.bin"
    blob.write_bytes(np.arange(side * side, dtype="<u2").tobytes())
    zarray = {
        "zarr_format": 2,
        "shape": [side, side],
        "chunks": [1, 1],
        "dtype": "<u2",
        "compressor": None,
        "fill_value": 0,
        "order": "C",
        "filters": None,
    }
    refs = {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": json.dumps(zarray)}
    for i in range(side):
        for j in range(side):
            refs[f"v/{i}.{j}"] = [str(blob), 2 * (i * side + j), 2]
    return {"version": 1, "refs": refs}


def _commit_one_chunk(repo: snapref.Repository, name: str, value: int) -> snapref.Snapshot:
    with repo.transaction(name, message="one chunk") as tx:
        zarr.open_group(tx.store, mode="r+")["v"][3, 4] = value
    assert tx.snapshot is not None
    return tx.snapshot


def test_commit_cost_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("small", _virtual_dataset(tmp_path, 10), "100 chunks")
    repo.import_references("large", _virtual_dataset(tmp_path, 200), "40,000 chunks")
    assert len(repo.manifest(repo.head("large"))) == 40_002
    small = _commit_one_chunk(repo, "small", 9998).summary
    large = _commit_one_chunk(repo, "large", 9999).summary
    for s in (small, large):
        assert s["chunks_modified"] == 1
        assert s["objects_written"] == 1
        assert s["shards_written"] == 1  # only the shard holding the chunk
    metadata_large = large["bytes_written"] - 2  # the chunk object is 2 bytes
    assert metadata_large < 128 * 1024
    # the same bytes in another dataset are the same object: nothing new is written
    assert _commit_one_chunk(repo, "small", 9999).summary["objects_written"] == 0
    # the large commit rewrote one bounded shard: well under 40,000 references' worth
    assert large["bytes_written"] < 40 * small["bytes_written"]
    # the new version reads the new value and every other chunk as before
    v = snapref.open(repo, "large")["v"]
    assert v[3, 4] == 9999
    expected = np.arange(200 * 200, dtype="<u2").reshape(200, 200)
    expected[3, 4] = 9999
    np.testing.assert_array_equal(v[:], expected)


def test_opening_a_version_loads_only_needed_shards(tmp_path: Path) -> None:
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("large", _virtual_dataset(tmp_path, 200), "40,000 chunks")
    manifest = repo.manifest(repo.head("large"))
    n_shards = len(manifest.sections["array:v"])
    assert n_shards == -(-40_000 // MAX_SHARD_REFS) and n_shards > 2
    SHARD_CACHE.clear()
    v = snapref.open(repo, "large")["v"]
    assert v[150, 150] == 150 * 200 + 150
    # the metadata shard and the one shard holding the chunk
    assert len(SHARD_CACHE._items) == 2


def test_a_shard_answers_the_same_before_and_after_it_caches_its_rows(tmp_path: Path) -> None:
    # after a few single-row reads from Arrow, a shard reads its columns into lists once
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("large", _virtual_dataset(tmp_path, 100), "10,000 chunks")
    SHARD_CACHE.clear()
    manifest = repo.manifest(repo.head("large"))
    keys = [f"v/{i}.{j}" for i in range(0, 100, 3) for j in range(0, 100, 7)]
    first = [manifest.get(k) for k in keys]
    SHARD_CACHE.clear()
    again = repo.manifest(repo.head("large"))
    assert [again.get(k) for k in reversed(keys)] == first[::-1]
    assert all(r is not None for r in first) and again.get("v/100.0") is None


def test_the_shard_cache_is_bounded_by_what_its_shards_hold() -> None:
    # bounded by count, 256 shards thrashed on datasets of more arrays; bounded by Arrow
    # bytes alone, it ignored the key index and Python rows a used shard grows
    from snapref.manifest import Shard, VirtualRef, _ShardCache, encode_shard

    def shard(n: int) -> tuple[Shard, dict[str, VirtualRef]]:
        refs = {
            f"v{n}/{i}": VirtualRef(f"s3://bucket/data/file_{n:04d}.nc", i * 8192, 8192)
            for i in range(2000)
        }
        return Shard.decode(encode_shard(sorted(refs.items()))), refs

    cache = _ShardCache(capacity=4 << 20)
    for n in range(30):
        s, refs = shard(n)
        cache.put(str(n), s)
        for key in list(refs)[:64]:  # used enough to keep its rows as Python lists
            assert s.get(key) == refs[key]
    kept = list(cache._items.values())
    assert 1 < len(kept) < 30 and cache.get("29") is kept[-1]
    assert sum(s.weight for s in kept) <= 4 << 20
    assert all(s.weight > 2 * s.table.nbytes for s in kept)
