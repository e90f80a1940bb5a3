"""snapref's benchmark suite: snapref side by side with Icechunk, kerchunk JSON and
plain Zarr, on the same machine in the same run. Run ``python -m benchmarks --help``."""
