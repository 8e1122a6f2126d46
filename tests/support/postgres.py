"""A real PostgreSQL server (Debian package ``postgresql``) started by a test on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.ports import free_port


def postgres_bin(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


class PostgresServer:
    """One cluster in a temporary folder (``initdb`` with trust authentication on 127.0.0.1), run as the
    ``postgres`` user when the tests run as root. :meth:`start` skips the test when the binaries are
    missing; :meth:`stop` removes everything."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="segnode-pg-"))
        self.data = self.base / "data"
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._pg_ctl: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``postgres`` database (psycopg 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
        initdb, self._pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if initdb is None or self._pg_ctl is None:
            pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        sockets = self.base / "sockets"
        sockets.mkdir()
        if self._as_user:
            shutil.chown(self.base, "postgres")
            shutil.chown(sockets, "postgres")
        subprocess.run(
            [*self._as_user, initdb, "-D", str(self.data), "--auth=trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sockets} -c fsync=on -c max_connections=200"
        )
        log = str(self.base / "server.log")
        subprocess.run(
            [*self._as_user, self._pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start"],
            check=True,
            capture_output=True,
        )
        return self.url

    def stop(self) -> None:
        if self._pg_ctl is not None:
            subprocess.run(
                [*self._as_user, self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(self.base, ignore_errors=True)
