"""snapref end to end on the embedded default (a local folder + SQLite).

1. make a small netCDF4/HDF5 file that we pretend we may not change,
2. turn it into kerchunk references and import them as version 1 (nothing copied),
3. fix some values through zarr inside a transaction: only the changed chunk is written,
4. show the log (Python API and the `snapref log` command),
5. open the old and the new version side by side; check the HDF5 file is untouched.

Run: ./dev demo [WORKDIR]      (default WORKDIR: ./demo-work, recreated each run)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import zarr
from kerchunk.hdf import SingleHdf5ToZarr

import snapref


def main(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    # 1. a read-only source file: 10 days of a 50 x 80 temperature field
    source = workdir / "air.h5"
    rng = np.random.default_rng(0)
    values = (270 + 20 * rng.random((10, 50, 80))).astype("float32")
    values[3, 10:12, 20:25] = -9999  # a sensor glitch we will fix
    with h5py.File(source, "w") as f:
        temp = f.create_dataset("temp", data=values, chunks=(1, 50, 40), compression="gzip")
        temp.attrs["units"] = "K"
    source_hash = hashlib.sha256(source.read_bytes()).hexdigest()

    # 2. kerchunk references -> version 1 of dataset "air"
    refs = SingleHdf5ToZarr(str(source), inline_threshold=0).translate()
    repo = snapref.init(str(workdir / "warehouse"))
    v1 = repo.import_references("air", refs, message="Adopt air.h5 via kerchunk")
    print(
        f"imported {v1.summary['chunks_added']} chunk references as version {v1.version}; "
        f"allowed sources: {repo.sources('air')}"
    )

    # 3. fix the glitch through zarr; only the chunk holding it changes
    with repo.transaction(
        "air", message="Replace sensor glitch by neighbours' mean", properties={"ticket": "QC-42"}
    ) as tx:
        temp = zarr.open_group(tx.store, mode="r+")["temp"]
        temp[3, 10:12, 20:25] = temp[3, 8:10, 20:25].mean()
    v2 = tx.snapshot
    assert v2 is not None
    print(f"committed version {v2.version}: {v2.summary}")

    # 4. the history, from Python and from the command line
    for snap in repo.log("air"):
        print(f"  v{snap.version} {snap.id[:12]} {snap.author}: {snap.message}")
    subprocess.run(
        [sys.executable, "-m", "snapref", "-R", str(workdir / "warehouse"), "log", "air"],
        check=True,
    )

    # 5. time travel
    old = snapref.open(repo, "air", version=1)["temp"][3, 10, 20]
    new = snapref.open(repo, "air")["temp"][3, 10, 20]
    ds = snapref.open_dataset(repo, "air", version=1)
    print(
        f"temp[3, 10, 20]: version 1 = {old}, version 2 = {new:.2f}; "
        f"xarray sees {dict(ds.sizes)} in version 1"
    )
    assert old == -9999 and new > 0
    assert hashlib.sha256(source.read_bytes()).hexdigest() == source_hash
    print("the source HDF5 file is unchanged; demo finished OK")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-work"))
