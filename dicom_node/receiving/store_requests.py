"""C-STORE requests read and served without pydicom command sets and without re-validating their UIDs.

For each C-STORE request pynetdicom decodes the command set into a pydicom data set, copies it element by
element into a ``C_STORE`` primitive (each UID setter validates the value twice, with pydicom's
regular expressions), and its Storage SCP then copies the two UIDs into the response primitive (two more
validations each). A UID with a component starting with ``0`` (non-conformant, common in the field: 94 of
the 200 instances of the receiving benchmark) makes each validation issue a Python warning and a log
record with the UID in its text: five warnings and two log lines per instance, and a warning registry
that grows with every new UID. About 0.15 ms of CPU per instance in all.

:func:`receive_store_requests` gives an association's DIMSE provider a ``receive_primitive`` that decodes
the ordinary C-STORE request itself: a command set of exactly the seven elements PS3.7 requires (group
length, Affected SOP Class UID, Command Field 0x0001, Message ID, Priority 0-2, Command Data Set Type not
0x0101, Affected SOP Instance UID), both UIDs of digits and dots and at most 64 characters, its data set
gathered from the PDVs that follow on the same presentation context. The request is a :class:`StoreRequest`
(a ``C_STORE``) with the same values pynetdicom's decoding gives. A non-conformant UID is logged once per
association. Everything else — another command, a C-STORE with a Move Originator or other elements,
values pynetdicom would refuse, a message pynetdicom is already assembling, a command fragment in the
middle of a data set, a handler bound to ``EVT_DIMSE_RECV`` (it must see pynetdicom's message object),
pynetdicom set to spool data sets to files — goes to pynetdicom's own ``receive_primitive``, fed the
same PDVs in the same order.

:func:`serve_store_requests` gives the association a ``_serve_request`` that runs pynetdicom's Storage SCP
steps for a :class:`StoreRequest` (the handler bound to ``EVT_C_STORE`` in pynetdicom's ``attempt``
context, pynetdicom's status validation, the response through the DIMSE provider's ``send_msg``) with a
response primitive whose UIDs are the request's, not validated again. Requests of other kinds, and a
store under a release, an unknown presentation context, SOP Class Extended Negotiation or
``UNRESTRICTED_STORAGE_SERVICE``, go to pynetdicom's ``_serve_request``.

What this replaces is pynetdicom's internals: the ``*_SOURCE_SHA256`` constants pin the sources of the
version it was checked against, and ``tests/dicom_node/test_store_requests.py`` compares the decoded
requests with pynetdicom's.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass, attempt
from pynetdicom.sop_class import uid_to_service_class

LOG = logging.getLogger(__name__)

#: SHA-256 of ``inspect.getsource`` in pynetdicom 3.0.4 of what this module stands in for:
#: ``DIMSEServiceProvider.receive_primitive`` (decode, ``EVT_DIMSE_RECV``, queue the primitive),
RECEIVE_PRIMITIVE_SOURCE_SHA256 = "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f"
#: ``DIMSEMessage.decode_msg`` (command and data set fragments by their control header),
DECODE_MSG_SOURCE_SHA256 = "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284"
#: ``Association._serve_request`` (service class by SOP Class UID, context, pause, SCP),
SERVE_REQUEST_SOURCE_SHA256 = "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877"
#: and ``StorageServiceClass.SCP`` (response primitive, handler in ``attempt``, status, ``send_msg``).
STORAGE_SCP_SOURCE_SHA256 = "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40"

#: A UID of digits and dots, at most 64 characters: what is decoded here (PS3.5 9.1; the leading-zero
#: rule is checked separately, for the log).
_PLAIN_UID = re.compile(rb"[0-9.]{1,64}\Z")
_CONFORMANT_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
#: The command set of an ordinary C-STORE request, in order: element numbers of group 0000.
_STORE_ELEMENTS = (0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000)
_US_ELEMENTS = frozenset({0x0100, 0x0110, 0x0700, 0x0800})


class StoreRequest(C_STORE):
    """A C-STORE request decoded by :func:`receive_store_requests`, served by :func:`serve_store_requests`."""

    #: its data set is a ``BytesIO`` made from the whole data set's bytes
    data_set_whole = True


def _command_values(command: bytes) -> dict[int, bytes] | None:
    """The values of an ordinary C-STORE request's command set (Implicit VR Little Endian), by element
    number; ``None`` for any other command set."""
    values: dict[int, bytes] = {}
    offset, size = 0, len(command)
    for element in _STORE_ELEMENTS:
        if offset + 8 > size:
            return None
        group, number, length = _ELEMENT.unpack_from(command, offset)
        offset += 8
        if group != 0 or number != element or offset + length > size:
            return None
        values[element] = command[offset : offset + length]
        offset += length
    if offset != size:
        return None
    return values


def decode_store_request(command: bytes) -> StoreRequest | None:
    """The request of an ordinary C-STORE command set (see the module's description), its data set not
    set yet; ``None`` for anything pynetdicom is to decode."""
    values = _command_values(command)
    if values is None:
        return None
    if len(values[0x0000]) != 4 or _UL.unpack(values[0x0000])[0] != len(command) - 12:
        return None
    if any(len(values[element]) != 2 for element in _US_ELEMENTS):
        return None
    numbers = {element: _US.unpack(values[element])[0] for element in _US_ELEMENTS}
    if numbers[0x0100] != _C_STORE_RQ or numbers[0x0800] == _NO_DATA_SET or numbers[0x0700] > 2:
        return None
    uids = [values[element].rstrip(b"\0 ") for element in (0x0002, 0x1000)]
    if not all(_PLAIN_UID.match(uid) for uid in uids):
        return None
    request = StoreRequest()
    request._message_id = numbers[0x0110]
    request._priority = numbers[0x0700]
    sop_class, sop_instance = (UID(uid.decode("ascii"), pydicom_config.IGNORE) for uid in uids)
    request._affected_sop_class_uid = sop_class
    request._affected_sop_instance_uid = sop_instance
    return request


@dataclass(eq=False)
class _Assembly:
    """A request whose command set is decoded and whose data set is still arriving."""

    context_id: int
    command_pdv: bytes
    request: StoreRequest
    fragments: list[memoryview] = field(default_factory=list)


class _Receiver:
    """The association's ``receive_primitive`` (see the module's description)."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.dimse = assoc.dimse
        self.library = assoc.dimse.receive_primitive
        self.assembly: _Assembly | None = None
        self.warned = False

    def __call__(self, primitive: Any) -> None:
        if type(primitive) is not P_DATA:
            self.library(primitive)
            return
        values = primitive.presentation_data_value_list
        for index, (context_id, pdv) in enumerate(values):
            if self.assembly is None:
                if not self._starts(context_id, pdv):
                    self.library(_p_data(values[index:]))
                    return
            elif pdv[0] & 1 or context_id != self.assembly.context_id:
                self._hand_over(values[index:])
                return
            else:
                self._gather(pdv)

    def _starts(self, context_id: int, pdv: bytes) -> bool:
        """Whether ``pdv`` (a command's last fragment, nothing pynetdicom is assembling) starts a request
        decoded here."""
        if self.dimse.message is not None or pdv[0] & 3 != 3 or _config.STORE_RECV_CHUNKED_DATASET:
            return False
        if self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            return False
        request = decode_store_request(pdv[1:])
        if request is None:
            return False
        self.assembly = _Assembly(context_id, pdv, request)
        return True

    def _gather(self, pdv: bytes) -> None:
        assembly = self.assembly
        assert assembly is not None
        assembly.fragments.append(memoryview(pdv)[1:])
        if not pdv[0] & 2:
            return
        self.assembly = None
        request = assembly.request
        request._dataset = BytesIO(b"".join(assembly.fragments))
        request._context_id = assembly.context_id
        self._note_conformance(request)
        self.dimse.msg_queue.put((assembly.context_id, request))

    def _hand_over(self, rest: list[Any]) -> None:
        """pynetdicom takes over the request being assembled: its command and the data so far, then
        ``rest``, as they arrived."""
        assembly = self.assembly
        assert assembly is not None
        self.assembly = None
        self.library(_p_data([(assembly.context_id, assembly.command_pdv)]))
        if assembly.fragments:
            self.library(_p_data([(assembly.context_id, b"\x00" + b"".join(assembly.fragments))]))
        self.library(_p_data(rest))

    def _note_conformance(self, request: StoreRequest) -> None:
        if self.warned:
            return
        for name, uid in (
            ("Affected SOP Class UID", request.AffectedSOPClassUID),
            ("Affected SOP Instance UID", request.AffectedSOPInstanceUID),
        ):
            if not _CONFORMANT_UID.match(str(uid)):
                self.warned = True
                LOG.warning(
                    "non-conformant %s %s (a component with a leading zero, or an empty one) accepted; "
                    "further ones on this association are not logged",
                    name,
                    uid,
                )
                return


def _p_data(values: list[Any]) -> P_DATA:
    primitive = P_DATA()
    # pynetdicom's setter wants [ID, PDV] lists (its annotation says tuples)
    primitive.presentation_data_value_list = [[context_id, pdv] for context_id, pdv in values]  # type: ignore[misc]
    return primitive


def receive_store_requests(assoc: Association) -> None:
    """Give the DIMSE provider of ``assoc`` the ``receive_primitive`` that decodes ordinary C-STORE
    requests itself (see the module's description)."""
    assoc.dimse.receive_primitive = _Receiver(assoc)  # type: ignore[method-assign]


class _Server:
    """The association's ``_serve_request`` (see the module's description)."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.library = assoc._serve_request
        #: SOP Class UIDs and whether pynetdicom serves them with its Storage SCP
        self.storage: dict[str, bool] = {}

    def __call__(self, msg: Any, context_id: int) -> None:
        assoc = self.assoc
        if type(msg) is not StoreRequest or not self._ordinary(msg, context_id):
            self.library(msg, context_id)
            return
        try:
            assoc.dimse.cancel_req = {}
            assoc._is_paused = True
            self._store(msg, context_id)
            assoc._is_paused = False
            assoc.dimse.cancel_req = {}
        except Exception as exc:  # as pynetdicom's _serve_request: log it and abort
            logging.getLogger("pynetdicom").exception(exc)
            assoc.abort()

    def _ordinary(self, request: StoreRequest, context_id: int) -> bool:
        assoc = self.assoc
        if assoc._sent_release or context_id not in assoc._accepted_cx:
            return False
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            return False
        sop_class = str(request.AffectedSOPClassUID)
        if sop_class in assoc.acceptor.accepted_common_extended:
            return False
        storage = self.storage.get(sop_class)
        if storage is None:
            storage = self.storage[sop_class] = uid_to_service_class(sop_class) is StorageServiceClass
        return storage

    def _store(self, request: StoreRequest, context_id: int) -> None:
        """``StorageServiceClass.SCP`` with the response's UIDs taken from the request as they are."""
        assoc = self.assoc
        context = assoc._accepted_cx[context_id]
        response = C_STORE()
        response._message_id = request._message_id
        response._message_id_being_responded_to = request._message_id
        response._affected_sop_instance_uid = request._affected_sop_instance_uid
        response._affected_sop_class_uid = request._affected_sop_class_uid
        with attempt(response, assoc.dimse, context_id, assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_STORE'"
            ctx.error_status = 0xC211
            status = evt.trigger(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})
        if not ctx.success or not assoc.is_established:
            return
        response = StorageServiceClass(assoc).validate_status(status, response)  # type: ignore[arg-type]
        assoc.dimse.send_msg(response, context_id)


def serve_store_requests(assoc: Association) -> None:
    """Give ``assoc`` the ``_serve_request`` that serves a :class:`StoreRequest` without validating its
    UIDs again (see the module's description)."""
    assoc._serve_request = _Server(assoc)  # type: ignore[method-assign]
