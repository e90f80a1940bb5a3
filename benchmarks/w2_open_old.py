"""W2: after 100 versions, open version 1 of a 10^6-chunk array and read one chunk,
warm and in a fresh process (interpreter start + imports + open + read; peak RSS from
the child's /proc/self/status).

Warm is a running application: libraries imported, a new repository handle for each
open, nothing of version 1 cached (the shard cache is emptied). On the embedded
SQLite catalog, opening a version reads its few catalog rows with Python's sqlite3,
opening the file for each read; no SQLAlchemy engine is involved (the handle held
for the whole loop matters on PostgreSQL or duckdb, whose engine it keeps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import zarr

from benchmarks.common import (
    CHILD_PEAK_RSS,
    Recorder,
    icechunk_config,
    icechunk_creds,
    icechunk_virtual_import,
    quiet_icechunk,
    run_child,
    timed,
    virtual_refs,
    workdir,
)

ROW = COL = 500


def run(rec: Recorder, quick: bool) -> None:
    n, versions = (10**4, 10) if quick else (10**6, 100)
    side = math.isqrt(n)
    row = col = min(ROW, side - 1)
    repeats = 3 if quick else 5
    # warm calls are cheap, and Icechunk's are bimodal (with splitting, 7-12 ms or about
    # 40 ms; 25 calls in a row gave a median of 39 ms): five would let the median fall
    # either way
    warm_repeats = 3 if quick else 15
    with workdir("w2") as d:
        refs = virtual_refs(d / "blob.bin", side)
        expected = (row * side + col) % 2**16  # the blob holds uint16 0, 1, 2, ...
        (d / "v1.json").write_text(json.dumps(refs))
        systems = [
            _snapref(d, refs, versions, warm_repeats, row, col, expected),
            *(
                _icechunk(d, side, versions, warm_repeats, row, col, expected, s)
                for s in (False, True)
            ),
            _kerchunk(d, warm_repeats, row, col, expected),
            _import_floor(),
        ]
        # the fresh processes take turns, so that a slow spell of this shared machine
        # falls on every system alike
        fresh: dict[str, list[dict]] = {name: [] for name, _, _ in systems}
        for _ in range(repeats):
            for name, _, code in systems:
                fresh[name].append(run_child(code))
    for name, warm, _ in systems:
        if warm:
            rec.add("W2", "warm", name, "open+read time", "s", warm)
        rec.add(
            "W2", "fresh process", name, "open+read time", "s", [f["wall"] for f in fresh[name]]
        )
        rec.add("W2", "fresh process", name, "peak RSS", "MB", [f["rss"] for f in fresh[name]])


def _warm(open_read: Callable[[], int], repeats: int, expected: int) -> list[float]:
    """Times of ``repeats`` calls of ``open_read``, each checked to read ``expected``."""
    times = []
    for _ in range(repeats):
        t, value = timed(open_read)
        assert value == expected, value
        times.append(t)
    return times


def _import_floor() -> tuple[str, list[float], str]:
    """What a fresh process pays before snapref runs a line of its own: importing the
    libraries its read path uses (zarr, pyarrow's parquet reader for the manifest
    shards, Python's sqlite3 for the embedded catalog, fsspec's reference
    filesystem). SQLAlchemy is not among them: a process that only reads never
    imports it (snapref/catalog/lookups.py). Shown beside the systems as a floor."""
    code = (
        CHILD_PEAK_RSS
        + """
import json, zarr, pyarrow.parquet, sqlite3, fsspec.implementations.reference
print(json.dumps({"rss": _peak_rss_mb()}))
"""
    )
    return "imports only (floor)", [], code


def _snapref(
    d: Path, refs, versions: int, repeats: int, row: int, col: int, expected: int
) -> tuple[str, list[float], str]:
    """snapref's warm times, and the code a fresh process runs."""
    import snapref
    from snapref.manifest import SHARD_CACHE

    url = str(d / "snapref")
    repo = snapref.init(url)
    repo.import_references("a", refs, message="import")
    for i in range(1, versions):
        with repo.transaction("a", message=f"edit {i}") as tx:
            zarr.open_group(tx.store, mode="r+")["v"][i % 100, 0] = 60000
    repo.close()

    def open_read() -> int:
        SHARD_CACHE.clear()
        return int(snapref.open(url, "a", version=1)["v"][row, col])

    with snapref.connect(url):  # the application's handle: its engine stays
        warm = _warm(open_read, repeats, expected)
    code = (
        CHILD_PEAK_RSS
        + f"""
import json, snapref
v = int(snapref.open({url!r}, "a", version=1)["v"][{row}, {col}])
assert v == {expected}, v
print(json.dumps({{"rss": _peak_rss_mb()}}))
"""
    )
    return "snapref", warm, code


def _icechunk(
    d: Path,
    side: int,
    versions: int,
    repeats: int,
    row: int,
    col: int,
    expected: int,
    split: bool,
) -> tuple[str, list[float], str]:
    ic = quiet_icechunk()
    path = d / ("ice-split" if split else "ice")
    repo, first = icechunk_virtual_import(path, d, side, split)
    for i in range(1, versions):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v")[i % 100, 0] = 60000
        s.commit(f"edit {i}")

    def open_read() -> int:
        r = ic.Repository.open(
            ic.local_filesystem_storage(str(path)),
            config=icechunk_config(d, split),
            authorize_virtual_chunk_access=icechunk_creds(d),
        )
        sess = r.readonly_session(snapshot_id=first)
        return int(zarr.open_array(sess.store, path="v", mode="r")[row, col])

    warm = _warm(open_read, repeats, expected)
    code = (
        CHILD_PEAK_RSS
        + f"""
import json, zarr
from pathlib import Path
from benchmarks.common import quiet_icechunk, icechunk_config, icechunk_creds
ic = quiet_icechunk()
d = Path({str(d)!r})
r = ic.Repository.open(ic.local_filesystem_storage({str(path)!r}), config=icechunk_config(d, {split}),
                       authorize_virtual_chunk_access=icechunk_creds(d))
v = int(zarr.open_array(r.readonly_session(snapshot_id={first!r}).store, path="v", mode="r")[{row}, {col}])
assert v == {expected}, v
print(json.dumps({{"rss": _peak_rss_mb()}}))
"""
    )
    return ("icechunk-split" if split else "icechunk"), warm, code


def _kerchunk(
    d: Path, repeats: int, row: int, col: int, expected: int
) -> tuple[str, list[float], str]:
    """The blog's method: version 1 is a JSON reference file; open it and read."""
    import fsspec
    from zarr.storage import FsspecStore

    path = str(d / "v1.json")

    def open_read() -> int:
        fs = fsspec.filesystem("reference", fo=path, asynchronous=True, skip_instance_cache=True)
        g = zarr.open_group(FsspecStore(fs, path=""), mode="r", zarr_format=2)
        return int(g["v"][row, col])

    warm = _warm(open_read, repeats, expected)
    code = (
        CHILD_PEAK_RSS
        + f"""
import json, fsspec, zarr
from zarr.storage import FsspecStore
fs = fsspec.filesystem("reference", fo={path!r}, asynchronous=True)
v = int(zarr.open_group(FsspecStore(fs, path=""), mode="r", zarr_format=2)["v"][{row}, {col}])
assert v == {expected}, v
print(json.dumps({{"rss": _peak_rss_mb()}}))
"""
    )
    return "kerchunk-json", warm, code
