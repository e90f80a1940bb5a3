"""W6: reopen the repository and list the log of a branch of 10^4 versions.

Reopen means a new handle and a new catalog engine and connection each time (the
handle is closed after the log), as a ``snapref log`` process has; the floor row is
Python's sqlite3 handing over the same rows with no snapref code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import Recorder, icechunk_repo, quiet_icechunk, timed, workdir


def run(rec: Recorder, quick: bool) -> None:
    n = 1_000 if quick else 10_000
    case = f"10^{len(str(n)) - 1} versions"
    repeats = 15  # each run takes milliseconds; more runs steady the median
    with workdir("w6") as d:
        _snapref(rec, case, d, n, repeats)
        _icechunk(rec, case, d, n, repeats)


def snapref_history(url: str, n: int) -> None:
    """A snapref repository at ``url`` whose dataset ``a`` has ``n`` versions on
    ``main``, each a real commit that rewrites chunk ``v/0``."""
    import snapref

    repo = snapref.init(url)
    repo.import_references("a", _tiny_refs(), message="import")
    for i in range(1, n):
        with repo.transaction("a", message=f"commit {i}") as tx:
            tx.fs.pipe_file("v/0", np.uint16(i % 60000 + 1).tobytes())
    repo.close()


def _snapref(rec: Recorder, case: str, d: Path, n: int, repeats: int) -> None:

    url = str(d / "snapref")
    snapref_history(url, n)
    times = []
    for _ in range(repeats):
        t, history = timed(lambda: _reopen_and_log(url))
        assert len(history) == n
        times.append(t)
    rec.add("W6", case, "snapref", "reopen+log time", "s", times)
    rec.add("W6", case, "sqlite3 fetch (floor)", "reopen+log time", "s", _floor(url, repeats))


def _reopen_and_log(url: str) -> list:
    """A new handle and a new catalog engine (closed after), as a CLI process has."""
    import snapref

    with snapref.connect(url) as repo:
        return repo.log("a")


def _floor(url: str, repeats: int) -> list[float]:
    """What any log from this catalog pays: Python's sqlite3 opening the catalog file
    and handing over the columns a log shows, newest first, with no snapref code."""
    import sqlite3

    from snapref.catalog.records import SHOWN_COLUMNS

    query = (
        f"SELECT {', '.join(SHOWN_COLUMNS)} FROM snapshots WHERE dataset = 'a' "
        "ORDER BY version DESC"
    )

    def fetch() -> int:
        db = sqlite3.connect(f"{url}/catalog.db")
        rows = db.execute(query).fetchall()
        db.close()
        return len(rows)

    times = []
    for _ in range(repeats):
        t, count = timed(fetch)
        assert count > 0
        times.append(t)
    return times


def _icechunk(rec: Recorder, case: str, d: Path, n: int, repeats: int) -> None:
    ic = quiet_icechunk()
    path = d / "ice"
    repo = icechunk_repo(path, None, split=False)
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("v", shape=(1,), chunks=(1,), dtype="<u2", compressors=None)
    s.commit("import")
    for i in range(1, n):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v")[0] = i % 60000 + 1
        s.commit(f"commit {i}")
    times = []
    for _ in range(repeats):

        def reopen_and_walk() -> int:
            r = ic.Repository.open(ic.local_filesystem_storage(str(path)))
            return len(list(r.ancestry(branch="main")))

        t, count = timed(reopen_and_walk)
        assert count == n + 1  # Icechunk counts its "Repository initialized" snapshot
        times.append(t)
    rec.add("W6", case, "icechunk", "reopen+log time", "s", times)


def _tiny_refs() -> dict:
    import json

    zarray = {
        "zarr_format": 2,
        "shape": [1],
        "chunks": [1],
        "dtype": "<u2",
        "compressor": None,
        "fill_value": 0,
        "order": "C",
        "filters": None,
    }
    return {
        "version": 1,
        "refs": {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": json.dumps(zarray)},
    }
