"""TCP ports on the loopback interface."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

from tests.support.waiting import wait_until

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for peers that cannot listen on port 0 and report it
    (Orthanc, DCMTK's storescp, a node whose port a PACS must know in advance)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int, host: str = LOOPBACK) -> bool:
    """True when a TCP connection to ``host:port`` is accepted (it is closed again at once)."""
    with socket.socket() as probe:
        probe.settimeout(5)
        return probe.connect_ex((host, port)) == 0


def wait_for_port(
    port: int,
    what: str,
    *,
    timeout_s: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
    details: Callable[[], str] | None = None,
) -> None:
    """Wait until ``127.0.0.1:port`` accepts connections (``what`` names the peer in the timeout message)."""
    wait_until(
        lambda: accepts_connections(port),
        timeout_s,
        f"{what} to accept connections on port {port}",
        process=process,
        details=details,
    )
