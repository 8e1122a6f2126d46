"""C-STORE requests decoded and served by the node (dicom_node.receiving.store_requests): the same request
values as pynetdicom's decoding, pynetdicom's path for everything else (fed the same PDVs), pynetdicom's
Storage SCP behaviour over real associations, and pins on the pynetdicom code it stands in for."""

from __future__ import annotations

import hashlib
import inspect
import logging
import queue
import struct
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.receiving import store_requests as sr
from dicom_node.receiving import wire
from dicom_node.receiving.server import STANDARD_LOG_HANDLERS, SCPServer, start_server
from tests.support.scu import associate
from tests.support.waiting import wait_until

UIDS = [
    "1.2.3",
    "1.2.34",
    "2.16.124.113543.6006.99.01527921214172808472",  # a component starting with 0
    "1." + "2" * 62,  # 64 characters
]
DATA_SET = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00" + bytes(range(256)) * 40
KEYWORDS = (
    "MessageID",
    "MessageIDBeingRespondedTo",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "Status",
)


@pytest.mark.parametrize(
    ("code", "pin"),
    [
        (DIMSEServiceProvider.receive_primitive, sr.RECEIVE_PRIMITIVE_SOURCE_SHA256),
        (DIMSEMessage.decode_msg, sr.DECODE_MSG_SOURCE_SHA256),
        (Association._serve_request, sr.SERVE_REQUEST_SOURCE_SHA256),
        (StorageServiceClass.SCP, sr.STORAGE_SCP_SOURCE_SHA256),
    ],
    ids=lambda value: getattr(value, "__qualname__", "pin"),
)
def test_pynetdicoms_code_is_the_one_the_node_was_checked_against(code: Callable[..., Any], pin: str) -> None:
    """If pynetdicom changes these, read them again: does a complete message still trigger
    ``EVT_DIMSE_RECV`` and go on ``msg_queue``? Do command and data set fragments still follow their
    control header? Does the Storage SCP still answer through ``attempt``, ``validate_status`` and
    ``send_msg``? Then update the pins."""
    assert hashlib.sha256(inspect.getsource(code).encode()).hexdigest() == pin, code.__qualname__


def _request(sop_instance: str = UIDS[0], message_id: int = 7, priority: int = 2) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = MRImageStorage
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = priority
    request.DataSet = BytesIO(DATA_SET)
    return request


def _p_datas(primitive: Any, maximum: int = 262144, context_id: int = 1) -> list[P_DATA]:
    """The P-DATA primitives pynetdicom's requestor sends for ``primitive``."""
    message = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(context_id, maximum))


def _p_data(*values: tuple[int, bytes]) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(value) for value in values]
    return primitive


def _acceptor(node: bool) -> Association:
    """An acceptor as the node's server makes one (pynetdicom's logging handlers unbound)."""
    assoc = Association(AE(), "acceptor")
    for event, handler in STANDARD_LOG_HANDLERS:
        assoc.unbind(event, handler)
    if node:
        sr.receive_store_requests(assoc)
    return assoc


def _outcome(assoc: Association, p_datas: list[P_DATA], kinds: list[type] | None = None) -> list[Any]:
    """What a DIMSE provider makes of ``p_datas``: the messages it queued (their values, data set and
    context), an exception, the events it put to its DUL, and whether a message is half decoded."""
    seen: list[Any] = []
    for p_data in p_datas:
        try:
            assoc.dimse.receive_primitive(p_data)
        except Exception as exc:  # noqa: BLE001 - compared between the two providers
            seen.append(("raised", type(exc).__name__))
    while not assoc.dimse.msg_queue.empty():
        context_id, primitive = assoc.dimse.msg_queue.get()
        if kinds is not None:
            kinds.append(type(primitive))
        values = {keyword: getattr(primitive, keyword, None) for keyword in KEYWORDS}
        data = primitive.DataSet.getvalue() if getattr(primitive, "DataSet", None) is not None else None
        seen.append((context_id, primitive._context_id, type(primitive).__mro__[-3].__name__, values, data))
    events = assoc.dul.event_queue
    while not events.empty():
        seen.append(("event", events.get()))
    seen.append(("assembling", assoc.dimse.message is not None))
    return seen


def _same_as_pynetdicom(p_datas: list[P_DATA]) -> list[Any]:
    node, library = _acceptor(node=True), _acceptor(node=False)
    kinds: list[type] = []
    ours = _outcome(node, p_datas, kinds)
    assert sr.StoreRequest not in kinds  # all of it went to pynetdicom
    assert ours == _outcome(library, p_datas)
    return ours


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize(("message_id", "priority"), [(0, 0), (7, 1), (65535, 2)])
@pytest.mark.parametrize("maximum", [262144, 1024])
def test_a_request_is_decoded_as_pynetdicom_decodes_it(
    sop_instance: str, message_id: int, priority: int, maximum: int
) -> None:
    p_datas = _p_datas(_request(sop_instance, message_id, priority), maximum)
    kinds: list[type] = []
    seen = _outcome(_acceptor(node=True), p_datas, kinds)
    assert kinds == [sr.StoreRequest]  # decoded by the node
    assert seen == _outcome(_acceptor(node=False), p_datas)
    assert seen[0][3]["AffectedSOPInstanceUID"] == sop_instance and seen[0][4] == DATA_SET
    assert len(p_datas) > 1  # data set fragments in P-DATA primitives of their own


def test_the_decoded_request_is_the_nodes_own_and_holds_uids() -> None:
    node = _acceptor(node=True)
    for p_data in _p_datas(_request()):
        node.dimse.receive_primitive(p_data)
    _, request = node.dimse.msg_queue.get_nowait()
    assert type(request) is sr.StoreRequest
    assert isinstance(request.AffectedSOPClassUID, UID) and isinstance(request.AffectedSOPInstanceUID, UID)
    assert request.is_valid_request


def _command(*elements: tuple[int, bytes], group_length: int | None = None) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, number, len(value)) + value for number, value in elements)
    length = len(body) if group_length is None else group_length
    return struct.pack("<HHII", 0, 0, 4, length) + body


def _store_elements(**changes: bytes | None) -> list[tuple[int, bytes]]:
    values: dict[int, bytes | None] = {
        0x0002: b"1.2.840.10008.5.1.4.1.1.4\x00",
        0x0100: struct.pack("<H", 1),
        0x0110: struct.pack("<H", 3),
        0x0700: struct.pack("<H", 0),
        0x0800: struct.pack("<H", 0x0001),
        0x1000: b"1.2.3\x00",
    }
    for name, value in changes.items():
        values[int(name[1:], 16)] = value
    return [(number, value) for number, value in sorted(values.items()) if value is not None]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    "command",
    [
        _command(*_store_elements(e1030=b"PACS", e1031=struct.pack("<H", 9))),  # a C-MOVE's sub-operation
        _command(*_store_elements(e0800=struct.pack("<H", 0x0101))),  # no data set
        _command(*_store_elements(e0700=struct.pack("<H", 3))),  # a priority pynetdicom refuses
        _command(*_store_elements(e1000=b"1." + b"2" * 63)),  # 65 characters
        _command(*_store_elements(e1000=b"1.2.abc\x00")),
        _command(*_store_elements(e1000=b"")),
        _command(*_store_elements(e1000=None)),
        _command(*_store_elements(e0110=struct.pack("<I", 3))),  # a Message ID of 4 bytes
        _command(*_store_elements(), group_length=7),
        _command(*_store_elements())[:-3],  # cut short
        _command(*_store_elements(e0100=struct.pack("<H", 0x0030))),  # C-ECHO-RQ's command field
    ],
    ids=[
        "move_originator",
        "no_data_set",
        "priority_3",
        "uid_65",
        "uid_letters",
        "uid_empty",
        "uid_missing",
        "message_id_4_bytes",
        "group_length",
        "truncated",
        "echo_field",
    ],
)
def test_other_command_sets_are_left_to_pynetdicom(command: bytes) -> None:
    assert sr.decode_store_request(command) is None
    _same_as_pynetdicom([_p_data((1, b"\x03" + command)), _p_data((1, b"\x02" + DATA_SET))])


def test_the_plain_command_set_of_these_tests_is_decoded() -> None:
    """The builder of the refused command sets above gives a decodable one without changes."""
    request = sr.decode_store_request(_command(*_store_elements()))
    assert request is not None and (request.MessageID, request.AffectedSOPInstanceUID) == (3, "1.2.3")


def test_an_echo_goes_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = Verification
    seen = _same_as_pynetdicom(_p_datas(echo))
    assert seen[0][2] == "C_ECHO"


def test_a_command_in_the_middle_of_a_data_set_is_handed_to_pynetdicom_as_it_came() -> None:
    store_pdvs = [value for p in _p_datas(_request()) for value in p.presentation_data_value_list]
    command, *data = store_pdvs
    p_datas = [
        _p_data(command),
        _p_data((1, b"\x00" + DATA_SET[:100])),
        _p_data(command),  # a new command before the data set's last fragment
        _p_data((1, b"\x02" + DATA_SET[100:])),
    ]
    _same_as_pynetdicom(p_datas)
    # and a data fragment on another presentation context
    _same_as_pynetdicom([_p_data(command), _p_data((3, b"\x02" + DATA_SET))])


def test_a_data_set_before_any_command_goes_to_pynetdicom() -> None:
    seen = _same_as_pynetdicom([_p_data((1, b"\x02" + DATA_SET))])
    assert ("event", "Evt19") in seen  # pynetdicom aborts


def test_two_requests_in_one_p_data_are_both_queued() -> None:
    """pynetdicom drops what follows a complete message in the same P-DATA; the node queues both."""
    first = [value for p in _p_datas(_request("1.2.3", 1)) for value in p.presentation_data_value_list]
    second = [value for p in _p_datas(_request("1.2.4", 2)) for value in p.presentation_data_value_list]
    node = _acceptor(node=True)
    node.dimse.receive_primitive(_p_data(*first, *second))
    queued = [node.dimse.msg_queue.get_nowait()[1] for _ in range(2)]
    assert [(r.MessageID, r.AffectedSOPInstanceUID) for r in queued] == [(1, "1.2.3"), (2, "1.2.4")]


def test_with_a_handler_on_received_messages_pynetdicom_decodes_it() -> None:
    node = _acceptor(node=True)
    messages: list[Any] = []
    node.bind(evt.EVT_DIMSE_RECV, lambda event: messages.append(event.message))
    for p_data in _p_datas(_request()):
        node.dimse.receive_primitive(p_data)
    assert type(node.dimse.msg_queue.get_nowait()[1]) is C_STORE
    assert isinstance(messages[0], C_STORE_RQ)


def test_with_data_sets_spooled_to_files_pynetdicom_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    node = _acceptor(node=True)
    node._accepted_cx = {1: type("Context", (), {"transfer_syntax": [ExplicitVRLittleEndian]})()}  # type: ignore[assignment]
    for p_data in _p_datas(_request()):
        node.dimse.receive_primitive(p_data)
    request = node.dimse.msg_queue.get_nowait()[1]
    assert type(request) is C_STORE and request._dataset_path is not None
    request._dataset_file.close()
    request._dataset_path.unlink()


# -- serving, over real associations ----------------------------------------------------------------------


class _Handled:
    """What the store handler of the test server saw, and what it returns."""

    def __init__(self) -> None:
        self.requests: list[C_STORE] = []
        self.data: list[bytes] = []
        self.answer: Callable[[], Any] = lambda: 0x0000

    def __call__(self, event: evt.Event) -> Any:
        request = event.request
        assert isinstance(request, C_STORE) and isinstance(request.DataSet, BytesIO)
        self.requests.append(request)
        self.data.append(request.DataSet.getvalue())
        return self.answer()


@pytest.fixture
def server() -> Iterator[tuple[SCPServer, _Handled]]:
    handled = _Handled()
    ae = AE(ae_title="SEGNODE")
    ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    scp = start_server(ae, ("127.0.0.1", 0), [(evt.EVT_C_STORE, handled)], None, 30)
    try:
        yield scp, handled
    finally:
        scp.shutdown()
        scp.server_close()


def _data_set(sop_instance: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_instance
    ds.PatientID = "PAT-1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _store(scp: SCPServer, sop_instance: str, **kwargs: Any) -> Dataset:
    assoc = associate(scp.server_address[1], contexts=[(MRImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        return assoc.send_c_store(_data_set(sop_instance), **kwargs)
    finally:
        assoc.release()


def test_a_store_is_served_with_the_nodes_request_and_answered(server: tuple[SCPServer, _Handled]) -> None:
    scp, handled = server
    response = _store(scp, "1.2.3.4")
    assert response.Status == 0x0000
    assert type(handled.requests[0]) is sr.StoreRequest
    assert handled.data[0].startswith(b"\x08\x00\x16\x00")  # the data set as sent, SOP Class UID first


def test_a_store_from_a_move_is_served_by_pynetdicom(server: tuple[SCPServer, _Handled]) -> None:
    scp, handled = server
    response = _store(scp, "1.2.3.4", originator_aet="PACS", originator_id=5)
    assert response.Status == 0x0000
    assert type(handled.requests[0]) is C_STORE
    assert handled.requests[0].MoveOriginatorApplicationEntityTitle == "PACS"


def test_a_handler_that_raises_is_answered_0xc211_as_pynetdicom_does(
    server: tuple[SCPServer, _Handled], caplog: pytest.LogCaptureFixture
) -> None:
    scp, handled = server

    def fail() -> int:
        raise RuntimeError("handler broke")

    handled.answer = fail
    with caplog.at_level(logging.ERROR, logger="pynetdicom"):
        assert _store(scp, "1.2.3.4").Status == 0xC211
    assert "Exception in handler bound to 'evt.EVT_C_STORE'" in caplog.text
    assert type(handled.requests[0]) is sr.StoreRequest


def test_a_status_data_set_from_the_handler_reaches_the_peer(server: tuple[SCPServer, _Handled]) -> None:
    scp, handled = server

    def refuse() -> Dataset:
        answer = Dataset()
        answer.Status = 0xA700
        answer.ErrorComment = "spool full"
        return answer

    handled.answer = refuse
    response = _store(scp, "1.2.3.4")
    assert (response.Status, response.ErrorComment) == (0xA700, "spool full")


def test_an_unknown_status_is_sent_as_pynetdicom_sends_it(server: tuple[SCPServer, _Handled]) -> None:
    scp, handled = server
    handled.answer = lambda: 0xFEED
    assert _store(scp, "1.2.3.4").Status == 0xFEED


def test_with_unrestricted_storage_pynetdicom_serves_it(
    server: tuple[SCPServer, _Handled], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: queue.Queue[str] = queue.Queue()
    original = StorageServiceClass.SCP

    def spied(self: StorageServiceClass, req: C_STORE, context: Any) -> None:
        served.put(str(req.AffectedSOPInstanceUID))
        original(self, req, context)

    monkeypatch.setattr(StorageServiceClass, "SCP", spied)
    scp, _ = server
    assert _store(scp, "1.2.3.4").Status == 0x0000
    assert served.empty()  # the node's own SCP
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", True)
    assert _store(scp, "1.2.3.5").Status == 0x0000
    assert served.get_nowait() == "1.2.3.5"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_non_conformant_uids_are_decoded_without_a_warning_each() -> None:
    p_datas = [p for n in range(3) for p in _p_datas(_request(f"{UIDS[2]}{n}", n))]
    node = _acceptor(node=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p_data in p_datas:
            node.dimse.receive_primitive(p_data)
    assert node.dimse.msg_queue.qsize() == 3
    assert not caught
    library = _acceptor(node=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p_data in p_datas:
            library.dimse.receive_primitive(p_data)
    assert len(caught) == 9  # pynetdicom's decoding: three per request


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_non_conformant_uid_is_logged_once_per_association(
    server: tuple[SCPServer, _Handled], caplog: pytest.LogCaptureFixture
) -> None:
    scp, handled = server
    for _ in range(2):
        assoc = associate(scp.server_address[1], contexts=[(MRImageStorage, [ExplicitVRLittleEndian])])
        with caplog.at_level(logging.INFO, logger=sr.__name__):
            for n in range(3):
                assert assoc.send_c_store(_data_set(f"{UIDS[2]}{n}")).Status == 0x0000
            assert assoc.send_c_store(_data_set("1.2.3")).Status == 0x0000
        assoc.release()
    logged = [r.getMessage() for r in caplog.records if r.name == sr.__name__]
    assert len(logged) == 2 and all(f"Affected SOP Instance UID {UIDS[2]}0 " in m for m in logged)
    assert {type(r) for r in handled.requests} == {sr.StoreRequest}


def test_a_response_that_cannot_be_sent_aborts_as_pynetdicom_does(
    server: tuple[SCPServer, _Handled], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending the response fails after the handler ran: pynetdicom's ``_serve_request`` logs the exception
    and aborts the association; so does the node's."""

    def broken(primitive: Any) -> bytes:
        raise RuntimeError("the response cannot be encoded")

    monkeypatch.setattr(wire, "store_response_pdv", broken)
    scp, handled = server
    assoc = associate(scp.server_address[1], contexts=[(MRImageStorage, [ExplicitVRLittleEndian])])
    with caplog.at_level(logging.ERROR, logger="pynetdicom"):
        response = assoc.send_c_store(_data_set("1.2.3.4"))
    assert "Status" not in response
    assert wait_until(lambda: assoc.is_aborted, what="the abort")
    assert type(handled.requests[0]) is sr.StoreRequest
    assert "the response cannot be encoded" in caplog.text
