"""Malformed PDUs from a raw socket: the node answers as PS3.8 and pynetdicom allow, records what it can
in the audit log, and keeps serving (a pynetdicom C-ECHO succeeds after every case)."""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association as AssociationRow
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.paths import T2_SAG, series_files
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x01, 0x02, 0x03, 0x04, 0x07


def item(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">H", len(payload)) + payload


def associate_rq(
    called: bytes = b"SEGNODE",
    calling: bytes = b"PYSCU",
    version: int = 1,
    extra: bytes = b"",
    syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing MR Image Storage as presentation context 1."""
    body = struct.pack(">HH", version, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT)
    body += item(
        0x20,
        bytes([1, 0, 0, 0]) + item(0x30, MRImageStorage.encode()) + item(0x40, syntax.encode()),
    )
    body += item(0x50, item(0x51, struct.pack(">L", 16384)))
    body += extra
    return bytes([A_ASSOCIATE_RQ, 0]) + struct.pack(">L", len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU as (type, body), or None when the node closed the connection."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = struct.unpack(">L", header[2:])
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return header[0], body


def closed_by_node(sock: socket.socket) -> bool:
    """Read until the node closes; True if it did (after an A-ABORT or without one)."""
    try:
        while (pdu := read_pdu(sock)) is not None:
            assert pdu[0] in (A_ABORT, A_ASSOCIATE_RJ), f"unexpected PDU type {pdu[0]:#04x}"
    except ConnectionResetError:
        pass
    return True


def echo_works(node: NodeService) -> bool:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    ok = assoc.is_established and int(assoc.send_c_echo().Status) == status.SUCCESS
    assoc.release()
    return ok


@pytest.fixture
def node(make_config: Callable[..., SegNodeConfig], start_node: StartNode) -> NodeService:
    return start_node(make_config(**{"network.acse_timeout_s": 2, "network.network_timeout_s": 5}))


def connect(node: NodeService) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=15)
    return sock


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"\x00\x01garbage-bytes" * 3, A_ABORT),
        # P-DATA-TF before any association
        (bytes([P_DATA_TF, 0]) + struct.pack(">L", 6) + struct.pack(">L", 2) + b"\x01\x03", A_ABORT),
        # an empty calling AE title cannot be decoded
        (associate_rq(calling=b" " * 16), A_ABORT),
        # an item type PS3.8 does not define
        (associate_rq(extra=b"\x99\x00\x00\x02zz"), A_ABORT),
        # a User Information item longer than the PDU
        (associate_rq(extra=b"\x50\x00\x10\x00"), A_ABORT),
        # protocol version 2: A-ASSOCIATE-RJ rejected-permanent, service-provider (ACSE),
        # protocol-version-not-supported
        (associate_rq(version=2), A_ASSOCIATE_RJ),
    ],
    ids=["garbage", "p_data_first", "empty_calling_ae", "unknown_item", "item_overrun", "protocol_version_2"],
)
def test_malformed_request_is_answered_and_recorded(node: NodeService, data: bytes, answer: int) -> None:
    with connect(node) as sock:
        sock.sendall(data)
        pdu = read_pdu(sock)
        assert pdu is not None and pdu[0] == answer
        if answer == A_ASSOCIATE_RJ:
            assert pdu[1][1:4] == bytes([0x01, 0x02, 0x02])
        assert closed_by_node(sock)
    wait_until(lambda: len(audit.events(node.db, "connection_closed")) == 1, what="connection recorded")
    [event] = audit.events(node.db, "connection_closed")
    assert event.reason == "no_association_request" and "127.0.0.1" in (event.detail or "")
    assert echo_works(node)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00\x00\x00\x00\x04abcd",  # unknown PDU type
        associate_rq()[:-10],  # declared length beyond the data
        b"\x01\x00\xff\xff\xff\xff" + bytes(100),  # a 4 GiB PDU announced
    ],
    ids=["unknown_pdu_type", "length_beyond_data", "huge_length"],
)
def test_peer_that_sends_part_of_a_pdu_and_leaves(node: NodeService, data: bytes) -> None:
    with connect(node) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # TCP delivers the data before the end of the stream
        assert closed_by_node(sock)
    wait_until(lambda: len(audit.events(node.db, "connection_closed")) == 1, what="connection recorded")
    assert echo_works(node)


def test_stalled_request_is_closed_by_the_node(node: NodeService) -> None:
    """A peer that announces an A-ASSOCIATE-RQ and stalls mid-PDU is disconnected by the node (network
    timeout, 5 s here), it does not hold a thread for ever: a node that does not close it makes the read
    fail after the socket's 15 s."""
    with connect(node) as sock:
        sock.sendall(associate_rq()[:-10])
        assert closed_by_node(sock)
    assert echo_works(node)


def raw_association(node: NodeService, syntax: str = ExplicitVRLittleEndian) -> socket.socket:
    sock = connect(node)
    sock.sendall(associate_rq(syntax=syntax))
    pdu = read_pdu(sock)
    assert pdu is not None and pdu[0] == A_ASSOCIATE_AC
    return sock


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">L", len(data) + 2) + bytes([context_id, control]) + data


def p_data(*values: bytes) -> bytes:
    body = b"".join(values)
    return bytes([P_DATA_TF, 0]) + struct.pack(">L", len(body)) + body


def store_command(sop_instance: str) -> bytes:
    """The encoded command set of a C-STORE-RQ on presentation context 1 (pynetdicom's encoder)."""
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = MRImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def response_status(sock: socket.socket) -> int:
    pdu = read_pdu(sock)
    assert pdu is not None and pdu[0] == P_DATA_TF, pdu
    (length,) = struct.unpack(">L", pdu[1][:4])
    assert pdu[1][5] & 0x03 == 0x03  # command, last fragment
    command = decode(io.BytesIO(pdu[1][6 : 4 + length]), True, True)
    return int(command.Status)


def test_zero_length_data_set(node: NodeService) -> None:
    """A C-STORE-RQ followed by a data set PDV with no bytes (a zero-length object)."""
    sop_instance = str(pydicom.dcmread(series_files(T2_SAG)[0], stop_before_pixels=True).SOPInstanceUID)
    with raw_association(node) as sock:
        sock.sendall(p_data(pdv(1, 0x03, store_command(sop_instance))))
        sock.sendall(p_data(pdv(1, 0x02, b"")))
        assert response_status(sock) == status.CANNOT_UNDERSTAND
        # the association is still usable: the same instance, intact, is stored
        with series_files(T2_SAG)[0].open("rb") as fp:
            pydicom.filereader.read_preamble(fp, force=False)
            pydicom.filereader._read_file_meta_info(fp)
            data = fp.read()
        sock.sendall(p_data(pdv(1, 0x03, store_command(sop_instance))))
        sock.sendall(p_data(pdv(1, 0x02, data)))
        assert response_status(sock) == status.SUCCESS
    [event] = audit.events(node.db, "instance_refused")
    assert "zero-length object" in (event.reason or "") and event.detail == status.describe(
        status.CANNOT_UNDERSTAND
    )
    assert len([p for p in node.spool.root.rglob("*.dcm")]) == 1
    assert echo_works(node)


@pytest.mark.parametrize(
    "value",
    [
        pdv(9, 0x03, b"\x00" * 8),  # a presentation context that was never proposed
        pdv(1, 0x03, b"not a command set"),  # undecodable command set
        struct.pack(">L", 4000) + b"\x01\x03abc",  # PDV length beyond the PDU
    ],
    ids=["unknown_context", "garbage_command", "pdv_length_overrun"],
)
def test_bad_p_data_in_an_accepted_association(node: NodeService, value: bytes) -> None:
    """The node closes the association and the audit records it as aborted, with its end time (where
    pynetdicom's state machine gives up on the PDU without an abort event, the closed connection ends it)."""
    with raw_association(node, syntax=ImplicitVRLittleEndian) as sock:
        sock.sendall(p_data(value))
        assert closed_by_node(sock)
    assert node.receiver is not None

    def ended() -> bool:
        node.receiver.end_dead_associations()  # what the completion timer runs at each tick
        return [r.result for r in audit.rows(node.db, AssociationRow)] == ["aborted"]

    wait_until(ended, what="association aborted")
    [row] = audit.rows(node.db, AssociationRow)
    assert row.instances_received == 0 and row.ended_at is not None
    assert [e.association_id for e in audit.events(node.db, "association_aborted")] == [row.id]
    assert echo_works(node)
    assert not [p for p in node.spool.root.rglob("*") if p.is_file()]


def test_the_completion_timer_ends_associations_dropped_without_an_event(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    """With the node's own timer running, a dropped association is ended without any manual step, and a
    regular association that follows is recorded as released, not touched by the sweep."""
    node = start_node(
        make_config(**{"network.acse_timeout_s": 2, "network.network_timeout_s": 5}),
        completion_interval_s=0.2,
    )
    with raw_association(node, syntax=ImplicitVRLittleEndian) as sock:
        sock.sendall(p_data(pdv(1, 0x03, b"not a command set")))
        assert closed_by_node(sock)
    wait_until(
        lambda: [r.result for r in audit.rows(node.db, AssociationRow)] == ["aborted"],
        what="association aborted",
    )
    assert echo_works(node)
    wait_until(
        lambda: [r.result for r in audit.rows(node.db, AssociationRow)] == ["aborted", "released"],
        what="echo released",
    )
    # three more ticks of the timer (each runs the sweep of dropped associations, then completion)
    ticks: list[int] = []
    run_once = node.completer.run_once

    def counted() -> object:
        ticks.append(1)
        return run_once()

    node.completer.run_once = counted  # type: ignore[method-assign]
    wait_until(lambda: len(ticks) >= 3, what="three ticks of the completion timer")
    assert [r.result for r in audit.rows(node.db, AssociationRow)] == ["aborted", "released"]


def test_peer_that_leaves_in_the_middle_of_a_data_set_pdu(node: NodeService) -> None:
    """An instance whose data set PDU is cut off by the peer closing the connection: the association is
    aborted and only the instance answered before is stored (the node reads each PDU whole, into one
    buffer: a short read is a closed connection, as with pynetdicom's own reads)."""
    stored, cut = series_files(T2_SAG)[:2]
    with raw_association(node) as sock:
        for path, whole in ((stored, True), (cut, False)):
            with path.open("rb") as fp:
                uid = str(pydicom.dcmread(fp, stop_before_pixels=True).SOPInstanceUID)
                fp.seek(0)
                pydicom.filereader.read_preamble(fp, force=False)
                pydicom.filereader._read_file_meta_info(fp)
                data = fp.read()
            sock.sendall(p_data(pdv(1, 0x03, store_command(uid))))
            pdu = p_data(pdv(1, 0x02, data))
            if whole:
                sock.sendall(pdu)
                assert response_status(sock) == status.SUCCESS
            else:
                sock.sendall(pdu[: len(pdu) // 2])
                sock.shutdown(socket.SHUT_WR)
                assert closed_by_node(sock)
    assert node.receiver is not None

    def ended() -> bool:
        node.receiver.end_dead_associations()
        return [r.result for r in audit.rows(node.db, AssociationRow)] == ["aborted"]

    wait_until(ended, what="association aborted")
    [row] = audit.rows(node.db, AssociationRow)
    assert row.instances_received == 1
    first = str(pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID)
    assert [p.stem for p in node.spool.root.rglob("*.dcm")] == [first]
    assert echo_works(node)
