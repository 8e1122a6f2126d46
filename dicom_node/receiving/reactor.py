"""The acceptor's reactor loop, woken by the DIMSE message it waits for instead of a fixed 1 ms sleep.

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

This depends on the loop's code, which is pynetdicom's internals: :data:`REACTOR_SOURCE_SHA256` pins the
source of the version it was checked against (``tests/dicom_node/test_reactor.py`` fails when it
changes, and the loop has to be read again).
"""

from __future__ import annotations

import threading
import types
from typing import Any

import pynetdicom.association as pynetdicom_association
from pynetdicom.association import Association

#: SHA-256 of ``inspect.getsource(Association._run_reactor)`` in pynetdicom 3.0.4, the loop this module
#: was checked against: it sleeps once per pass through ``time.sleep`` and then takes a message with
#: ``dimse.get_msg(block=False)``.
REACTOR_SOURCE_SHA256 = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"


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


def _reactor_with_message_wait() -> types.FunctionType:
    loop = Association._run_reactor
    namespace: dict[str, Any] = dict(vars(pynetdicom_association))
    namespace["time"] = _MessageWait()
    reactor = types.FunctionType(loop.__code__, namespace, loop.__name__, loop.__defaults__, loop.__closure__)
    reactor.__qualname__ = f"wake_on_messages.<{loop.__qualname__}>"
    return reactor


_REACTOR = _reactor_with_message_wait()


def wake_on_messages(assoc: Association) -> None:
    """Give ``assoc`` (an acceptor not yet started) the reactor loop that waits for its messages."""
    assoc._run_reactor = types.MethodType(_REACTOR, assoc)  # type: ignore[method-assign]
