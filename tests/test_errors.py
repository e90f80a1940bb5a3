"""Bad input gets a clear, typed error and loses nothing; nothing unsafe is resolved."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import fsspec
import pytest
import sqlalchemy as sa
import zarr

import snapref
from snapref.errors import SnapRefError
from snapref.fs import SourcePolicy
from snapref.manifest import SHARD_CACHE

# every test here runs on SQLite, PostgreSQL and duckdb catalogs (tests/conftest.py)
pytestmark = pytest.mark.all_catalogs


def test_error_tree_has_one_root() -> None:
    for name in snapref.errors.__all__:
        assert issubclass(getattr(snapref.errors, name), SnapRefError)
    assert issubclass(snapref.DatasetNotFoundError, snapref.NotFoundError)
    assert issubclass(snapref.InvalidKeyError, ValueError)


def test_unknown_dataset_and_version_name_what_is_missing(air: snapref.Repository) -> None:
    with pytest.raises(snapref.DatasetNotFoundError, match=r"'nope'.*datasets: air"):
        snapref.open(air, "nope")
    with pytest.raises(snapref.VersionNotFoundError, match=r"no version 7: versions are 1\.\.1"):
        snapref.open(air, "air", version=7)
    with pytest.raises(snapref.VersionNotFoundError, match="'v-missing'"):
        air.resolve("air", "v-missing")
    with pytest.raises(snapref.RepositoryNotFoundError, match="snapref init"):
        snapref.connect(str(Path(air.warehouse.root).parent / "elsewhere"))


def _count(repo: snapref.Repository, table: str) -> int:
    with repo.db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.mark.parametrize(
    ("refs", "error", "match"),
    [
        ({"version": 1, "refs": {"a/../../etc/passwd": "x"}}, snapref.InvalidKeyError, r"'\.\.'"),
        ({"/abs/.zgroup": "{}"}, snapref.InvalidKeyError, "leading '/'"),
        (
            {"version": 1, "refs": {"x/0": ["s3://b/f", -1, 10]}},
            snapref.InvalidReferenceError,
            "x/0",
        ),
        ({"version": 1, "refs": {"x/0": [1, 2]}}, snapref.InvalidReferenceError, "x/0"),
        ({"version": 3, "refs": {}}, snapref.InvalidReferenceError, "version 3"),
        ({"version": 1, "refs": {"x/0": "base64:%%%"}}, snapref.InvalidReferenceError, "base64"),
        (
            {"version": 1, "refs": {"x": "a", "x/y": "b"}},
            snapref.InvalidReferenceError,
            r"'x' is a file, and also the folder of 'x/y'",
        ),
    ],
)
def test_bad_references_are_refused_and_nothing_is_recorded(
    repo: snapref.Repository, refs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        repo.import_references("bad", refs, message="bad")
    assert repo.datasets() == []
    assert _count(repo, "snapshots") == 0
    assert not (Path(repo.warehouse.root) / "manifests").exists()


def test_malformed_json_file(repo: snapref.Repository, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1, "refs": {')
    with pytest.raises(snapref.InvalidReferenceError, match=r"broken\.json.*not valid JSON"):
        repo.import_references("bad", str(path))
    with pytest.raises(snapref.InvalidReferenceError, match="does not exist"):
        repo.import_references("bad", str(tmp_path / "missing.json"))
    assert repo.datasets() == []


def test_writing_a_key_that_escapes_the_dataset(air: snapref.Repository) -> None:
    with air.transaction("air", message="escape") as tx:
        for key in ("../outside", "temp/../../x", "temp//0.0", "a\\b"):
            with pytest.raises(snapref.InvalidKeyError):
                tx.fs.pipe_file(key, b"x")
    assert tx.snapshot is None


def test_reference_to_a_disallowed_location_is_refused(
    air: snapref.Repository, tmp_path: Path
) -> None:
    work = tmp_path / "work.json"
    air.checkout("air", None, str(work))
    doc = json.loads(work.read_text())
    secret = tmp_path / "secret" / "data.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"0123456789")
    doc["refs"]["temp/0.0.0"] = [str(secret), 0, 10]
    work.write_text(json.dumps(doc))
    with pytest.raises(
        snapref.DisallowedSourceError, match=r"temp/0\.0\.0.*secret.*--allow-source"
    ):
        air.commit_references("air", str(work), "point elsewhere")
    assert air.head("air").version == 1
    # allowed explicitly, it is accepted and recorded as a source of the dataset
    snap = air.commit_references(
        "air", str(work), "point elsewhere", allow_sources=[f"file://{secret.parent}/"]
    )
    assert snap is not None and snap.version == 2
    assert f"file://{secret.parent}/" in air.sources("air")


def test_dot_segments_cannot_lead_out_of_an_allowed_location(
    air: snapref.Repository, tmp_path: Path
) -> None:
    (allowed,) = air.sources("air")  # the folder air.h5 was imported from
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"0123456789")
    climb = "../" * len(Path(allowed.removeprefix("file://")).parts)
    refs = air.to_references("air")
    # a local path names one file: file:///allowed/../x is read as file:///x, outside
    refs["refs"]["temp/0.0.0"] = [f"{allowed}{climb}{str(secret).lstrip('/')}", 0, 10]
    with pytest.raises(snapref.DisallowedSourceError, match=r"secret\.bin', outside"):
        air.commit_references("air", refs, "climb out", parent=1)
    # elsewhere '.' and '..' segments are refused outright, percent-encoded or not
    air.allow_source("memory://sources/", dataset="air")
    for url in ("memory://sources/../private/x", "memory://sources/%2e%2e/private/x"):
        refs["refs"]["temp/0.0.0"] = [url, 0, 10]
        with pytest.raises(snapref.DisallowedSourceError, match=r"'\.\.' segments"):
            air.commit_references("air", refs, "climb out", parent=1)
    assert air.head("air").version == 1
    # and a manifest holding such a URL anyway (written by other software) is not read
    policy = SourcePolicy(("file:///data/",))
    assert policy.allows("file:///data/a.h5")
    assert not policy.allows("file:///data/../etc/passwd")
    assert not policy.allows("file:///data/x//../../etc/passwd")


def test_allowed_source_prefixes_are_urls_of_folders(
    air: snapref.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for everything in ("", "  ", "s3://", "file:///", "/"):
        with pytest.raises(snapref.InvalidInputError, match="would allow every location"):
            air.allow_source(everything)
    # a local path is recorded as the file:// URL references carry, relative or not
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extra").mkdir()
    blob = tmp_path / "extra" / "blob.bin"
    blob.write_bytes(b"0123456789")
    assert air.allow_source("extra/", dataset="air") == f"file://{tmp_path}/extra/"
    refs = air.to_references("air")
    refs["refs"]["temp/0.0.0"] = [str(blob), 0, 10]
    snap = air.commit_references("air", refs, "point into extra/", parent=1)
    assert snap is not None and air.filesystem("air").cat_file("temp/0.0.0") == b"0123456789"


def test_reads_check_the_allowed_sources_too(air: snapref.Repository) -> None:
    # a source that is no longer allowed (or a tampered catalog) is never read
    with air.db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dataset_sources"))
    g = snapref.open(air, "air")
    with pytest.raises(snapref.DisallowedSourceError, match="outside the locations"):
        g["temp"][0, 0, 0]


def test_damaged_object_is_an_integrity_error(air: snapref.Repository) -> None:
    with air.transaction("air", message="edit") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    objects = [p for p in (Path(air.warehouse.root) / "objects").rglob("*") if p.is_file()]
    target = [p for p in objects if p.stat().st_size > 1000]
    assert len(target) == 1
    target[0].write_bytes(b"\0" * target[0].stat().st_size)
    with pytest.raises(snapref.IntegrityError, match="damaged"):
        snapref.open(air, "air")["temp"][0, 0, 0]
    # the old version does not use the damaged object and still reads
    assert snapref.open(air, "air", version=1)["temp"][0, 0, 0] > 0


def test_a_source_that_moved_is_a_named_error_never_fill_values(
    air: snapref.Repository, hdf5_file: Path
) -> None:
    # fsspec's ReferenceNotReachable (a RuntimeError naming neither the cause nor a
    # fix) was what a reader got for the commonest failure of kerchunk data
    hdf5_file.rename(hdf5_file.with_suffix(".moved"))
    match = (
        rf"Cannot read key 'temp/0\.0\.0' from its source file://{hdf5_file} "
        r"\(FileNotFoundError: .*\)\. The file was moved or deleted.*new place"
    )
    with pytest.raises(snapref.SourceUnavailableError, match=match):
        snapref.open(air, "air")["temp"][0, 0, 0]
    with pytest.raises(snapref.SourceUnavailableError, match="moved or deleted"):
        snapref.open_dataset(air, "air")["temp"].load()
    fs = air.filesystem("air")
    with pytest.raises(snapref.SourceUnavailableError, match=match):
        fs.cat_file("temp/0.0.0")
    with pytest.raises(snapref.SourceUnavailableError, match=match):
        fs.cat(["temp/0.0.0", "temp/0.0.1"])
    with pytest.raises(snapref.SourceUnavailableError, match=match):
        fs.cat(["temp/0.0.0", "temp/0.0.1"], on_error="return")
    with pytest.raises(snapref.SourceUnavailableError):  # not omitted as missing keys
        fsspec.filesystem("snapref", repo=air, dataset="air").get_mapper("").getitems(
            ["temp/0.0.0", "temp/0.0.1"], on_error="omit"
        )


def test_a_lost_object_is_an_error_never_fill_values(air: snapref.Repository) -> None:
    # zarr reads a key that is not there as a chunk never written (fill values): a
    # lost warehouse file must not look like that, or a later edit would commit it
    with air.transaction("air", message="edit") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    objects = [p for p in (Path(air.warehouse.root) / "objects").rglob("*") if p.is_file()]
    (target,) = [p for p in objects if p.stat().st_size > 1000]
    target.unlink()
    with pytest.raises(snapref.IntegrityError, match=r"object file://.* is missing.*Restore"):
        snapref.open(air, "air")["temp"][0, 0, 0]
    with pytest.raises(snapref.IntegrityError, match="is missing"):
        snapref.open_dataset(air, "air")["temp"].load()
    # the multi-key paths too: fsspec's cat of a list, and the mapper (which reads a
    # FileNotFoundError as a missing key, whatever on_error asks)
    fs = snapref.open(air, "air").store.fs
    for on_error in ("raise", "return", "omit"):
        with pytest.raises(snapref.IntegrityError, match="is missing"):
            fs.cat(["temp/0.0.0", "temp/0.0.1"], on_error=on_error)
    with pytest.raises(snapref.IntegrityError, match="is missing"):
        fsspec.filesystem("snapref", repo=air, dataset="air").get_mapper("").getitems(
            ["temp/0.0.0", "temp/0.0.1"], on_error="omit"
        )
    # writing part of that chunk reads the rest of it first: the edit fails whole
    with pytest.raises(snapref.IntegrityError, match="is missing"):
        with air.transaction("air", message="fix one value") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 1] = 2
    assert air.head("air").version == 2
    assert snapref.open(air, "air", version=1)["temp"][0, 0, 0] > 0


def test_a_lost_manifest_shard_is_an_error_not_a_missing_array(
    air: snapref.Repository,
) -> None:
    snap = air.head("air")
    doc = json.loads(air.warehouse.manifest_lists.get(snap.manifest))
    (section,) = [s for s in doc["sections"] if s.endswith(":temp")]
    digest = doc["sections"][section][0]["digest"]
    Path(air.warehouse.shards.path(digest)).unlink()
    SHARD_CACHE.clear()  # as in a new process
    with pytest.raises(snapref.IntegrityError, match=r"shard file://.* is missing"):
        snapref.open(air, "air")["temp"][0, 0, 0]
    with pytest.raises(snapref.IntegrityError, match="is missing"):
        list(snapref.open(air, "air").array_keys())


def test_a_key_cannot_be_a_file_and_a_folder(air: snapref.Repository) -> None:
    with pytest.raises(snapref.InvalidKeyError, match=r"'temp'.*folder of an array"):
        with air.transaction("air", message="bad") as tx:
            tx.fs.pipe_file("temp", b"xx")
    with pytest.raises(snapref.InvalidKeyError, match=r"'\.zarray' is a zarr metadata document"):
        with air.transaction("air", message="bad") as tx:
            tx.fs.pipe_file("temp/.zarray/x", b"xx")
    assert air.head("air").version == 1
    assert air.manifest(air.head("air")).get("temp") is None


def test_checkout_replaces_nothing_it_should_not(
    air: snapref.Repository, hdf5_file: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work.json"
    air.checkout("air", None, str(work))
    edited = work.read_bytes().replace(b'"air"', b'"air" ')  # an edit not committed yet
    work.write_bytes(edited)
    with pytest.raises(snapref.InvalidInputError, match=r"exists already.*--force"):
        air.checkout("air", 1, str(work))
    assert work.read_bytes() == edited
    air.checkout("air", 1, str(work), overwrite=True)  # asked for: replaced
    assert json.loads(work.read_text())["snapref"]["version"] == 1
    # never a file that is not a reference set (the source HDF5 file, say)
    source = hdf5_file.read_bytes()
    with pytest.raises(snapref.InvalidInputError, match="not a JSON reference file"):
        air.checkout("air", None, str(hdf5_file), overwrite=True)
    assert hdf5_file.read_bytes() == source
    # never into the warehouse or over the catalog, never a folder
    root = Path(air.warehouse.root)
    for target in (root / "catalog.db", root / "snapref.json", root / "objects" / "x.json"):
        with pytest.raises(snapref.InvalidInputError, match="repository's own storage"):
            air.checkout("air", None, str(target), overwrite=True)
    with pytest.raises(snapref.InvalidInputError, match="is a folder"):
        air.checkout("air", None, str(tmp_path) + "/")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("work")) == [
        "work.json",
        "work.json.snapref",
    ]
    assert [s.version for s in air.log("air")] == [1]


def test_commit_says_what_is_wrong_with_the_file_first(
    air: snapref.Repository, tmp_path: Path
) -> None:
    with pytest.raises(snapref.InvalidReferenceError, match=r"missing\.json' does not exist"):
        air.commit_references("air", str(tmp_path / "missing.json"), "m")
    (tmp_path / "folder").mkdir()
    with pytest.raises(snapref.InvalidReferenceError, match="is a folder, and not a parquet"):
        air.commit_references("air", str(tmp_path / "folder"), "m", parent=1)
    # checked out from another repository: say so, and how to commit it anyway
    other = snapref.init(str(tmp_path / "other"))
    other.import_references("air", air.to_references("air"), message="copy")
    other.checkout("air", None, str(tmp_path / "o.json"))
    with pytest.raises(snapref.VersionNotFoundError, match=r"other.*does not hold.*--parent"):
        air.commit_references("air", str(tmp_path / "o.json"), "m")
    assert air.head("air").version == 1
    # a version says why it was made
    for blank in ("", "  \n"):
        with pytest.raises(snapref.InvalidInputError, match="needs a message"):
            air.transaction("air", message=blank)
        with pytest.raises(snapref.InvalidInputError, match="needs a message"):
            air.import_references("new", {".zgroup": "{}"}, message=blank)
    assert air.datasets() == ["air"]


def test_a_commit_that_changes_nothing_still_checks_its_branch(
    air: snapref.Repository, tmp_path: Path
) -> None:
    # an unchanged file committed to a tag, a misspelt branch or a branch elsewhere
    # said "nothing changed" and exited 0
    with air.transaction("air", message="v2") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 2
    air.branch("air", "dev", 1)
    air.tag("air", 2, "t2")
    work = str(tmp_path / "w.json")
    air.checkout("air", None, work)
    for branch, error, match in (
        ("t2", snapref.VersionNotFoundError, "'t2' is a tag"),
        ("dve", snapref.VersionNotFoundError, "no branch 'dve'"),
        ("dev", snapref.ConflictError, "'dev' .* does not hold version 2"),
    ):
        with pytest.raises(error, match=match):
            air.commit_references("air", work, "m", branch=branch)
    assert air.head("air", "dev").version == 1
    # unchanged on its own branch, or on one that moved on from it: nothing to record
    assert air.commit_references("air", work, "m") is None
    with air.transaction("air", message="v3") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 3
    assert air.commit_references("air", work, "m") is None
    assert air.head("air").version == 3
    # a transaction that wrote nothing records nothing, wherever its branch went
    tx = air.transaction("air", message="nothing")
    air.reset("air", 2)
    assert tx.commit() is None and air.head("air").version == 2


def test_a_byte_range_of_a_warehouse_object_is_those_bytes(
    air: snapref.Repository, tmp_path: Path
) -> None:
    # [object url, offset, length] was recorded as the whole object
    with air.transaction("air", message="a note") as tx:
        tx.fs.pipe_file("README", b"0123456789abcdefghij")
    work = tmp_path / "w.json"
    air.checkout("air", None, str(work))
    refs = json.loads(work.read_text())
    url = refs["refs"]["README"][0]
    refs["refs"]["HEAD"] = [url, 0, 5]
    refs["refs"]["TAIL"] = [url, 15, 5]
    refs["refs"]["ALL"] = [url, 0, 20]
    work.write_text(json.dumps(refs))
    snap = air.commit_references("air", str(work), "ranges")
    assert snap is not None and snap.summary["objects_written"] == 2
    fs = air.filesystem("air")
    assert [fs.cat_file(k) for k in ("HEAD", "TAIL", "ALL")] == [
        b"01234",
        b"fghij",
        fs.cat_file("README"),
    ]
    assert fs.info("HEAD")["size"] == 5
    refs["refs"]["BAD"] = [url, 18, 5]
    work.write_text(json.dumps(refs))
    with pytest.raises(
        snapref.InvalidReferenceError, match=r"'BAD'.*\[18, 23\) lies beyond the 20 bytes"
    ):
        air.commit_references("air", str(work), "bad range")


def test_concurrent_commit_is_a_conflict(air: snapref.Repository) -> None:
    tx1 = air.transaction("air", message="first")
    tx2 = air.transaction("air", message="second")
    zarr.open_group(tx1.store, mode="r+")["temp"][0, 0, 0] = 1
    zarr.open_group(tx2.store, mode="r+")["temp"][0, 0, 1] = 2
    assert tx1.commit() is not None
    with pytest.raises(
        snapref.ConflictError, match=r"moved while you worked.*Nothing was committed"
    ):
        tx2.commit()
    assert [s.message for s in air.log("air")] == ["first", "Import air.h5"]
    assert _count(air, "snapshots") == 2


def test_read_only_views_refuse_writes(air: snapref.Repository) -> None:
    fs = air.filesystem("air", 1)
    with pytest.raises(snapref.ReadOnlyError, match="read-only"):
        fs.pipe_file("temp/0.0.0", b"x")
    with pytest.raises(snapref.ReadOnlyError):
        fs.rm("temp/0.0.0")


def test_names_are_checked(air: snapref.Repository) -> None:
    with pytest.raises(snapref.InvalidInputError, match="only digits"):
        air.tag("air", 1, "12")
    with pytest.raises(snapref.InvalidInputError):
        air.branch("air", "a/b")
    for name in ("{{x}}", "a b", "a:b", "a%20b", ".hidden"):
        with pytest.raises(snapref.InvalidInputError, match="letters, digits"):
            air.import_references(name, {".zgroup": "{}"})
    assert air.datasets() == ["air"]
    # two spellings of one name that look alike would be two datasets: only the
    # standard form (NFKC) is taken, and the error offers it
    for name, plain in (("\uff21ir", "Air"), ("\u1112\u1161\u11ab", "\ud55c")):
        with pytest.raises(snapref.InvalidInputError, match=f"use '{plain}'"):
            air.import_references(name, {".zgroup": "{}"})
        with pytest.raises(snapref.InvalidInputError, match=f"use '{plain}'"):
            air.branch("air", name)
    assert air.datasets() == ["air"]
    air.import_references("\ud55c", {".zgroup": "{}"})
    air.import_references("sea-surface_temp.v2", {".zgroup": "{}"})
    air.tag("air", 1, "v1")
    with pytest.raises(snapref.AlreadyExistsError, match="tag named 'v1'"):
        air.tag("air", 1, "v1")
    with pytest.raises(snapref.AlreadyExistsError, match="exists already"):
        air.import_references("air", {".zgroup": "{}"})
    assert air.datasets() == ["air", "sea-surface_temp.v2", "\ud55c"]


def test_crash_before_the_swap_leaves_the_old_version(
    air: snapref.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(air.db, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        with air.transaction("air", message="lost") as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 123
    monkeypatch.undo()
    # the object was written but nothing reaches it; the old version is intact
    assert air.head("air").version == 1
    assert _count(air, "snapshots") == 1
    assert snapref.open(air, "air")["temp"][0, 0, 0] != 123
    # and the same change commits fine afterwards (the object is reused, not rewritten)
    with air.transaction("air", message="again") as tx2:
        zarr.open_group(tx2.store, mode="r+")["temp"][0, 0, 0] = 123
    assert tx2.snapshot is not None
    assert tx2.snapshot.summary["objects_written"] == 0
    assert snapref.open(air, "air")["temp"][0, 0, 0] == 123


def test_a_catalog_of_another_repository_is_refused(
    tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = snapref.init(str(tmp_path / "first"))
    first.import_references("d", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}})
    first.close()
    snapref.init(str(tmp_path / "second")).close()
    theirs = f"sqlite:///{tmp_path / 'first' / 'catalog.db'}"
    with pytest.raises(snapref.CatalogUnavailableError, match="belongs to another repository"):
        snapref.connect(str(tmp_path / "second"), catalog=theirs)
    # a variable left set for one repository while working on another
    monkeypatch.setenv("SNAPREF_CATALOG", theirs)
    result = run("-R", str(tmp_path / "second"), "import", "grid", "x.json", code=1)
    assert "belongs to another repository" in result.stderr
    monkeypatch.delenv("SNAPREF_CATALOG")
    assert [d.name for d in snapref.connect(str(tmp_path / "first")).catalog()] == ["d"]
    assert snapref.connect(str(tmp_path / "second")).catalog() == []
    # the right catalog given again (as with a password) is accepted
    ours = f"sqlite:///{tmp_path / 'second' / 'catalog.db'}"
    assert snapref.connect(str(tmp_path / "second"), catalog=ours).catalog() == []
    # and one catalog records one repository
    with pytest.raises(snapref.AlreadyExistsError, match="holds a snapref catalog already"):
        snapref.init(str(tmp_path / "third"), catalog=theirs)
    assert not (tmp_path / "third" / "snapref.json").exists()


@pytest.mark.parametrize(
    "content",
    [b"{bad", b"[]", b'{"format": 1}', b'{"format": 1, "catalog": 5}', None],
)
def test_a_damaged_repository_file_is_named(tmp_path: Path, content: bytes | None) -> None:
    snapref.init(str(tmp_path / "wh")).close()
    config = tmp_path / "wh" / "snapref.json"
    config.unlink()
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    with pytest.raises(snapref.IntegrityError, match=r"snapref\.json is damaged"):
        snapref.connect(str(tmp_path / "wh"))


def test_a_file_is_no_repository(tmp_path: Path, run: Any) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(snapref.RepositoryNotFoundError, match="No snapref repository"):
        snapref.connect(str(tmp_path / "plain"))
    with pytest.raises(snapref.InvalidInputError, match="a file is in the way"):
        snapref.init(str(tmp_path / "plain"))
    with pytest.raises(snapref.InvalidInputError, match="a file is in the way"):
        snapref.init(str(tmp_path / "plain" / "sub"))
    assert run("-R", str(tmp_path / "plain"), "ls", code=1).stderr.startswith("Error: No snapref")
    assert (tmp_path / "plain").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("{oops", "does not hold JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        (
            '{"zarr_format": 2, "shape": [4, 4], "chunks": [4], "dtype": "<f4"}',
            "a shape and a chunk shape of as many",
        ),
    ],
)
def test_metadata_zarr_cannot_read_is_never_recorded(
    air: snapref.Repository, tmp_path: Path, document: str, complaint: str
) -> None:
    refs = {".zgroup": '{"zarr_format": 2}', "x/.zarray": document}
    with pytest.raises(snapref.InvalidReferenceError, match=rf"'x/\.zarray'.*{complaint}"):
        air.import_references("x", {"version": 1, "refs": refs})
    assert "x" not in air.datasets()
    path = tmp_path / "w.json"
    air.checkout("air", None, str(path))
    doc = json.loads(path.read_text())
    doc["refs"]["temp/.zarray"] = document
    path.write_text(json.dumps(doc))
    with pytest.raises(snapref.InvalidReferenceError, match=rf"'temp/\.zarray'.*{complaint}"):
        air.commit_references("air", str(path), message="typo")
    assert air.head("air").version == 1
    with pytest.raises(snapref.InvalidReferenceError, match="does not hold JSON"):
        with air.transaction("air", message="by hand") as tx:
            tx.fs.pipe_file("temp/.zattrs", b"{oops")
    assert air.head("air").version == 1


def test_a_read_only_catalog_is_a_named_error_without_traceback(
    tmp_path: Path, kerchunk_refs: dict[str, Any]
) -> None:
    import subprocess
    import sys

    from tests.conftest import without_root_powers

    repo = snapref.init(str(tmp_path / "wh"))
    repo.close()
    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    catalog = tmp_path / "wh" / "catalog.db"
    catalog.chmod(0o444)
    try:
        out = subprocess.run(
            [
                *without_root_powers(),
                *(sys.executable, "-m", "snapref", "-R", str(tmp_path / "wh")),
                *("import", "air", str(tmp_path / "air.json")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        catalog.chmod(0o644)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("Error: Cannot write the catalog") and "read-only" in out.stderr
    assert "Traceback" not in out.stderr
    assert snapref.connect(str(tmp_path / "wh")).datasets() == []


def test_unusable_arguments_are_refused_by_name(air: snapref.Repository, run: Any) -> None:
    with pytest.raises(snapref.InvalidInputError, match="at most 255 bytes"):
        air.tag("air", 1, "t" * 256)
    with pytest.raises(snapref.InvalidInputError, match="at most 255 bytes"):
        air.import_references("é" * 128, {"version": 1, "refs": {}})  # 256 bytes
    air.tag("air", 1, "t" * 255)
    refs = {"x/.zarray": '{"zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "<u1"}'}
    refs["x/0"] = ["/data/a.bin", 0, 2**63]  # int64 columns hold up to 2^63 - 1
    with pytest.raises(snapref.InvalidReferenceError, match=r"from 0 to 2\^63 - 1"):
        air.import_references("x", {"version": 1, "refs": refs})
    # text the shell could not decode: one named error, not a traceback per command
    for args in (
        ["tag", "air", "t2", "--author", "\udcff"],
        ["log", "\udcff"],
        ["show", "air@\udcff"],
        ["allow-source", "/tmp/\udcff/"],
    ):
        result = run("-R", air.url, *args, code=1)
        assert "is not valid Unicode text" in result.stderr, args
    assert [r.name for r in air.db.refs("air")] == ["main", "t" * 255]
    assert air.db.get_setting("allowed_sources", []) == []


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda r, p: snapref.init(""), snapref.InvalidInputError, "Give the repository URL"),
        (lambda r, p: snapref.connect("foo://b/wh"), snapref.InvalidInputError, "foo://"),
        (
            lambda r, p: snapref.connect("http://127.0.0.1:1/wh"),
            snapref.RepositoryNotFoundError,
            r"Cannot reach the repository at http://127\.0\.0\.1:1/wh",
        ),
        (
            lambda r, p: r.import_references("x", "foo://b/refs.json"),
            snapref.InvalidInputError,
            r"No fsspec filesystem reads foo:// URLs, as the reference file",
        ),
        (
            lambda r, p: r.import_references(
                "x", {"version": 1, "refs": {".zgroup": "{}", "a": ["foo://b/a.bin", 0, 4]}}
            ),
            snapref.InvalidInputError,
            "as the source of references 'foo://b/'",
        ),
        (
            lambda r, p: r.transaction("air", message="m", allow_sources=["foo://b/"]),
            snapref.InvalidInputError,
            "as the allowed source",
        ),
        (
            lambda r, p: r.checkout("air", 1, "foo://b/w.json"),
            snapref.InvalidInputError,
            "as the output path",
        ),
        (
            lambda r, p: r.checkout("air", 1, "http://127.0.0.1:1/w.json"),
            snapref.InvalidInputError,
            "cannot write them",
        ),
        (
            lambda r, p: r.import_references("x", "http://127.0.0.1:1/refs.json"),
            snapref.InvalidReferenceError,
            "does not exist or cannot be reached",
        ),
        (
            lambda r, p: r.import_references("x", {"version": 1, "refs": {}, "gen": 5}),
            snapref.InvalidReferenceError,
            "'gen' must be a list",
        ),
        (
            lambda r, p: r.import_references(
                "x",
                {
                    "version": 1,
                    "refs": {},
                    "gen": [{"key": "a/{{i}}", "url": "/d", "dimensions": {"i": {"stop": 10**12}}}],
                },
            ),
            snapref.InvalidReferenceError,
            "makes 1,000,000,000,000 keys",
        ),
        (lambda r, p: r.tag("air", 1, 2024), snapref.InvalidInputError, "name must be text"),
        (
            lambda r, p: r.blame("air", "temp", (1.5, 0, 0)),
            snapref.InvalidInputError,
            r"Invalid index \(1\.5, 0, 0\): give whole numbers",
        ),
        (
            lambda r, p: r.blame("air", "temp", 1),
            snapref.InvalidInputError,
            "has 3 dimensions; give 3 indices, not 1",
        ),
        (
            lambda r, p: r.open_dataset("air", engine="h5netcdf"),
            snapref.InvalidInputError,
            "engine is 'zarr', not 'h5netcdf'",
        ),
        (
            lambda r, p: r.resolve("air", as_of="2001-01-01"),
            snapref.VersionNotFoundError,
            r"no version on branch 'main' at 2001-01-01T00:00:00\+00:00; its first version "
            r"there is from 20\d\d-.*: give that time or a later one",
        ),
    ],
)
def test_mistakes_found_by_an_audit_are_named_errors(
    air: snapref.Repository, tmp_path: Path, call: Any, error: type, match: str
) -> None:
    """Each of these was a bare ValueError, TypeError, MemoryError, AttributeError,
    NotImplementedError or aiohttp error (a traceback on the command line), or
    silently made the working directory a repository (init(""))."""
    with pytest.raises(error, match=match):
        call(air, tmp_path)
    assert air.datasets() == ["air"] and air.head("air").version == 1


def test_a_closed_repository_says_so_and_lets_go(tmp_path: Path, catalog_url: str | None) -> None:
    """After close() (or its with block) nothing reconnects behind the user's back: on
    duckdb that would take the file's lock again, for the life of the process."""
    wh = str(tmp_path / "wh")
    with snapref.init(wh, catalog=catalog_url) as repo:
        repo.import_references("d", {"version": 1, "refs": {".zgroup": '{"zarr_format":2}'}})
        group = repo.open("d")
        db = repo.db  # held by the caller: closed with the repository too
        fs = repo.filesystem("d")
    assert repo.closed
    with pytest.raises(snapref.RepositoryClosedError, match="Connect to the repository again"):
        db.refs("d")
    # filesystems unpickled later (dask workers) share a connection; one closing it
    # makes the next connect anew
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.cat_file(".zgroup") == b'{"zarr_format":2}'
    copy.repository.close()
    assert pickle.loads(pickle.dumps(fs)).cat_file(".zgroup") == b'{"zarr_format":2}'
    for call in (repo.datasets, lambda: repo.head("d"), lambda: repo.log("d")):
        with pytest.raises(
            snapref.RepositoryClosedError, match=rf"snapref.connect\('file://{wh}'\)"
        ):
            call()
    assert dict(group.attrs) == {}  # what was opened before reads on
    with snapref.connect(wh) as again:  # on duckdb: the lock is free
        assert again.datasets() == ["d"]


def test_a_failed_init_leaves_no_folder_behind(tmp_path: Path) -> None:
    wh = tmp_path / "new"
    with pytest.raises(snapref.CatalogUnavailableError):
        snapref.init(str(wh / "deeper" / "still"), catalog="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(snapref.CatalogUnavailableError):
        snapref.init(str(wh), catalog="not-a-url")
    assert not wh.exists()
    # a folder that was there before stays, with what it held
    (wh / "keep").mkdir(parents=True)
    with pytest.raises(snapref.CatalogUnavailableError):
        snapref.init(str(wh), catalog="postgresql://nobody@127.0.0.1:1/none")
    assert sorted(p.name for p in wh.iterdir()) == ["keep"]


def test_open_dataset_takes_the_engine_spellings_xarray_does(air: snapref.Repository) -> None:
    from xarray.backends.zarr import ZarrBackendEntrypoint

    for engine in (None, "zarr", ZarrBackendEntrypoint):
        assert "temp" in air.open_dataset("air", engine=engine).data_vars
