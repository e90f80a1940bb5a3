"""A real S3 API for the tests: a moto server on loopback, shared by the session.

The server listens on a port the OS picks (``port=0``), so parallel runs never clash.
Every test starts from an empty server (``/moto-api/reset``) and empty s3fs instance
caches, and gets a fresh bucket through :func:`s3_bucket`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import s3fs
from moto.server import ThreadedMotoServer

__all__ = ["BUCKET", "moto_endpoint", "s3_bucket", "s3_fs", "s3_options"]

BUCKET = "bucket"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on loopback, running for the whole session.

    The AWS environment is set for the session only: fake credentials, no profile or
    config files, no instance metadata, and a default endpoint that refuses
    connections — so a request that lost its storage options fails fast instead of
    reaching real AWS.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SECURITY_TOKEN", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
        mp.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_options(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """fsspec storage options for the moto server, on an empty server and caches."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    s3fs.S3FileSystem.clear_instance_cache()
    yield {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_fs(s3_options: dict[str, Any]) -> s3fs.S3FileSystem:
    """A private s3fs instance for checking what is in the bucket (never cached, so
    it never answers from a stale listing)."""
    return s3fs.S3FileSystem(**s3_options, skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture
def s3_bucket(s3_options: dict[str, Any], s3_fs: s3fs.S3FileSystem) -> dict[str, Any]:
    """Create the empty bucket :data:`BUCKET`; yield the storage options to reach it."""
    s3_fs.mkdir(BUCKET)
    return s3_options
