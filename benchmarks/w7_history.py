"""W7 (issue 4's speed targets): diff of two versions of a 10^6-chunk array that
differ in 10 chunks, against Icechunk's diff of the same two snapshots; and blame of
one chunk across 10^4 versions (no peer has blame). Both on a reopened repository
with nothing cached."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import zarr

from benchmarks.common import (
    Recorder,
    icechunk_config,
    icechunk_creds,
    icechunk_virtual_import,
    quiet_icechunk,
    timed,
    virtual_refs,
    workdir,
)
from benchmarks.w6_log import snapref_history

CHANGED = 10


def run(rec: Recorder, quick: bool) -> None:
    n_chunks = 10**4 if quick else 10**6
    n_versions = 1_000 if quick else 10_000
    repeats = 5
    with workdir("w7") as d:
        case = f"10^{round(math.log10(n_chunks))} chunks, {CHANGED} changed"
        refs = virtual_refs(d / "blob.bin", math.isqrt(n_chunks))
        _snapref_diff(rec, case, d, refs, repeats)
        _icechunk_diff(rec, case, d, math.isqrt(n_chunks), repeats)
        _snapref_blame(rec, f"10^{round(math.log10(n_versions))} versions", d, n_versions, repeats)


def _snapref_diff(rec: Recorder, case: str, d: Path, refs: dict[str, Any], repeats: int) -> None:
    import snapref
    from snapref.manifest import SHARD_CACHE

    url = str(d / "snapref")
    repo = snapref.init(url)
    repo.import_references("a", refs, message="import")
    for i in range(CHANGED):
        with repo.transaction("a", message=f"edit {i}") as tx:
            zarr.open_group(tx.store, mode="r+")["v"][i, 0] = 60000
    repo.close()

    def diff() -> Any:
        SHARD_CACHE.clear()
        return snapref.connect(url).diff("a", 1, CHANGED + 1)

    times = []
    for _ in range(repeats):
        t, result = timed(diff)
        times.append(t)
    assert len(result.chunks["v"].modified) == CHANGED, result
    rec.add("W7", case, "snapref", "reopen+diff time", "s", times)


def _icechunk_diff(rec: Recorder, case: str, d: Path, side: int, repeats: int) -> None:
    ic = quiet_icechunk()
    path = d / "ice-split"
    repo, first = icechunk_virtual_import(path, d, side, split=True)
    for i in range(CHANGED):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v")[i, 0] = 60000
        last = s.commit(f"edit {i}")

    def diff() -> Any:
        r = ic.Repository.open(
            ic.local_filesystem_storage(str(path)),
            config=icechunk_config(d, True),
            authorize_virtual_chunk_access=icechunk_creds(d),
        )
        return r.diff(from_snapshot_id=first, to_snapshot_id=last)

    times = []
    for _ in range(repeats):
        t, result = timed(diff)
        times.append(t)
    assert sum(len(c) for c in result.updated_chunks.values()) == CHANGED
    rec.add("W7", case, "icechunk-split", "reopen+diff time", "s", times)


def _snapref_blame(rec: Recorder, case: str, d: Path, n: int, repeats: int) -> None:
    import snapref

    url = str(d / "blame")
    snapref_history(url, n)
    times = []
    for _ in range(repeats):
        t, lines = timed(lambda: snapref.connect(url).blame("a", "v", [0]))
        times.append(t)
    assert len(lines) == 1
    rec.add("W7", case, "snapref", "reopen+blame time", "s", times)
