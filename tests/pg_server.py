"""A real PostgreSQL server for the tests: a throwaway cluster on loopback.

``SNAPREF_TEST_POSTGRES_URL`` (an SQLAlchemy URL of a server where the user may
``CREATE DATABASE``) is used when set. Otherwise the server binaries are looked up
(``initdb`` on PATH or under /usr/lib/postgresql/*/bin, as Debian's ``postgresql``
package installs them), a cluster is made in a temporary folder and started on a
free port, and stopped at the end. Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresServer", "postgres_server"]

HOW_TO_INSTALL = (
    "The PostgreSQL tests need a server: install one ('apt-get install postgresql', "
    "which ./dev test does when run as root) or set SNAPREF_TEST_POSTGRES_URL to a "
    "server where the user may CREATE DATABASE."
)


class PostgresServer:
    """A server the tests may create databases on."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")  # postgresql+psycopg://user@host:port[/db]

    def _admin_url(self) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(self.url)
            .set(drivername="postgresql", database="postgres")
            .render_as_string(hide_password=False)
        )

    def new_database(self) -> str:
        """An empty database: its SQLAlchemy URL."""
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self._admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)


def _find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # the server refuses to run as root; Debian's package makes a 'postgres' user
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server of ``SNAPREF_TEST_POSTGRES_URL``, or a new local cluster."""
    url = os.environ.get("SNAPREF_TEST_POSTGRES_URL")
    if url:
        yield PostgresServer(url)
        return
    initdb, pg_ctl = _find_bin("initdb"), _find_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError(HOW_TO_INSTALL)
    root = Path(tempfile.mkdtemp(prefix="snapref-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run(
            _as_postgres_user(
                [initdb, "-D", str(data), "-U", "snapref", "-A", "trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres_user(
                [pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace")[-2000:]
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(
            f"Could not start a PostgreSQL server with {initdb}: {detail}{server_log}\n"
            + HOW_TO_INSTALL
        ) from exc
    try:
        yield PostgresServer(f"postgresql+psycopg://snapref@127.0.0.1:{port}")
    finally:
        subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
