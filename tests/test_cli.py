"""The command line, as in the "Mutable Kerchunk References" post: checkout a plain
reference file, edit it with fsspec + zarr, commit it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import snapref
from snapref.cli import cli
from tests.conftest import temp_values


def _edit_like_the_blog(path: str) -> None:
    fs = fsspec.filesystem("reference", fo=path, asynchronous=True, skip_instance_cache=True)
    g = zarr.open_group(zarr.storage.FsspecStore(fs, path=""), mode="r+", zarr_format=2)
    g["temp"][1, 0:4, 0:4] /= 2
    fs.save_json(path)


def test_summary_lines_count_metadata_documents(
    run: Any, tmp_path: Path, kerchunk_refs: dict[str, Any]
) -> None:
    """The commit and log lines say how many zarr metadata documents a version
    changed, beside its chunks: an attribute edit is not "+0 ~0 -0 chunks"."""
    from snapref.keys import is_metadata_key

    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    meta = sum(1 for k in kerchunk_refs["refs"] if is_metadata_key(k))
    chunks = len(kerchunk_refs["refs"]) - meta
    run("init")
    out = run("import", "air", "air.json", "-m", "Adopt").output
    assert f": +{chunks} ~0 -0 chunks, {meta} metadata documents, " in out
    run("checkout", "air", "-o", "work.json")
    fs = fsspec.filesystem("reference", fo="work.json", asynchronous=True, skip_instance_cache=True)
    g = zarr.open_group(zarr.storage.FsspecStore(fs, path=""), mode="r+", zarr_format=2)
    g["temp"].attrs["qc"] = "v1"
    g["temp"][1, 0:4, 0:4] /= 2
    fs.save_json("work.json")
    out = run("commit", "air", "work.json", "-m", "QC").output
    assert ": +0 ~1 -0 chunks, 1 metadata document, " in out
    log = run("log", "air").output
    assert "    +0 ~1 -0 chunks, 1 metadata document, " in log
    assert f"    +{chunks} ~0 -0 chunks, {meta} metadata documents, " in log


def test_blog_workflow(run: Any, tmp_path: Path, kerchunk_refs: dict[str, Any]) -> None:
    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    run("init")
    out = run("import", "air", "air.json", "-m", "Adopt air.h5").output
    assert "Imported air version 1" in out
    run("checkout", "air", "-o", "work.json")
    _edit_like_the_blog("work.json")
    out = run("commit", "air", "work.json", "-m", "Halve a patch", "--prop", "ticket=QC-1").output
    assert "Committed air version 2" in out and "~1" in out
    # a second edit of the same file continues from the new version
    _edit_like_the_blog("work.json")
    run("commit", "air", "work.json", "-m", "Halve again")

    log = json.loads(run("log", "air", "--json").output)
    assert [e["version"] for e in log] == [3, 2, 1]
    for field in (
        "version",
        "id",
        "timestamp",
        "author",
        "message",
        "parents",
        "branch",
        "properties",
        "summary",
    ):
        assert field in log[0]
    for field in ("chunks_added", "chunks_modified", "chunks_removed", "bytes_written"):
        assert field in log[0]["summary"]
    assert log[1]["properties"] == {"ticket": "QC-1"}
    assert log[1]["summary"]["chunks_modified"] == 1
    assert log[1]["parents"] == [log[2]["id"]]
    assert log[0]["timestamp"].endswith("Z")

    repo = snapref.connect(str(tmp_path / "wh"))
    expected = temp_values()
    np.testing.assert_array_equal(snapref.open(repo, "air", 1)["temp"][:], expected)
    expected[1, 0:4, 0:4] /= 2
    np.testing.assert_array_equal(snapref.open(repo, "air", 2)["temp"][:], expected)
    expected[1, 0:4, 0:4] /= 2
    np.testing.assert_array_equal(snapref.open(repo, "air", 3)["temp"][:], expected)

    out = run("show", "air@2", "--json").output
    shown = json.loads(out)
    assert shown["changes"] == {"temp/0.0.0": "M"}
    assert shown["sources"] == [f"file://{tmp_path}/source/"]
    assert f'"file://{tmp_path}/source/"' in out  # URLs as written, not file:\/\/
    assert "Changed keys (1)" in run("show", "air@2").output


def _init_with_air(run: Any, tmp_path: Path, kerchunk_refs: Any) -> None:
    """A repository (SNAPREF_REPO) holding dataset air, imported from air.json."""
    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    run("init")
    run("import", "air", "air.json")


def test_stale_checkout_is_a_conflict(run: Any, tmp_path: Path, kerchunk_refs: Any) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    run("checkout", "air@1", "-o", "a.json")
    run("checkout", "air@1", "-o", "b.json")
    _edit_like_the_blog("a.json")
    _edit_like_the_blog("b.json")
    run("commit", "air", "a.json", "-m", "a")
    result = run("commit", "air", "b.json", "-m", "b", code=1)
    assert "Error: Branch 'main' of dataset 'air' moved" in result.stderr
    # the user can commit to a branch started from where the checkout came from
    run("branch", "air", "b-edits", "--from", "1")
    run("commit", "air", "b.json", "-m", "b", "--branch", "b-edits")
    branches = json.loads(run("branch", "air", "--json").output)
    assert {b["name"]: b["version"] for b in branches} == {"b-edits": 3, "main": 2}


def test_a_commit_that_landed_says_so_when_its_record_cannot_be_updated(
    run: Any, tmp_path: Path, kerchunk_refs: Any
) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    run("checkout", "air", "-o", "work.json")
    _edit_like_the_blog("work.json")
    sidecar = tmp_path / "work.json.snapref"
    sidecar.unlink()
    sidecar.mkdir()  # cannot be written, even by root
    result = run("commit", "air", "work.json", "-m", "Fix day 5", "--parent", "1")
    assert result.stdout.startswith("Committed air version 2 (")
    assert "Warning: Committed air version 2, but could not update" in result.stderr
    assert "--parent 2" in result.stderr
    assert [s["version"] for s in json.loads(run("log", "air", "--json").output)] == [2, 1]


def test_tags_and_time_travel_by_name(run: Any, tmp_path: Path, kerchunk_refs: Any) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    run("tag", "air@1", "v2025-qc")
    tags = json.loads(run("tag", "air", "--json").output)
    assert tags == [{"name": "v2025-qc", "kind": "tag", "version": 1, "id": tags[0]["id"]}]
    run("checkout", "air@v2025-qc", "-o", "t.json")
    assert json.loads((tmp_path / "t.json.snapref").read_text())["version"] == 1
    assert [d["name"] for d in json.loads(run("ls", "--json").output)] == ["air"]


def test_errors_exit_1_with_a_message(run: Any, tmp_path: Path) -> None:
    run("init")
    r = run("log", "nope", code=1)
    assert r.stderr.startswith("Error: No dataset 'nope'")
    r = run("import", "x", "missing.json", code=1)
    assert "Error: Reference file 'missing.json' does not exist" in r.stderr
    r = run("init", code=1)
    assert "exists at" in r.stderr
    r = run("-R", str(tmp_path / "none"), "log", "x", code=1)
    assert "No snapref repository" in r.stderr
    (tmp_path / "plain.json").write_text('{"version": 1, "refs": {}}')
    run("import", "e", "plain.json")
    r = run("commit", "e", "plain.json", "-m", "m", code=1)
    assert "--parent" in r.stderr
    run("checkout", "nope@1", "-o", "x.json", code=1)
    run("show", "e@", code=1)


def _usage_error(run: Any, *args: str) -> str:
    """Run a refused invocation: exit 2, nothing on stdout, one ``Error:`` line last."""
    r = run(*args, code=2)
    assert r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and r.stderr.rstrip("\n").endswith(errors[0]), r.stderr
    return errors[0]


def test_tag_and_branch_refuse_a_version_without_a_name(
    run: Any, tmp_path: Path, kerchunk_refs: Any
) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    assert _usage_error(run, "tag", "air@99") == (
        "Error: Give a TAG name to tag air@99, or 'snapref tag air' to list tags"
    )
    assert _usage_error(run, "tag", "air@1", "--json") == (
        "Error: Give a TAG name to tag air@1, or 'snapref tag air' to list tags"
    )
    assert _usage_error(run, "branch", "air", "--from", "99") == (
        "Error: --from needs a NEW branch name: 'snapref branch air NEW --from 99', "
        "or 'snapref branch air' to list branches"
    )
    assert _usage_error(run, "branch", "air@1") == (
        "Error: Give a NEW branch name to branch air@1, or 'snapref branch air' to list branches"
    )
    # nothing was created; the valid forms still work
    assert json.loads(run("tag", "air", "--json").output) == []
    assert run("tag", "air@99", "v1", code=1).stderr.startswith("Error: ")
    run("tag", "air@1", "v1")
    assert [t["name"] for t in json.loads(run("tag", "air", "--json").output)] == ["v1"]
    assert "v1\tversion 1" in run("tag", "air").output
    run("branch", "air", "qc", "--from", "1")
    branches = json.loads(run("branch", "air", "--json").output)
    assert sorted(b["name"] for b in branches) == ["main", "qc"]


def test_log_refuses_conflicting_outputs_and_branch_with_graph(
    run: Any, tmp_path: Path, kerchunk_refs: Any
) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    outputs = "give only one of --graph, --format dot, --format json/--json"
    for args, named in (
        (("--json", "--format", "dot"), "--format dot and --json"),
        (("--graph", "--json"), "--graph and --json"),
        (("--graph", "--format", "json"), "--graph and --format json"),
        (("--graph", "--format", "dot"), "--graph and --format dot"),
        (("--format", "text", "--json"), "--format text and --json"),
    ):
        error = _usage_error(run, "log", "air", *args)
        assert error == f"Error: {named} are different outputs: {outputs}", args
    for args, drawing in ((("--graph",), "--graph"), (("--format", "dot"), "--format dot")):
        error = _usage_error(run, "log", "air", *args, "--branch", "nope")
        assert error == (
            f"Error: {drawing} draws every branch, so --branch does not apply: drop "
            f"--branch, or drop {drawing} to list the versions of branch 'nope'"
        )
    # the valid forms still work
    assert "v1 " in run("log", "air", "--graph").output
    assert run("log", "air", "--format", "dot").output.startswith('digraph "air"')
    assert [e["version"] for e in json.loads(run("log", "air", "--json").output)] == [1]
    both = run("log", "air", "--json", "--format", "json", "--branch", "main").output
    assert [e["version"] for e in json.loads(both)] == [1]
    assert "version 1" in run("log", "air", "--format", "text").output
    r = run("log", "air", "--branch", "nope", "--json", code=1)
    assert r.stderr.startswith("Error: ") and "main" in r.stderr


def test_checkout_refuses_record_size_without_parquet(
    run: Any, tmp_path: Path, kerchunk_refs: Any
) -> None:
    _init_with_air(run, tmp_path, kerchunk_refs)
    for args in (("--record-size", "5"), ("--format", "json", "--record-size", "5")):
        error = _usage_error(run, "checkout", "air", "-o", "w.json", *args)
        assert error == (
            "Error: --record-size applies to --format parquet only: add --format parquet "
            "or drop --record-size"
        )
    assert not (tmp_path / "w.json").exists()
    run("checkout", "air", "-o", "w.json")
    run("checkout", "air", "-o", "w.parq", "--format", "parquet", "--record-size", "5")
    assert (tmp_path / "w.parq" / ".zmetadata").exists()


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for name, command in cli.commands.items():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example:" in result.output, f"'snapref {name} --help' has no Example block"
        assert command.help, name


def test_long_imports_and_checkouts_show_progress_on_a_terminal(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapref import progress
    from tests.test_scale import _virtual_dataset

    (tmp_path / "big.json").write_text(json.dumps(_virtual_dataset(tmp_path, 150)))
    run("init")
    monkeypatch.setattr(progress, "should_show", lambda quiet: not quiet)  # "a terminal"
    assert "Writing shards" in run("import", "big", "big.json").stderr
    assert "Reading references" in run("checkout", "big", "-o", "big-out.json").stderr
    assert run("-q", "checkout", "big", "-o", "quiet.json").stderr == ""
    # a few keys draw no bar at all
    (tmp_path / "small.json").write_text(json.dumps(_virtual_dataset(tmp_path, 3)))
    assert run("import", "small", "small.json").stderr == ""


def test_audited_mistakes_are_one_line_errors(
    run: Any, tmp_path: Path, kerchunk_refs: dict[str, Any]
) -> None:
    # each of these printed a Python traceback
    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    (tmp_path / "gen5.json").write_text('{"version": 1, "gen": 5, "refs": {}}')
    run("init")
    run("import", "air", "air.json", "-m", "Adopt")
    for args, message in (
        (("import", "g", "gen5.json", "-m", "m"), "'gen' must be a list"),
        (("checkout", "air", "-o", "http://127.0.0.1:1/w.json"), "cannot write them"),
    ):
        result = run(*args, code=1)
        assert result.stderr.startswith("Error: ") and message in result.stderr
        assert "Traceback" not in result.stderr
