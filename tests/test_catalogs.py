"""The same repository on every catalog kind: the embedded SQLite, a real PostgreSQL
server and duckdb, chosen by SQLAlchemy URL at ``init`` and found again by ``connect``.

Most behaviour (history, time travel, merge, errors) is checked on all three by the
modules marked ``all_catalogs``; this module checks what differs between them: many
writer processes sharing one catalog, who may open it, and what is recorded.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import snapref
from snapref.catalog import schema as t
from tests.conftest import one_array_refs

WRITERS, COMMITS = 4, 5  # processes, and commits each


def _refs() -> dict[str, str]:
    return one_array_refs("v", WRITERS * COMMITS, 1, "<u2")


def _writer(warehouse: str, writer: int, rebase: bool) -> tuple[int, list[str]]:
    """Run in a child process: commit chunk ``writer * COMMITS + i`` for each i.
    Returns the number of commits that landed and the conflicts' messages."""
    repo = snapref.connect(warehouse)
    landed, conflicts = 0, []
    for i in range(COMMITS):
        chunk = writer * COMMITS + i
        try:
            with repo.transaction(
                "d", message=f"writer {writer} chunk {chunk}", rebase=rebase
            ) as tx:
                tx.fs.pipe_file(f"v/{chunk}", np.uint16(chunk + 1).tobytes())
            landed += 1
        except snapref.ConflictError as exc:
            conflicts.append(str(exc))
    repo.close()
    return landed, conflicts


def _in_processes(func: Any, *calls: tuple[Any, ...]) -> list[Any]:
    """``func(*args)`` for each ``args``, each in a new process at the same time (a
    process that dies is an error here, not a hang)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(calls), mp_context=ctx) as pool:
        futures = [pool.submit(func, *args) for args in calls]
        return [f.result(timeout=240) for f in futures]


def _race(
    tmp_path: Path, catalog_url: str | None, rebase: bool
) -> tuple[str, list[tuple[int, list[str]]]]:
    """A new repository on ``catalog_url`` and WRITERS processes committing to its
    ``main`` at once: the warehouse and what each writer reported."""
    wh = str(tmp_path / "warehouse")
    snapref.init(wh, catalog=catalog_url).import_references("d", _refs(), message="import")
    return wh, _in_processes(_writer, *[(wh, w, rebase) for w in range(WRITERS)])


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql", "duckdb"])
def test_the_catalog_asked_for_is_recorded_and_found_again(
    tmp_path: Path, catalog_url: str | None, catalog_kind: str
) -> None:
    wh = tmp_path / "warehouse"
    repo = snapref.init(str(wh), catalog=catalog_url)
    repo.import_references("d", _refs(), message="import")
    repo.close()
    recorded = json.loads((wh / "snapref.json").read_text())["catalog"]
    assert recorded == (catalog_url or "catalog.db")
    again = snapref.connect(str(wh))
    assert again.db.engine.dialect.name == catalog_kind
    assert [s.message for s in again.log("d")] == ["import"]
    again.close()


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql"])
def test_writer_processes_sharing_a_catalog_all_land_with_rebase(
    tmp_path: Path, catalog_url: str | None
) -> None:
    wh, results = _race(tmp_path, catalog_url, rebase=True)
    assert results == [(COMMITS, [])] * WRITERS
    repo = snapref.connect(wh)
    history = repo.log("d")
    # one linear history, every version number used once, every write present
    assert [s.version for s in history] == list(range(WRITERS * COMMITS + 1, 0, -1))
    assert all(s.parents == (p.id,) for s, p in itertools.pairwise(history))
    values = snapref.open(repo, "d")["v"][:]
    assert values.tolist() == list(range(1, WRITERS * COMMITS + 1))
    assert len(repo.audit("d")) == WRITERS * COMMITS + 1


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql"])
def test_racing_writers_without_rebase_get_conflicts_and_lose_nothing(
    tmp_path: Path, catalog_url: str | None
) -> None:
    wh, results = _race(tmp_path, catalog_url, rebase=False)
    landed = sum(r[0] for r in results)
    assert sum(r[0] + len(r[1]) for r in results) == WRITERS * COMMITS
    assert all("moved while you worked" in m for r in results for m in r[1])
    assert landed >= COMMITS  # at least one writer ran alone for a while
    repo = snapref.connect(wh)
    history = repo.log("d")
    # every commit that reported success is in the history, and nothing else is
    assert [s.version for s in history] == list(range(landed + 1, 0, -1))
    landed_chunks = sorted(int(s.message.rsplit(" ", 1)[1]) for s in history[:-1])
    values = snapref.open(repo, "d")["v"][:]
    assert [i for i, v in enumerate(values) if v] == landed_chunks
    with repo.db.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(t.snapshots)).scalar_one()
    assert rows == landed + 1  # a lost race leaves no snapshot row behind


def test_a_duckdb_catalog_open_in_another_process_is_a_clear_error(tmp_path: Path) -> None:
    wh = str(tmp_path / "warehouse")
    url = f"duckdb:///{tmp_path / 'catalog.duckdb'}"
    holder = snapref.init(wh, catalog=url)
    holder.import_references("d", _refs(), message="import")
    (error,) = _in_processes(_connect_error, (wh,))
    assert error is not None
    kind, message = error
    assert kind == "CatalogUnavailableError"
    assert url in message and "one process at a time" in message
    holder.close()
    # once the holder closes its repository, the other process gets in
    assert _in_processes(_connect_error, (wh,)) == [None]


def _connect_error(warehouse: str) -> tuple[str, str] | None:
    try:
        snapref.connect(warehouse).close()
    except snapref.SnapRefError as exc:
        return type(exc).__name__, str(exc)
    return None


def test_a_postgresql_password_is_used_but_never_recorded(tmp_path: Path, postgres: Any) -> None:
    url = postgres.new_database()
    with_password = url.replace("snapref@", "snapref:s3cret-pw@")
    wh = tmp_path / "warehouse"
    repo = snapref.init(str(wh), catalog=with_password)
    repo.import_references("d", _refs(), message="import")
    with repo.db.engine.connect() as conn:
        dumped = [
            str(row)
            for table in t.metadata.sorted_tables
            for row in conn.execute(sa.select(table)).all()
        ]
    repo.close()
    assert dumped and not any("s3cret" in row for row in dumped)
    assert "s3cret" not in (wh / "snapref.json").read_text()
    # later processes pass it again, by argument or SNAPREF_CATALOG (this test server
    # trusts loopback, so the recorded URL works without it too)
    assert snapref.connect(str(wh), catalog=with_password).log("d")[0].version == 1


def test_an_unreachable_catalog_is_a_clear_error(tmp_path: Path, run: Any) -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:9/nowhere"
    with pytest.raises(snapref.CatalogUnavailableError) as err:
        snapref.init(str(tmp_path / "wh"), catalog=url)
    message = str(err.value)
    assert "127.0.0.1:9/nowhere" in message and "hunter2" not in message
    assert "server runs" in message
    # nothing is left behind to block a retry with the right URL
    assert not (tmp_path / "wh" / "snapref.json").exists()
    result = run("init", str(tmp_path / "wh2"), "--catalog", url, code=1)
    assert "Cannot open the catalog" in result.output + result.stderr
    result = run("init", str(tmp_path / "wh3"), "--catalog", "not a url", code=1)
    assert "not a catalog URL" in result.output + result.stderr
    # the same mistake is the same error whether the repository is new or not
    with pytest.raises(snapref.CatalogUnavailableError, match="not a catalog URL"):
        snapref.init(str(tmp_path / "wh4"), catalog="not a url")
    snapref.init(str(tmp_path / "wh5")).close()
    with pytest.raises(snapref.CatalogUnavailableError, match="not a catalog URL"):
        snapref.connect(str(tmp_path / "wh5"), catalog="not a url")


def test_a_repository_collected_while_the_engine_lock_is_held_does_not_deadlock(
    tmp_path: Path,
) -> None:
    # the garbage collector may run a dropped catalog's release inside the engine
    # registry's own critical section (any allocation there can start a collection);
    # that release must be queued, not wait for a lock its own thread holds
    import gc

    from snapref.catalog.engine import ENGINES

    wh = str(tmp_path / "warehouse")
    snapref.init(wh).close()
    repo = snapref.connect(wh)
    engine = repo.db.engine
    with ENGINES._lock:
        del repo
        gc.collect()  # the catalog's finalizer runs here and returns at once
    # the next use of the registry does the queued release: when the new handle
    # closes, no one uses the engine any more and it is disposed
    again = snapref.connect(wh)
    assert again.datasets() == []
    again.close()
    assert not [key for key in ENGINES._engines if wh in key[1]]
    assert engine.pool.checkedin() == 0


def test_a_missing_catalog_file_is_reported_not_created(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    snapref.init(str(wh)).close()
    (wh / "catalog.db").rename(tmp_path / "moved.db")
    with pytest.raises(snapref.CatalogUnavailableError, match=r"catalog\.db does not exist"):
        snapref.connect(str(wh))
    assert not (wh / "catalog.db").exists()  # a read never leaves an empty catalog
    elsewhere = f"sqlite:///{tmp_path / 'moved.db'}"
    assert snapref.connect(str(wh), catalog=elsewhere).datasets() == []


def test_a_file_that_is_no_catalog_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    # pointing --catalog at the wrong file must not change it: opening a catalog
    # switches SQLite to WAL (a change to the file's header, and -wal/-shm files)
    import sqlite3

    wh = tmp_path / "wh"
    snapref.init(str(wh)).close()
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    for path in (other, empty, text):
        before = path.read_bytes()
        with pytest.raises(snapref.CatalogSchemaError, match=r"is not a snapref catalog"):
            snapref.connect(str(wh), catalog=f"sqlite:///{path}")
        assert path.read_bytes() == before, path
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [
            path.name
        ]


def test_the_cli_takes_the_catalog_url_with_its_password(
    tmp_path: Path, postgres: Any, run: Any
) -> None:
    url = postgres.new_database()
    with_password = url.replace("snapref@", "snapref:s3cret-pw@")
    wh = str(tmp_path / "wh")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"version": 1, "refs": _refs()}))
    run("--catalog", with_password, "init", wh)
    assert "s3cret" not in (tmp_path / "wh" / "snapref.json").read_text()
    run("-R", wh, "--catalog", with_password, "import", "d", str(refs), "-m", "import")
    out = run("-R", wh, "--catalog", with_password, "log", "d", "--json").output
    assert [e["message"] for e in json.loads(out)] == ["import"]
    # --catalog replaces the recorded URL: another, empty database is no catalog
    other = postgres.new_database()
    result = run("-R", wh, "--catalog", other, "log", "d", code=1)
    assert "not a snapref catalog" in result.output + result.stderr


def test_a_process_that_reads_the_embedded_catalog_never_imports_sqlalchemy(
    tmp_path: Path,
) -> None:
    # opening and reading versions needs a few rows, read with Python's sqlite3
    # (snapref.catalog.lookups); the whole catalog, with SQLAlchemy, opens for a log
    wh = str(tmp_path / "wh")
    repo = snapref.init(wh)
    repo.import_references("d", _refs(), message="import")
    with repo.transaction("d", message="set chunk 3") as tx:
        tx.fs.pipe_file("v/3", np.uint16(7).tobytes())
    repo.tag("d", 1, "first")
    repo.close()
    code = f"""
import json, sys, snapref
g1 = snapref.open({wh!r}, "d", version=1)
head = snapref.open({wh!r}, "d")
tagged = snapref.open({wh!r}, "d", version="first")
values = [int(g1["v"][3]), int(head["v"][3]), int(tagged["v"][3])]
before = "sqlalchemy" in sys.modules
log = [s.message for s in snapref.connect({wh!r}).log("d")]
print(json.dumps([values, before, "sqlalchemy" in sys.modules, log]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    values, before, after, log = json.loads(out.stdout)
    assert values == [0, 7, 0]
    assert (before, after) == (False, True)
    assert log == ["set chunk 3", "import"]


def test_commands_that_only_read_the_catalog_never_import_zarr(tmp_path: Path) -> None:
    # importing zarr is ~250 ms of a process's start: `snapref log` took 0.36 s with it
    # and 0.22 s without. A transaction written through tx.fs needs no zarr either;
    # opening an array does
    wh = str(tmp_path / "wh")
    snapref.init(wh).close()
    refs = one_array_refs("v", 8, 1, "<u2")  # tests.conftest imports zarr: not there
    code = f"""
import json, sys
import numpy as np
import snapref
from snapref.cli import cli
seen = {{}}
with snapref.connect({wh!r}) as repo:
    repo.import_references("d", {refs!r}, message="import")
    with repo.transaction("d", message="set chunk 3") as tx:
        tx.fs.pipe_file("v/3", np.uint16(7).tobytes())
    repo.tag("d", 2, "edited")
seen["import, transaction"] = "zarr" in sys.modules
for args in (["log", "d"], ["tag", "d"], ["diff", "d@1", "d@2"], ["show", "d"], ["ls"]):
    cli.main(["-R", {wh!r}, *args], standalone_mode=False)
seen["log, tag, diff, show, ls"] = "zarr" in sys.modules
value = int(snapref.open({wh!r}, "d")["v"][3])
seen["open"] = "zarr" in sys.modules
print(json.dumps([seen, value]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seen, value = json.loads(out.stdout.splitlines()[-1])
    assert seen == {"import, transaction": False, "log, tag, diff, show, ls": False, "open": True}
    assert value == 7


def test_commands_that_only_read_the_catalog_never_import_pyarrow(tmp_path: Path) -> None:
    # importing pyarrow and numpy is 60-100 ms of a process's start, and these commands
    # read no shard; reading one (opening a version) needs pyarrow
    wh = str(tmp_path / "wh")
    with snapref.init(wh) as repo:
        repo.import_references("d", one_array_refs("v", 8, 1, "<u2"), message="import")
        with repo.transaction("d", message="set chunk 3") as tx:
            tx.fs.pipe_file("v/3", np.uint16(7).tobytes())
        repo.tag("d", 2, "edited")
    code = f"""
import json, sys
import snapref
from snapref.cli import cli
def heavy():
    return sorted(m for m in ("numpy", "pyarrow") if m in sys.modules)
seen = {{"import snapref": heavy()}}
for args in (["log", "d"], ["tag", "d"], ["ls"], ["audit"], ["branch", "d"]):
    cli.main(["-R", {wh!r}, *args], standalone_mode=False)
seen["log, tag, ls, audit, branch"] = heavy()
value = int(snapref.open({wh!r}, "d")["v"][3])
seen["open"] = heavy()
print(json.dumps([seen, value]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seen, value = json.loads(out.stdout.splitlines()[-1])
    assert seen == {
        "import snapref": [],
        "log, tag, ls, audit, branch": [],
        "open": ["numpy", "pyarrow"],
    }
    assert value == 7


def test_the_sqlite_reader_answers_as_the_catalog_does(tmp_path: Path) -> None:
    # the same SQL text, run by Python's sqlite3 and by SQLAlchemy
    from snapref.catalog import Catalog
    from snapref.catalog.lookups import SQLiteReader

    wh = tmp_path / "wh"
    repo = snapref.init(str(wh))
    first = repo.import_references("d", _refs(), message="import")
    with repo.transaction("d", message="second") as tx:
        tx.fs.pipe_file("v/0", np.uint16(1).tobytes())
    repo.tag("d", 1, "v1")
    repo.allow_source("s3://bucket/data/")
    repo.allow_source("s3://other/", dataset="d")
    repo.close()
    url = f"sqlite:///{wh / 'catalog.db'}"
    reader = SQLiteReader.open(url)
    assert reader is not None
    catalog = Catalog.open(url)
    try:
        for lookups in (reader, catalog):
            assert lookups.schema_version() == 4
            assert [d.name for d in lookups.datasets()] == ["d"]
            assert lookups.dataset("d") == catalog.dataset("d")
            assert lookups.get_setting("allowed_sources") == ["s3://bucket/data/"]
            assert lookups.get_setting("nothing", 5) == 5
            assert lookups.sources("d") == ["s3://other/"]
            snap = lookups.snapshot_by_version("d", 1)
            assert snap is not None and snap.id == first.id
            assert (snap.message, snap.manifest, snap.parents) == (
                "import",
                first.manifest,
                (),
            )
            assert lookups.snapshot_by_version("d", 3) is None
            assert lookups.snapshot(first.id).version == 1
            assert lookups.snapshots_by_id_prefix("d", first.id[:6].upper()) == [first]
            assert lookups.snapshots_by_id_prefix("d", "zz%_") == []
            tag = lookups.ref("d", "v1")
            assert tag is not None and (tag.kind, tag.snapshot_id) == ("tag", first.id)
            assert lookups.ref("d", "nope") is None
            with pytest.raises(snapref.DatasetNotFoundError, match=r"'e'.*datasets: d"):
                lookups.dataset("e")
            with pytest.raises(snapref.VersionNotFoundError, match="No snapshot with id"):
                lookups.snapshot("0" * 32)
    finally:
        catalog.close()


def test_the_sqlite_reader_leaves_migration_and_odd_urls_to_the_catalog(
    tmp_path: Path,
) -> None:
    from snapref.catalog.lookups import SQLiteReader

    wh = tmp_path / "wh"
    snapref.init(str(wh)).close()
    db = wh / "catalog.db"
    assert SQLiteReader.open(f"sqlite:///{db}") is not None
    # a URL with options, a missing file, a file that is no catalog, an older schema:
    # the whole Catalog opens them (it migrates, or says what is wrong)
    assert SQLiteReader.open(f"sqlite:///{db}?timeout=5") is None
    assert SQLiteReader.open(f"sqlite:///{tmp_path / 'missing.db'}") is None
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "other.db").write_bytes(b"")
    assert SQLiteReader.open(f"sqlite:///{tmp_path / 'other.db'}") is None
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.update(t.schema_info).values(version=3))
    engine.dispose()
    assert SQLiteReader.open(f"sqlite:///{db}") is None


def test_a_catalog_file_removed_while_open_is_a_clear_error(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    snapref.init(str(wh)).import_references("d", _refs(), message="import")
    repo = snapref.connect(str(wh))
    (wh / "catalog.db").rename(tmp_path / "moved.db")
    with pytest.raises(snapref.CatalogUnavailableError, match=r"catalog\.db does not exist"):
        snapref.open(repo, "d", version=1)
    assert not (wh / "catalog.db").exists()


def test_a_relative_catalog_url_keeps_naming_the_same_file_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reader resolved the path at connect, the whole catalog (opened later for a
    # log) against the new directory: one Repository read two catalogs, and a commit
    # failed with "too many concurrent commits"
    a, b = tmp_path / "a", tmp_path / "b"
    for wh, n in ((a, 2), (b, 4)):
        r = snapref.init(str(wh))
        r.import_references("d", _refs(), message="import")
        for i in range(1, n):
            with r.transaction("d", message=f"edit {i}") as tx:
                tx.fs.pipe_file(f"v/{i}", np.uint16(i).tobytes())
        r.close()
    monkeypatch.chdir(a)
    repo = snapref.connect(str(a), catalog="sqlite:///catalog.db")
    monkeypatch.chdir(b)
    assert repo.head("d").version == 2
    assert [s.version for s in repo.log("d")] == [2, 1]
    with repo.transaction("d", message="third") as tx:
        tx.fs.pipe_file("v/0", np.uint16(9).tobytes())
    assert repo.head("d").version == 3
    assert snapref.connect(str(b)).head("d").version == 4  # untouched
    assert repo.catalog_url == f"sqlite:///{a / 'catalog.db'}"


def test_one_repository_reads_one_catalog_file_even_if_it_is_replaced(tmp_path: Path) -> None:
    # once the whole catalog is open, every read goes through it: a file replaced
    # meanwhile is not half read (head from the new file, log from the old one)
    a, b = tmp_path / "a", tmp_path / "b"
    for wh in (a, b):
        snapref.init(str(wh)).import_references("d", _refs(), message=f"import {wh.name}")
    repo = snapref.connect(str(a))
    assert [s.message for s in repo.log("d")] == ["import a"]
    os.replace(b / "catalog.db", a / "catalog.db")
    assert repo.head("d").message == repo.log("d")[0].message


def test_a_commit_whose_parent_is_not_in_the_catalog_says_so(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    repo = snapref.init(str(wh))
    first = repo.import_references("d", _refs(), message="import")
    row = {
        "manifest": first.manifest,
        "parents": ["f" * 32],
        "branch": "main",
        "author": "me",
        "message": "from elsewhere",
        "snapref_version": "0",
        "properties": {},
        "summary": {},
    }
    with pytest.raises(snapref.VersionNotFoundError, match=r"ffffffffffff\) is not in the catalog"):
        repo.db.commit("d", "main", "f" * 32, row, {})
    assert [s.message for s in repo.log("d")] == ["import"]


@pytest.mark.parametrize("folder", ["q?a", "pct%20y", "a%b", "sp ace#h", "ü😀"])
def test_the_embedded_catalog_stays_inside_any_warehouse_folder(
    tmp_path: Path, folder: str
) -> None:
    # its URL is percent-encoded: a '?' started the URL's options (the catalog was made
    # at tmp_path/'q', outside the warehouse) and '%20' was read as a space
    wh = tmp_path / folder / "wh"
    made = snapref.init(str(wh))
    made.import_references("d", _refs(), message="import")
    made.close()
    assert (wh / "catalog.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]
    repo = snapref.connect(str(wh))
    assert repo.head("d").version == 1 and repo.log("d")[0].message == "import"


def _init_and_import(warehouse: str, start: Any) -> str:
    """Run in a child process: wait for ``start``, then init ``warehouse`` and import
    one dataset; what happened, as text."""
    start.wait(timeout=60)
    try:
        repo = snapref.init(warehouse)
    except snapref.AlreadyExistsError:
        return "exists"
    repo.import_references("d", _refs(), message="import")
    repo.close()
    return "made"


def test_processes_racing_to_init_one_folder_make_one_repository(tmp_path: Path) -> None:
    # a job array whose every task does "init if needed": one makes the repository,
    # the others are told it exists, and nobody removes what the winner wrote
    ctx = multiprocessing.get_context("spawn")
    for trial in range(3):
        wh = str(tmp_path / f"wh{trial}")
        with ctx.Manager() as manager:
            start = manager.Event()
            with ProcessPoolExecutor(4, mp_context=ctx) as pool:
                futures = [pool.submit(_init_and_import, wh, start) for _ in range(4)]
                start.set()
                outcomes = sorted(f.result(timeout=240) for f in futures)
        assert outcomes == ["exists", "exists", "exists", "made"]
        assert [s.message for s in snapref.connect(wh).log("d")] == ["import"]


def test_a_repository_removed_and_made_again_in_one_process_is_new(tmp_path: Path) -> None:
    import shutil

    wh = str(tmp_path / "wh")
    first = snapref.init(wh)
    first.import_references("d", _refs(), message="import")
    shutil.rmtree(wh)  # while `first` is still open
    second = snapref.init(wh)
    assert second.datasets() == [] and snapref.connect(wh).datasets() == []
    first.close()


def _one_branch_per_writer(
    tmp_path: Path, catalog: str | None
) -> tuple[snapref.Repository, list[str]]:
    repo = snapref.init(str(tmp_path / "wh"), catalog=catalog)
    repo.import_references("d", _refs(), message="import")
    branches = [f"b{w}" for w in range(WRITERS)]
    for b in branches:
        repo.branch("d", b)
    return repo, branches


def _thread_commits(repo: snapref.Repository, branch: str, first: int) -> tuple[int, int]:
    """COMMITS commits of chunks ``first, first + 1, ...`` on ``branch``: (landed,
    conflicts)."""
    landed = conflicts = 0
    for i in range(COMMITS):
        try:
            with repo.transaction("d", message=f"{branch} {i}", branch=branch) as tx:
                tx.fs.pipe_file(f"v/{first + i}", np.uint16(first + i + 1).tobytes())
            landed += 1
        except snapref.ConflictError:
            conflicts += 1
    return landed, conflicts


@pytest.mark.parametrize("catalog_kind", ["sqlite", "duckdb"])
def test_threads_of_one_process_commit_or_conflict_nothing_else(
    tmp_path: Path, catalog_url: str | None
) -> None:
    # duckdb is one process at a time, so threads (an ASGI service, a dask job) are
    # how it is shared: its optimistic transactions must not leak as OperationalError
    from concurrent.futures import ThreadPoolExecutor

    repo, branches = _one_branch_per_writer(tmp_path, catalog_url)
    with ThreadPoolExecutor(WRITERS) as pool:
        apart = list(pool.map(_thread_commits, [repo] * WRITERS, branches, range(0, 20, 5)))
        together = list(
            pool.map(_thread_commits, [repo] * WRITERS, ["main"] * WRITERS, range(0, 20, 5))
        )
    assert apart == [(COMMITS, 0)] * WRITERS
    assert all(landed + conflicts == COMMITS for landed, conflicts in together)
    assert len(repo.log("d")) == 1 + sum(landed for landed, _ in together)
    for b in branches:
        assert len(repo.log("d", branch=b)) == 1 + COMMITS
    # every version number used once
    numbers = sorted(s.version for b in ["main", *branches] for s in repo.log("d", branch=b))
    assert sorted(set(numbers)) == list(range(1, len(set(numbers)) + 1))
    repo.close()


def test_threads_of_one_process_take_turns_and_never_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a single try per commit, threads committing to different branches of a
    duckdb catalog lost about half of their commits to each other's optimistic
    transactions; retries hid it until a loaded machine lost ten races in a row."""
    from concurrent.futures import ThreadPoolExecutor

    import snapref.catalog.sql

    monkeypatch.setattr(snapref.catalog.sql, "_COMMIT_TRIES", 1)
    repo, branches = _one_branch_per_writer(tmp_path, f"duckdb:///{tmp_path / 'c.duckdb'}")
    with ThreadPoolExecutor(WRITERS) as pool:
        apart = list(pool.map(_thread_commits, [repo] * WRITERS, branches, range(0, 20, 5)))
    assert apart == [(COMMITS, 0)] * WRITERS
    repo.close()


def test_a_repository_on_read_only_storage_reads(tmp_path: Path) -> None:
    # an archive or a read-only mount: SQLite cannot make the -shm file a WAL catalog
    # is read with, and nobody can write there either, so it is read as immutable
    from tests.conftest import without_root_powers

    wh = tmp_path / "wh"
    repo = snapref.init(str(wh))
    repo.import_references("d", _refs(), message="import")
    with repo.transaction("d", message="edit") as tx:
        tx.fs.pipe_file("v/3", np.uint16(7).tobytes())
    repo.tag("d", 1, "first")
    repo.close()
    modes = {p: p.stat().st_mode for p in [wh, *wh.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    code = f"""
import snapref
repo = snapref.connect({str(wh)!r})
print([s.version for s in repo.log("d")], [r.name for r in repo.refs("d")])
print(snapref.open(repo, "d")["v"][3], snapref.open(repo, "d", version="first")["v"][3])
print(snapref.open(repo, "d", as_of="2999-01-01")["v"][3])
"""
    try:
        out = subprocess.run(
            [*without_root_powers(), sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["[2, 1] ['first', 'main']", "7 0", "7"]
