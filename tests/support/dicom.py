"""DICOM probes: a peer (the node, Orthanc, storescp) is used only once it answers an association."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from enum import Enum

from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.ports import LOOPBACK
from tests.support.waiting import wait_until


class Answer(Enum):
    """What a peer answered to an A-ASSOCIATE-RQ proposing Verification."""

    NONE = "none"  # nothing listens, or the connection closed without an A-ASSOCIATE-AC/RJ
    REJECTED = "rejected"
    ECHO_FAILED = "echo failed"  # accepted, but C-ECHO got no Success
    ECHO_SUCCESS = "echo success"


def probe(port: int, called_ae: str, calling_ae: str = "ECHOSCU", timeout_s: float = 10.0) -> Answer:
    """Request an association for Verification on ``127.0.0.1:port``, C-ECHO if accepted, release.

    A peer that rejects and closes at once can close the connection before pynetdicom's requestor looks
    at the answer (it then reports an abort without a primitive); the A-ASSOCIATE-RJ PDU the connection
    carried tells the two apart.
    """
    received: list[object] = []
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        LOOPBACK,
        port,
        ae_title=called_ae,
        evt_handlers=[(evt.EVT_PDU_RECV, lambda e: received.append(e.pdu))],
    )
    if assoc.is_established:
        response = assoc.send_c_echo()
        assoc.release()
        ok = response is not None and "Status" in response and int(response.Status) == 0x0000
        return Answer.ECHO_SUCCESS if ok else Answer.ECHO_FAILED
    if assoc.is_rejected or any(isinstance(pdu, A_ASSOCIATE_RJ) for pdu in received):
        return Answer.REJECTED
    if any(isinstance(pdu, A_ASSOCIATE_AC) for pdu in received):
        return Answer.ECHO_FAILED  # accepted, but no usable context
    return Answer.NONE


def wait_for_echo(
    port: int,
    called_ae: str,
    what: str,
    *,
    calling_ae: str = "ECHOSCU",
    timeout_s: float = 120.0,
    process: subprocess.Popen[bytes] | None = None,
    details: Callable[[], str] | None = None,
) -> None:
    """Wait until ``what`` on ``port`` answers C-ECHO with Success (as ``calling_ae`` -> ``called_ae``)."""
    wait_until(
        lambda: probe(port, called_ae, calling_ae) is Answer.ECHO_SUCCESS,
        timeout_s,
        f"{what} to answer C-ECHO ({calling_ae} -> {called_ae}) on port {port}",
        interval_s=0.2,
        process=process,
        details=details,
    )


def wait_for_association_answer(
    port: int,
    called_ae: str,
    what: str,
    *,
    calling_ae: str = "ECHOSCU",
    timeout_s: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
    details: Callable[[], str] | None = None,
) -> Answer:
    """Wait until ``what`` answers an association request at all (accepts or rejects it); returns how."""

    def answered() -> Answer | None:
        answer = probe(port, called_ae, calling_ae)
        return None if answer is Answer.NONE else answer

    answer: Answer = wait_until(
        answered,
        timeout_s,
        f"{what} to answer an association request ({calling_ae} -> {called_ae}) on port {port}",
        interval_s=0.2,
        process=process,
        details=details,
    )
    return answer
