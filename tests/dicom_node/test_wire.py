"""The node's own file meta, C-STORE responses and PDU reads (dicom_node.receiving.wire): the same bytes as
pynetdicom's, pynetdicom's path for everything else, and pins on the pynetdicom code they replace."""

from __future__ import annotations

import hashlib
import inspect
import socket
import threading
from io import BytesIO

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicom_node.receiving import statuses as status
from dicom_node.receiving import wire
from dicom_node.receiving.store_requests import StoreRequest

UIDS = [
    "1.2.3",  # odd length: padded with a null
    "1.2.34",
    "2.16.124.113543.6006.99.01527921214172808472",  # a component starting with 0 (pydicom warns)
    "1.2.840.10008.5.1.4.1.1.4",
    "1." + "2" * 62,  # 64 characters
]


def test_pynetdicoms_send_msg_and_recv_are_the_ones_the_node_was_checked_against() -> None:
    """If pynetdicom changes these, read them again: does ``send_msg`` still only trigger
    ``EVT_DIMSE_SENT`` and hand the encoded P-DATA to ``dul.send_pdu``? Does ``recv`` still return a
    ``bytearray`` of ``nr_bytes``, shorter when the peer closed? Then update the pins."""
    for code, pin, names in (
        (DIMSEServiceProvider.send_msg, wire.SEND_MSG_SOURCE_SHA256, {"send_pdu", "EVT_DIMSE_SENT"}),
        (AssociationSocket.recv, wire.RECV_SOURCE_SHA256, {"recv", "extend"}),
    ):
        assert hashlib.sha256(inspect.getsource(code).encode()).hexdigest() == pin, code.__qualname__
        assert names <= set(code.__code__.co_names)
    # the DIMSE reaches its DUL and the peer's maximum PDU size through these
    assert isinstance(vars(DIMSEServiceProvider)["dul"], property)
    assert isinstance(vars(DIMSEServiceProvider)["maximum_pdu_size"], property)


def _event(
    sop_instance: str, transfer_syntax: str, data_set: object, kind: type[C_STORE] = C_STORE
) -> evt.Event:
    request = kind()
    request.MessageID = 7
    request.AffectedSOPClassUID = MRImageStorage
    request.AffectedSOPInstanceUID = sop_instance
    request.DataSet = data_set  # type: ignore[assignment]
    context = build_context(MRImageStorage, transfer_syntax)
    context.context_id = 1
    return evt.Event(
        Association(AE(), "acceptor"), evt.EVT_C_STORE, {"request": request, "context": context.as_tuple}
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit]
)
@pytest.mark.parametrize("kind", [C_STORE, StoreRequest])
def test_the_instance_file_is_what_pynetdicom_writes(
    sop_instance: str, transfer_syntax: str, kind: type[C_STORE]
) -> None:
    """Also for the node's own requests, whose data set is a BytesIO made from the whole bytes."""
    data_set = b"\x08\x00\x18\x00\x04\x00\x00\x00abcd"
    event = _event(sop_instance, transfer_syntax, BytesIO(data_set), kind)
    assert wire.part10_file(event) == event.encoded_dataset()
    assert event.request.DataSet.getvalue() == data_set  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("sop_instance", ["1.2.3.abc", "1.2\x003", "1.2.3 "])
def test_other_values_are_written_by_pynetdicom(sop_instance: str) -> None:
    event = _event(sop_instance, ExplicitVRLittleEndian, BytesIO(b"abcd"))
    assert wire.part10_file(event) == event.encoded_dataset()


def _response(sop_instance: str, code: int) -> C_STORE:
    response = C_STORE()
    response.MessageID = 5
    response.MessageIDBeingRespondedTo = 5
    response.AffectedSOPClassUID = MRImageStorage
    response.AffectedSOPInstanceUID = sop_instance
    response.Status = code
    return response


def _pynetdicoms_pdvs(primitive: C_STORE, maximum: int = 262144) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return [pdata.presentation_data_value_list[0][1] for pdata in message.encode_msg(1, maximum)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize(
    "code", [status.SUCCESS, status.OUT_OF_RESOURCES, status.CANNOT_UNDERSTAND, status.PROCESSING_FAILURE]
)
def test_a_store_response_is_encoded_as_pynetdicom_encodes_it(sop_instance: str, code: int) -> None:
    response = _response(sop_instance, code)
    assert [wire.store_response_pdv(response)] == _pynetdicoms_pdvs(response)


def test_other_responses_are_left_to_pynetdicom() -> None:
    with_comment = _response("1.2.3", status.CANNOT_UNDERSTAND)
    with_comment.ErrorComment = "bad"
    with_element = _response("1.2.3", status.CANNOT_UNDERSTAND)
    with_element.OffendingElement = [0x00100010]
    request = _response("1.2.3", status.SUCCESS)
    request.MessageIDBeingRespondedTo = None
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    for primitive in (with_comment, with_element, request, echo):
        assert wire.store_response_pdv(primitive) is None


def _acceptor(maximum_pdu: int) -> Association:
    assoc = Association(AE(), "acceptor")
    assoc.requestor.maximum_length = maximum_pdu
    wire.send_store_responses(assoc)
    return assoc


def _sent(assoc: Association) -> list[bytes]:
    queued = []
    while not assoc.dul.to_provider_queue.empty():
        pdata = assoc.dul.to_provider_queue.get()
        assert isinstance(pdata, P_DATA)
        queued += [value for _, value in pdata.presentation_data_value_list]
    return queued


def test_the_association_sends_the_response_on_its_dul() -> None:
    assoc = _acceptor(262144)
    response = _response(UIDS[3], status.SUCCESS)
    assoc.dimse.send_msg(response, 1)
    assert _sent(assoc) == _pynetdicoms_pdvs(response)


def test_with_a_handler_on_sent_messages_or_a_small_pdu_pynetdicom_sends_it() -> None:
    """A handler bound to ``EVT_DIMSE_SENT`` gets pynetdicom's message; a peer whose maximum PDU is
    smaller than the command set gets it in fragments, as pynetdicom splits it."""
    assoc = _acceptor(262144)
    seen: list[object] = []
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(event.message))
    response = _response(UIDS[3], status.SUCCESS)
    assoc.dimse.send_msg(response, 1)
    assert [type(message) for message in seen] == [C_STORE_RSP]
    assert _sent(assoc) == _pynetdicoms_pdvs(response)

    small = _acceptor(64)
    small.dimse.send_msg(response, 1)
    fragments = _sent(small)
    assert len(fragments) > 1 and fragments == _pynetdicoms_pdvs(response, 64)


def _transport(connection: socket.socket) -> AssociationSocket:
    assoc = Association(AE(), "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=connection))
    wire.read_whole_pdus(assoc)
    transport = assoc.dul.socket
    assert transport is not None
    return transport


def test_a_pdu_is_read_whole_however_it_arrives() -> None:
    payload = bytes(range(256)) * 1000
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = _transport(ours)

        def send_in_pieces() -> None:
            for start in range(0, len(payload), 7000):
                theirs.sendall(payload[start : start + 7000])

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        received = transport.recv(len(payload))
        sender.join(60)
        assert isinstance(received, bytearray) and received == payload


def test_a_peer_that_closes_mid_pdu_gives_the_bytes_it_sent() -> None:
    """As pynetdicom's ``recv``: fewer bytes than asked for, which the DUL treats as a closed connection."""
    ours, theirs = socket.socketpair()
    with ours:
        transport = _transport(ours)
        theirs.sendall(b"x" * 5000)
        theirs.close()
        assert transport.recv(10000) == bytearray(b"x" * 5000)
        assert transport.recv(10) == bytearray()


def test_a_read_that_times_out_raises_as_in_pynetdicom() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = _transport(ours)
        ours.settimeout(0.05)  # nothing will arrive: the socket's timeout error passes through
        with pytest.raises(TimeoutError):
            transport.recv(10)


def test_a_length_announced_but_not_sent_is_not_allocated() -> None:
    """A PDU header may announce up to 4 GiB; the buffer grows only with the bytes that arrive."""
    payload = b"y" * (wire.FIRST_BUFFER * 3 + 17)
    ours, theirs = socket.socketpair()
    with ours:
        transport = _transport(ours)
        sender = threading.Thread(target=lambda: (theirs.sendall(payload), theirs.close()))
        sender.start()
        received = transport.recv(0xFFFFFFFF)
        sender.join(60)
        assert received == payload
