"""The catalogue: listing datasets, describing them, and Intake catalogues whose every
entry opens the same values as snapref.open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import intake
import numpy as np
import pytest
import yaml
import zarr

import snapref
from tests.conftest import temp_values


def _history(repo: snapref.Repository) -> None:
    """air: v1 import, v2 edit (tagged qc-1), a branch; plus a second dataset."""
    with repo.transaction("air", message="Mask a glitch", properties={"ticket": "QC-7"}) as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0:3] = -1.0
    repo.tag("air", 2, "qc-1")
    repo.branch("air", "experiment", 1)
    repo.db.update_dataset("air", description="Air temperature", properties={"owner": "qc"})
    refs = {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}}
    repo.import_references("empty", refs, message="Nothing yet")


def test_catalog_lists_every_dataset(air: snapref.Repository) -> None:
    _history(air)
    listing = {d.name: d for d in air.catalog()}
    assert list(listing) == ["air", "empty"]
    ds = listing["air"]
    assert ds.description == "Air temperature"
    assert ds.properties == {"owner": "qc"}
    assert ds.latest.version == 2 and ds.latest.message == "Mask a glitch"
    assert ds.latest.parent == air.resolve("air", 1).id
    assert ds.latest.refs == ("main", "qc-1")
    assert ds.branches == {"experiment": 1, "main": 2}
    assert ds.tags == {"qc-1": 2}
    assert ds.n_versions == 2
    assert ds.last_change == ds.latest.timestamp
    assert ds.versions is None
    with_versions = air.catalog(versions=True)[0]
    assert [v.version for v in with_versions.versions or []] == [2, 1]
    assert with_versions.versions[1].parent is None  # type: ignore[index]
    doc = with_versions.to_json()
    assert doc["latest"]["properties"] == {"ticket": "QC-7"}
    assert doc["versions"][0]["summary"]["chunks_modified"] == 1


@pytest.mark.parametrize("route", ["snapref", "references"])
def test_every_intake_entry_opens_the_same_values(
    air: snapref.Repository, tmp_path: Path, route: str
) -> None:
    _history(air)
    path = tmp_path / "cat" / "catalog.yaml"
    path.parent.mkdir()
    air.to_intake(str(path), route=route)
    cat = intake.open_catalog(str(path))
    expected_names = {"air", "air@1", "air@2", "air@qc-1", "empty", "empty@1"}
    assert set(cat) == expected_names
    for name in ["air", "air@1", "air@2", "air@qc-1"]:
        source = cat[name]
        meta = source.reader.data.metadata
        dataset, _, ref = name.partition("@")
        snap = air.resolve(dataset, ref or None)
        assert meta["snapshot_id"] == snap.id
        assert meta["version"] == snap.version
        assert meta["parent"] == (snap.parents[0] if snap.parents else None)
        assert meta["author"] == snap.author and meta["message"] == snap.message
        assert meta["summary"] == snap.summary
        assert meta["timestamp"].endswith("Z")
        ds = source.read()
        np.testing.assert_array_equal(
            ds["temp"].values, snapref.open(air, dataset, snap.id)["temp"][:]
        )
        np.testing.assert_array_equal(ds["lat"].values, snapref.open(air, dataset)["lat"][:])
    assert float(cat["air@1"].read()["temp"][0, 0, 0]) == temp_values()[0, 0, 0]
    assert float(cat["air"].read()["temp"][0, 0, 0]) == -1.0
    doc = yaml.safe_load(path.read_text())
    urls = {e["args"]["urlpath"] for e in doc["sources"].values()}
    if route == "snapref":
        assert all(u.startswith("snapref://") for u in urls)
    else:
        # plain kerchunk beside the catalogue: readable with no snapref at all
        assert urls == {"reference://"}
        refs_files = sorted(p.name for p in (tmp_path / "cat" / "catalog.refs" / "air").iterdir())
        assert refs_files == sorted(f"{s.id}.json" for s in air.log("air"))
        assert "&id" not in path.read_text()


def test_intake_shows_recorded_text_as_written_not_as_a_template(
    air: snapref.Repository, tmp_path: Path
) -> None:
    # Intake renders an entry's metadata with Jinja2: this message lost its words,
    # {{ env('HOME') }} became a path, and an unbalanced {{ made the entry unopenable
    messages = [
        "Replace the {{ placeholder }} text",
        "Template uses {{ env('HOME') }}",
        "Unbalanced {{ brace {# and {% endraw %} or {%- endraw -%} in a message",
    ]
    for message in messages:
        with air.transaction("air", message=message) as tx:
            zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0] = len(message)
    air.db.update_dataset("air", properties={"path": "{{ CATALOG_DIR }}/x"})
    air.to_intake(str(tmp_path / "catalog.yaml"))
    cat = intake.open_catalog(str(tmp_path / "catalog.yaml"))
    for version, message in enumerate(messages, start=2):
        meta = cat[f"air@{version}"].reader.data.metadata
        assert meta["message"] == message
        assert meta["dataset_properties"] == {"path": "{{ CATALOG_DIR }}/x"}
        assert float(cat[f"air@{version}"].read()["temp"][0, 0, 0]) == len(message)


def test_to_intake_rejects_an_unknown_route(air: snapref.Repository, tmp_path: Path) -> None:
    with pytest.raises(snapref.InvalidInputError, match="Unknown route"):
        air.to_intake(str(tmp_path / "c.yaml"), route="ftp")


def test_a_catalogue_replaces_only_a_catalogue(
    air: snapref.Repository, tmp_path: Path, hdf5_file: Path
) -> None:
    source = hdf5_file.read_bytes()
    with pytest.raises(snapref.InvalidInputError, match="not an Intake catalogue snapref"):
        air.to_intake(str(hdf5_file))  # a typo of -o must not replace a source file
    assert hdf5_file.read_bytes() == source
    catalog_db = Path(air.warehouse.root) / "catalog.db"
    for inside in (catalog_db, Path(air.warehouse.root) / "c.yaml"):
        with pytest.raises(snapref.InvalidInputError, match="repository's own storage"):
            air.to_intake(str(inside))
    assert air.head("air").version == 1
    other = tmp_path / "notes.yaml"
    other.write_text("metadata: {owner: me}\n")
    with pytest.raises(snapref.InvalidInputError, match="not an Intake catalogue snapref"):
        air.to_intake(str(other))
    assert other.read_text() == "metadata: {owner: me}\n"
    # a catalogue snapref wrote is written again: that is how it is refreshed
    path = tmp_path / "catalog.yaml"
    air.to_intake(str(path))
    air.tag("air", 1, "first")
    assert "air@first" in air.to_intake(str(path))["sources"]
    assert "air@first" in intake.open_catalog(str(path))


def test_cli_describe_catalog_and_intake(
    run: Any, tmp_path: Path, kerchunk_refs: dict[str, Any]
) -> None:
    (tmp_path / "air.json").write_text(json.dumps(kerchunk_refs))
    run("init")
    assert "No datasets yet" in run("ls").output
    run("import", "air", "air.json", "-m", "Adopt air.h5")
    run("tag", "air@1", "v1")
    out = run("describe", "air", "ERA5 air temperature", "--prop", "owner=qc").output
    assert "ERA5 air temperature" in out and "owner = qc" in out
    run("describe", "air", "--prop", "team=x", "--prop", "owner=")  # add one, remove one
    listing = json.loads(run("catalog", "--json").output)
    assert listing[0]["name"] == "air"
    assert listing[0]["description"] == "ERA5 air temperature"
    assert listing[0]["properties"] == {"team": "x"}
    assert listing[0]["tags"] == {"v1": 1} and listing[0]["n_versions"] == 1
    assert "versions" not in listing[0]
    text = run("ls", "--versions").output
    assert "ERA5 air temperature" in text and "Adopt air.h5 [main, v1]" in text
    out = run("catalog", "--format", "intake", "-o", "catalog.yaml").output
    assert "3 entries" in out
    cat = intake.open_catalog(str(tmp_path / "catalog.yaml"))
    assert set(cat) == {"air", "air@1", "air@v1"}
    np.testing.assert_array_equal(cat["air@v1"].read()["temp"].values, temp_values())
    r = run("catalog", "--format", "intake", code=2)
    assert "--format intake needs -o" in r.output + r.stderr
    r = run("describe", "nope", "x", code=1)
    assert r.stderr.startswith("Error: No dataset 'nope'")
