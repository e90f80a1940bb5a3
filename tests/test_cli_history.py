"""The history commands from the shell: diff, blame, sources, merge, reset, revert,
audit, query and log --graph, on a dataset edited on two branches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import zarr
from click.testing import CliRunner

import snapref
from snapref.cli import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kerchunk_refs: dict[str, Any]) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPREF_REPO", str(tmp_path / "wh"))
    repo = snapref.init(str(tmp_path / "wh"))
    repo.import_references("air", kerchunk_refs, message="Import")
    with repo.transaction("air", message="Mask glitch") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][3, 10, 20] = -1
    repo.branch("air", "qc")
    with repo.transaction("air", message="QC", branch="qc") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = -2
    repo.close()
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output + result.stderr
        return result

    return invoke


def test_diff_blame_sources(run: Any, hdf5_file: Path) -> None:
    out = run("diff", "air@1", "air@2").output
    assert "array temp: +0 ~1 -0 chunks" in out and "temp[2:4, 0:20, 20:40]" in out
    d = json.loads(run("diff", "air@1", "air@qc", "--json").output)
    assert d["chunks"]["temp"]["modified"] == ["temp/0.0.0", "temp/1.0.1"]
    assert run("diff", "air@1", "other@2", code=1).stderr.startswith("Error: diff compares")
    out = run("blame", "air@qc", "temp", "0", "0", "0", "--history").output
    assert "temp/0.0.0\ttemp[0:2, 0:20, 0:20]\tv3 " in out and "QC\tobject " in out
    assert "    v1 " in out
    (line,) = json.loads(run("blame", "air", "temp", "7", "39", "59", "--json").output)
    assert line["version"] == 1 and line["kind"] == "virtual"
    assert line["url"] == "file://" + str(hdf5_file)
    (src,) = json.loads(run("sources", "air@2", "--json").output)
    assert src["chunks"] == 23
    rows = json.loads(run("sources", "--url", str(hdf5_file), "--json").output)
    assert [r["version"] for r in rows] == [1, 2, 3]


def test_merge_reset_revert_audit(run: Any) -> None:
    assert "Merged qc into main of air as version 4" in run("merge", "air", "qc").output
    assert "Nothing to merge" in run("merge", "air", "qc").output
    out = run("reset", "air", "--to", "2", "-m", "too early").output
    assert "from version 4" in out and "to version 2" in out
    out = run("revert", "air@2", "--json").output
    assert json.loads(out)["message"] == "Revert version 2: Mask glitch"
    audit = json.loads(run("audit", "air", "--json").output)
    assert [a["action"] for a in audit] == [
        "create",
        "commit",
        "branch",
        "commit",
        "merge",
        "reset",
        "revert",
    ]
    assert audit[5]["message"] == "too early"
    assert (audit[5]["old_version"], audit[5]["new_version"]) == (4, 2)
    assert "reset  v4 -> v2" in run("audit").output
    err = run("merge", "air", "qc", "--strategy", "mine", code=2).stderr
    assert "Invalid value for '--strategy'" in err


def test_merge_conflict_exits_1_and_names_the_key(run: Any) -> None:
    with snapref.connect("wh") as repo, repo.transaction("air", message="main") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 1] = 5
    err = run("merge", "air", "qc", code=1).stderr
    assert "temp/0.0.0" in err and "--strategy" in err
    assert (
        "1 conflicting keys resolved as theirs"
        in run("merge", "air", "qc", "--strategy", "theirs").output
    )


def test_query_and_graph(run: Any) -> None:
    sql = "SELECT version, op FROM changes WHERE dataset='air' AND key='temp/0.0.0' ORDER BY 1"
    assert json.loads(run("query", sql, "--json").output) == [
        {"version": 1, "op": "A"},
        {"version": 3, "op": "M"},
    ]
    out = run("query", "SELECT name, version FROM refs ORDER BY name").output.splitlines()
    assert out[0].split() == ["name", "version"] and out[2].split() == ["main", "2"]
    assert "Query failed" in run("query", "SELECT * FROM nothing", code=1).stderr
    graph = run("log", "air", "--graph").output.splitlines()
    assert [line.split()[:2] + line.split()[-1:] for line in graph] == [
        ["*", "v3", "(qc)"],
        ["*", "v2", "(main)"],
        ["*", "v1", "Import"],
    ]
    dot = run("log", "air", "--format", "dot").output
    assert dot.startswith('digraph "air"') and dot.count(" -> ") == 2 + 2


def test_recorded_text_cannot_drive_the_terminal(tmp_path: Path, run: Any) -> None:
    # what someone recorded (a message, an author, a description, a property) is
    # printed with its control characters escaped: no colour, cursor or bidi tricks
    # reach the terminal, and one-line formats stay one line per entry
    evil = "red\x1b[31m\rback\x00nul\u2028sep\u202erev"
    repo = snapref.connect(str(tmp_path / "wh"))
    with repo.transaction("air", message=f"fix\t{evil}\nsecond line", author=evil) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][1, 1, 1] = 5
        tx.fs.pipe_file(f"notes/{evil.replace(chr(0), '')}", b"x")  # keys may hold them too
    repo.db.update_dataset("air", description=evil, properties={"owner": evil})
    repo.close()
    escaped = "red\\x1b[31m\\rback\\x00nul\\u2028sep\\u202erev"
    outputs = {
        "log": run("log", "air").output,
        "graph": run("log", "air", "--graph").output,
        "blame": run("blame", "air", "temp", "1", "1", "1").output,
        "audit": run("audit", "air").output,
        "ls": run("ls", "--versions").output,
        "describe": run("describe", "air").output,
        "query": run("query", "SELECT message FROM snapshots WHERE version = 4").output,
    }
    key_escaped = "notes/" + escaped.replace("\\x00", "")
    for command, args in (("show", ["air@4"]), ("diff", ["air@3", "air@4"])):
        out = run(command, *args).output
        assert not any(c in out for c in "\x1b\r\u2028\u202e"), command
        assert key_escaped in out, (command, out)
    for command, out in outputs.items():
        assert not any(c in out for c in "\x1b\r\x00\u2028\u202e"), command
        assert escaped in out or "fix\\t" + escaped in out, (command, out)
    log = outputs["log"]
    assert f"Author: {escaped}\n" in log
    assert f"    fix\t{escaped}\n    second line\n" in log  # tabs kept, lines kept
    (blamed,) = [line for line in outputs["blame"].splitlines() if line.startswith("temp/")]
    assert f"{escaped}: fix\\t{escaped}\\nsecond line\t" in blamed  # one line
    assert f"owner = {escaped}" in outputs["describe"]
    # --json keeps the recorded text exactly
    (entry, *_) = json.loads(run("log", "air", "--json").output)
    assert entry["message"] == f"fix\t{evil}\nsecond line" and entry["author"] == evil
