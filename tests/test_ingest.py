"""Plain Zarr in: ingest v2 and v3 stores (local and S3) as versions, write only
chunks whose bytes differ, resume after an interruption; progress bars."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import snapref
from snapref import progress
from snapref.cli import cli
from snapref.ingest import ingest
from snapref.objects import ContentStore
from tests.conftest import without_root_powers
from tests.s3_fixtures import BUCKET


def _store(path: Path, zarr_format: int) -> np.ndarray:
    """A group with a 2-D array of 16 chunks and attributes."""
    values = np.arange(64 * 64, dtype="float32").reshape(64, 64)
    g = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=zarr_format)
    g.attrs["title"] = "test"
    a = g.create_array("v", shape=values.shape, chunks=(16, 16), dtype="float32")
    a[:] = values
    a.attrs["units"] = "m"
    return values


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ingest_a_store_then_a_changed_copy(
    repo: snapref.Repository, tmp_path: Path, zarr_format: int
) -> None:
    src = tmp_path / "src.zarr"
    values = _store(src, zarr_format)
    first = ingest(repo, "grid", str(src), message="Adopt the grid")
    assert first.snapshot is not None and first.snapshot.version == 1
    assert first.chunks == 16 and first.objects_written == 16
    # the version's summary counts them too, as a transaction's does
    assert first.snapshot.summary["objects_written"] == 16
    assert first.snapshot.summary["bytes_written"] > first.bytes_written
    assert first.snapshot.properties == {"ingested_from": str(src)}
    g = snapref.open(repo, "grid")
    np.testing.assert_array_equal(g["v"][:], values)
    assert g.attrs["title"] == "test" and g["v"].attrs["units"] == "m"

    # change one chunk's bytes: the new version writes one object and records one key
    zarr.open_group(zarr.storage.LocalStore(src), mode="r+")["v"][0:16, 16:32] = -1
    second = ingest(repo, "grid", str(src))
    assert second.snapshot is not None and second.snapshot.version == 2
    assert second.objects_written == 1 and second.snapshot.summary["objects_written"] == 1
    changed = repo.changes(second.snapshot)
    assert list(changed.values()) == ["M"] and len(changed) == 1
    values[0:16, 16:32] = -1
    np.testing.assert_array_equal(snapref.open(repo, "grid")["v"][:], values)
    np.testing.assert_array_equal(snapref.open(repo, "grid", 1)["v"][0, 16], 16.0)
    # the same store again: nothing to record
    third = ingest(repo, "grid", str(src))
    assert third.snapshot is None and third.objects_written == 0


def test_ingest_a_store_at_the_root_of_its_filesystem(
    repo: snapref.Repository, tmp_path: Path
) -> None:
    # zarr's ZipStore archive opens as zip://::FILE, whose root is "": every key was
    # dropped, and the store refused as having no .zgroup
    archive = tmp_path / "store.zarr.zip"
    with zarr.storage.ZipStore(archive, mode="w") as store:
        g = zarr.open_group(store, mode="w", zarr_format=2)
        g.create_array("x", shape=(5,), chunks=(2,), dtype="i4")[:] = np.arange(5)
    result = ingest(repo, "zipped", f"zip://::{archive}", message="from a zip archive")
    assert result.chunks == 3
    np.testing.assert_array_equal(snapref.open(repo, "zipped")["x"][:], np.arange(5))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_consolidated_metadata_is_not_recorded_so_it_never_goes_stale(
    repo: snapref.Repository, tmp_path: Path, zarr_format: int
) -> None:
    # a store as xarray writes it by default: consolidated. Kept as it was, the copy
    # hid every later append from zarr and xarray, and a second append wrote over the
    # first (zarr read the ingested shape)
    import xarray as xr

    src = tmp_path / "src.zarr"
    ds = xr.Dataset({"t": (("time", "x"), np.arange(8.0).reshape(4, 2))})
    ds.to_zarr(src, zarr_format=zarr_format, consolidated=True)
    ingest(repo, "grid", str(src), message="ingest")
    refs = repo.to_references("grid")["refs"]
    assert not [k for k in refs if k.endswith(".zmetadata")]
    root = json.loads(refs["zarr.json"]) if zarr_format == 3 else json.loads(refs[".zgroup"])
    assert "consolidated_metadata" not in root and root["zarr_format"] == zarr_format
    for rows in ([10.0, 11.0], [20.0, 21.0]):
        with repo.transaction("grid", message="append") as tx:
            zarr.open_group(tx.store, mode="r+")["t"].append(np.array([rows]))
    expected = np.concatenate([ds.t.values, [[10.0, 11.0]], [[20.0, 21.0]]])
    np.testing.assert_array_equal(snapref.open(repo, "grid")["t"][:], expected)
    opts = {"repo": str(repo.warehouse.url)}
    with warnings.catch_warnings():  # xarray looks for .zmetadata, then warns
        warnings.simplefilter("ignore", RuntimeWarning)
        with xr.open_zarr("snapref://grid", storage_options=opts) as back:
            np.testing.assert_array_equal(back.t.values, expected)
    # xarray's default write (consolidated) through a transaction records no copy either
    with repo.transaction("grid", message="rewrite") as tx:
        (ds * 2).to_zarr(tx.store, mode="w", zarr_format=zarr_format)
    assert not [k for k in repo.to_references("grid")["refs"] if k.endswith(".zmetadata")]
    np.testing.assert_array_equal(snapref.open_dataset(repo, "grid").t.values, ds.t.values * 2)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_consolidated_metadata_recorded_by_an_older_snapref_goes_with_the_next_change(
    repo: snapref.Repository,
    tmp_path: Path,
    zarr_format: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # versions made before snapref left it out still hold it; kept, the plain-kerchunk
    # export of every later version showed the old shapes to xarray's default open
    import xarray as xr

    import snapref.transaction

    src = tmp_path / "src.zarr"
    ds = xr.Dataset({"t": (("time",), np.arange(4.0))})
    ds.to_zarr(src, zarr_format=zarr_format, consolidated=True)
    with monkeypatch.context() as m:  # as an older snapref recorded it
        m.setattr(snapref.transaction, "without_consolidated", lambda key, data: data)
        ingest(repo, "old", str(src), message="ingest")
    refs = repo.to_references("old")["refs"]
    root = "zarr.json" if zarr_format == 3 else ".zmetadata"
    assert ".zmetadata" in refs or "consolidated_metadata" in refs[root]
    with repo.transaction("old", message="append") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].append(np.array([4.0, 5.0]))
    refs = repo.to_references("old")
    assert ".zmetadata" not in refs["refs"]
    assert "consolidated_metadata" not in refs["refs"].get("zarr.json", "")
    mapper = fsspec.filesystem("reference", fo=refs).get_mapper()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with xr.open_zarr(mapper) as back:  # the default open, consolidated or not
            np.testing.assert_array_equal(back.t.values, np.arange(6.0))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_dataset_whose_root_is_an_array_opens_as_that_array(
    repo: snapref.Repository, tmp_path: Path, zarr_format: int
) -> None:
    src = tmp_path / "a.zarr"
    a = zarr.create_array(src, shape=(5,), chunks=(2,), dtype="i2", zarr_format=zarr_format)
    a[:] = np.arange(1, 6)
    ingest(repo, "a", str(src), message="an array store")
    with repo.transaction("a", message="edit") as tx:
        zarr.open_array(tx.store, mode="r+")[4] = -5
    assert isinstance(snapref.open(repo, "a", 1), zarr.Array)
    np.testing.assert_array_equal(snapref.open(repo, "a", 1)[:], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(snapref.open(repo, "a")[:], [1, 2, 3, 4, -5])
    with repo.transaction("a", message="empty the root") as tx:
        tx.fs.rm(".zarray" if zarr_format == 2 else "zarr.json")
    with pytest.raises(snapref.NotFoundError, match="a holds no zarr group or array at its root"):
        snapref.open(repo, "a")


def test_an_interrupted_ingest_resumes_without_rewriting(
    repo: snapref.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src.zarr"
    values = _store(src, 2)
    real_put_many = ContentStore.put_many
    calls = {"n": 0}

    def failing_put_many(self: ContentStore, items: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the third batch: the connection drops
            raise OSError("connection reset")
        return real_put_many(self, items)

    monkeypatch.setattr(ContentStore, "put_many", failing_put_many)
    with pytest.raises(OSError, match="connection reset"):
        ingest(repo, "grid", str(src), batch_size=4)
    monkeypatch.setattr(ContentStore, "put_many", real_put_many)
    assert "grid" not in repo.datasets()  # nothing recorded: no half version
    objects = Path(repo.warehouse.path("objects"))
    before = {p: p.stat().st_mtime_ns for p in objects.rglob("*") if p.is_file()}
    assert len(before) == 8  # two batches of four chunks were stored

    result = ingest(repo, "grid", str(src), batch_size=4)
    assert result.objects_written == 16 - 8  # only the missing ones
    after = {p: p.stat().st_mtime_ns for p in objects.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # untouched, not rewritten
    np.testing.assert_array_equal(snapref.open(repo, "grid")["v"][:], values)


def test_ingest_from_s3(
    repo: snapref.Repository, tmp_path: Path, s3_bucket: dict[str, Any]
) -> None:
    import s3fs

    src = tmp_path / "src.zarr"
    values = _store(src, 3)
    fs = s3fs.S3FileSystem(**s3_bucket, skip_instance_cache=True)
    fs.put(str(src), f"{BUCKET}/grid.zarr", recursive=True)
    result = ingest(
        repo, "grid", f"s3://{BUCKET}/grid.zarr", storage_options=s3_bucket, concurrency=4
    )
    assert result.chunks == 16 and result.objects_written == 16
    np.testing.assert_array_equal(snapref.open(repo, "grid")["v"][:], values)
    # from the shell: options for the source alone (the warehouse here is local)
    options = [f"--source-option={k}={v}" for k, v in s3_bucket.items()]
    cli_args = ["-R", repo.url, "ingest", "copy", f"s3://{BUCKET}/grid.zarr", *options]
    result = CliRunner().invoke(cli, cli_args)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(snapref.open(repo, "copy")["v"][:], values)


def test_what_is_not_a_store_is_refused(repo: snapref.Repository, tmp_path: Path) -> None:
    with pytest.raises(snapref.NotFoundError, match="No Zarr store"):
        ingest(repo, "x", str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("hi")
    with pytest.raises(snapref.InvalidInputError, match="not a Zarr store"):
        ingest(repo, "x", str(tmp_path / "plain"))
    with pytest.raises(snapref.InvalidInputError, match="is a file"):
        ingest(repo, "x", str(tmp_path / "plain" / "a.txt"))
    # a new dataset starts on main: one without it would break every listing
    _store(tmp_path / "src.zarr", 3)
    with pytest.raises(snapref.InvalidInputError, match=r"starts on branch 'main', not 'dev'"):
        ingest(repo, "x", str(tmp_path / "src.zarr"), branch="dev")
    # names that would break snapref://NAME@REF URLs, Intake entries or catalogue paths
    for bad in ("a/b", "x@2", "../up", "with space", "{{x}}", "42", "-x"):
        with pytest.raises(snapref.InvalidInputError, match="Invalid dataset name"):
            ingest(repo, bad, str(tmp_path / "src.zarr"))
    # the name is checked before the source is even listed
    with pytest.raises(snapref.InvalidInputError, match="Invalid dataset name"):
        ingest(repo, "a/b", str(tmp_path / "missing"))
    result = CliRunner().invoke(
        cli, ["-R", repo.url, "ingest", "../up", str(tmp_path / "src.zarr")]
    )
    assert result.exit_code == 1 and "Invalid dataset name '../up'" in result.output
    assert repo.datasets() == [] and not (Path(repo.warehouse.root) / "objects").exists()


def test_a_folder_that_cannot_be_listed_is_an_error_not_deleted_chunks(
    repo: snapref.Repository, tmp_path: Path
) -> None:
    import subprocess
    import sys

    values = _store(tmp_path / "src.zarr", 3)
    ingest(repo, "grid", str(tmp_path / "src.zarr"))
    chunks = tmp_path / "src.zarr" / "v" / "c"
    chunks.chmod(0)  # a mount or ACL problem
    try:
        out = subprocess.run(
            [
                *without_root_powers(),
                *(sys.executable, "-m", "snapref", "-R", repo.url, "ingest", "grid"),
                *(str(tmp_path / "src.zarr"), "-m", "refresh"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "SNAPREF_CATALOG": str(repo.db.engine.url)},
            check=False,
        )
    finally:
        chunks.chmod(0o755)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("Error: Access denied") and str(chunks) in out.stderr
    assert repo.head("grid").version == 1
    np.testing.assert_array_equal(snapref.open(repo, "grid")["v"][:], values)


def test_cli_ingest_is_quiet_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPREF_REPO", str(tmp_path / "wh"))
    values = _store(tmp_path / "src.zarr", 2)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    result = runner.invoke(cli, ["ingest", "grid", "src.zarr", "-m", "Adopt"])
    assert result.exit_code == 0, result.output
    assert "Ingested grid version 1" in result.output
    assert "16 chunks read, 16 new objects" in result.output
    assert result.stderr == ""  # not a terminal: no progress bar
    result = runner.invoke(cli, ["--quiet", "ingest", "grid", "src.zarr", "--json"])
    assert json.loads(result.output)["snapshot"] is None and result.stderr == ""
    np.testing.assert_array_equal(snapref.open(str(tmp_path / "wh"), "grid")["v"][:], values)


def test_progress_bars_draw_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress.bar(10, "Silent") as tick:
        tick(10)
    assert err.getvalue() == ""
    with progress.enabled(), progress.bar(10, "Copying") as tick:
        tick(4)
        tick(6)
    assert "Copying" in err.getvalue()  # (click draws the bar itself only on a tty)
    assert progress.should_show(quiet=True) is False
    assert progress.should_show(quiet=False) is False  # StringIO is no terminal
    assert not progress.is_enabled()  # the block ended


def test_cli_draws_progress_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SNAPREF_REPO", str(tmp_path / "wh"))
    _store(tmp_path / "src.zarr", 2)
    snapref.init(str(tmp_path / "wh")).close()
    monkeypatch.setattr(progress, "should_show", lambda quiet: not quiet)  # "a terminal"
    with pytest.raises(SystemExit) as done:
        cli(["ingest", "grid", str(tmp_path / "src.zarr")], prog_name="snapref")
    assert done.value.code == 0
    assert "Ingesting grid" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        cli(["-q", "ingest", "grid2", str(tmp_path / "src.zarr")], prog_name="snapref")
    assert capfd.readouterr().err == ""
    assert os.path.isdir(tmp_path / "wh")
