"""Port probes, silent connections, peer resets and stopping, with real sockets, DCMTK and ``segnode serve``.

Load balancers and monitoring probe DICOM ports with a bare TCP connect and close (or reset). Such a
connection must not hold one of ``network.max_associations``, a connection that never sends a request
must not keep the node from stopping, and a reset is one log line without a traceback.

The times stated as goals (C-ECHO answered within 5 s of 100 probes, ``segnode serve`` stopped within 5 s
of SIGTERM) are measured and reported (``record_property``: see ``pytest --junitxml``; and a log record);
pass or fail depends only on generous safety bounds, never on how busy the machine is.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association as AssociationRow
from dicom_node.audit.tables import Instance
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.dcmtk import dcmtk
from tests.support.paths import T2_SAG, series_files
from tests.support.scu import associate
from tests.support.series import clone_series
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]
#: The production timeouts (config defaults), under which the probes used to lock senders out.
DEFAULT_TIMEOUTS = {"network.acse_timeout_s": 30, "network.network_timeout_s": 60}
#: The first 6 bytes of an A-ASSOCIATE-RQ PDU that announces a length of 4 GiB.
HUGE_PDU_HEADER = b"\x01\x00\xff\xff\xff\xff"


def probe(port: int, reset: bool = False) -> None:
    """Connect and close, as a load balancer's health check does; ``reset``: close with a TCP RST."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echoscu(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def associations_alive(node: NodeService) -> int:
    assert node.server is not None
    return len(node.server.active_associations)


@pytest.fixture
def hold() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """``hold(sock)`` keeps a test's raw connection open until the test ends."""
    held: list[socket.socket] = []
    yield lambda sock: held.append(sock) or sock  # type: ignore[func-returns-value]
    for sock in held:
        sock.close()


def report(record_property: Callable[[str, object], None], name: str, seconds: float, goal: str) -> None:
    """Record a measured time with the test (a JUnit property, ``--junitxml``) and log it."""
    record_property(name, f"{seconds:.2f}")
    logging.getLogger(__name__).warning("%s: %.2f s (goal: %s)", name, seconds, goal)


def test_a_hundred_port_probes_then_c_echo_is_answered(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    record_property: Callable[[str, object], None],
) -> None:
    node = start_node(make_config(**DEFAULT_TIMEOUTS))
    for number in range(100):
        probe(node.port, reset=number % 2 == 1)
    started = time.monotonic()
    echo = echoscu(node.port)
    answered_after = time.monotonic() - started
    assert echo.returncode == 0, echo.stdout + echo.stderr
    report(record_property, "c_echo_after_100_probes_s", answered_after, "within 5 s")
    assert node.server is not None
    wait_until(lambda: node.server is not None and node.server.probes == 100, what="all probes seen")
    assert not audit.events(node.db, "association_rejected")
    assert not audit.events(node.db, "connection_closed")  # probes are counted, not audited one by one
    wait_until(lambda: associations_alive(node) == 0, what="echo association ended")


def test_silent_connections_hold_no_association_slot(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    hold: Callable[[socket.socket], socket.socket],
) -> None:
    """With 2 slots, 5 connections that send nothing and 5 that announce a 4 GiB PDU and go silent leave
    both slots free; the limit still counts real associations."""
    node = start_node(make_config(**DEFAULT_TIMEOUTS, **{"network.max_associations": 2}))
    for _ in range(5):
        hold(socket.create_connection(("127.0.0.1", node.port), timeout=30))
    for _ in range(5):
        hold(socket.create_connection(("127.0.0.1", node.port), timeout=30)).sendall(HUGE_PDU_HEADER)
    wait_until(lambda: associations_alive(node) == 5, what="the 5 announced PDUs in the association layer")
    first, second, third = (associate(node.port) for _ in range(3))
    assert first.is_established and second.is_established
    assert third.is_rejected
    wait_until(lambda: len(audit.events(node.db, "association_rejected")) == 1, what="rejection recorded")
    [rejected] = audit.events(node.db, "association_rejected")
    assert rejected.reason == "local_limit_exceeded"
    first.release()
    second.release()
    fourth = associate(node.port)
    assert fourth.is_established, "a released association gives its slot back"
    fourth.release()


def test_a_closed_connection_without_a_request_ends_its_threads_at_once(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    """pynetdicom's acceptor waits ``acse_timeout`` for the request even after the peer left; here the
    timeout is 10 minutes, and the threads still end (as soon as the close is seen)."""
    node = start_node(make_config(**{"network.acse_timeout_s": 600, "network.network_timeout_s": 600}))
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        sock.sendall(HUGE_PDU_HEADER)
        wait_until(lambda: associations_alive(node) == 1, what="connection in the association layer")
    wait_until(lambda: associations_alive(node) == 0, timeout_s=60, what="its threads to end")
    [event] = audit.events(node.db, "connection_closed")
    assert event.reason == "no_association_request"


def _storescu_round(port: int, files: list[Path]) -> str:
    result = subprocess.run(
        [dcmtk("storescu"), "-v", "-aet", "STORESCU", "-aec", "SEGNODE", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_probe_every_half_second_for_a_minute_while_storescu_sends(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, tmp_path: Path
) -> None:
    """120 probes, one every 0.5 s (half of them reset), while storescu sends series after series: every
    instance gets Success. How many series fit in the minute depends on the machine; each one counts."""
    node = start_node(make_config(**DEFAULT_TIMEOUTS))
    probed: list[int] = []
    failures: list[OSError] = []

    def probes() -> None:
        try:
            for number in range(120):
                probe(node.port, reset=number % 2 == 1)
                probed.append(number)
                time.sleep(0.5)
        except OSError as exc:  # reported by the test thread
            failures.append(exc)

    prober = threading.Thread(target=probes, name="prober")
    prober.start()
    sent = 0
    try:
        while prober.is_alive() or sent == 0:
            files = clone_series(series_files(T2_SAG)[0], 20, tmp_path / f"series{sent // 20}")
            log = _storescu_round(node.port, files)
            assert log.count("Received Store Response (Success)") == len(files), log
            sent += len(files)
    finally:
        prober.join()
    assert not failures, failures
    assert len(probed) == 120
    with node.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == sent

    def all_released() -> bool:  # the last release is recorded after storescu got its answer
        with node.db.read() as session:
            return set(session.scalars(select(AssociationRow.result))) == {"released"}

    wait_until(all_released, what="every association recorded as released")
    assert not audit.events(node.db, "association_rejected")


def test_a_peer_reset_is_one_warning_line(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An established association whose peer resets the connection, and one reset in the middle of a
    PDU: each is one WARNING record without a traceback, and the audit records the association aborted."""
    from test_bad_input_pdu import p_data, pdv, raw_association

    node = start_node(make_config(**DEFAULT_TIMEOUTS))
    caplog.set_level(logging.INFO)
    for partial in (b"", p_data(pdv(1, 0x03, b"\x00" * 64))[:20]):
        caplog.clear()
        sock = raw_association(node)
        sock.sendall(partial)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_until(lambda: associations_alive(node) == 0, what="association ended")
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.levelno for r in loud] == [logging.WARNING], [r.getMessage() for r in loud]
        assert "reset by the peer" in loud[0].getMessage() and "127.0.0.1" in loud[0].getMessage()
        assert not any(r.exc_info or r.exc_text for r in caplog.records)
    with node.db.read() as session:
        assert list(session.scalars(select(AssociationRow.result))) == ["aborted", "aborted"]


def test_stop_closes_silent_connections_and_idle_associations(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    hold: Callable[[socket.socket], socket.socket],
) -> None:
    node = start_node(make_config(**DEFAULT_TIMEOUTS))
    for _ in range(5):
        hold(socket.create_connection(("127.0.0.1", node.port), timeout=30))
    for _ in range(5):
        hold(socket.create_connection(("127.0.0.1", node.port), timeout=30)).sendall(HUGE_PDU_HEADER)
    idle = associate(node.port)
    assert idle.is_established
    wait_until(lambda: associations_alive(node) == 6, what="6 connections in the association layer")
    server = node.server
    assert server is not None
    node.stop()
    wait_until(lambda: not server.active_associations, what="every connection's threads ended")
    wait_until(lambda: not idle.is_alive(), what="the peer sees its association end")
    assert idle.is_aborted
    with node.db.read() as session:
        assert list(session.scalars(select(AssociationRow.result))) == ["aborted"]


def test_segnode_serve_stops_on_sigterm_with_silent_connections(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """10 connections announce a 4 GiB PDU and go silent; SIGTERM stops ``segnode serve`` (goal: within
    5 s). Their timeouts are 10 minutes here, so a stop that waited for them fails the 60 s bound."""
    env = {
        "SEGNODE__NETWORK__ACSE_TIMEOUT_S": "600",
        "SEGNODE__NETWORK__NETWORK_TIMEOUT_S": "600",
        "SEGNODE__NETWORK__BIND_ADDRESS": "127.0.0.1",
        "SEGNODE__NETWORK__PORT": "0",
        "SEGNODE__STORAGE__MIN_FREE_SPACE_MB": "0",
    }
    # awaited with a C-ECHO from PACS, the one caller example.yaml allows
    node = ServeProcess(tmp_path, env=env, echo=("SEGNODE", "PACS"), options=["-vv"])
    connections: list[socket.socket] = []
    try:
        port = node.start()
        process = node.process
        assert process is not None
        handed = node.log_text().count("handed to the association layer")  # the C-ECHO's connection
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(HUGE_PDU_HEADER)
            connections.append(sock)
        wait_until(
            lambda: node.log_text().count("handed to the association layer") == handed + 10,
            timeout_s=60,
            what="the 10 connections in the association layer",
        )
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)  # a safety bound, far below the connections' timeouts
        stopped_after = time.monotonic() - started
    finally:
        if node.process is not None and node.process.poll() is None:
            node.kill()
        for sock in connections:
            sock.close()
    text = node.log_text()
    assert code == 0, text
    report(record_property, "stop_after_sigterm_s", stopped_after, "within 5 s")
    assert "SegNode stopped" in text and "Traceback" not in text, text
