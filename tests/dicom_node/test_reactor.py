"""The acceptor reactor woken by its DIMSE messages (dicom_node.receiving.reactor), pynetdicom's own loop."""

from __future__ import annotations

import hashlib
import inspect
import logging
import socket
from collections.abc import Callable, Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association as AssociationRow
from dicom_node.receiving import reactor, wire
from dicom_node.receiving import statuses as status
from dicom_node.receiving.server import STANDARD_LOG_HANDLERS, AcceptorHandler
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.paths import T2_SAG, series_files
from tests.support.scu import associate, store
from tests.support.waiting import wait_until


@pytest.mark.parametrize(
    ("loop", "pin", "names"),
    [
        # the wait replaces the loop's ``time.sleep``: if pynetdicom's loop changes, read it again (does it
        # still sleep once per pass, then take a message with ``dimse.get_msg``?) and update the pin
        (Association._run_reactor, reactor.REACTOR_SOURCE_SHA256, {"get_msg", "_reactor_checkpoint"}),
        # the DUL's wait replaces its loop's ``time.sleep``; sending reads ``to_provider_queue``
        (
            DULServiceProvider.run_reactor,
            reactor.DUL_SOURCE_SHA256,
            {"_run_loop_delay", "_is_transport_event"},
        ),
    ],
    ids=["Association._run_reactor", "DULServiceProvider.run_reactor"],
)
def test_pynetdicoms_loop_is_the_one_the_wait_was_checked_against(
    loop: Callable[..., None], pin: str, names: set[str]
) -> None:
    source = hashlib.sha256(inspect.getsource(loop).encode()).hexdigest()
    assert source == pin, f"pynetdicom's {loop.__qualname__} changed"
    assert {"time", "sleep", *names} <= set(loop.__code__.co_names)
    assert loop.__code__.co_freevars == ()


def test_the_server_still_creates_its_associations_where_the_node_hooks_in() -> None:
    """``server.AcceptorHandler`` is given to pynetdicom's server as its ``request_handler`` and overrides
    ``RequestHandler._create_association``, where pynetdicom builds each acceptor."""
    assert "request_handler" in inspect.signature(AssociationServer.__init__).parameters
    assert "_create_association" in vars(RequestHandler)
    assert "_create_association" in vars(AcceptorHandler)
    assert "Association(self.ae, MODE_ACCEPTOR)" in inspect.getsource(RequestHandler._create_association)


class _Waiting(Association):
    """An acceptor whose thread only runs the reactor's wait (for ``seconds``)."""

    seconds = 600.0

    def run(self) -> None:
        reactor._MessageWait.sleep(self.seconds)


def test_the_wait_ends_when_a_message_is_queued() -> None:
    assoc = _Waiting(AE(), "acceptor")
    assoc.start()
    try:
        assoc.dimse.msg_queue.put((1, None))  # type: ignore[arg-type]
        assoc.join(60)  # a bound far below the wait's 600 s: only the message can end it this soon
        assert not assoc.is_alive()
    finally:
        assoc.dimse.msg_queue.put((1, None))  # type: ignore[arg-type]
        assoc.join()


def test_a_message_already_queued_is_not_waited_for() -> None:
    assoc = _Waiting(AE(), "acceptor")
    assoc.dimse.msg_queue.put((1, None))  # type: ignore[arg-type]
    assoc.start()
    assoc.join(60)
    assert not assoc.is_alive()


def test_the_wait_refuses_to_run_outside_an_association_thread() -> None:
    with pytest.raises(RuntimeError, match="outside its association's thread"):
        reactor._MessageWait.sleep(0)


class _WaitingDUL(DULServiceProvider):
    """A DUL whose thread only runs the DUL's wait (600 s), with a waking queue."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self.to_provider_queue = reactor._WakingQueue()

    def run(self) -> None:
        reactor._ArrivalWait.sleep(600)


@pytest.fixture
def waiting_dul() -> Iterator[_WaitingDUL]:
    dul = _WaitingDUL(Association(AE(), "acceptor"))
    yield dul
    dul.to_provider_queue.put(None)  # ends the wait if a test failed
    dul.join()
    assert isinstance(dul.to_provider_queue, reactor._WakingQueue)
    dul.to_provider_queue.close()


def test_the_dul_wait_ends_when_a_pdu_is_queued_for_sending(waiting_dul: _WaitingDUL) -> None:
    waiting_dul.start()
    waiting_dul.to_provider_queue.put(None)
    waiting_dul.join(60)  # far below the wait's 600 s
    assert not waiting_dul.is_alive()


def test_the_dul_wait_ends_when_the_peer_sends_bytes(waiting_dul: _WaitingDUL) -> None:
    ours, peer = socket.socketpair()
    try:
        waiting_dul.socket = AssociationSocket(waiting_dul.assoc, client_socket=ours)
        waiting_dul.start()
        peer.sendall(b"\x07")
        waiting_dul.join(60)
        assert not waiting_dul.is_alive()
    finally:
        ours.close()
        peer.close()


def test_the_dul_wait_refuses_to_run_without_a_waking_queue() -> None:
    with pytest.raises(RuntimeError, match="outside a DUL thread"):
        reactor._ArrivalWait.sleep(0)


def test_a_dul_that_has_started_keeps_its_loop() -> None:
    assoc = Association(AE(), "acceptor")
    assoc.dul.to_provider_queue.put(None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="started already"):
        reactor.wake_on_arrivals(assoc)


def test_the_wake_up_sockets_close_with_the_dul_and_a_late_pdu_is_harmless() -> None:
    outgoing = reactor._WakingQueue()
    outgoing.put("first")
    outgoing.close()
    outgoing.put("after the DUL ended")  # the association may still queue an abort: no error
    assert outgoing.wake.fileno() == -1
    assert list(outgoing.queue) == ["first", "after the DUL ended"]


def test_the_nodes_associations_run_the_waking_loop_and_the_wire_and_release_as_before(
    make_config: Callable[..., SegNodeConfig], start_node: Callable[..., NodeService]
) -> None:
    node = start_node(make_config())
    assert node.server is not None
    files = series_files(T2_SAG)[:3]
    assoc = associate(node.port, files=files)
    assert assoc.is_established
    try:
        [served] = wait_until(lambda: list(node.server.active_associations), what="the node's association")
        assert served._run_reactor.__func__ is reactor._REACTOR  # type: ignore[attr-defined]
        assert served.dul.run.__func__ is reactor._run_dul  # type: ignore[attr-defined]
        assert isinstance(served.dul.to_provider_queue, reactor._WakingQueue)
        assert served.dul.socket.recv.__func__ is wire._recv  # type: ignore[union-attr]
        assert served.dimse.send_msg.__qualname__ == "send_store_responses.<locals>.send_msg"
        assert store(assoc, files) == [status.SUCCESS] * 3
    finally:
        assoc.release()
    assert assoc.is_released
    wait_until(lambda: audit.rows(node.db, AssociationRow)[0].result == "released", what="release recorded")
    assert audit.rows(node.db, AssociationRow)[0].instances_received == 3
    served.dul.join(60)
    assert not served.dul.is_alive()
    assert served.dul.to_provider_queue.wake.fileno() == -1  # closed with the DUL thread


@pytest.mark.parametrize(("level", "kept"), [(logging.WARNING, False), (logging.INFO, True)])
def test_pynetdicoms_per_message_logging_runs_only_when_its_records_are_kept(
    make_config: Callable[..., SegNodeConfig], start_node: Callable[..., NodeService], level: int, kept: bool
) -> None:
    """pynetdicom's standard handlers describe every PDU and message; the node's associations run without
    them unless pynetdicom's logger takes INFO records (``segnode serve -vv``)."""
    pynetdicom_logger = logging.getLogger("pynetdicom")
    before = pynetdicom_logger.level
    pynetdicom_logger.setLevel(level)
    try:
        node = start_node(make_config())
        assert node.server is not None
        files = series_files(T2_SAG)[:1]
        assoc = associate(node.port, files=files)
        try:
            [served] = wait_until(lambda: list(node.server.active_associations), what="the association")
            assert store(assoc, files) == [status.SUCCESS]
            for event, handler in STANDARD_LOG_HANDLERS:
                bound = [h for h, _ in served.get_handlers(event)]  # type: ignore[misc]
                assert (handler in bound) is kept, event.name
        finally:
            assoc.release()
    finally:
        pynetdicom_logger.setLevel(before)
