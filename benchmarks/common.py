"""Helpers shared by the workloads: timing, disk accounting, subprocesses, systems."""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Result:
    """One measured quantity of one system in one workload case."""

    workload: str
    case: str
    system: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median}


class Recorder:
    """Collects results; workloads call :meth:`add`."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def add(
        self,
        workload: str,
        case: str,
        system: str,
        metric: str,
        unit: str,
        values: list[float] | float,
    ) -> Result:
        vals = values if isinstance(values, list) else [values]
        r = Result(workload, case, system, metric, unit, [float(v) for v in vals])
        self.results.append(r)
        print(
            f"  {workload:3} {case:18} {system:22} {metric:22} {r.median:12.4g} {unit}"
            f"  [{r.low:.4g}-{r.high:.4g}]",
            flush=True,
        )
        return r

    def get(self, workload: str, case: str, system: str, metric: str) -> Result | None:
        for r in self.results:
            if (r.workload, r.case, r.system, r.metric) == (workload, case, system, metric):
                return r
        return None


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = func()
    return time.perf_counter() - t0, out


def turn[T](items: list[T], r: int) -> list[T]:
    """The order of round ``r``: each round starts one item later, so that no system
    always follows the same one."""
    k = r % len(items)
    return items[k:] + items[:k]


def in_turns(
    calls: dict[str, tuple[Callable[[], Any], Any]], rounds: int
) -> dict[str, list[float]]:
    """Times of ``rounds`` calls of each system's function, the systems taking turns
    (one call each per round, rotating who goes first), after one unmeasured round.
    ``calls`` maps a system to its function and the value each call must return."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(-1, rounds):
        for name in turn(order, r):
            func, expected = calls[name]
            t, out = timed(func)
            if out != expected:
                raise AssertionError(f"{name} returned {out!r}, expected {expected!r}")
            if r >= 0:
                times[name].append(t)
    return times


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(root, n))
                files += 1
            except FileNotFoundError:
                pass
    return total, files


def stored(path: Path) -> tuple[int, int]:
    """(bytes, files) a repository occupies at rest: an SQLite catalog in it is
    checkpointed first, so its write-ahead log (a bounded, reused journal) is not
    counted as stored data."""
    import sqlite3

    for db in path.glob("*.db"):
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    return tree_size(path)


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    base = os.environ.get("SNAPREF_BENCH_TMP")
    d = Path(tempfile.mkdtemp(prefix=f"snapref-bench-{prefix}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process; it must print one JSON line last.

    Wall time of the whole child (interpreter start, imports, work) is added as
    ``wall``; the child reports its own peak RSS from /proc/self/status (VmHWM):
    getrusage in a child of a large parent reports the parent's peak.

    The children import snapref and these benchmarks from their source folders, so
    their bytecode is compiled first (:func:`compile_sources`), as an installed
    package's is: otherwise, where ``PYTHONDONTWRITEBYTECODE`` is set (as on the
    machines these run on), every child compiled snapref's ~10,000 lines again
    (~40-80 ms) while zarr, numpy and the other libraries load compiled code.
    """
    compile_sources()
    for attempt in (1, 2):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
        wall = time.perf_counter() - t0
        if out.returncode >= 0 or attempt == 2:
            break
        # killed by a signal: once, an Icechunk child crashed (SIGSEGV) at interpreter
        # exit, after printing its result; run it again rather than lose the workload
        print(f"  (a child died of signal {-out.returncode}; running it again)", file=sys.stderr)
    if out.returncode != 0:
        raise RuntimeError(
            f"child failed with exit code {out.returncode}:\n{out.stdout[-1500:]}\n"
            f"{out.stderr[-3000:]}"
        )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["wall"] = wall
    return data


def compile_sources() -> None:
    """Write the bytecode of snapref and of this package, as pip does when it
    installs a package (``compileall`` writes it whatever ``PYTHONDONTWRITEBYTECODE``
    says; an up-to-date file is left alone)."""
    import compileall

    import snapref

    for package in (Path(snapref.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(package, quiet=1)


CHILD_PEAK_RSS = """
def _peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def virtual_refs(blob: Path, side: int) -> dict[str, Any]:
    """kerchunk references of a side x side array of 1-element uint16 chunks, all
    virtual byte ranges of one local file (as a kerchunk import of HDF5 would be)."""
    np.arange(side * side, dtype="<u2").tofile(blob)
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
    refs: dict[str, Any] = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        "v/.zarray": json.dumps(zarray),
    }
    url = str(blob)
    for i in range(side):
        for j in range(side):
            refs[f"v/{i}.{j}"] = [url, 2 * (i * side + j), 2]
    return {"version": 1, "refs": refs}


def quiet_icechunk() -> Any:
    import icechunk as ic

    ic.set_logs_filter("error")
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    return ic


def icechunk_repo(path: Path, source_dir: Path | None, split: bool) -> Any:
    """A new Icechunk repository on local disk, default or with manifest splitting
    (100 chunks per axis), allowed to read virtual chunks under ``source_dir``."""
    ic = quiet_icechunk()
    cfg = icechunk_config(source_dir, split)
    return ic.Repository.create(
        ic.local_filesystem_storage(str(path)),
        config=cfg,
        authorize_virtual_chunk_access=icechunk_creds(source_dir),
    )


def icechunk_config(source_dir: Path | None, split: bool) -> Any:
    ic = quiet_icechunk()
    cfg = ic.RepositoryConfig.default()
    if source_dir is not None:
        prefix = f"file://{source_dir}/"
        cfg.set_virtual_chunk_container(
            ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(source_dir)))
        )
    if split:
        cfg.manifest = ic.ManifestConfig(
            splitting=ic.ManifestSplittingConfig.from_dict(
                {ic.ManifestSplitCondition.AnyArray(): {ic.ManifestSplitDimCondition.Any(): 100}}
            )
        )
    return cfg


def icechunk_creds(source_dir: Path | None) -> Any:
    ic = quiet_icechunk()
    if source_dir is None:
        return None
    return ic.containers_credentials(
        {f"file://{source_dir}/": ic.credentials.LocalFileSystemAccess}
    )


def icechunk_virtual_import(
    path: Path, source_dir: Path, side: int, split: bool
) -> tuple[Any, str]:
    """The Icechunk twin of :func:`virtual_refs`: a new repository at ``path`` whose
    array ``v`` has side x side virtual chunks into ``source_dir/blob.bin``, committed.
    Returns the repository and the snapshot id of that first commit."""
    ic = quiet_icechunk()
    repo = icechunk_repo(path, source_dir, split)
    s = repo.writable_session("main")
    import zarr

    zarr.group(s.store).create_array(
        "v", shape=(side, side), chunks=(1, 1), dtype="<u2", fill_value=0, compressors=None
    )
    url = f"file://{source_dir / 'blob.bin'}"
    s.store.set_virtual_refs(
        "v",
        [
            ic.VirtualChunkSpec(index=[i, j], location=url, offset=2 * (i * side + j), length=2)
            for i in range(side)
            for j in range(side)
        ],
    )
    return repo, s.commit("import")
