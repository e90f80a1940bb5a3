"""The async API, as a server uses it: many versions read concurrently on one event
loop, with every manifest, shard and object load awaited there (never a blocking
load through fsspec's I/O thread), and the ASGI example app."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapref
from snapref.manifest import SHARD_CACHE, Manifest
from snapref.objects import ContentStore
from tests.conftest import temp_values

VERSIONS = 50


def _commit_versions(repo: snapref.Repository, count: int) -> snapref.Repository:
    """Versions 2..count of ``air``: version v has ``temp[0, 0, 0] == v`` and, from
    v = 3, ``temp[7, 39, 59] == -v``, so each version's chunks differ."""
    for v in range(2, count + 1):
        with repo.transaction("air", message=f"v{v}") as tx:
            temp = zarr.open_group(tx.store, mode="r+")["temp"]
            temp[0, 0, 0] = v
            if v >= 3:
                temp[7, 39, 59] = -v
    return repo


@pytest.fixture
def many(air: snapref.Repository) -> snapref.Repository:
    return _commit_versions(air, VERSIONS)


@pytest.fixture
def few(air: snapref.Repository) -> snapref.Repository:
    return _commit_versions(air, 8)


def _expected_corners(v: int) -> tuple[float, float]:
    first = float(temp_values()[0, 0, 0]) if v == 1 else float(v)
    last = float(temp_values()[7, 39, 59]) if v < 3 else float(-v)
    return first, last


@pytest.fixture
def no_blocking_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail on any synchronous load of a manifest list, shard or object: inside the
    event loop every load must go through the async filesystem."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a blocking warehouse read inside the event loop")

    SHARD_CACHE.clear()  # as in a server process that did not make the versions
    monkeypatch.setattr(ContentStore, "get", refuse)
    monkeypatch.setattr(Manifest, "load", refuse)
    monkeypatch.setattr("snapref.fs.sync", refuse)
    monkeypatch.setattr("snapref.objects.sync", refuse)
    yield


def test_fifty_versions_concurrently_on_one_loop(
    many: snapref.Repository, no_blocking_loads: None
) -> None:
    async def read(v: int) -> tuple[int, float, float, np.ndarray]:
        group = await snapref.open_async(many, "air", version=v)
        temp = await group.getitem("temp")
        first = await temp.getitem((0, 0, 0))
        last = await temp.getitem((7, 39, 59))
        middle = await temp.getitem((slice(2, 6), slice(10, 30), slice(20, 40)))
        return v, float(first), float(last), middle

    async def main() -> list[tuple[int, float, float, np.ndarray]]:
        return await asyncio.gather(*(read(v) for v in range(1, VERSIONS + 1)))

    results = asyncio.run(main())
    assert [r[0] for r in results] == list(range(1, VERSIONS + 1))
    for v, first, last, middle in results:
        assert (first, last) == _expected_corners(v), v
        np.testing.assert_array_equal(middle, temp_values()[2:6, 10:30, 20:40])


def test_listing_and_refs_without_blocking(
    few: snapref.Repository, no_blocking_loads: None
) -> None:
    few.tag("air", 7, "v2025-qc")

    async def main() -> tuple[list[str], float, float]:
        tagged = await snapref.open_async(few, "air", version="v2025-qc")
        names = sorted([name async for name in tagged.keys()])
        head = await snapref.open_async(few, "air")  # the head of main
        t1 = await tagged.getitem("temp")
        t2 = await head.getitem("temp")
        return names, float(await t1.getitem((0, 0, 0))), float(await t2.getitem((0, 0, 0)))

    names, tagged_first, head_first = asyncio.run(main())
    assert names == ["lat", "lon", "temp", "time"]
    assert (tagged_first, head_first) == (7.0, 8.0)


def test_open_async_by_url_and_errors(air: snapref.Repository) -> None:
    async def main() -> float:
        group = await snapref.open_async(air.url, "air", version=1)
        assert isinstance(group, zarr.AsyncGroup)
        temp = await group.getitem("temp")
        return float(await temp.getitem((3, 4, 5)))

    assert asyncio.run(main()) == float(temp_values()[3, 4, 5])
    with pytest.raises(snapref.VersionNotFoundError):
        asyncio.run(snapref.open_async(air, "air", version=9))
    with pytest.raises(snapref.DatasetNotFoundError):
        asyncio.run(snapref.open_async(air, "sea"))
    # what is under it is read-only
    with pytest.raises(snapref.ReadOnlyError):
        asyncio.run(_write(air))


async def _write(repo: snapref.Repository) -> None:
    group = await snapref.open_async(repo, "air")
    await group.store.fs._pipe_file("notes.txt", b"x")


def _load_example() -> Any:
    path = Path(__file__).parent.parent / "examples" / "asgi_app.py"
    spec = importlib.util.spec_from_file_location("asgi_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_asgi_example_serves_slices_of_any_version(few: snapref.Repository) -> None:
    with warnings.catch_warnings():  # starlette >= 1.10 prefers httpx2, not yet released
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    few.tag("air", 2, "v2025-qc")
    app = _load_example().create_app(few)
    with TestClient(app) as client:
        one = client.get("/air/temp", params={"version": "1", "slice": "0,0:2,0:3"})
        assert one.status_code == 200
        body = one.json()
        assert (body["version"], body["shape"]) == (1, [2, 3])
        np.testing.assert_array_equal(np.array(body["values"], "float32"), temp_values()[0, :2, :3])

        tagged = client.get("/air/temp", params={"version": "v2025-qc", "slice": "0,0,0"})
        assert tagged.json()["values"] == 2.0 and tagged.json()["version"] == 2
        latest = client.get("/air/temp", params={"slice": "7,39,59"}).json()
        assert (latest["version"], latest["values"]) == (8, -8.0)

        log = client.get("/air/versions").json()
        assert [e["version"] for e in log] == list(range(8, 0, -1))
        missing = client.get("/air/temp", params={"version": "99"})
        assert missing.status_code == 404 and "no version" in missing.json()["error"]
        assert client.get("/air/nothing").status_code == 404
        assert client.get("/sea/versions").status_code == 404
        for bad in ("0,0,999", "0,0,0,0", "a:b"):
            reply = client.get("/air/temp", params={"slice": bad})
            assert reply.status_code == 400 and "bad slice" in reply.json()["error"]

    # NaN (a masked value) is not JSON: it is served as null
    with few.transaction("air", message="mask") as tx:
        zarr.open_group(tx.store, mode="r+")["temp"][0, 0, 0:2] = np.nan
    with TestClient(app) as client:
        masked = client.get("/air/temp", params={"slice": "0,0,0:3"}).json()["values"]
    assert masked[:2] == [None, None] and masked[2] == float(temp_values()[0, 0, 2])
