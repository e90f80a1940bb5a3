"""W4 then W3: write and commit a ~1 GiB array (256 chunks of 4 MiB, float32,
uncompressed) as a new dataset, then read it whole — on local disk and on a moto S3
server on loopback. Throughput in MB/s (10^6 bytes per second).

The systems take turns (round-robin, each round starting one system later), write by
write and read by read, so that what the machine carries over from one measurement to
the next (dirty pages still being written back, memory the VM must back anew, a moto
server holding more objects) falls on every system alike: run one system after
another, and the last one pays for the others' gigabytes. On local disk, each write
starts after ``os.sync()`` (not timed), from no dirty pages."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.common import Recorder, quiet_icechunk, timed, turn, workdir

CHUNK = (1024, 1024)  # 4 MiB of float32


def run(rec: Recorder, quick: bool) -> None:
    grid = (4, 4) if quick else (16, 16)  # 64 MiB or 1 GiB
    shape = (CHUNK[0] * grid[0], CHUNK[1] * grid[1])
    data = np.random.default_rng(0).random(shape, dtype="float32")
    # every write stores new bytes: content addressing must not turn repeats into no-ops
    repeats = 2 if quick else 3
    copies = [data + np.float32(r) for r in range(repeats)]
    with workdir("w34") as d:
        _local(rec, d, copies, repeats)
    with _moto() as so:
        _s3(rec, so, copies, 1 if quick else 2)


#: a system's name, its write of copy ``r`` and its read of copy ``r``
System = tuple[str, Callable[[int], Any], Callable[[int], np.ndarray]]


def _throughput(rec: Recorder, case: str, systems: list[System], nbytes: int, repeats: int) -> None:
    """W4: ``repeats`` rounds in which each system writes a new copy; W3: rounds in
    which each system reads its last copy, after one unmeasured round, so that every
    system is read from a warm page cache."""
    writes: dict[str, list[float]] = {name: [] for name, _, _ in systems}
    reads: dict[str, list[float]] = {name: [] for name, _, _ in systems}
    for r in range(repeats):
        for name, write, _ in turn(systems, r):
            if case == "local":
                os.sync()  # the previous system's dirty pages are not this one's to flush
            t, _ = timed(lambda write=write, r=r: write(r))
            writes[name].append(nbytes / t / 1e6)
    last = repeats - 1
    for _name, _, read in systems:
        read(last)
    for r in range(repeats + 2):  # reads are cheap and noisy: a few more
        for name, _, read in turn(systems, r):
            t, out = timed(lambda read=read: read(last))
            assert out.shape and out.dtype == np.float32
            reads[name].append(nbytes / t / 1e6)
    for name, _, _ in systems:
        rec.add("W4", case, name, "write+commit throughput", "MB/s", writes[name])
        rec.add("W3", case, name, "read throughput", "MB/s", reads[name])


def _local(rec: Recorder, d: Path, copies: list[np.ndarray], repeats: int) -> None:
    data = copies[0]
    n = data.nbytes

    # plain zarr 3 on the same disk: the floor
    def zw(r: int) -> None:
        a = zarr.create_array(
            str(d / f"zarr{r}"), shape=data.shape, chunks=CHUNK, dtype="float32", compressors=None
        )
        a[:] = copies[r]

    def zr(r: int) -> np.ndarray:
        return zarr.open_array(str(d / f"zarr{r}"), mode="r")[:]

    ic = quiet_icechunk()

    def iw(r: int) -> None:
        repo = ic.Repository.create(ic.local_filesystem_storage(str(d / f"ice{r}")))
        s = repo.writable_session("main")
        zarr.create_array(
            s.store, name="v", shape=data.shape, chunks=CHUNK, dtype="float32", compressors=None
        )[:] = copies[r]
        s.commit("write")

    def ir(r: int) -> np.ndarray:
        repo = ic.Repository.open(ic.local_filesystem_storage(str(d / f"ice{r}")))
        return zarr.open_array(repo.readonly_session("main").store, path="v", mode="r")[:]

    with _snapref(str(d / "snapref"), None, {}, copies) as (sw, sr):
        systems = [("zarr", zw, zr), ("icechunk", iw, ir), ("snapref", sw, sr)]
        _throughput(rec, "local", systems, n, repeats)


def _serve_moto(conn: Any) -> None:
    """In a child process: run a moto S3 server on a free loopback port until told to
    stop. A separate process, so the server never competes with the measured client
    for the GIL (Icechunk's client holds no GIL; Python clients would be penalised)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port())
    conn.recv()  # any message: stop
    server.stop()


@contextmanager
def _moto() -> Iterator[dict[str, Any]]:
    import multiprocessing

    import s3fs

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_moto, args=(child,), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the moto server did not start within 60 s")
        host, port = parent.recv()
        so = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        s3fs.S3FileSystem(**so, skip_instance_cache=True).mkdir("bench")
        yield so
    finally:
        parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _s3(rec: Recorder, so: dict[str, Any], copies: list[np.ndarray], repeats: int) -> None:
    from zarr.storage import FsspecStore

    data = copies[0]
    n = data.nbytes

    def zw(r: int) -> None:
        store = FsspecStore.from_url(f"s3://bench/zarr{r}", storage_options=so)
        zarr.create_array(store, shape=data.shape, chunks=CHUNK, dtype="float32", compressors=None)[
            :
        ] = copies[r]

    def zr(r: int) -> np.ndarray:
        store = FsspecStore.from_url(f"s3://bench/zarr{r}", storage_options=so, read_only=True)
        return zarr.open_array(store, mode="r")[:]

    ic = quiet_icechunk()

    def storage(r: int) -> Any:
        return ic.s3_storage(
            bucket="bench",
            prefix=f"ice{r}",
            endpoint_url=so["endpoint_url"],
            allow_http=True,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            force_path_style=True,
        )

    def iw(r: int) -> None:
        repo = ic.Repository.create(storage(r))
        s = repo.writable_session("main")
        zarr.create_array(
            s.store, name="v", shape=data.shape, chunks=CHUNK, dtype="float32", compressors=None
        )[:] = copies[r]
        s.commit("write")

    def ir(r: int) -> np.ndarray:
        repo = ic.Repository.open(storage(r))
        return zarr.open_array(repo.readonly_session("main").store, path="v", mode="r")[:]

    # snapref as installed (fsspec's s3 is s3fs), and with fsspec's s3 served by
    # obstore's adapter, a Rust S3 client (docs/user-guide.md, "Faster S3")
    with (
        _snapref_s3("snapref", so, copies) as (sw, sr),
        _snapref_s3("snapref+obstore", _obstore_options(so), copies, obstore=True) as (ow, orr),
    ):
        systems = [
            ("zarr", zw, zr),
            ("icechunk", iw, ir),
            ("snapref", sw, sr),
            ("snapref+obstore", ow, orr),
        ]
        _throughput(rec, "s3", systems, n, repeats)


def _obstore_options(so: dict[str, Any]) -> dict[str, Any]:
    """The moto server's options in obstore's names."""
    return {
        "config": {
            "endpoint": so["endpoint_url"],
            "access_key_id": so["key"],
            "secret_access_key": so["secret"],
            "region": "us-east-1",
        },
        "client_options": {"allow_http": True},
    }


@contextmanager
def _snapref_s3(
    system: str, options: dict[str, Any], copies: list[np.ndarray], obstore: bool = False
) -> Iterator[tuple[Callable[[int], Any], Callable[[int], np.ndarray]]]:
    """snapref's write and read on S3; with ``obstore``, each call runs with fsspec's
    ``s3`` protocol served by obstore's adapter, and s3fs serves it again after."""
    import tempfile

    catalog = f"sqlite:///{Path(tempfile.mkdtemp()) / 'catalog.db'}"
    with ExitStack() as stack:
        with _obstore_s3(obstore):
            write, read = stack.enter_context(
                _snapref(f"s3://bench/{system}", catalog, options, copies)
            )

        def sw(r: int) -> None:
            with _obstore_s3(obstore):
                write(r)

        def sr(r: int) -> np.ndarray:
            with _obstore_s3(obstore):
                return read(r)

        yield sw, sr


@contextmanager
def _obstore_s3(on: bool) -> Iterator[None]:
    """fsspec's ``s3`` protocol served by obstore's adapter while inside (if ``on``)."""
    if not on:
        yield
        return
    import fsspec
    import obstore.fsspec
    import s3fs

    obstore.fsspec.register("s3", asynchronous=True)
    try:
        yield
    finally:
        fsspec.register_implementation("s3", s3fs.S3FileSystem, clobber=True)


@contextmanager
def _snapref(
    url: str, catalog: str | None, options: dict[str, Any], copies: list[np.ndarray]
) -> Iterator[tuple[Callable[[int], Any], Callable[[int], np.ndarray]]]:
    """snapref's W4 write (a new dataset per copy, written through zarr, committed)
    and W3 read, over one repository at ``url``."""
    import snapref

    data = copies[0]
    repo = snapref.init(url, catalog=catalog, storage_options=options)

    def sw(r: int) -> None:
        repo.import_references(
            f"a{r}", {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}}, "empty"
        )
        with repo.transaction(f"a{r}", message="write") as tx:
            zarr.create_array(
                tx.store,
                name="v",
                shape=data.shape,
                chunks=CHUNK,
                dtype="float32",
                compressors=None,
            )[:] = copies[r]

    def sr(r: int) -> np.ndarray:
        return snapref.open(repo, f"a{r}")["v"][:]

    try:
        yield sw, sr
    finally:
        repo.close()
