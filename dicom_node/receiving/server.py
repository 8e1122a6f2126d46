"""The SCP's TCP server: port probes cost nothing, stopping is bounded, peer resets are one log line.

pynetdicom's server gives every accepted connection an association thread and a DUL thread at once, and the
association thread then waits ``acse_timeout`` for the A-ASSOCIATE-RQ even after the peer has gone; the
DUL thread polls its socket every millisecond meanwhile. Load balancers and monitoring open and close the
DICOM port many times a minute, so :class:`SCPServer` first waits, in the connection's own thread and
without polling, for the connection's first byte (at most ``acse_timeout``, the ARTIM time of PS3.8 for
the request). A connection that closes (or is reset) before sending anything is a port probe: it is
counted in :attr:`SCPServer.probes`, logged at DEBUG and closed; pynetdicom never sees it. A connection
that stays silent is closed when that time is up and reported through ``on_silent``. Only connections
that send bytes become pynetdicom associations, and those count against ``network.max_associations`` only
once their request is accepted by the node's own count (:mod:`dicom_node.receiving.associations`).

:func:`close_connections` ends every connection of a stopped server within a bounded time, and
:class:`PeerResetFilter` turns pynetdicom's ERROR records with a traceback for a connection the peer
reset, or that timed out, into one WARNING line.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.receiving.reactor import wake_on_arrivals, wake_on_messages
from dicom_node.receiving.store_requests import receive_store_requests, serve_store_requests
from dicom_node.receiving.wire import read_whole_pdus, send_store_responses

LOG = logging.getLogger(__name__)

#: ``(address, port)`` of a connection that sent nothing before the request timeout.
SilentHandler = Callable[[str, int], None]
#: Seconds that :func:`close_connections` waits for the threads of closed connections to end.
JOIN_TIMEOUT_S = 2.0
#: pynetdicom's standard logging handlers (``_config.LOG_HANDLER_LEVEL = "standard"``), bound to every
#: association: they describe each PDU and DIMSE message at INFO and DEBUG. They build those lines (and
#: decode the command set's elements for them) even when the logger drops them.
STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class AcceptorHandler(RequestHandler):
    """pynetdicom's request handler; the association it creates serves each DIMSE message as soon as it is
    decoded, and its DUL reads and sends PDUs as soon as they come (:mod:`dicom_node.receiving.reactor`).
    It reads each PDU into one buffer and encodes ordinary C-STORE responses itself
    (:mod:`dicom_node.receiving.wire`), and decodes and serves ordinary C-STORE requests itself
    (:mod:`dicom_node.receiving.store_requests`).
    Unless pynetdicom's logger takes INFO records (``segnode serve -vv``), the association runs without
    pynetdicom's per-message logging handlers (:data:`STANDARD_LOG_HANDLERS`)."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        wake_on_messages(assoc)
        wake_on_arrivals(assoc)
        read_whole_pdus(assoc)
        send_store_responses(assoc)
        receive_store_requests(assoc)
        serve_store_requests(assoc)
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            for event, handler in STANDARD_LOG_HANDLERS:
                assoc.unbind(event, handler)
        return assoc


class SCPServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, behind a wait for each connection's first byte; its
    associations are :class:`AcceptorHandler`'s."""

    #: Pending connections the listening socket queues (socketserver's 5 drops a burst of probes' SYNs).
    request_queue_size = 128

    def __init__(
        self, *args: Any, request_timeout_s: float, on_silent: SilentHandler | None = None, **kwargs: Any
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.on_silent = on_silent
        #: Connections closed or reset before their first byte (port probes).
        self.probes = 0
        self._waiting: set[socket.socket] = set()
        self._waiting_lock = threading.Lock()
        self._closing = False
        kwargs.setdefault("request_handler", AcceptorHandler)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; TLS wraps it only once it has sent its first byte
        (:meth:`process_request_thread`), so a probe never reaches the TLS layer."""
        assert self.socket is not None
        return self.socket.accept()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if not self._first_byte_arrived(request, client_address):
            self.shutdown_request(request)
            return
        if self.ssl_context is not None:
            try:  # tls.DeferredHandshakeContext: the handshake runs in the association's thread
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except OSError as exc:
                LOG.warning("connection from %s:%s ended before TLS: %s", *client_address[:2], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def _first_byte_arrived(self, sock: socket.socket, address: Any) -> bool:
        with self._waiting_lock:
            if self._closing:
                return False
            self._waiting.add(sock)
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            if not poller.poll(self.request_timeout_s * 1000):
                LOG.info(
                    "connection from %s:%s sent nothing for %g s (network.acse_timeout_s); closed",
                    address[0],
                    address[1],
                    self.request_timeout_s,
                )
                if self.on_silent is not None:
                    self.on_silent(str(address[0]), int(address[1]))
                return False
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
            if not first or self._closing:
                if not self._closing:
                    with self._waiting_lock:
                        self.probes += 1
                    LOG.debug("connection from %s:%s closed without sending anything", *address[:2])
                return False
            return True
        finally:
            with self._waiting_lock:
                self._waiting.discard(sock)

    def shutdown(self) -> None:
        """Stop accepting, close the connections still waiting for their first byte, close the port."""
        with self._waiting_lock:
            self._closing = True
            waiting = list(self._waiting)
        for sock in waiting:
            shut_down(sock)
        socketserver.BaseServer.shutdown(self)  # ends serve_forever (pynetdicom's own also edits the AE)
        self.server_close()  # joins the connection threads, which end now

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception while handing a connection to pynetdicom: one line for network errors (the peer
        went away), the traceback for anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            LOG.warning("connection from %s:%s ended while it was set up: %s", *client_address[:2], exc)
        else:
            LOG.error("cannot set up the connection from %s:%s", *client_address[:2], exc_info=True)


def shut_down(sock: socket.socket | None) -> None:
    """Shut down both directions of ``sock`` (a blocked ``recv`` in another thread returns at once)."""
    if sock is None:
        return
    try:
        # the plain socket's shutdown: SSLSocket.shutdown would drop its SSL object under a reading thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected


def _raw_socket(assoc: Association) -> socket.socket | None:
    wrapper = assoc.dul.socket
    return None if wrapper is None else wrapper.socket


def close_connections(
    server: SCPServer, wait_idle: Callable[[float], bool], grace_s: float
) -> list[Association]:
    """End every connection of ``server`` after :meth:`SCPServer.shutdown`, in bounded time.

    Connections without an established association are closed at once. Established associations are
    closed once no C-STORE handler runs (``wait_idle``, at most ``grace_s``), so that an instance being
    stored gets its response; the peer sees the connection close (A-P-ABORT) and sends again what got no
    Success. Returns the associations whose threads are still alive :data:`JOIN_TIMEOUT_S` later.
    """
    active = list(server.active_associations)
    for assoc in active:
        if not assoc.is_established:
            shut_down(_raw_socket(assoc))
    if any(a.is_established for a in active) and not wait_idle(grace_s):
        LOG.warning("a C-STORE was still being stored after %g s; closing its association", grace_s)
    for assoc in active:
        shut_down(_raw_socket(assoc))
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for assoc in active:
        for thread in (assoc, assoc.dul):
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0))
    stuck = [a for a in active if a.is_alive() or a.dul.is_alive()]
    for assoc in stuck:
        assoc.dul.kill_dul()  # its reactor thread is not a daemon: it would keep the process alive
        LOG.warning("association thread %s did not end after its connection was closed", assoc.name)
    return stuck


def wake_acceptor(assoc: Association) -> None:
    """End the wait of ``assoc``'s thread for an A-ASSOCIATE-RQ that will not come.

    When a connection closes before a request was decoded (PS3.8 actions AA-2 and AA-5: nothing is
    indicated to the service user), pynetdicom's acceptor thread keeps waiting ``acse_timeout`` for the
    request. An empty item in its queue ends that wait exactly as the timeout would: the thread stops the
    DUL and ends. Only while no request has been decoded and nothing is queued.
    """
    dul = assoc.dul
    if assoc.requestor.primitive is None and dul.to_user_queue.empty():
        dul.to_user_queue.put(None)  # type: ignore[arg-type, unused-ignore]  # typed Optional in some pynetdicom 3.0 releases


class PeerResetFilter(logging.Filter):
    """One WARNING line, without a traceback, where pynetdicom's DUL logs a connection that the peer
    reset or closed in the middle of a PDU, or that timed out, as ERROR records with a traceback."""

    _DROPPED = "Connection closed before the entire PDU was received"
    _SHORT = "The received PDU is shorter than expected"

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError):
            record.msg = "connection from %s ended: %s"
            record.args = (_peer(), _describe(exc))
        elif record.msg == self._DROPPED:
            return False  # the record that follows carries the cause
        elif isinstance(record.msg, str) and record.msg.startswith(self._SHORT):
            received = record.msg[len(self._SHORT) :].strip(" ()")
            record.msg = "connection from %s closed in the middle of a PDU (%s)"
            record.args = (_peer(), received)
        else:
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _peer() -> str:
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        requestor = thread.assoc.requestor
        return f"{requestor.address}:{requestor.port}"
    return "the peer"


def _describe(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "no data within the socket timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset by the peer"
    return f"{type(exc).__name__}: {exc}"


def install_peer_reset_filter() -> None:
    """Attach :class:`PeerResetFilter` to pynetdicom's DUL logger (once)."""
    dul_logger = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(f, PeerResetFilter) for f in dul_logger.filters):
        dul_logger.addFilter(PeerResetFilter())


def start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    ssl_context: ssl.SSLContext | None,
    request_timeout_s: float,
    on_silent: SilentHandler | None = None,
) -> SCPServer:
    """Listen on ``address`` with an :class:`SCPServer` for ``ae`` (``serve_forever`` in a daemon thread)."""
    install_peer_reset_filter()
    server = ae.make_server(  # make_server's annotation names the class it is not given
        address,
        ssl_context=ssl_context,
        evt_handlers=handlers,
        server_class=SCPServer,
        request_timeout_s=request_timeout_s,
        on_silent=on_silent,
    )
    assert isinstance(server, SCPServer)
    name = f"SCPServer@{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
