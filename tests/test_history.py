"""History and provenance as a user meets them: a dataset edited on several branches
and merged, then asked what changed, who wrote which chunk, and rolled back."""

from __future__ import annotations

import pickle
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapref
from snapref.history import graph_dot, graph_lines, regions
from tests.conftest import one_array_refs, temp_values

# every test here runs on SQLite, PostgreSQL and duckdb catalogs (tests/conftest.py)
pytestmark = pytest.mark.all_catalogs


def _edit(repo: snapref.Repository, message: str, branch: str = "main", **cells: Any) -> Any:
    with repo.transaction("air", message=message, branch=branch) as tx:
        temp = zarr.open_group(tx.store, mode="r+")["temp"]
        for _, (index, value) in cells.items():
            temp[index] = value
    return tx.snapshot


@pytest.fixture
def story(air: snapref.Repository) -> dict[str, Any]:
    """v1 import; v2 main masks a glitch; v3 qc fixes chunk 0.0.0 and the units;
    v4 main edits chunk 3.1.2; v5 merges qc into main."""
    repo = air
    v = {"v1": repo.head("air")}
    v["v2"] = _edit(repo, "Mask glitch", a=((3, slice(10, 12), slice(20, 25)), np.nan))
    repo.branch("air", "qc")
    with repo.transaction("air", message="QC fix", branch="qc", author="Qc <qc@x>") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["temp"][0, 0, 0] = -1
        g["temp"].attrs["units"] = "degK"
    v["v3"] = tx.snapshot
    v["v4"] = _edit(repo, "Fix last day", a=((6, 30, 50), 5))
    result = repo.merge("air", "qc", message="Merge QC")
    v["v5"] = result.snapshot
    v["repo"] = repo
    return v


def test_versions_and_parents_of_a_merge(story: dict[str, Any]) -> None:
    repo, v5 = story["repo"], story["v5"]
    assert [s.version for s in (story[f"v{i}"] for i in range(1, 6))] == [1, 2, 3, 4, 5]
    assert v5.parents == (story["v4"].id, story["v3"].id)
    assert [s.version for s in repo.log("air")] == [5, 4, 2, 1]  # first parents
    assert [s.version for s in repo.log("air", "qc")] == [3, 2, 1]
    temp = snapref.open(repo, "air")["temp"]
    assert temp[0, 0, 0] == -1 and temp[6, 30, 50] == 5 and np.isnan(temp[3, 10, 20])
    assert temp.attrs["units"] == "degK"
    assert temp[7, 39, 59] == temp_values()[7, 39, 59]


def test_a_log_reads_like_a_list_of_the_recorded_snapshots(story: dict[str, Any]) -> None:
    repo = story["repo"]
    with repo.transaction(
        "air", message='Say "why"\\n, \u00e9\nsecond line', author="Zo\u00eb <z@x>"
    ) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][1, 1, 1] = 7
    log = repo.log("air")
    assert len(log) == 5 and isinstance(log, snapref.Log)
    # each entry equals the snapshot read on its own, every field of it
    for entry, version in zip(log, [6, 5, 4, 2, 1], strict=True):
        alone = repo.resolve("air", version)
        assert entry == alone and entry.to_json() == alone.to_json()
        assert entry.timestamp == alone.timestamp and entry.parents == alone.parents
    assert (
        log[0].message == 'Say "why"\\n, \u00e9\nsecond line' and log[0].author == "Zo\u00eb <z@x>"
    )
    assert log[-1] == story["v1"] and log[1] == story["v5"]
    assert log[1:3] == [story["v5"], story["v4"]]
    assert log == list(log) and log == repo.log("air") and log != repo.log("air", "qc")
    assert [s.version for s in reversed(log)] == [1, 2, 4, 5, 6] and story["v2"] in log
    assert repr(log) == "Log([v6, v5, v4, v2, v1])"
    assert log + [] == list(log) and [] + log == list(log)  # noqa: RUF005 (the + itself)
    # pickled as the list of its snapshots, fields and all: no catalog connection travels
    copied = pickle.loads(pickle.dumps(log))
    assert copied == list(log) and [s.to_json() for s in copied] == [s.to_json() for s in log]
    with pytest.raises(IndexError):
        log[5]


def test_diff_reports_chunks_regions_and_metadata(story: dict[str, Any]) -> None:
    repo = story["repo"]
    d = repo.diff("air", 1, 2)
    assert d.chunks["temp"].modified == ["temp/1.0.1"]
    assert d.chunks["temp"].regions == ["temp[2:4, 0:20, 20:40]"]
    assert d.metadata == {} and d.arrays_added == [] and d.arrays_changed == ["temp"]
    d = repo.diff("air", 2, 3)
    assert d.metadata == {"temp/.zattrs": {"units": ["K", "degK"]}}
    assert d.chunks["temp"].modified == ["temp/0.0.0"]
    # two versions on different branches, neither an ancestor of the other
    d = repo.diff("air", 3, 4)
    assert sorted(d.chunks["temp"].modified) == ["temp/0.0.0", "temp/3.1.2"]
    assert d.metadata["temp/.zattrs"]["units"] == ["degK", "K"]
    assert repo.diff("air", 5, 5).is_empty


def test_diff_of_added_and_removed_arrays_and_groups(story: dict[str, Any]) -> None:
    repo = story["repo"]
    with repo.transaction("air", message="add") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g.create_group("extra")
        a = g.create_array("extra/mask", shape=(4, 4), chunks=(2, 2), dtype="u1")
        a[0:2, :] = 1
    d = repo.diff("air", 5, 6)
    assert d.arrays_added == ["extra/mask"] and d.groups_added == ["extra"]
    assert d.chunks["extra/mask"].added == ["extra/mask/0.0", "extra/mask/0.1"]
    assert d.chunks["extra/mask"].regions == ["extra/mask[0:2, 0:4]"]
    back = repo.diff("air", 6, 5)
    assert back.arrays_removed == ["extra/mask"] and back.groups_removed == ["extra"]
    assert back.chunks["extra/mask"].removed == ["extra/mask/0.0", "extra/mask/0.1"]


def test_a_group_moving_from_zarr_v2_to_v3_is_neither_added_nor_removed(
    air: snapref.Repository,
) -> None:
    with air.transaction("air", message="root as zarr v3") as tx:
        tx.fs.rm(".zgroup")
        tx.fs.pipe_file("zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    d = air.diff("air", 1, 2)
    assert (d.groups_added, d.groups_removed) == ([], [])
    assert set(d.metadata) == {".zgroup", "zarr.json"}


def test_regions_merge_neighbouring_chunks_into_boxes() -> None:
    square = [(i, j) for i in range(3) for j in range(2)]
    assert regions([*square, (9, 9)]) == [((0, 3), (0, 2)), ((9, 10), (9, 10))]
    assert regions([(0,), (1,), (3,)]) == [((0, 2),), ((3, 4),)]
    assert regions([]) == []


def test_blame_follows_merges_and_says_where_bytes_are(
    story: dict[str, Any], kerchunk_refs: dict[str, Any]
) -> None:
    repo = story["repo"]
    (line,) = repo.blame("air", "temp", (0, 0, 0), history=True)
    # the merge carried qc's value: the qc commit wrote it, not the merge
    assert line.snapshot.version == 3 and line.snapshot.author == "Qc <qc@x>"
    assert line.snapshot.message == "QC fix"
    assert line.kind == "object" and line.digest and line.url.endswith(line.digest[2:])
    assert [s.version for s in line.history] == [5, 3, 1]
    (line,) = repo.blame("air", "temp", (3, 10, 20))
    assert (line.snapshot.version, line.region) == (2, "temp[2:4, 0:20, 20:40]")
    (line,) = repo.blame("air", "temp", (-1, 0, -1))
    assert line.snapshot.version == 1 and line.kind == "virtual"
    url, offset, length = kerchunk_refs["refs"]["temp/3.1.2"]
    (line,) = repo.blame("air", "temp", (7, 39, 59), version=2)
    assert (line.url, line.offset, line.length) == ("file://" + url, offset, length)
    # on qc, chunk 3.1.2 was never changed after the import
    (line,) = repo.blame("air", "temp", (6, 30, 50), version="qc")
    assert line.snapshot.version == 1
    everything = {b.key: b.snapshot.version for b in repo.blame("air", "temp")}
    assert len(everything) == 24
    assert everything["temp/3.1.2"] == 4 and everything["temp/0.1.0"] == 1


def test_blame_of_a_bad_index_or_array_is_a_clear_error(story: dict[str, Any]) -> None:
    repo = story["repo"]
    with pytest.raises(snapref.InvalidInputError, match="3 dimensions"):
        repo.blame("air", "temp", (1, 2))
    with pytest.raises(snapref.InvalidInputError, match="out of bounds"):
        repo.blame("air", "temp", (8, 0, 0))
    with pytest.raises(snapref.NotFoundError, match="no array 'nope'"):
        repo.blame("air", "nope")


def test_sources_and_the_reverse_query(story: dict[str, Any], hdf5_file: Path) -> None:
    repo = story["repo"]
    (v1,) = repo.source_files("air", 1)
    assert v1.url == "file://" + str(hdf5_file) and v1.chunks == 24
    (v5,) = repo.source_files("air", 5)
    assert v5.chunks == 21  # three chunks now live in the warehouse
    assert v5.bytes < v1.bytes
    using = repo.versions_using(str(hdf5_file))
    assert [s.version for s, _ in using] == [1, 2, 3, 4, 5]
    assert [u.chunks for _, u in using] == [24, 23, 22, 22, 21]
    assert repo.versions_using("s3://elsewhere/x.nc") == []
    # a folder, as a path or a URL ending in '/', matches every file under it
    folder = f"{hdf5_file.parent}/"
    assert [s.version for s, _ in repo.versions_using(folder)] == [1, 2, 3, 4, 5]
    assert [s.version for s, _ in repo.versions_using("file://" + folder)] == [1, 2, 3, 4, 5]


def test_merge_conflicts_are_reported_or_resolved(story: dict[str, Any]) -> None:
    repo = story["repo"]
    repo.branch("air", "exp", 5)
    _edit(repo, "exp edit", branch="exp", a=((0, 0, 0), 42))  # v6
    _edit(repo, "main edit", a=((0, 0, 1), 9))  # v7
    with pytest.raises(snapref.MergeConflictError) as err:
        repo.merge("air", "exp")
    assert err.value.keys == ["temp/0.0.0"]
    assert isinstance(err.value, snapref.ConflictError)
    assert repo.head("air").version == 7  # nothing committed
    # theirs: exp's chunk wins, and the merge has two parents
    result = repo.merge("air", "exp", strategy="theirs", message="take exp")
    assert result.base.version == 5 and result.snapshot.version == 8
    assert result.snapshot.parents[1] == repo.head("air", "exp").id
    temp = snapref.open(repo, "air")["temp"]
    assert temp[0, 0, 0] == 42 and temp[0, 0, 1] == temp_values()[0, 0, 1]
    assert repo.merge("air", "exp").snapshot is None  # already merged
    # ours: main's chunk stays, and the merge is recorded all the same, so that the
    # next merge of that branch starts from it (no conflict again, as git's -s ours)
    repo.reset("air", 7)
    ours = repo.merge("air", "exp", strategy="ours")
    assert ours.conflicts == ["temp/0.0.0"] and ours.snapshot is not None
    assert len(ours.snapshot.parents) == 2 and repo.changes(ours.snapshot) == {}
    assert snapref.open(repo, "air")["temp"][0, 0, 0] == -1  # main's (the QC fix)
    assert repo.merge("air", "exp").snapshot is None


def test_merge_without_overlap_takes_both_sides(story: dict[str, Any]) -> None:
    repo = story["repo"]
    repo.branch("air", "a", 5)
    _edit(repo, "on a", branch="a", x=((1, 0, 0), 11))
    _edit(repo, "on main", x=((7, 0, 0), 77))
    snap = repo.merge("air", "a").snapshot
    assert snap.message == "Merge a into main" and len(snap.parents) == 2
    temp = snapref.open(repo, "air")["temp"]
    assert (temp[1, 0, 0], temp[7, 0, 0]) == (11, 77)
    # merging main back into a is now up to date the other way
    back = repo.merge("air", "main", into="a")
    assert back.snapshot is not None and back.conflicts == []
    assert snapref.open(repo, "air", "a")["temp"][7, 0, 0] == 77


def test_reset_keeps_old_head_and_as_of(story: dict[str, Any]) -> None:
    repo = story["repo"]
    time.sleep(0.002)
    before = datetime.now(UTC)
    time.sleep(0.002)
    old = repo.reset("air", 2, message="undo merge", author="Ops <ops@x>")
    assert old.version == 5 and repo.head("air").version == 2
    assert repo.resolve("air", old.id).version == 5  # still readable by id
    assert repo.resolve("air", as_of=before).version == 5  # history is not rewritten
    assert repo.resolve("air", as_of=datetime.now(UTC)).version == 2
    last = repo.audit("air")[-1]
    assert (last.action, last.ref, last.author, last.message) == (
        "reset",
        "main",
        "Ops <ops@x>",
        "undo merge",
    )
    assert (last.old_snapshot, last.new_snapshot) == (old.id, story["v2"].id)
    entries = len(repo.audit("air"))
    assert repo.reset("air", 2).version == 2  # already there: no move, no entry
    assert len(repo.audit("air")) == entries
    # the next commit continues from the reset head
    assert _edit(repo, "after reset", a=((0, 0, 0), 3)).parents == (story["v2"].id,)


def test_revert_undoes_one_version(story: dict[str, Any]) -> None:
    repo = story["repo"]
    snap = repo.revert("air", 2)
    assert snap.version == 6 and snap.message == "Revert version 2: Mask glitch"
    temp = snapref.open(repo, "air")["temp"]
    assert temp[3, 10, 20] == temp_values()[3, 10, 20]
    assert temp[0, 0, 0] == -1  # later changes stay
    assert repo.audit("air")[-1].action == "revert"
    with pytest.raises(snapref.InvalidInputError, match="first version"):
        repo.revert("air", 1)
    _edit(repo, "touch again", a=((6, 30, 50), 8))
    with pytest.raises(snapref.MergeConflictError, match="changed again") as err:
        repo.revert("air", 4)
    assert err.value.keys == ["temp/3.1.2"]


def test_rebase_replays_a_transaction_onto_a_moved_branch(air: snapref.Repository) -> None:
    repo = air
    tx = repo.transaction("air", message="slow writer", rebase=True)
    zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    _edit(repo, "fast writer", a=((7, 39, 59), 2))
    snap = tx.commit()
    assert snap.version == 3 and repo.db.snapshot(snap.parents[0]).message == "fast writer"
    temp = snapref.open(repo, "air")["temp"]
    assert (temp[0, 0, 0], temp[7, 39, 59]) == (1, 2)
    # overlapping edits are a conflict naming the key, and nothing is committed
    tx = repo.transaction("air", message="slow again", rebase=True)
    zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 1] = 5
    _edit(repo, "fast again", a=((0, 0, 2), 6))
    with pytest.raises(snapref.MergeConflictError) as err:
        tx.commit()
    assert err.value.keys == ["temp/0.0.0"] and repo.head("air").version == 4
    # without rebase=True a moved branch stays a plain conflict
    tx = repo.transaction("air", message="no rebase")
    zarr.open_group(tx.store, mode="r+")["temp"][5, 0, 0] = 5
    _edit(repo, "fast", a=((7, 0, 0), 6))
    with pytest.raises(snapref.ConflictError, match="moved while you worked"):
        tx.commit()


def _sparse_int_array(repo: snapref.Repository) -> None:
    """Dataset ``g``: array ``s`` (int32, 2 x 2 chunks of 2 x 2) with only chunk 0.0."""
    repo.import_references("g", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}})
    with repo.transaction("g", message="sparse") as tx:
        s = zarr.open_group(tx.store, mode="r+").create_array(
            "s", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0, compressors=None
        )
        s[0:2, 0:2] = 1


def _make_float(store: Any) -> None:
    """Recreate ``s`` as float32 with the same values: a new definition of the array."""
    g = zarr.open_group(store, mode="r+")
    values = g["s"][:]
    del g["s"]
    g.create_array("s", shape=(4, 4), chunks=(2, 2), dtype="f4", fill_value=0, compressors=None)[
        :
    ] = values


def test_rebase_never_mixes_chunks_of_two_array_definitions(air: snapref.Repository) -> None:
    repo = air
    _sparse_int_array(repo)
    # a new chunk written as int32 cannot join the array once it is float32
    slow = repo.transaction("g", message="new block", rebase=True)
    zarr.open_group(slow.store, mode="r+")["s"][2:4, 2:4] = 5
    with repo.transaction("g", message="to float") as tx:
        _make_float(tx.store)
    with pytest.raises(snapref.MergeConflictError, match="another definition") as err:
        slow.commit()
    assert {"s/.zarray", "s/1.1"} <= set(err.value.keys)
    s = snapref.open(repo, "g")["s"]
    assert s.dtype == np.float32 and s[3, 3] == 0 and repo.head("g").message == "to float"
    # new attributes or a new shape are no new definition: chunks rebase onto them
    slow = repo.transaction("g", message="another block", rebase=True)
    zarr.open_group(slow.store, mode="r+")["s"][2:4, 0:2] = 3
    with repo.transaction("g", message="units and one more row") as tx:
        s = zarr.open_group(tx.store, mode="r+")["s"]
        s.attrs["units"] = "K"
        s.resize((6, 4))
    assert slow.commit() is not None
    s = snapref.open(repo, "g")["s"]
    assert (s.shape, s.attrs["units"], s[3, 0], s[0, 0]) == ((6, 4), "K", 3, 1)
    # an array deleted on the branch takes no chunks written meanwhile
    slow = repo.transaction("g", message="late write", rebase=True)
    zarr.open_group(slow.store, mode="r+")["s"][0, 3] = 7
    with repo.transaction("g", message="drop s") as tx:
        del zarr.open_group(tx.store, mode="r+")["s"]
    with pytest.raises(snapref.MergeConflictError, match=r"s/0\.1"):
        slow.commit()
    assert "s" not in snapref.open(repo, "g")


def _v3_series(repo: snapref.Repository) -> None:
    """Dataset ``v3``: a zarr v3 array ``t`` of 4 values in chunks of 2, and attributes."""
    repo.import_references("v3", {"version": 1, "refs": {}}, message="empty")
    with repo.transaction("v3", message="series") as tx:
        t = zarr.open_group(tx.store, mode="w", zarr_format=3).create_array(
            "t", shape=(4,), chunks=(2,), dtype="f8", fill_value=0.0
        )
        t[:] = [1, 2, 3, 4]
        t.attrs.update({"units": "K", "source": "model"})


def test_zarr_v3_shape_and_attributes_merge_like_v2s_two_documents(
    air: snapref.Repository,
) -> None:
    repo = air
    _v3_series(repo)
    # rebase: an attribute set while another writer appended (one zarr.json for both)
    slow = repo.transaction("v3", message="qc", rebase=True)
    zarr.open_group(slow.store, mode="r+")["t"].attrs["qc"] = "checked"
    with repo.transaction("v3", message="append") as tx:
        t = zarr.open_group(tx.store, mode="r+")["t"]
        t.append(np.array([5.0, 6.0]))
    assert slow.commit() is not None
    t = snapref.open(repo, "v3")["t"]
    assert t[:].tolist() == [1, 2, 3, 4, 5, 6]
    assert dict(t.attrs) == {"units": "K", "source": "model", "qc": "checked"}
    # merge: one branch appends, the other changes an attribute and adds one
    repo.branch("v3", "fix")
    with repo.transaction("v3", message="append more") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].append(np.array([7.0]))
    with repo.transaction("v3", message="units", branch="fix") as tx:
        attrs = zarr.open_group(tx.store, mode="r+")["t"].attrs
        attrs.update({"units": "degC", "checked_by": "ana"})
    assert repo.merge("v3", "fix").conflicts == []
    t = snapref.open(repo, "v3")["t"]
    assert t[:].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert (t.attrs["units"], t.attrs["checked_by"], t.attrs["qc"]) == ("degC", "ana", "checked")
    # a chunk written beyond where the other side cut the array stays a conflict,
    # even though the two zarr.json documents merge (shape from one, attribute other)
    slow = repo.transaction("v3", message="late value and a note", rebase=True)
    t = zarr.open_group(slow.store, mode="r+")["t"]
    t[6] = 70.0
    t.attrs["note"] = "late"
    with repo.transaction("v3", message="cut to 4") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].resize((4,))
    with pytest.raises(snapref.MergeConflictError, match="cut shorter") as err:
        slow.commit()
    assert "t/c/3" in err.value.keys
    assert snapref.open(repo, "v3")["t"].shape == (4,)
    with repo.transaction("v3", message="back to 7") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].resize((7,))
    assert snapref.open(repo, "v3")["t"][4:].tolist() == [0.0, 0.0, 0.0]
    # the same attribute set differently on both sides stays a conflict
    repo.branch("v3", "other")
    with repo.transaction("v3", message="kelvin again") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].attrs["units"] = "K"
    with repo.transaction("v3", message="fahrenheit", branch="other") as tx:
        zarr.open_group(tx.store, mode="r+")["t"].attrs["units"] = "degF"
    with pytest.raises(snapref.MergeConflictError) as err:
        repo.merge("v3", "other")
    assert err.value.keys == ["t/zarr.json"]


def test_merge_takes_an_array_redefined_on_one_side_whole(air: snapref.Repository) -> None:
    repo = air
    _sparse_int_array(repo)
    repo.branch("g", "f")
    with repo.transaction("g", message="to float", branch="f") as tx:
        _make_float(tx.store)
    with repo.transaction("g", message="new block") as tx:
        zarr.open_group(tx.store, mode="r+")["s"][2:4, 2:4] = 5
    with pytest.raises(snapref.MergeConflictError) as err:
        repo.merge("g", "f")
    assert err.value.keys == ["s/.zarray", "s/0.0", "s/1.1"]
    main = repo.head("g")
    repo.merge("g", "f", strategy="theirs")
    s = snapref.open(repo, "g")["s"]
    expected = np.zeros((4, 4), "f4")
    expected[0:2, 0:2] = 1
    assert s.dtype == np.float32 and np.array_equal(s[:], expected)  # f's s, whole
    repo.reset("g", main.version)
    repo.merge("g", "f", strategy="ours")
    s = snapref.open(repo, "g")["s"]
    assert s.dtype == np.int32 and s[3, 3] == 5  # main's s, whole


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_chunk_written_where_the_other_side_cut_the_array_conflicts(
    tmp_path: Path, zarr_format: int
) -> None:
    # one side resizes a (8, 8) array to (4, 8) while the other writes a[6, 6]: the
    # chunk was kept outside the array and read as 42 once the array grew again
    repo = snapref.init(str(tmp_path / "wh"))
    root = {
        2: {".zgroup": '{"zarr_format": 2}'},
        3: {"zarr.json": '{"zarr_format": 3, "node_type": "group"}'},
    }
    repo.import_references("d", root[zarr_format], message="empty")
    with repo.transaction("d", message="array") as tx:
        a = zarr.create_array(
            tx.store, name="a", shape=(8, 8), chunks=(4, 4), dtype="f4", zarr_format=zarr_format
        )
        a[0:4, :] = 1
    repo.branch("d", "cut")
    with repo.transaction("d", message="cut", branch="cut") as tx:
        zarr.open_group(tx.store, mode="r+")["a"].resize((4, 8))
    writer = repo.transaction("d", message="write", rebase=True)
    zarr.open_group(writer.store, mode="r+")["a"][6, 6] = 42
    chunk = "a/1.1" if zarr_format == 2 else "a/c/1/1"
    with repo.transaction("d", message="write") as tx:
        zarr.open_group(tx.store, mode="r+")["a"][6, 6] = 42
    with pytest.raises(snapref.MergeConflictError) as err:
        repo.merge("d", "cut")
    assert err.value.keys == [chunk]
    repo.merge("d", "cut", strategy="ours")  # either way, the chunk is outside: dropped
    with repo.transaction("d", message="grow") as tx:
        zarr.open_group(tx.store, mode="r+")["a"].resize((8, 8))
    grown = snapref.open(repo, "d")["a"][:]
    assert grown[6, 6] == 0 and grown[0:4].tolist() == np.ones((4, 8)).tolist()
    # a transaction rebased onto the cut is refused the same way
    repo.reset("d", 2)
    with repo.transaction("d", message="cut on main") as tx:
        zarr.open_group(tx.store, mode="r+")["a"].resize((4, 8))
    with pytest.raises(snapref.MergeConflictError, match="outside an array that one side cut"):
        writer.commit()
    assert snapref.open(repo, "d")["a"].shape == (4, 8)


def test_diff_regions_of_an_array_cut_short_rechunked_or_0d(tmp_path: Path) -> None:
    # a removed chunk's region was computed with the new shape ('a[8:8, 0:8]'), a
    # rechunk named a quarter of what changed, and a 0-d v2 array crashed diff and blame
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("d", {".zgroup": '{"zarr_format": 2}'}, message="empty")
    with repo.transaction("d", message="arrays") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g.create_array("a", shape=(12, 8), chunks=(4, 8), dtype="i2")[:] = 1
        g.create_array("s", shape=(), dtype="f8")[()] = 1.0
    with repo.transaction("d", message="cut and set") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        g["a"].resize((8, 8))
        g["s"][()] = 2.0
    diff = repo.diff("d", 2, 3)
    assert diff.chunks["a"].removed == ["a/2.0"] and diff.chunks["a"].regions == ["a[8:12, 0:8]"]
    assert diff.chunks["s"].modified == ["s/0"] and diff.chunks["s"].regions == ["s[]"]
    assert [(b.key, b.snapshot.version) for b in repo.blame("d", "s")] == [("s/0", 3)]
    with repo.transaction("d", message="rechunk") as tx:
        g = zarr.open_group(tx.store, mode="r+")
        del g["a"]
        g.create_array("a", shape=(8, 8), chunks=(2, 2), dtype="i2")[:] = 3
    assert "a[0:8, 0:8]" in repo.diff("d", 3, 4).chunks["a"].regions


def test_audit_lists_every_ref_change(story: dict[str, Any]) -> None:
    repo = story["repo"]
    repo.tag("air", 5, "v1.0")
    actions = [(e.ref, e.action) for e in repo.audit("air")]
    assert actions == [
        ("main", "create"),
        ("main", "commit"),
        ("qc", "branch"),
        ("qc", "commit"),
        ("main", "commit"),
        ("main", "merge"),
        ("v1.0", "tag"),
    ]
    merge = repo.audit("air")[5]
    assert (merge.old_snapshot, merge.new_snapshot) == (story["v4"].id, story["v5"].id)
    assert merge.message == "Merge QC"


def test_graph_and_log_keep_their_shape_with_any_message(air: snapref.Repository) -> None:
    # a backslash at the cut (40th character) once escaped the label's closing quote,
    # and a message of several lines broke the layout of log and --graph
    message = 'Copied from D:\\climate\\2024\\raw\\files\\x\\ to the "archive"\nsecond line'
    assert message[39] == "\\"
    with air.transaction("air", message=message) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = 1
    dot = graph_dot(air, "air")
    node = re.compile(r'  "[0-9a-f]{32}" \[label="(?:[^"\\]|\\.)*"\];')
    labels = [line for line in dot.splitlines() if "[label=" in line and "ref:" not in line]
    assert len(labels) == 2 and all(node.fullmatch(line) for line in labels), labels
    assert graph_lines(air, "air")[0].endswith('to the "archive" (main)')
    assert len(graph_lines(air, "air")) == 2
    assert snapref.open(air, "air", 2) is not None and air.head("air").message == message


def test_graph_bridges_edges_to_lanes_further_away(tmp_path: Path) -> None:
    # with a branch between them, a merge's edge (and a branch's start) to a lane two
    # columns away is drawn across that branch, never as a lone \\ or / beside it
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("d", one_array_refs("v", 4, 1, "<u2"), message="import")
    repo.branch("d", "a")
    repo.branch("d", "b")

    def commit(branch: str, i: int, message: str) -> str:
        with repo.transaction("d", message=message, branch=branch) as tx:
            tx.fs.pipe_file(f"v/{i}", np.uint16(i + 1).tobytes())
        return repo.head("d", branch).id[:8]

    on_a, on_b, on_main = (
        commit("a", 1, "on a"),
        commit("b", 2, "on b"),
        commit("main", 3, "on main"),
    )
    merges = [repo.merge("d", "b", "main").snapshot]
    more_a = commit("a", 0, "more a")  # branch a's line runs past the first merge
    merges.append(repo.merge("d", "a", "main").snapshot)
    merge_b, merge_a = (m.id[:8] for m in merges if m is not None)
    first = repo.resolve("d", 1).id[:8]
    assert graph_lines(repo, "d") == [
        f"*  v7 {merge_a} Merge a into main (main)",
        "| \\",
        f"| *  v6 {more_a} more a (a)",
        f"* |  v5 {merge_b} Merge b into main",
        "|-+-\\",
        f"* | |  v4 {on_main} on main",
        f"| | *  v3 {on_b} on b (b)",
        f"| * |  v2 {on_a} on a",
        "| / |",
        "|---/",
        f"*  v1 {first} import",
    ]


def test_graph_draws_branches_and_merges(story: dict[str, Any]) -> None:
    lines = graph_lines(story["repo"], "air")
    assert lines == [
        f"*  v5 {story['v5'].id[:8]} Merge QC (main)",
        "| \\",
        f"* |  v4 {story['v4'].id[:8]} Fix last day",
        f"| *  v3 {story['v3'].id[:8]} QC fix (qc)",
        "| /",
        f"*  v2 {story['v2'].id[:8]} Mask glitch",
        f"*  v1 {story['v1'].id[:8]} Import air.h5",
    ]
    dot = graph_dot(story["repo"], "air")
    assert dot.startswith('digraph "air" {')
    assert f'"{story["v5"].id}" -> "{story["v3"].id}" [style=dashed];' in dot
    assert f'"{story["v5"].id}" -> "{story["v4"].id}";' in dot
