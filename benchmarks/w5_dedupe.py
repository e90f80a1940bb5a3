"""W5: a 400-chunk array (20 x 20 chunks of 256 x 256 float32 = 256 KiB each).

100 commits that each change one chunk: total bytes stored over the changed bytes.
Then 100 commits that rewrite a chunk with identical bytes: chunk objects created and
bytes stored per commit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import Recorder, icechunk_repo, stored, tree_size, workdir

CHUNK = (256, 256)
GRID = (20, 20)
SHAPE = (CHUNK[0] * GRID[0], CHUNK[1] * GRID[1])
CHUNK_BYTES = CHUNK[0] * CHUNK[1] * 4


def run(rec: Recorder, quick: bool) -> None:
    n = 20 if quick else 100
    with workdir("w5") as d:
        _snapref(rec, d, n)
        _icechunk(rec, d, n)


def _chunk(i: int) -> np.ndarray:
    return np.random.default_rng(i).random(CHUNK, dtype="float32")


def _where(i: int) -> tuple[slice, slice]:
    r, c = divmod(i % (GRID[0] * GRID[1]), GRID[1])
    return (slice(r * CHUNK[0], (r + 1) * CHUNK[0]), slice(c * CHUNK[1], (c + 1) * CHUNK[1]))


def _objects(path: Path) -> int:
    return tree_size(path / "objects")[1] if (path / "objects").exists() else 0


def _snapref(rec: Recorder, d: Path, n: int) -> None:
    import snapref

    path = d / "snapref"
    repo = snapref.init(str(path))
    repo.import_references("a", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}}, "empty")
    with repo.transaction("a", message="create") as tx:
        a = zarr.create_array(
            tx.store,
            name="v",
            shape=SHAPE,
            chunks=CHUNK,
            dtype="float32",
            compressors=None,
            zarr_format=2,
        )
        a[:] = np.random.default_rng(0).random(SHAPE, dtype="float32")
    _measure(rec, "snapref", path, n, lambda i, data: _snapref_commit(repo, i, data))
    repo.close()


def _snapref_commit(repo, i: int, data: np.ndarray) -> None:
    with repo.transaction("a", message=f"edit {i}") as tx:
        zarr.open_array(tx.store, path="v", mode="r+")[_where(i)] = data


def _icechunk(rec: Recorder, d: Path, n: int) -> None:
    path = d / "ice"
    repo = icechunk_repo(path, None, split=False)
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="v", shape=SHAPE, chunks=CHUNK, dtype="float32", compressors=None
    )
    a[:] = np.random.default_rng(0).random(SHAPE, dtype="float32")
    s.commit("create")

    def commit(i: int, data: np.ndarray) -> None:
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v", mode="r+")[_where(i)] = data
        s.commit(f"edit {i}", allow_empty=True)

    _measure(rec, "icechunk", path, n, commit)


def _measure(rec: Recorder, system: str, path: Path, n: int, commit) -> None:
    size0, _ = stored(path)
    for i in range(n):
        commit(i, _chunk(1000 + i))
    size1, _ = stored(path)
    rec.add(
        "W5",
        f"{n} changed",
        system,
        "stored / changed bytes",
        "x",
        (size1 - size0) / (n * CHUNK_BYTES),
    )
    objects1 = _objects(path) if system == "snapref" else tree_size(path / "chunks")[1]
    # rewrite the same chunk with the bytes it already has
    same = _chunk(1000 + n - 1)
    for _ in range(n):
        commit(n - 1, same)
    size2, _ = stored(path)
    objects2 = _objects(path) if system == "snapref" else tree_size(path / "chunks")[1]
    rec.add("W5", f"{n} identical", system, "chunk objects created", "objects", objects2 - objects1)
    rec.add("W5", f"{n} identical", system, "bytes per commit", "B", (size2 - size1) / n)
