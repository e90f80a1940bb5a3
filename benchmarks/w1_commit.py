"""W1: commit one changed chunk into an array of 10^2, 10^4 and 10^6 virtual chunks.

Measures the wall time of the commit call, and the bytes and files that the edit
(writing the chunk, then committing) adds to the repository — snapref: warehouse plus
catalog file, checkpointed. Both snapref and Icechunk store the chunk itself when zarr
writes it, before the commit call."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import zarr

from benchmarks.common import (
    Recorder,
    icechunk_virtual_import,
    stored,
    timed,
    tree_size,
    virtual_refs,
    workdir,
)

SYSTEMS = ("snapref", "icechunk", "icechunk-split", "kerchunk-json")


def run(rec: Recorder, quick: bool) -> None:
    sizes = [10**2, 10**4] if quick else [10**2, 10**4, 10**6]
    repeats = 3 if quick else 5
    for n in sizes:
        side = math.isqrt(n)
        case = f"10^{round(math.log10(n))} chunks"
        with workdir("w1") as d:
            refs = virtual_refs(d / "blob.bin", side)
            _snapref(rec, case, d, refs, repeats)
            for split in (False, True):
                _icechunk(rec, case, d, side, repeats, split)
            _kerchunk(rec, case, d, refs, repeats)


def _record(
    rec: Recorder, case: str, system: str, times: list[float], sizes: list[tuple[int, int]]
) -> None:
    rec.add("W1", case, system, "commit time", "s", times)
    rec.add("W1", case, system, "bytes written", "B", [b for b, _ in sizes])
    rec.add("W1", case, system, "files written", "files", [f for _, f in sizes])


def _snapref(rec: Recorder, case: str, d: Path, refs: dict[str, Any], repeats: int) -> None:
    import snapref

    repo = snapref.init(str(d / "snapref"))
    repo.import_references("a", refs, message="import")
    times, sizes = [], []
    for r in range(repeats):
        before = stored(d / "snapref")
        tx = repo.transaction("a", message=f"edit {r}")
        zarr.open_group(tx.store, mode="r+")["v"][r, 0] = 60000 + r
        t, _ = timed(tx.commit)
        after = stored(d / "snapref")
        times.append(t)
        sizes.append((after[0] - before[0], after[1] - before[1]))
    repo.close()
    _record(rec, case, "snapref", times, sizes)


def _icechunk(rec: Recorder, case: str, d: Path, side: int, repeats: int, split: bool) -> None:

    path = d / ("ice-split" if split else "ice")
    repo, _ = icechunk_virtual_import(path, d, side, split)
    times, sizes = [], []
    for r in range(repeats):
        before = tree_size(path)
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v")[r, 0] = 60000 + r
        t, _ = timed(lambda s=s, r=r: s.commit(f"edit {r}"))
        after = tree_size(path)
        times.append(t)
        sizes.append((after[0] - before[0], after[1] - before[1]))
    _record(rec, case, "icechunk-split" if split else "icechunk", times, sizes)


def _kerchunk(rec: Recorder, case: str, d: Path, refs: dict[str, Any], repeats: int) -> None:
    """The blog's method: edit through ReferenceFileSystem, save_json every version."""
    import fsspec
    from zarr.storage import FsspecStore

    current = refs
    times, sizes = [], []
    for r in range(repeats):
        fs = fsspec.filesystem("reference", fo=current, asynchronous=True, skip_instance_cache=True)
        zarr.open_group(FsspecStore(fs, path=""), mode="r+", zarr_format=2)["v"][r, 0] = 60000 + r
        out = d / f"kerchunk-v{r + 2}.json"
        t, _ = timed(lambda fs=fs, out=out: fs.save_json(str(out)))
        times.append(t)
        sizes.append((out.stat().st_size, 1))
        current = str(out)
    _record(rec, case, "kerchunk-json", times, sizes)
