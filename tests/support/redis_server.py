"""A real Redis server (Debian package ``redis-server``) started by a test on a free loopback port.

It keeps nothing on disk (no RDB snapshot, no append-only file): stopping it loses every queue, as a broker
restarted without persistence does; :meth:`RedisServer.start` after :meth:`RedisServer.stop` brings it
back, empty, on the same port."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port, wait_for_port


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 60) -> str:
        """Start the server and return its URL once the port accepts connections."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        assert self.process is None, "redis-server already running"
        command = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        command += ["--dir", str(self.folder), "--protected-mode", "yes"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(
            self.port, "redis-server", timeout_s=timeout_s, process=self.process, details=self.log_tail
        )
        return self.url

    def stop(self) -> None:
        """Stop it (SIGTERM; its queues are lost)."""
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"redis-server's log ({self.log_path}):\n{text[-2000:]}"
