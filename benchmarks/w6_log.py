"""W6: reopen the repository and list the log of a branch of 10^4 versions.

Reopen means a new handle and a new catalog engine and connection each time (the
handle is closed after the log), as a ``snapref log`` process has; the floor row is
Python's sqlite3 handing over the same rows with no snapref code. The three take
turns, one call each per round, so that a slower spell of the machine falls on all
of them alike (timed one after the other, drift alone decided PASS or FAIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import Recorder, icechunk_repo, in_turns, quiet_icechunk, workdir


def run(rec: Recorder, quick: bool) -> None:
    n = 1_000 if quick else 10_000
    case = f"10^{len(str(n)) - 1} versions"
    rounds = 31  # each call takes milliseconds; many rounds steady the median
    with workdir("w6") as d:
        url = str(d / "snapref")
        snapref_history(url, n)
        ice = _icechunk_history(d / "ice", n)
        times = in_turns(
            {
                "snapref": (lambda: _reopen_and_log(url), n),
                "sqlite3 fetch (floor)": (lambda: _floor(url), n),
                "icechunk": (lambda: _reopen_and_walk(ice), n + 1),
            },
            rounds,
        )
    for system, ts in times.items():
        rec.add("W6", case, system, "reopen+log time", "s", ts)


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


def _reopen_and_log(url: str) -> int:
    """A new handle and a new catalog engine (closed after), as a CLI process has."""
    import snapref

    with snapref.connect(url) as repo:
        return len(repo.log("a"))


def _floor(url: str) -> int:
    """What any log from this catalog pays: Python's sqlite3 opening the catalog file
    and handing over the columns a log reads (id, parents, the packed entry), newest
    first, with no snapref code."""
    import sqlite3

    from snapref.catalog.records import LOG_COLUMNS

    db = sqlite3.connect(f"{url}/catalog.db")
    rows = db.execute(
        f"SELECT {', '.join(LOG_COLUMNS)} FROM snapshots WHERE dataset = 'a' ORDER BY version DESC"
    ).fetchall()
    db.close()
    return len(rows)


def _icechunk_history(path: Path, n: int) -> Path:
    """An Icechunk repository at ``path`` with the same ``n`` commits on ``main``."""
    quiet_icechunk()
    repo = icechunk_repo(path, None, split=False)
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("v", shape=(1,), chunks=(1,), dtype="<u2", compressors=None)
    s.commit("import")
    for i in range(1, n):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="v")[0] = i % 60000 + 1
        s.commit(f"commit {i}")
    return path


def _reopen_and_walk(path: Path) -> int:
    """Icechunk's reopen and full ancestry (it counts its "Repository initialized"
    snapshot, so one more entry than snapref's log)."""
    ic = quiet_icechunk()
    r = ic.Repository.open(ic.local_filesystem_storage(str(path)))
    return len(list(r.ancestry(branch="main")))


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
