"""The acceptor's two loops, woken by what they wait for instead of polling with fixed sleeps.

pynetdicom 3.0's association thread (``Association._run_reactor``) sleeps ``time.sleep(0.001)`` at the top
of every pass and only then looks for a decoded DIMSE message; each C-STORE therefore waits up to a
millisecond after its last PDU was decoded before its handler runs. For a sender of one association that
is a third of the time pynetdicom spends per instance.

:func:`wake_on_messages` gives one association a reactor that runs pynetdicom's own loop, unchanged
(the same code object, so release, abort, the network timeout, the pause used by ``send_*`` from a
handler and every other check behave as the library does), with one difference: where the loop sleeps,
:class:`_MessageWait` waits *at most* as long for a message in that association's DIMSE queue. An idle
association still passes through the loop every millisecond (releases and aborts are seen as soon as
before); a C-STORE request is served as soon as it is decoded.

The association's DUL thread (``DULServiceProvider.run_reactor``) polls the same way: when a pass found
nothing to do it sleeps ``_run_loop_delay`` (1 ms) and looks again for bytes on the connection and for
PDUs the association queued to send. :func:`wake_on_arrivals` runs that loop unchanged too, with
:class:`_ArrivalWait` in place of its sleep: a ``select`` on the connection and on a socket pair that every
PDU queued for sending writes a byte to (:class:`_WakingQueue`), at most ``_run_loop_delay``. The bytes of
a C-STORE request are read as they arrive and its response is sent as soon as the handler returns; the
ARTIM and idle timers are still checked at least every millisecond. No thread spins while instances flow,
so several associations no longer take the interpreter lock from each other thousands of times a second.

This depends on the loops' code, which is pynetdicom's internals: :data:`REACTOR_SOURCE_SHA256` and
:data:`DUL_SOURCE_SHA256` pin the sources of the version they were checked against
(``tests/dicom_node/test_reactor.py`` fails when they change, and the loops have to be read again).
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import threading
import types
from typing import Any

import pynetdicom.association as pynetdicom_association
import pynetdicom.dul as pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: SHA-256 of ``inspect.getsource(Association._run_reactor)`` in pynetdicom 3.0.4, the loop this module
#: was checked against: it sleeps once per pass through ``time.sleep`` and then takes a message with
#: ``dimse.get_msg(block=False)``.
REACTOR_SOURCE_SHA256 = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
#: SHA-256 of ``inspect.getsource(DULServiceProvider.run_reactor)`` in pynetdicom 3.0.4: it sleeps
#: ``time.sleep(self._run_loop_delay)`` after a pass without an event, and reads ``to_provider_queue``
#: only through ``queue[0]`` and ``get``.
DUL_SOURCE_SHA256 = "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803"


class _MessageWait:
    """Stands in for the ``time`` module inside the reactor loop: its ``sleep`` returns as soon as the
    calling association's DIMSE queue holds a message, at the latest after ``seconds``."""

    @staticmethod
    def sleep(seconds: float) -> None:
        assoc = threading.current_thread()
        if not isinstance(assoc, Association):  # the loop runs in the association's own thread
            raise RuntimeError("the reactor loop ran outside its association's thread")
        messages = assoc.dimse.msg_queue
        with messages.not_empty:
            if not messages.queue:
                messages.not_empty.wait(seconds)


class _WakingQueue(queue.Queue[Any]):
    """A DUL's queue of primitives to send: each ``put`` also writes a byte to a socket pair, which
    :class:`_ArrivalWait` selects on."""

    def __init__(self) -> None:
        super().__init__()
        self.wake, self._signal = socket.socketpair()
        self.wake.setblocking(False)
        self._signal.setblocking(False)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            self._signal.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed (the DUL thread has ended)
            pass

    def drain(self) -> None:
        """Read the wake-up bytes (called once the DUL is awake)."""
        try:
            while self.wake.recv(4096):
                pass
        except OSError:  # BlockingIOError: nothing left
            pass

    def close(self) -> None:
        self.wake.close()
        self._signal.close()


class _ArrivalWait:
    """Stands in for the ``time`` module inside the DUL's loop: its ``sleep`` returns as soon as the
    connection has bytes to read or a primitive was queued for sending, at the latest after ``seconds``."""

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        if not isinstance(dul, DULServiceProvider) or not isinstance(dul.to_provider_queue, _WakingQueue):
            raise RuntimeError("the DUL loop ran outside a DUL thread with a waking queue")
        outgoing = dul.to_provider_queue
        waiting: list[socket.socket] = [outgoing.wake]
        transport = None if dul.socket is None else dul.socket.socket
        if transport is not None and transport.fileno() >= 0:
            if isinstance(transport, ssl.SSLSocket) and transport.pending():
                return  # decrypted bytes already buffered: select cannot see them
            waiting.append(transport)
        try:
            select.select(waiting, [], [], seconds)
        except (OSError, ValueError):  # the connection closed meanwhile: the loop's own check sees it
            select.select([outgoing.wake], [], [], seconds)
        outgoing.drain()


def _loop_with(loop: Any, module: types.ModuleType, clock: object) -> types.FunctionType:
    """``loop`` (a function of ``module``) with the name ``time`` bound to ``clock`` instead."""
    namespace: dict[str, Any] = dict(vars(module))
    namespace["time"] = clock
    patched = types.FunctionType(loop.__code__, namespace, loop.__name__, loop.__defaults__, loop.__closure__)
    patched.__qualname__ = f"{type(clock).__name__}.<{loop.__qualname__}>"
    return patched


_REACTOR = _loop_with(Association._run_reactor, pynetdicom_association, _MessageWait())
_DUL_LOOP = _loop_with(DULServiceProvider.run_reactor, pynetdicom_dul, _ArrivalWait())


def _run_dul(dul: DULServiceProvider) -> None:
    """The DUL thread's ``run``: the loop, then the wake-up sockets closed."""
    try:
        _DUL_LOOP(dul)
    finally:
        outgoing = dul.to_provider_queue
        if isinstance(outgoing, _WakingQueue):
            outgoing.close()


def wake_on_messages(assoc: Association) -> None:
    """Give ``assoc`` (an acceptor not yet started) the reactor loop that waits for its messages."""
    assoc._run_reactor = types.MethodType(_REACTOR, assoc)  # type: ignore[method-assign]


def wake_on_arrivals(assoc: Association) -> None:
    """Give the DUL of ``assoc`` (not yet started, nothing queued) the loop that waits for bytes to read
    and PDUs to send. Its thread's ``run`` is replaced: the thread's target was bound at construction."""
    dul = assoc.dul
    if dul.is_alive() or not dul.to_provider_queue.empty():
        raise RuntimeError("the DUL has started already")
    dul.to_provider_queue = _WakingQueue()
    dul.run = types.MethodType(_run_dul, dul)  # type: ignore[method-assign]
